"""Legacy install files for the import tests: `openalgo.db`, `logs.db` and `latency.db` with exactly
the tables of the inventory (../shared/reference/openalgo-inventory.md §3, §4.2), filled the way
the in-process layer fills them: argon2 over secret + pepper, Fernet under PBKDF2 of the pepper
(the install's FERNET_SALT, or the legacy static salt), SMTP under its own key, India-time
timestamps where that layer wrote them, and plain SQLite booleans.

`build(directory)` writes the three files and an `.env` holding the install's keys, and returns
`Legacy`: what every row should become (plaintexts, counts, expected statistics) and which rows
must be skipped.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from tests.support import PEPPER

IST = timezone(timedelta(hours=5, minutes=30))
# The install's own salt: not this service's FERNET_SALT (tests.support.SALT).
LEGACY_SALT = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718"
OTHER_PEPPER = "another-install-pepper-0123456789-abcdefgh"
NOW = datetime.now(UTC).replace(microsecond=0)

# argon2 as the legacy layer calls it (argon2-cffi), at a test's cost.
_hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)

OPENALGO_DDL = """
CREATE TABLE auth (
    id INTEGER PRIMARY KEY, name VARCHAR(255) NOT NULL UNIQUE, auth TEXT NOT NULL,
    feed_token TEXT, broker VARCHAR(20) NOT NULL, user_id VARCHAR(255), is_revoked BOOLEAN,
    secret_api_key TEXT, primary_ip VARCHAR(45), secondary_ip VARCHAR(45),
    ip_updated_at DATETIME, aux_param1 TEXT, aux_param2 TEXT, aux_param3 TEXT, aux_param4 TEXT);
CREATE INDEX idx_auth_broker ON auth (broker);
CREATE INDEX idx_auth_user_id ON auth (user_id);
CREATE INDEX idx_auth_is_revoked ON auth (is_revoked);
CREATE TABLE api_keys (
    id INTEGER PRIMARY KEY, user_id VARCHAR NOT NULL UNIQUE, api_key_hash TEXT NOT NULL,
    api_key_encrypted TEXT NOT NULL, created_at DATETIME, order_mode VARCHAR(20));
CREATE TABLE active_sessions (
    id INTEGER PRIMARY KEY, username VARCHAR(255) NOT NULL, session_id VARCHAR(64) NOT NULL UNIQUE,
    device_info VARCHAR(500), ip_address VARCHAR(45), broker VARCHAR(20), login_time DATETIME,
    last_seen DATETIME);
CREATE TABLE login_attempts (
    id INTEGER PRIMARY KEY, username VARCHAR(255) NOT NULL, ip_address VARCHAR(45),
    device_info VARCHAR(500), status VARCHAR(20) NOT NULL, login_type VARCHAR(20),
    broker VARCHAR(20), failure_reason VARCHAR(255), timestamp DATETIME);
CREATE TABLE users (
    id INTEGER PRIMARY KEY, username VARCHAR(80) NOT NULL UNIQUE, email VARCHAR(120) NOT NULL UNIQUE,
    password_hash VARCHAR(255) NOT NULL, totp_secret VARCHAR(255) NOT NULL, is_admin BOOLEAN,
    totp_enabled BOOLEAN NOT NULL, totp_required_for_login BOOLEAN NOT NULL,
    totp_required_for_mcp BOOLEAN NOT NULL, totp_required_for_password_reset BOOLEAN NOT NULL);
CREATE TABLE symtoken (
    id INTEGER PRIMARY KEY, symbol VARCHAR NOT NULL, brsymbol VARCHAR NOT NULL, name VARCHAR,
    exchange VARCHAR, brexchange VARCHAR, token VARCHAR, expiry VARCHAR, strike FLOAT,
    lotsize INTEGER, instrumenttype VARCHAR, tick_size FLOAT, contract_value FLOAT);
CREATE INDEX idx_symbol_exchange ON symtoken (symbol, exchange);
CREATE TABLE order_logs (
    id INTEGER PRIMARY KEY, api_type TEXT NOT NULL, request_data TEXT NOT NULL,
    response_data TEXT NOT NULL, created_at DATETIME);
CREATE TABLE analyzer_logs (
    id INTEGER PRIMARY KEY, api_type VARCHAR(50) NOT NULL, request_data TEXT NOT NULL,
    response_data TEXT NOT NULL, created_at DATETIME);
CREATE TABLE settings (
    id INTEGER PRIMARY KEY, analyze_mode BOOLEAN, smtp_server VARCHAR(255), smtp_port INTEGER,
    smtp_username VARCHAR(255), smtp_password_encrypted TEXT, smtp_use_tls BOOLEAN,
    smtp_from_email VARCHAR(255), smtp_helo_hostname VARCHAR(255),
    security_auto_ban_enabled BOOLEAN, security_404_threshold INTEGER,
    security_404_ban_duration INTEGER, security_api_threshold INTEGER,
    security_api_ban_duration INTEGER, security_repeat_offender_limit INTEGER);
CREATE TABLE chartink_strategies (
    id INTEGER PRIMARY KEY, name VARCHAR(255) NOT NULL, webhook_id VARCHAR(36) NOT NULL UNIQUE,
    user_id VARCHAR(255) NOT NULL, is_active BOOLEAN, is_intraday BOOLEAN, start_time VARCHAR(5),
    end_time VARCHAR(5), squareoff_time VARCHAR(5), created_at DATETIME DEFAULT (CURRENT_TIMESTAMP),
    updated_at DATETIME);
CREATE TABLE chartink_symbol_mappings (
    id INTEGER PRIMARY KEY, strategy_id INTEGER NOT NULL REFERENCES chartink_strategies (id),
    chartink_symbol VARCHAR(50) NOT NULL, exchange VARCHAR(10) NOT NULL, quantity INTEGER NOT NULL,
    product_type VARCHAR(10) NOT NULL, created_at DATETIME DEFAULT (CURRENT_TIMESTAMP),
    updated_at DATETIME);
CREATE TABLE strategies (
    id INTEGER PRIMARY KEY, name VARCHAR(255) NOT NULL, webhook_id VARCHAR(36) NOT NULL UNIQUE,
    user_id VARCHAR(255) NOT NULL, platform VARCHAR(50) NOT NULL, is_active BOOLEAN,
    is_intraday BOOLEAN, trading_mode VARCHAR(10) NOT NULL, start_time VARCHAR(5),
    end_time VARCHAR(5), squareoff_time VARCHAR(5),
    created_at DATETIME DEFAULT (CURRENT_TIMESTAMP), updated_at DATETIME);
CREATE TABLE strategy_symbol_mappings (
    id INTEGER PRIMARY KEY, strategy_id INTEGER NOT NULL REFERENCES strategies (id),
    symbol VARCHAR(50) NOT NULL, exchange VARCHAR(10) NOT NULL, quantity INTEGER NOT NULL,
    product_type VARCHAR(10) NOT NULL, created_at DATETIME DEFAULT (CURRENT_TIMESTAMP),
    updated_at DATETIME);
CREATE TABLE master_contract_status (
    broker VARCHAR PRIMARY KEY, status VARCHAR, message VARCHAR, last_updated DATETIME,
    total_symbols VARCHAR, is_ready BOOLEAN, last_download_time DATETIME, download_date DATE,
    exchange_stats TEXT, download_duration_seconds INTEGER);
"""

LOGS_DDL = """
CREATE TABLE traffic_logs (
    id INTEGER PRIMARY KEY, timestamp DATETIME DEFAULT (CURRENT_TIMESTAMP),
    client_ip VARCHAR(50) NOT NULL, method VARCHAR(10) NOT NULL, path VARCHAR(500) NOT NULL,
    status_code INTEGER NOT NULL, duration_ms FLOAT NOT NULL, host VARCHAR(500),
    error VARCHAR(500), user_id INTEGER);
CREATE INDEX idx_traffic_timestamp ON traffic_logs (timestamp);
CREATE INDEX idx_traffic_ip_timestamp ON traffic_logs (client_ip, timestamp);
CREATE TABLE ip_bans (
    id INTEGER PRIMARY KEY, ip_address VARCHAR(50) NOT NULL, ban_reason VARCHAR(200),
    ban_count INTEGER, banned_at DATETIME DEFAULT (CURRENT_TIMESTAMP), expires_at DATETIME,
    is_permanent BOOLEAN, created_by VARCHAR(50));
CREATE UNIQUE INDEX ix_ip_bans_ip_address ON ip_bans (ip_address);
CREATE TABLE error_404_tracker (
    id INTEGER PRIMARY KEY, ip_address VARCHAR(50) NOT NULL, error_count INTEGER,
    first_error_at DATETIME DEFAULT (CURRENT_TIMESTAMP),
    last_error_at DATETIME DEFAULT (CURRENT_TIMESTAMP), paths_attempted TEXT);
CREATE TABLE invalid_api_key_tracker (
    id INTEGER PRIMARY KEY, ip_address VARCHAR(50) NOT NULL, attempt_count INTEGER,
    first_attempt_at DATETIME DEFAULT (CURRENT_TIMESTAMP),
    last_attempt_at DATETIME DEFAULT (CURRENT_TIMESTAMP), api_keys_tried TEXT);
"""

LATENCY_DDL = """
CREATE TABLE order_latency (
    id INTEGER PRIMARY KEY, timestamp DATETIME DEFAULT (CURRENT_TIMESTAMP),
    order_id VARCHAR(100) NOT NULL, user_id INTEGER, broker VARCHAR(50), symbol VARCHAR(50),
    order_type VARCHAR(20), rtt_ms FLOAT, validation_latency_ms FLOAT, response_latency_ms FLOAT,
    overhead_ms FLOAT, total_latency_ms FLOAT NOT NULL, request_body JSON, response_body JSON,
    status VARCHAR(20), error VARCHAR(500));
"""


def fernet(pepper: str, salt: bytes) -> Fernet:
    """auth_db.get_encryption_key: PBKDF2HMAC(SHA256, 32, salt, 100000) over the pepper."""
    kdf = PBKDF2HMAC(algorithm=hashes.SHA256(), length=32, salt=salt, iterations=100_000)
    return Fernet(base64.urlsafe_b64encode(kdf.derive(pepper.encode())))


INSTALL_KEY = fernet(PEPPER, bytes.fromhex(LEGACY_SALT))
STATIC_KEY = fernet(PEPPER, b"openalgo_static_salt")
FOREIGN_KEY = fernet(OTHER_PEPPER, bytes.fromhex(LEGACY_SALT))
SMTP_KEY = fernet(PEPPER, b"smtp-openalgo-salt")


def encrypt(key: Fernet, plaintext: str) -> str:
    return key.encrypt(plaintext.encode()).decode()


def sql_time(moment: datetime, zone: timezone = UTC) -> str:
    """How SQLAlchemy's SQLite DATETIME stores a value: the wall clock in `zone`, no offset."""
    return moment.astimezone(zone).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


@dataclass
class Legacy:
    """The files, and what the service should hold after importing them."""

    db: Path
    logs: Path
    latency: Path
    env: Path
    passwords: dict[str, str] = field(default_factory=dict)
    totp: dict[str, str] = field(default_factory=dict)  # username -> secret kept
    api_keys: dict[str, str] = field(default_factory=dict)  # username -> key kept
    broker_tokens: dict[str, tuple[str, str | None, str]] = field(default_factory=dict)
    revoked: set[str] = field(default_factory=set)
    smtp_password: str = ""
    order_logs: list[dict[str, Any]] = field(default_factory=list)  # importable, legacy order
    analyzer_logs: list[dict[str, Any]] = field(default_factory=list)
    traffic: list[dict[str, Any]] = field(default_factory=list)
    latency_rows: list[dict[str, Any]] = field(default_factory=list)
    symbols: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    strategies: dict[str, dict[str, Any]] = field(default_factory=dict)  # webhook -> fields
    chartink: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: dict[str, dict[str, int]] = field(default_factory=dict)  # table -> reason -> n

    def skip(self, table: str, reason: str) -> None:
        self.skipped.setdefault(table, {})
        self.skipped[table][reason] = self.skipped[table].get(reason, 0) + 1


def _insert(conn: sqlite3.Connection, table: str, row: dict[str, Any]) -> int:
    columns = ", ".join(row)
    marks = ", ".join("?" * len(row))
    cursor = conn.execute(f"INSERT INTO {table} ({columns}) VALUES ({marks})", list(row.values()))
    return int(cursor.lastrowid or 0)


def _users(conn: sqlite3.Connection, legacy: Legacy) -> None:
    def user(username: str, email: str, password: str, totp_secret: str, **flags: bool) -> None:
        _insert(
            conn,
            "users",
            {
                "username": username,
                "email": email,
                "password_hash": _hasher.hash(password + PEPPER),
                "totp_secret": totp_secret,
                "is_admin": int(flags.get("is_admin", False)),
                "totp_enabled": int(flags.get("totp_enabled", False)),
                "totp_required_for_login": int(flags.get("login", False)),
                "totp_required_for_mcp": int(flags.get("mcp", False)),
                "totp_required_for_password_reset": int(flags.get("reset", False)),
            },
        )
        legacy.passwords[username] = password

    alice_totp = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
    user(
        "alice",
        "Alice@Example.com",
        "alice-password-1",
        encrypt(INSTALL_KEY, alice_totp),
        is_admin=True,
        totp_enabled=True,
        login=True,
    )
    legacy.totp["alice"] = alice_totp
    # Stored before secrets were encrypted: the plaintext base32 secret itself.
    user("bob", "bob@example.com", "bob-password-22", "KRSXG5CTMVRXEZLUKRSXG5CTMVRXEZLU", mcp=True)
    legacy.totp["bob"] = "KRSXG5CTMVRXEZLUKRSXG5CTMVRXEZLU"
    # Encrypted before the install had its own salt.
    user(
        "carol", "carol@example.com", "carol-password-333", encrypt(STATIC_KEY, "MFRGGZDFMZTWQ2LK")
    )
    legacy.totp["carol"] = "MFRGGZDFMZTWQ2LK"
    # Under another install's key: imported with a new TOTP secret, reported.
    user("dave", "dave@example.com", "dave-password-4444", encrypt(FOREIGN_KEY, "ONSWG4TFORZW63TF"))
    user("bad user!", "bad@example.com", "whatever-pw", encrypt(INSTALL_KEY, alice_totp))
    legacy.passwords.pop("bad user!")
    legacy.skip("users", "username")
    user("alice2", "alice@example.COM", "alice2-password", encrypt(INSTALL_KEY, alice_totp))
    legacy.passwords.pop("alice2")
    legacy.skip("users", "email belongs to another user")


def _api_keys(conn: sqlite3.Connection, legacy: Legacy) -> None:
    def key(user: str, plaintext: str, cipher: Fernet, mode: str | None = "auto") -> None:
        _insert(
            conn,
            "api_keys",
            {
                "user_id": user,
                "api_key_hash": _hasher.hash(plaintext + PEPPER),
                "api_key_encrypted": encrypt(cipher, plaintext),
                "created_at": sql_time(NOW - timedelta(days=3)),
                "order_mode": mode,
            },
        )

    keys = {name: (name[0] * 8 + "0123456789abcdef" * 4)[:64] for name in ("alice", "bob", "carol")}
    key("alice", keys["alice"], INSTALL_KEY, "semi_auto")
    key("bob", keys["bob"], INSTALL_KEY, None)
    key("carol", keys["carol"], STATIC_KEY)
    legacy.api_keys.update(keys)
    key("dave", "d" * 64, FOREIGN_KEY)
    legacy.skip("api_keys", "api_key_encrypted undecryptable under the legacy keys")
    key("ghost", "e" * 64, INSTALL_KEY)
    legacy.skip("api_keys", "its user was not imported")


def _broker_tokens(conn: sqlite3.Connection, legacy: Legacy) -> None:
    _insert(
        conn,
        "auth",
        {
            "name": "alice",
            "auth": encrypt(INSTALL_KEY, "alice-broker-token"),
            "feed_token": encrypt(INSTALL_KEY, "alice-feed-token"),
            "broker": "zerodha",
            "user_id": "AB1234",
            "is_revoked": 0,
        },
    )
    legacy.broker_tokens["alice"] = ("alice-broker-token", "alice-feed-token", "zerodha")
    # Logged out: the legacy layer stores "" for the token and the broker.
    _insert(conn, "auth", {"name": "bob", "auth": "", "broker": "", "is_revoked": 1})
    legacy.revoked.add("bob")
    _insert(
        conn,
        "auth",
        {
            "name": "carol",
            "auth": encrypt(STATIC_KEY, "carol-broker-token"),
            "broker": "angel",
            "is_revoked": 0,
            "secret_api_key": encrypt(INSTALL_KEY, "samco-secret"),
            "primary_ip": "203.0.113.9",
        },
    )
    legacy.broker_tokens["carol"] = ("carol-broker-token", None, "angel")
    _insert(
        conn,
        "auth",
        {"name": "dave", "auth": encrypt(FOREIGN_KEY, "x"), "broker": "dhan", "is_revoked": 0},
    )
    legacy.skip("auth", "auth token undecryptable under the legacy keys")


def _sessions(conn: sqlite3.Connection, legacy: Legacy) -> None:
    login = NOW - timedelta(hours=2)
    for username, session_id, ip in (
        ("alice", "a" * 64, "198.51.100.7"),
        ("bob", "b" * 64, "::ffff:198.51.100.8"),
        ("alice", "c" * 64, "not-an-ip"),
    ):
        _insert(
            conn,
            "active_sessions",
            {
                "username": username,
                "session_id": session_id,
                "device_info": "Mozilla/5.0",
                "ip_address": ip,
                "broker": "zerodha",
                "login_time": sql_time(login, IST),
                "last_seen": sql_time(login + timedelta(minutes=30), IST),
            },
        )
    legacy.skip("active_sessions", "ip_address")
    for index, status in enumerate(["success", "failed", "resumed", "bogus", "failed"]):
        _insert(
            conn,
            "login_attempts",
            {
                "username": "alice" if index % 2 == 0 else "mallory",
                "ip_address": "198.51.100.7",
                "device_info": "curl/8",
                "status": status,
                "login_type": "password",
                "broker": "zerodha",
                "failure_reason": None if status == "success" else "invalid_password",
                "timestamp": sql_time(NOW - timedelta(minutes=10 * index), IST),
            },
        )
    legacy.skip("login_attempts", "status")


def _settings(conn: sqlite3.Connection, legacy: Legacy) -> None:
    legacy.smtp_password = "smtp-app-password"
    _insert(
        conn,
        "settings",
        {
            "analyze_mode": 1,
            "smtp_server": "smtp.example.com",
            "smtp_port": 587,
            "smtp_username": "mailer@example.com",
            "smtp_password_encrypted": encrypt(SMTP_KEY, legacy.smtp_password),
            "smtp_use_tls": 1,
            "smtp_from_email": "alerts@example.com",
            "smtp_helo_hostname": "algo.example.com",
            "security_auto_ban_enabled": 1,
            "security_404_threshold": 60,
            "security_404_ban_duration": 24,
            "security_api_threshold": 30,
            "security_api_ban_duration": 0,
            "security_repeat_offender_limit": 3,
        },
    )


def _strategies(conn: sqlite3.Connection, legacy: Legacy) -> None:
    created = sql_time(NOW - timedelta(days=10))
    rows = [
        ("Momentum", "11111111-1111-4111-8111-111111111111", "python", "LONG", 1, "9:15", "15:00",
         "15:15"),
        ("Swing", "22222222-2222-4222-8222-222222222222", "tradingview", "BOTH", 0, None, None,
         None),
        ("Broken", "33333333-3333-4333-8333-333333333333", "tradingview", "SIDEWAYS", 0, None, None,
         None),
    ]  # fmt: skip
    ids = {}
    for name, hook, platform, mode, intraday, start, end, square in rows:
        ids[hook] = _insert(
            conn,
            "strategies",
            {
                "name": name,
                "webhook_id": hook,
                "user_id": "alice",
                "platform": platform,
                "is_active": 1,
                "is_intraday": intraday,
                "trading_mode": mode,
                "start_time": start,
                "end_time": end,
                "squareoff_time": square,
                "created_at": created,
            },
        )
    legacy.skip("strategies", "trading_mode")
    legacy.strategies[rows[0][1]] = {
        "name": "Momentum", "platform": "python", "trading_mode": "LONG", "is_intraday": True,
        "start_time": "09:15", "end_time": "15:00", "squareoff_time": "15:15",
        "symbols": {("RELIANCE", "NSE", 10, "MIS"), ("INFY", "NSE", 5, "CNC")},
    }  # fmt: skip
    legacy.strategies[rows[1][1]] = {
        "name": "Swing", "platform": "tradingview", "trading_mode": "BOTH", "is_intraday": False,
        "start_time": None, "end_time": None, "squareoff_time": None,
        "symbols": {("NIFTY28NOV2424000CE", "NFO", 75, "NRML")},
    }  # fmt: skip
    mappings = [
        (ids[rows[0][1]], "RELIANCE", "NSE", 10, "MIS"),
        (ids[rows[0][1]], "INFY", "NSE", 5, "cnc"),
        (ids[rows[0][1]], "RELIANCE", "NSE", 20, "MIS"),  # repeats (strategy, symbol, exchange)
        (ids[rows[0][1]], "TCS", "NSE", 1, "XYZ"),
        (ids[rows[1][1]], "NIFTY28NOV2424000CE", "NFO", 75, "NRML"),
        (999, "SBIN", "NSE", 1, "MIS"),  # its strategy is gone
        (ids[rows[2][1]], "SBIN", "NSE", 1, "MIS"),  # its strategy is skipped
    ]
    for strategy_id, symbol, exchange, quantity, product in mappings:
        _insert(
            conn,
            "strategy_symbol_mappings",
            {
                "strategy_id": strategy_id,
                "symbol": symbol,
                "exchange": exchange,
                "quantity": quantity,
                "product_type": product,
            },
        )
    for reason in ("repeats", "product_type", "not in the legacy file", "not imported"):
        legacy.skip("strategy_symbol_mappings", reason)
    hook = "44444444-4444-4444-8444-444444444444"
    chartink_id = _insert(
        conn,
        "chartink_strategies",
        {
            "name": "Breakout scan",
            "webhook_id": hook,
            "user_id": "bob",
            "is_active": 0,
            "is_intraday": 1,
            "start_time": "09:20",
            "end_time": "14:30",
            "squareoff_time": "15:10",
            "created_at": created,
        },
    )
    legacy.chartink[hook] = {
        "name": "Breakout scan", "is_active": False, "start_time": "09:20",
        "symbols": {("SBIN", "NSE", 3, "MIS")},
    }  # fmt: skip
    _insert(
        conn,
        "chartink_symbol_mappings",
        {
            "strategy_id": chartink_id,
            "chartink_symbol": "SBIN",
            "exchange": "NSE",
            "quantity": 3,
            "product_type": "MIS",
        },
    )
    _insert(
        conn,
        "chartink_symbol_mappings",
        {
            "strategy_id": chartink_id,
            "chartink_symbol": "HDFC",
            "exchange": "NSE",
            "quantity": 0,
            "product_type": "MIS",
        },
    )
    legacy.skip("chartink_symbol_mappings", "quantity")


def _contract(conn: sqlite3.Connection, legacy: Legacy) -> None:
    def symbol(**row: Any) -> None:
        full = {
            "name": None, "brexchange": row["exchange"], "expiry": "", "strike": -1.0,
            "lotsize": 1, "instrumenttype": "EQ", "tick_size": 0.05, **row,
        }  # fmt: skip
        _insert(conn, "symtoken", full)

    for index, name in enumerate(["RELIANCE", "INFY", "TCS", "SBIN", "HDFCBANK"]):
        row = {"symbol": name, "brsymbol": f"{name}-EQ", "name": name, "exchange": "NSE",
               "token": str(1000 + index)}  # fmt: skip
        symbol(**row)
        legacy.symbols[(name, "NSE")] = row
    for strike in (23900, 24000, 24100):
        for kind in ("CE", "PE"):
            row = {
                "symbol": f"NIFTY28NOV24{strike}{kind}", "brsymbol": f"NIFTY24NOV{strike}{kind}",
                "name": "NIFTY", "exchange": "NFO", "token": f"{strike}{int(kind == 'CE')}",
                "expiry": "28-NOV-24", "strike": float(strike), "lotsize": 75,
                "instrumenttype": kind, "brexchange": "NFO",
            }  # fmt: skip
            symbol(**row)
            legacy.symbols[(row["symbol"], "NFO")] = row
    symbol(symbol="RELIANCE", brsymbol="RELIANCE-BE", exchange="NSE", token="9999")
    legacy.skip("symtoken", "repeats")
    symbol(symbol="NOTOKEN", brsymbol="NOTOKEN-EQ", exchange="NSE", token=None)
    legacy.skip("symtoken", "token missing")
    symbol(symbol="BADEXP", brsymbol="BADEXP", exchange="NFO", token="77", expiry="2024-11-28")
    legacy.skip("symtoken", "expiry")
    symbol(symbol="BTCUSD", brsymbol="BTCUSD", exchange="CRYPTO", token="88", contract_value=0.001)
    legacy.symbols[("BTCUSD", "CRYPTO")] = {"symbol": "BTCUSD", "exchange": "CRYPTO", "token": "88"}
    _insert(
        conn,
        "master_contract_status",
        {
            "broker": "zerodha",
            "status": "success",
            "message": "Downloaded",
            "last_updated": sql_time(NOW, IST),
            "total_symbols": "12",
            "is_ready": 1,
            "last_download_time": sql_time(NOW, IST),
            "download_date": NOW.astimezone(IST).date().isoformat(),
            "exchange_stats": json.dumps({"NSE": 5, "NFO": 6, "CRYPTO": 1}),
            "download_duration_seconds": 4,
        },
    )


ORDER_LOGS = 2300  # more than two import batches


def _api_logs(conn: sqlite3.Connection, legacy: Legacy) -> None:
    start = NOW - timedelta(days=2)
    for index in range(ORDER_LOGS):
        at = start + timedelta(seconds=37 * index, microseconds=index)
        request = {"symbol": ["RELIANCE", "INFY", "SBIN"][index % 3], "exchange": "NSE",
                   "quantity": index % 7 + 1}  # fmt: skip
        response = {"status": "success", "orderid": f"24112{index:07d}"}
        row = {
            "api_type": "placeorder" if index % 4 else "cancelorder",
            "request_data": json.dumps(request),
            "response_data": json.dumps(response),
            "created_at": sql_time(at, IST),
        }
        expected = {"api_type": row["api_type"], "request_data": request,
                    "response_data": response, "created_at": at}  # fmt: skip
        if index == 5:
            row["request_data"] = "{not json"
            expected["request_data"] = "{not json"
        if index == 7:
            row["created_at"] = None
            legacy.skip("order_logs", "created_at missing")
            expected = {}
        if index == 11:
            row["api_type"] = "place\x00order"
            legacy.skip("order_logs", "api_type")
            expected = {}
        _insert(conn, "order_logs", row)
        if expected:
            legacy.order_logs.append(expected)
    for index in range(30):
        at = start + timedelta(minutes=index)
        request = {"symbol": "NIFTY28NOV2424000CE", "exchange": "NFO"}
        _insert(
            conn,
            "analyzer_logs",
            {
                "api_type": "placeorder" if index % 3 else "placesmartorder",
                "request_data": json.dumps(request),
                "response_data": json.dumps({"status": "success", "mode": "analyze"}),
                "created_at": sql_time(at, IST),
            },
        )
        legacy.analyzer_logs.append({"created_at": at, "request_data": request})


TRAFFIC_LOGS = 1500


def _logs(conn: sqlite3.Connection, legacy: Legacy) -> None:
    start = NOW - timedelta(days=1)
    paths = ["/api/v1/placeorder", "/api/v1/quotes", "/dashboard", "/nope"]
    for index in range(TRAFFIC_LOGS):
        status = [200, 200, 201, 404, 500][index % 5]
        row = {
            "timestamp": sql_time(start + timedelta(seconds=20 * index)),
            "client_ip": f"198.51.100.{index % 50}",
            "method": "POST" if index % 2 else "GET",
            "path": paths[index % 4],
            "status_code": status,
            "duration_ms": round(1.5 + (index * 7.3) % 250, 3),
            "host": "algo.example.com",
            "error": "Not Found" if status == 404 else None,
            "user_id": None,
        }
        if index == 3:
            row["client_ip"] = "999.1.1.1"
            legacy.skip("traffic_logs", "client_ip")
        elif index == 4:
            row["duration_ms"] = -5.0
            legacy.skip("traffic_logs", "duration_ms")
        else:
            legacy.traffic.append(row)
        _insert(conn, "traffic_logs", row)
    bans = [
        ("203.0.113.50", "404 abuse", 1, NOW - timedelta(hours=1), NOW + timedelta(hours=23), 0,
         "404_detector"),
        ("203.0.113.51", "manual", 3, NOW - timedelta(days=5), None, 1, "manual"),
        ("203.0.113.52", "old", 1, NOW - timedelta(days=3), NOW - timedelta(days=2), 0, "system"),
        ("bogus", "x", 1, NOW, None, 1, "system"),
    ]  # fmt: skip
    for ip, reason, count, at, expires, permanent, by in bans:
        _insert(
            conn,
            "ip_bans",
            {
                "ip_address": ip,
                "ban_reason": reason,
                "ban_count": count,
                "banned_at": sql_time(at),
                "expires_at": sql_time(expires) if expires else None,
                "is_permanent": permanent,
                "created_by": by,
            },
        )
    legacy.skip("ip_bans", "ip_address")
    _insert(
        conn,
        "error_404_tracker",
        {
            "ip_address": "203.0.113.60",
            "error_count": 40,
            "first_error_at": sql_time(NOW - timedelta(minutes=30)),
            "last_error_at": sql_time(NOW - timedelta(minutes=1)),
            "paths_attempted": json.dumps(["/wp-admin", "/.env"]),
        },
    )
    _insert(
        conn,
        "invalid_api_key_tracker",
        {
            "ip_address": "203.0.113.61",
            "attempt_count": 25,
            "first_attempt_at": sql_time(NOW - timedelta(minutes=20)),
            "last_attempt_at": sql_time(NOW - timedelta(minutes=2)),
            "api_keys_tried": json.dumps(["0123456789abcdef", "fedcba9876543210"]),
        },
    )


def _latency(conn: sqlite3.Connection, legacy: Legacy) -> None:
    start = NOW - timedelta(hours=6)
    for index in range(60):
        row = {
            "timestamp": sql_time(start + timedelta(minutes=5 * index)),
            "order_id": f"ORD{index}",
            "user_id": None,
            "broker": "zerodha" if index % 3 else "angel",
            "symbol": "RELIANCE",
            "order_type": "PLACE",
            "rtt_ms": 40.0 + index,
            "validation_latency_ms": 1.25,
            "response_latency_ms": 2.5,
            "overhead_ms": 3.0 + index % 4,
            "total_latency_ms": 45.0 + index * 3.5,
            "request_body": None,
            "response_body": None,
            "status": "FAILED" if index % 10 == 0 else "SUCCESS",
            "error": "rejected" if index % 10 == 0 else None,
        }
        if index == 9:
            row["total_latency_ms"] = -3.0
            legacy.skip("order_latency", "total_latency_ms")
        else:
            legacy.latency_rows.append(row)
        _insert(conn, "order_latency", row)


def _file(path: Path, ddl: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path)
    conn.executescript(ddl)
    return conn


def build(directory: Path) -> Legacy:
    directory.mkdir(parents=True, exist_ok=True)
    legacy = Legacy(
        db=directory / "openalgo.db",
        logs=directory / "logs.db",
        latency=directory / "latency.db",
        env=directory / "openalgo.env",
    )
    legacy.env.write_text(f"API_KEY_PEPPER={PEPPER}\nFERNET_SALT={LEGACY_SALT}\n")
    with _file(legacy.db, OPENALGO_DDL) as conn:
        _users(conn, legacy)
        _api_keys(conn, legacy)
        _broker_tokens(conn, legacy)
        _sessions(conn, legacy)
        _settings(conn, legacy)
        _strategies(conn, legacy)
        _contract(conn, legacy)
        _api_logs(conn, legacy)
    with _file(legacy.logs, LOGS_DDL) as conn:
        _logs(conn, legacy)
    with _file(legacy.latency, LATENCY_DDL) as conn:
        _latency(conn, legacy)
    return legacy


def add_order_logs(legacy: Legacy, count: int) -> None:
    """Rows the install wrote after an import (a catch-up run picks them up)."""
    with sqlite3.connect(legacy.db) as conn:
        for index in range(count):
            at = NOW + timedelta(seconds=index)
            request = {"symbol": "TCS", "exchange": "NSE"}
            _insert(
                conn,
                "order_logs",
                {
                    "api_type": "modifyorder",
                    "request_data": json.dumps(request),
                    "response_data": "{}",
                    "created_at": sql_time(at, IST),
                },
            )
            legacy.order_logs.append(
                {
                    "api_type": "modifyorder",
                    "request_data": request,
                    "response_data": {},
                    "created_at": at,
                }
            )
