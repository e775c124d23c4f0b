"""`python -m service import-legacy`: a legacy install (tests/legacy_fixture.py) imported into this
service, every answer checked through the HTTP API, on both backends."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy
import pytest
from sqlalchemy import func, select, text

from service.legacy.report import Report
from service.legacy.run import ImportAborted, Options, import_legacy
from service.models import Base
from service.models.auth import BrokerToken
from service.models.logs import OrderLog
from service.models.users import User
from service.repositories import logs as logs_repo
from tests import legacy_fixture
from tests.legacy_fixture import Legacy, build
from tests.support import PEPPER, SALT, SERVICE_TOKENS, eventually

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def legacy(tmp_path: Path) -> Legacy:
    return build(tmp_path / "install")


def options(legacy: Legacy, **overrides: Any) -> Options:
    values: dict[str, Any] = {
        "db": legacy.db,
        "logs": legacy.logs,
        "latency": legacy.latency,
        "legacy_env": legacy.env,
    }
    values.update(overrides)
    return Options(**values)


@pytest.fixture
def run(settings_factory, legacy):
    async def run(**overrides: Any) -> Report:
        return await import_legacy(settings_factory(), options(legacy, **overrides), io.StringIO())

    return run


@pytest.fixture
async def imported(run) -> Report:
    return await run()


async def snapshot(db) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, in primary-key order."""
    tables = {}
    async with db.connect() as conn:
        for table in Base.metadata.sorted_tables:
            query = select(table).order_by(*table.primary_key.columns)
            tables[table.name] = [tuple(row) for row in (await conn.execute(query)).all()]
    return tables


def counts(report: Report) -> dict[str, tuple[int, int, int]]:
    return {t.name: (t.imported, t.present, t.skipped_total) for t in report.tables}


class TestAccounts:
    async def test_passwords_verify_and_are_rehashed_on_login(self, imported, client, db):
        for username, password in legacy_passwords(imported).items():
            response = await client.post(
                f"/api/v1/users/{username}/verify-password", json={"password": password}
            )
            assert response.json() == {"valid": True}, username
        wrong = await client.post(
            "/api/v1/users/alice/verify-password", json={"password": "alice-password-2"}
        )
        assert wrong.json() == {"valid": False}
        async with db.connect() as conn:
            stored = await conn.scalar(select(User.password_hash).where(User.username == "alice"))
        # Re-hashed under this service's parameters (the legacy hash was m=1024,t=1).
        assert stored.startswith("$argon2") and "m=1024,t=1" not in stored

    async def test_users_and_their_totp_secrets(self, imported, client, legacy):
        listed = (await client.get("/api/v1/users")).json()["items"]
        assert {u["username"] for u in listed} == {"alice", "bob", "carol", "dave"}
        alice = (await client.get("/api/v1/users/alice")).json()
        assert alice["email"] == "alice@example.com"
        assert (alice["is_admin"], alice["totp_enabled"], alice["totp_required_for_login"]) == (
            True,
            True,
            True,
        )
        assert (await client.get("/api/v1/users/bob")).json()["totp_required_for_mcp"] is True
        for username in ("alice", "bob", "carol"):  # encrypted, plaintext, static salt
            body = (await client.get(f"/api/v1/users/{username}/totp")).json()
            assert body["secret"] == legacy.totp[username], username
        dave = (await client.get("/api/v1/users/dave/totp")).json()["secret"]
        assert dave != "ONSWG4TFORZW63TF" and len(dave) == 32

    async def test_api_keys_verify_with_their_broker_tokens(self, imported, client, legacy):
        alice = await client.post(
            "/api/v1/auth/api-keys/verify",
            json={
                "api_key": legacy.api_keys["alice"],
                "include_auth": True,
                "include_feed_token": True,
            },
        )
        assert alice.status_code == 200, alice.text
        assert alice.json() == {
            "user_id": "alice",
            "order_mode": "semi_auto",
            "broker": "zerodha",
            "broker_token": "active",
            "auth_token": "alice-broker-token",
            "feed_token": "alice-feed-token",
        }
        carol = await client.post(
            "/api/v1/auth/api-keys/verify",
            json={"api_key": legacy.api_keys["carol"], "include_auth": True},
        )
        assert (carol.json()["broker"], carol.json()["auth_token"]) == (
            "angel",
            "carol-broker-token",
        )
        bob = await client.post(
            "/api/v1/auth/api-keys/verify", json={"api_key": legacy.api_keys["bob"]}
        )
        assert (bob.json()["order_mode"], bob.json()["broker_token"]) == ("auto", "revoked")
        for unreadable in ("d" * 64, "e" * 64):
            response = await client.post(
                "/api/v1/auth/api-keys/verify", json={"api_key": unreadable}
            )
            assert response.status_code == 401
        for username, key in legacy.api_keys.items():
            body = (await client.get(f"/api/v1/auth/api-keys/{username}")).json()
            assert body["api_key"] == key

    async def test_broker_token_secrets(self, imported, client, db):
        secret = (await client.get("/api/v1/auth/broker-tokens/alice/secret")).json()
        assert (secret["auth_token"], secret["feed_token"], secret["user_id"]) == (
            "alice-broker-token",
            "alice-feed-token",
            "AB1234",
        )
        assert (await client.get("/api/v1/auth/broker-tokens/bob/secret")).status_code == 404
        assert (await client.get("/api/v1/auth/broker-tokens/bob")).json()["revoked"] is True
        assert (await client.get("/api/v1/auth/broker-tokens/dave")).status_code == 404
        async with db.connect() as conn:
            stored = (await conn.execute(select(BrokerToken.auth_token_encrypted))).scalars()
            assert not any(v and "broker-token" in v for v in stored)

    async def test_sessions_and_login_attempts(self, imported, client):
        bob = (await client.get("/api/v1/auth/sessions", params={"username": "bob"})).json()
        [session] = bob["items"]
        assert session["ip_address"] == "198.51.100.8"  # ::ffff:198.51.100.8, normalised
        login = legacy_fixture.NOW - legacy_fixture.timedelta(hours=2)
        assert datetime.fromisoformat(session["created_at"]) == login
        attempts = (await client.get("/api/v1/auth/login-attempts")).json()["items"]
        assert [a["status"] for a in attempts] == ["success", "failed", "resumed", "failed"]
        assert datetime.fromisoformat(attempts[0]["created_at"]) == legacy_fixture.NOW

    async def test_settings_and_smtp_password(self, imported, client, legacy):
        settings = (await client.get("/api/v1/settings")).json()
        assert settings["analyze_mode"] is True
        assert settings["smtp"] == {
            "server": "smtp.example.com",
            "port": 587,
            "username": "mailer@example.com",
            "use_tls": True,
            "from_email": "alerts@example.com",
            "helo_hostname": "algo.example.com",
            "password_set": True,
        }
        assert settings["security"] == {
            "auto_ban_enabled": True,
            "threshold_404": 60,
            "ban_duration_404_h": 24,
            "threshold_invalid_api_key": 30,
            "ban_duration_invalid_api_key_h": 0,
            "repeat_offender_limit": 3,
        }
        password = (await client.get("/api/v1/settings/smtp-password")).json()
        assert password == {"password": legacy.smtp_password}


def legacy_passwords(_report: Report) -> dict[str, str]:
    return {
        "alice": "alice-password-1",
        "bob": "bob-password-22",
        "carol": "carol-password-333",
        "dave": "dave-password-4444",
    }


class TestStrategies:
    async def test_strategies_with_their_symbols(self, imported, client, legacy):
        for hook, expected in legacy.strategies.items():
            body = (await client.get(f"/api/v1/strategies/by-webhook/{hook}")).json()
            symbols = {
                (s["symbol"], s["exchange"], s["quantity"], s["product_type"])
                for s in body.pop("symbols")
            }
            assert symbols == expected["symbols"]
            for field in ("name", "platform", "trading_mode", "is_intraday", "start_time"):
                assert body[field] == expected[field], field
            assert body["squareoff_time"] == expected["squareoff_time"]
        broken = "33333333-3333-4333-8333-333333333333"
        assert (await client.get(f"/api/v1/strategies/by-webhook/{broken}")).status_code == 404

    async def test_chartink_strategies(self, imported, client, legacy):
        [(hook, expected)] = legacy.chartink.items()
        body = (await client.get(f"/api/v1/chartink/strategies/by-webhook/{hook}")).json()
        assert (body["name"], body["is_active"], body["start_time"]) == (
            expected["name"],
            expected["is_active"],
            expected["start_time"],
        )
        symbols = {
            (s["chartink_symbol"], s["exchange"], s["quantity"], s["product_type"])
            for s in body["symbols"]
        }
        assert symbols == expected["symbols"]


class TestContract:
    async def test_lookups_serve_the_imported_contract(self, imported, client, legacy):
        first = await client.get(
            "/api/v1/tokens/lookup", params={"symbol": "RELIANCE", "exchange": "NSE"}
        )
        assert first.json()["token"] == "1000"  # the first of two rows, not the repeat
        for (symbol, exchange), row in legacy.symbols.items():
            found = await client.get(
                "/api/v1/tokens/lookup", params={"token": row["token"], "exchange": exchange}
            )
            assert found.json()["symbol"] == symbol
        missing = await client.get(
            "/api/v1/tokens/lookup", params={"symbol": "NOTOKEN", "exchange": "NSE"}
        )
        assert missing.status_code == 404
        stats = (await client.get("/api/v1/symbols/stats")).json()
        assert (stats["rows"], stats["exchanges"]) == (12, {"CRYPTO": 1, "NFO": 6, "NSE": 5})
        status = (await client.get("/api/v1/symbols/status/zerodha")).json()
        assert (status["status"], status["total_symbols"]) == ("success", 12)

    async def test_a_contract_held_already_is_kept(self, run, client):
        csv = "symbol,brsymbol,name,exchange,brexchange,token,expiry,strike,lotsize,instrumenttype,tick_size\n"
        csv += "ABC,ABC-EQ,ABC,NSE,NSE,1,,,1,EQ,0.05\n"
        loaded = await client.put(
            "/api/v1/symbols", content=csv, headers={"content-type": "text/csv"}
        )
        assert loaded.status_code == 200
        report = await run()
        [table] = [t for t in report.tables if t.name == "openalgo.symtoken"]
        assert (table.imported, table.present) == (0, 15)
        assert (await client.get("/api/v1/symbols/stats")).json()["rows"] == 1


class TestLogs:
    async def test_order_logs_page_the_same(self, imported, client, legacy):
        items, cursor = [], None
        while True:
            params: dict[str, Any] = {"limit": 1000}
            if cursor:
                params["cursor"] = cursor
            page = (await client.get("/api/v1/order-logs", params=params)).json()
            items += page["items"]
            cursor = page["next_cursor"]
            if not cursor:
                break
        expected = sorted(legacy.order_logs, key=lambda row: row["created_at"], reverse=True)
        assert len(items) == len(expected) == legacy_fixture.ORDER_LOGS - 2
        for got, want in zip(items, expected, strict=True):
            assert datetime.fromisoformat(got["created_at"]) == want["created_at"]
            assert (got["api_type"], got["request_data"], got["response_data"]) == (
                want["api_type"],
                want["request_data"],
                want["response_data"],
            )

    async def test_order_and_analyzer_logs_aggregate_the_same(self, imported, client, legacy):
        stats = (await client.get("/api/v1/order-logs/stats")).json()
        rows = legacy.order_logs
        assert stats["total"] == len(rows)
        assert stats["by_api_type"] == dict(Counter(r["api_type"] for r in rows))
        symbols = Counter(
            r["request_data"]["symbol"] for r in rows if isinstance(r["request_data"], dict)
        )
        assert stats["by_symbol"] == dict(symbols)
        analyzer = (await client.get("/api/v1/analyzer-logs/stats")).json()
        assert (analyzer["total"], analyzer["by_exchange"]) == (30, {"NFO": 30})

    async def test_traffic_pages_and_aggregates_the_same(self, imported, client, legacy):
        rows = legacy.traffic
        stats = (await client.get("/api/v1/traffic/stats")).json()
        durations = [r["duration_ms"] for r in rows]
        assert stats["total_requests"] == len(rows)
        assert stats["error_requests"] == sum(r["status_code"] >= 400 for r in rows)
        assert stats["avg_duration_ms"] == pytest.approx(numpy.mean(durations))
        assert stats["p95_duration_ms"] == pytest.approx(numpy.percentile(durations, 95))
        newest = (await client.get("/api/v1/traffic/logs", params={"limit": 1})).json()
        [item] = newest["items"]
        assert (item["client_ip"], item["path"]) == (rows[-1]["client_ip"], rows[-1]["path"])
        when = datetime.fromisoformat(rows[-1]["timestamp"]).replace(tzinfo=UTC)
        assert datetime.fromisoformat(item["timestamp"]) == when

    async def test_latency_aggregates_the_same(self, imported, client, legacy):
        rows = legacy.latency_rows
        stats = (await client.get("/api/v1/latency/stats")).json()
        totals = [r["total_latency_ms"] for r in rows]
        overall = stats["overall"]
        assert overall["count"] == len(rows)
        assert overall["avg_total_ms"] == pytest.approx(numpy.mean(totals))
        assert overall["p90_total_ms"] == pytest.approx(numpy.percentile(totals, 90))
        failed = sum(r["status"] == "FAILED" for r in rows)
        assert overall["success_rate"] == pytest.approx((len(rows) - failed) * 100 / len(rows))
        angel = [r["total_latency_ms"] for r in rows if r["broker"] == "angel"]
        assert stats["by_broker"]["angel"]["count"] == len(angel)
        assert stats["by_broker"]["angel"]["p50_total_ms"] == pytest.approx(
            numpy.percentile(angel, 50)
        )

    async def test_bans_and_offence_counters(self, imported, client):
        active = (await client.get("/api/v1/traffic/bans")).json()["items"]
        assert {b["ip_address"] for b in active} == {"203.0.113.50", "203.0.113.51"}
        every = (await client.get("/api/v1/traffic/bans", params={"all": "true"})).json()
        assert len(every["items"]) == 3
        status = (await client.get("/api/v1/traffic/bans/203.0.113.51")).json()
        assert status["banned"] is True and status["ban"]["ban_count"] == 3
        suspicious = (await client.get("/api/v1/traffic/suspicious")).json()
        [by_404] = suspicious["ips_404"]
        assert (by_404["ip_address"], by_404["count"], by_404["last_detail"]) == (
            "203.0.113.60",
            40,
            "/.env",
        )
        [by_key] = suspicious["ips_invalid_api_key"]
        assert (by_key["count"], by_key["last_detail"]) == (25, "fedcba9876543210")


class TestReport:
    async def test_counts_and_reasons_per_table(self, imported, legacy):
        assert counts(imported) == {
            "openalgo.settings": (1, 0, 0),
            "openalgo.users": (4, 0, 2),
            "openalgo.api_keys": (3, 0, 2),
            "openalgo.auth": (3, 0, 1),
            "openalgo.active_sessions": (2, 0, 1),
            "openalgo.login_attempts": (4, 0, 1),
            "openalgo.strategies": (2, 0, 1),
            "openalgo.strategy_symbol_mappings": (3, 0, 4),
            "openalgo.chartink_strategies": (1, 0, 0),
            "openalgo.chartink_symbol_mappings": (1, 0, 1),
            "openalgo.symtoken": (12, 0, 3),
            "openalgo.master_contract_status": (1, 0, 0),
            "openalgo.order_logs": (legacy_fixture.ORDER_LOGS - 2, 0, 2),
            "openalgo.analyzer_logs": (30, 0, 0),
            "logs.traffic_logs": (legacy_fixture.TRAFFIC_LOGS - 2, 0, 2),
            "logs.ip_bans": (3, 0, 1),
            "logs.error_404_tracker": (1, 0, 0),
            "logs.invalid_api_key_tracker": (1, 0, 0),
            "latency.order_latency": (59, 0, 1),
        }
        tables = {t.name: t for t in imported.tables}
        for table, reasons in legacy.skipped.items():
            report = next(t for name, t in tables.items() if name.endswith(f".{table}"))
            for reason, count in reasons.items():
                found = sum(n for text_, n in report.skipped.items() if reason in text_)
                assert found == count, (table, reason, report.skipped)
        # The row under another install's key: reported with its legacy id, never stored.
        undecryptable = "api_key_encrypted undecryptable under the legacy keys"
        assert tables["openalgo.api_keys"].examples[undecryptable] == [4]
        assert tables["openalgo.users"].notes == {
            "TOTP secret was stored in plaintext: now encrypted": 1,
            "TOTP secret undecryptable: replaced by a new one (re-enrol the app)": 1,
        }
        assert imported.columns_not_imported == [
            "openalgo.auth.secret_api_key: 1 rows",
            "openalgo.auth.primary_ip: 1 rows",
            "openalgo.symtoken.contract_value: 1 rows",
            "logs.error_404_tracker.paths_attempted: 1 rows (their latest entry only is kept)",
            "logs.invalid_api_key_tracker.api_keys_tried: 1 rows (their latest entry only is kept)",
        ]
        assert any("static salt" in w for w in imported.warnings)
        rendered = imported.render()
        assert "openalgo.api_keys" in rendered and "legacy id 4" in rendered


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class TestProgress:
    async def test_a_bar_per_table_on_a_terminal(self, settings_factory, legacy):
        out = _Terminal()
        await import_legacy(settings_factory(), options(legacy, dry_run=True), out)
        written = out.getvalue()
        assert "\rlogs.traffic_logs" in written
        assert f"[{'#' * 30}] 1500/1500" in written

    async def test_plain_lines_otherwise(self, settings_factory, legacy):
        out = io.StringIO()
        await import_legacy(settings_factory(), options(legacy, dry_run=True), out)
        assert "logs.traffic_logs: 1500/1500 rows\n" in out.getvalue()
        assert "\r" not in out.getvalue()


class TestIdempotence:
    async def test_a_second_run_changes_nothing(self, run, db):
        first = await run()
        before = await snapshot(db)
        second = await run()
        assert await snapshot(db) == before
        assert all(t.imported == 0 for t in second.tables)
        assert {t.name: t.present + t.earlier for t in second.tables if t.imported == 0} == {
            name: imported for name, (imported, _, _) in counts(first).items()
        } | {"openalgo.symtoken": 15}

    async def test_a_dry_run_writes_nothing_and_counts_as_a_run_would(self, run, db):
        before = await snapshot(db)
        dry = await run(dry_run=True)
        assert await snapshot(db) == before
        assert dry.dry_run and "would import" in dry.render()
        real = await run()
        assert counts(dry) == counts(real)

    async def test_an_interrupted_import_resumes_without_duplicates(
        self, run, db, legacy, monkeypatch
    ):
        insert_rows = logs_repo.insert_rows
        calls = Counter[str]()

        async def failing(session, table, rows):
            calls[table.name] += 1
            await insert_rows(session, table, rows)
            if table.name == "order_logs" and calls[table.name] == 2:
                raise ConnectionResetError("interrupted after writing, before the commit")

        monkeypatch.setattr(logs_repo, "insert_rows", failing)
        with pytest.raises(ConnectionResetError):
            await run()
        async with db.connect() as conn:
            # The first batch (1000 legacy rows, 2 of them skipped) was committed with its mark.
            assert await conn.scalar(select(func.count()).select_from(OrderLog)) == 998
        monkeypatch.setattr(logs_repo, "insert_rows", insert_rows)
        resumed = await run()
        [table] = [t for t in resumed.tables if t.name == "openalgo.order_logs"]
        assert (table.earlier, table.imported) == (998, legacy_fixture.ORDER_LOGS - 1000)
        legacy_fixture.add_order_logs(legacy, 5)  # the install kept running: a catch-up run
        caught_up = await run()
        [table] = [t for t in caught_up.tables if t.name == "openalgo.order_logs"]
        assert table.imported == 5
        async with db.connect() as conn:
            times = (await conn.execute(select(OrderLog.created_at))).scalars().all()
        assert len(times) == len(set(times)) == len(legacy.order_logs)


class TestKeys:
    async def test_a_wrong_pepper_aborts_before_writing(self, run, db, legacy, monkeypatch):
        monkeypatch.setenv("LEGACY_API_KEY_PEPPER", legacy_fixture.OTHER_PEPPER + "x")
        before = await snapshot(db)
        with pytest.raises(ImportAborted, match="LEGACY_API_KEY_PEPPER"):
            await run()
        assert await snapshot(db) == before

    async def test_the_service_keys_are_tried_without_a_legacy_env(self, settings_factory, legacy):
        # The install's salt is not this service's: only the static-salt rows open.
        report = await import_legacy(
            settings_factory(), options(legacy, legacy_env=None, dry_run=True), io.StringIO()
        )
        keys = {t.name: t for t in report.tables}["openalgo.api_keys"]
        assert (keys.imported, keys.skipped_total) == (1, 4)


@pytest.mark.postgres_only
class TestRunningInstances:
    async def test_an_instance_serves_the_imported_data_at_once(self, client, run, legacy):
        key = {"api_key": legacy.api_keys["carol"]}
        assert (await client.post("/api/v1/auth/api-keys/verify", json=key)).status_code == 401
        ban = "/api/v1/traffic/bans/203.0.113.50"
        assert (await client.get(ban)).json()["banned"] is False
        hook = "/api/v1/strategies/by-webhook/11111111-1111-4111-8111-111111111111"
        assert (await client.get(hook)).status_code == 404
        lookup = {"symbol": "INFY", "exchange": "NSE"}
        assert (await client.get("/api/v1/tokens/lookup", params=lookup)).status_code == 404
        await run()

        async def serves() -> bool:
            verified = await client.post("/api/v1/auth/api-keys/verify", json=key)
            banned = (await client.get(ban)).json()["banned"]
            found = await client.get("/api/v1/tokens/lookup", params=lookup)
            return verified.status_code == 200 and banned and found.status_code == 200

        assert await eventually(serves)
        assert (await client.get(hook)).status_code == 200


def _command(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "service", "import-legacy", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


class TestCommand:
    async def test_the_command_line(self, database_url, legacy, db):
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "API_KEY_PEPPER": PEPPER,
            "FERNET_SALT": SALT,
            "SERVICE_TOKENS": SERVICE_TOKENS,
            "PYTHONPATH": str(ROOT),
        }
        args = ["--db", str(legacy.db), "--latency", str(legacy.latency)]
        args += ["--legacy-env", str(legacy.env)]
        dry = _command([*args, "--dry-run"], env)
        assert dry.returncode == 0, dry.stderr
        assert "would import 59" in dry.stdout
        done = _command(args, env)
        assert done.returncode == 0, done.stderr
        assert "imported 4, skipped 2" in done.stdout
        async with db.connect() as conn:
            assert await conn.scalar(text("SELECT count(*) FROM order_latency")) == 59
            assert await conn.scalar(text("SELECT count(*) FROM traffic_logs")) == 0
        missing = _command(["--db", "/nonexistent.db"], env)
        assert missing.returncode == 1 and "no such file" in missing.stderr
