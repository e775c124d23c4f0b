"""Every kind of secret, created through the API, is absent in plaintext from the database bytes
(SQLite file and WAL; pg_dump on PostgreSQL) and from the logs (DEBUG, SQL included)."""

from __future__ import annotations

import asyncio
import logging
import secrets
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from service import security, totp
from service.security import Keyring, SecretUnreadable
from tests.support import BACKEND

USERNAME = "alice-at-rest"  # not a secret: it must be found, or the search proves nothing
BROKER = "broker-at-rest"


async def _database_bytes(database_url: str) -> bytes:
    url = make_url(database_url)
    if BACKEND == "sqlite":
        path = Path(url.database or "")
        files = [path, path.with_name(path.name + "-wal")]
        return b"".join(f.read_bytes() for f in files if f.exists())
    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    process = await asyncio.create_subprocess_exec(
        "pg_dump", "--no-owner", dsn, stdout=asyncio.subprocess.PIPE
    )
    dump, _ = await process.communicate()
    assert process.returncode == 0
    return dump


def _logged(caplog: pytest.LogCaptureFixture) -> str:
    """What the logs say, with every record's arguments and extra fields."""
    return caplog.text + "".join(repr(record.__dict__) for record in caplog.records)


async def test_no_plaintext_secret_in_the_database_or_the_logs(client, database_url, caplog):
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="sqlalchemy")
    password = "first-password-" + secrets.token_hex(8)
    new_password = "second-password-" + secrets.token_hex(8)
    auth_token = "auth-token-" + secrets.token_hex(8)
    feed_token = "feed-token-" + secrets.token_hex(8)
    smtp_password = "smtp-password-" + secrets.token_hex(8)

    user = {"username": USERNAME, "email": "alice@example.com", "password": password}
    assert (await client.post("/api/v1/users", json=user)).status_code == 201
    url = f"/api/v1/users/{USERNAME}"
    assert (await client.post(url + "/verify-password", json={"password": password})).json() == {
        "valid": True
    }
    assert (await client.put(url + "/password", json={"password": new_password})).status_code == 204
    totp_secret = (await client.get(url + "/totp")).json()["secret"]
    code = totp.code_at(totp_secret, totp.current_step())
    assert (await client.post(url + "/totp/verify", json={"code": code})).status_code == 200

    api_key = (await client.put(f"/api/v1/auth/api-keys/{USERNAME}", json={})).json()["api_key"]
    broker_token = {"auth_token": auth_token, "feed_token": feed_token, "broker": BROKER}
    put = await client.put(f"/api/v1/auth/broker-tokens/{USERNAME}", json=broker_token)
    assert put.status_code == 200
    verified = await client.post(
        "/api/v1/auth/api-keys/verify",
        json={"api_key": api_key, "include_auth": True, "include_feed_token": True},
    )
    assert verified.json()["auth_token"] == auth_token  # the secrets did travel through here
    assert (await client.get(f"/api/v1/auth/broker-tokens/{USERNAME}/secret")).status_code == 200
    assert (await client.get(f"/api/v1/auth/api-keys/{USERNAME}")).json()["api_key"] == api_key
    settings = {"smtp": {"password": smtp_password, "server": "smtp.example.com"}}
    assert (await client.patch("/api/v1/settings", json=settings)).status_code == 200
    assert (await client.get("/api/v1/settings/smtp-password")).json() == {
        "password": smtp_password
    }

    stored = await _database_bytes(database_url)
    logged = _logged(caplog)
    assert USERNAME.encode() in stored and BROKER.encode() in stored
    assert USERNAME in logged  # the SQL log is on: parameters are in it
    plaintexts = {
        "password": password,
        "new password": new_password,
        "API key": api_key,
        "broker auth token": auth_token,
        "broker feed token": feed_token,
        "TOTP secret": totp_secret,
        "SMTP password": smtp_password,
    }
    for what, plaintext in plaintexts.items():
        assert plaintext.encode() not in stored, f"{what} stored in plaintext"
        assert plaintext not in logged, f"{what} logged"


async def test_key_material_that_cannot_be_made_fails_the_start(client_factory, monkeypatch):
    """The Fernet key is derived on a thread while the index builds; if that fails, the app does
    not start (as when it was derived before serving), rather than answering 500s later."""
    from service import security

    def broken(*_: object) -> bytes:
        raise RuntimeError("no KDF here")

    monkeypatch.setattr(security, "_derive_fernet_key", broken)
    with pytest.raises(RuntimeError, match="no KDF here"):
        await client_factory(API_KEY_PEPPER=secrets.token_urlsafe(48))


def test_a_secret_read_often_is_remembered_sealed_never_in_plaintext(settings_factory):
    keyring = Keyring(settings_factory())
    token = "broker-token-" + secrets.token_hex(16)
    ciphertext = keyring.encrypt(token)

    assert keyring.decrypt_often(ciphertext) == token
    assert keyring.decrypt_often(ciphertext) == token  # from the sealed copy
    [sealed] = keyring._sealed.values()
    assert token.encode() not in sealed

    # A changed secret is a new ciphertext: read as itself, with no invalidation.
    changed = keyring.encrypt(token + "-new")
    assert keyring.decrypt_often(changed) == token + "-new"
    assert keyring.decrypt_often(ciphertext) == token


def test_an_unreadable_secret_read_often_fails_as_decrypt_does(settings_factory):
    keyring = Keyring(settings_factory())
    other = Keyring(settings_factory(API_KEY_PEPPER="another-pepper-" + "x" * 40))
    foreign = other.encrypt("not ours")
    with pytest.raises(SecretUnreadable):
        keyring.decrypt_often(foreign)
    assert keyring._sealed == {}


def test_the_sealed_secrets_are_bounded(settings_factory, monkeypatch):
    monkeypatch.setattr(security, "_SEALED_MAX", 3)
    keyring = Keyring(settings_factory())
    ciphertexts = [keyring.encrypt(f"token-{n}") for n in range(5)]
    assert [keyring.decrypt_often(c) for c in ciphertexts] == [f"token-{n}" for n in range(5)]
    assert list(keyring._sealed) == ciphertexts[2:]  # the oldest went first
