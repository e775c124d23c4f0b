"""Key rotation: secrets made under key A stay readable with A as *_PREVIOUS, hashes move to the
new pepper on their next successful check, and after `rotate-keys` an app without A reads all."""

from __future__ import annotations

import secrets

from passlib.hash import argon2
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service import rotate
from service.security import Keyring, Pepper
from tests.support import PEPPER, SALT, assert_problem

NEW_PEPPER = "rotated-pepper-" + "9" * 40
NEW_SALT = "ffeeddccbbaa99887766554433221100"
ROTATING = {
    "API_KEY_PEPPER": NEW_PEPPER,
    "FERNET_SALT": NEW_SALT,
    "API_KEY_PEPPER_PREVIOUS": PEPPER,
    "FERNET_SALT_PREVIOUS": SALT,
}
ROTATED = {"API_KEY_PEPPER": NEW_PEPPER, "FERNET_SALT": NEW_SALT}
VERIFY = "/api/v1/auth/api-keys/verify"
TOKENS = {
    "auth_token": "auth-" + secrets.token_hex(8),
    "feed_token": "feed-" + secrets.token_hex(8),
}


async def _one(db: AsyncEngine, query: str, **params: object) -> dict[str, object]:
    async with db.connect() as conn:
        return dict((await conn.execute(text(query), params)).one()._mapping)


async def _everything(client) -> dict[str, object]:
    """Every stored secret, read back through the secrets endpoints."""
    read = {}
    for user in ("alice", "bob"):
        read[f"{user} totp"] = (await client.get(f"/api/v1/users/{user}/totp")).json()["secret"]
        read[f"{user} key"] = (await client.get(f"/api/v1/auth/api-keys/{user}")).json()["api_key"]
    broker = (await client.get("/api/v1/auth/broker-tokens/alice/secret")).json()
    read["tokens"] = {"auth_token": broker["auth_token"], "feed_token": broker["feed_token"]}
    read["smtp"] = (await client.get("/api/v1/settings/smtp-password")).json()["password"]
    return read


async def test_rotation_keeps_every_secret(client_factory, settings_factory, db, capsys):
    # Under key A.
    old = await client_factory()
    passwords = {"alice": "alice-password-1", "bob": "bob-password-1"}
    for user, password in passwords.items():
        body = {"username": user, "email": f"{user}@example.com", "password": password}
        assert (await old.post("/api/v1/users", json=body)).status_code == 201
        assert (await old.put(f"/api/v1/auth/api-keys/{user}", json={})).status_code == 200
    await old.put("/api/v1/auth/broker-tokens/alice", json={**TOKENS, "broker": "zerodha"})
    await old.patch("/api/v1/settings", json={"smtp": {"password": "smtp-secret"}})
    before = await _everything(old)
    assert before["tokens"] == TOKENS and before["smtp"] == "smtp-secret"
    alice_hash = (await _one(db, "SELECT password_hash FROM users WHERE username = 'alice'"))[
        "password_hash"
    ]

    # New keys, A still held as previous: everything reads; hashes move on their next success.
    rotating = await client_factory(**ROTATING)
    assert await _everything(rotating) == before
    check = await rotating.post(
        "/api/v1/users/alice/verify-password", json={"password": passwords["alice"]}
    )
    assert check.json() == {"valid": True}
    rehashed = (await _one(db, "SELECT password_hash FROM users WHERE username = 'alice'"))[
        "password_hash"
    ]
    assert rehashed != alice_hash and argon2.verify(passwords["alice"] + NEW_PEPPER, rehashed)

    alice_key = before["alice key"]
    verified = await rotating.post(VERIFY, json={"api_key": alice_key})
    assert verified.json()["user_id"] == "alice"
    row = await _one(db, "SELECT key_digest, key_hash FROM api_keys WHERE user_id = 'alice'")
    assert row["key_digest"] == Pepper(NEW_PEPPER.encode()).digest(alice_key)
    assert argon2.verify(alice_key + NEW_PEPPER, row["key_hash"])
    bob_digest = await _one(db, "SELECT key_digest FROM api_keys WHERE user_id = 'bob'")
    assert bob_digest["key_digest"] == Pepper(PEPPER.encode()).digest(before["bob key"])

    # rotate-keys: every ciphertext re-encrypted, bob's unused key re-derived from its plaintext.
    counts = await rotate.rotate_keys(settings_factory(**ROTATING))
    assert counts == {
        "platform_settings.smtp_password_encrypted": 1,
        "users.totp_secret_encrypted": 2,
        "broker_tokens.auth_token_encrypted": 1,
        "broker_tokens.feed_token_encrypted": 1,
        "broker_tokens.refresh_token_encrypted": 0,
        "api_keys.key_encrypted": 2,
        "api_keys.key_digest": 1,
    }
    assert "users.totp_secret_encrypted: 2 re-encrypted" in capsys.readouterr().out
    again = await rotate.reencrypt_all(db, Keyring(settings_factory(**ROTATING)))
    assert set(again.values()) == {0}  # nothing left under the old key

    # Without A: everything still reads and both keys verify.
    rotated = await client_factory(**ROTATED)
    assert await _everything(rotated) == before
    for user in ("alice", "bob"):
        response = await rotated.post(VERIFY, json={"api_key": before[f"{user} key"]})
        assert response.status_code == 200 and response.json()["user_id"] == user
    check = await rotated.post(
        "/api/v1/users/alice/verify-password", json={"password": passwords["alice"]}
    )
    assert check.json() == {"valid": True}
    # A password is never stored in a form that can be re-derived: bob, who did not log in while
    # A was still held, needs a password reset (keep *_PREVIOUS set until users have logged in).
    check = await rotated.post(
        "/api/v1/users/bob/verify-password", json={"password": passwords["bob"]}
    )
    assert check.json() == {"valid": False}


async def test_secret_under_an_unknown_key_is_a_409_problem(client_factory, settings_factory, db):
    old = await client_factory()
    body = {"username": "alice", "email": "alice@example.com", "password": "alice-password-1"}
    await old.post("/api/v1/users", json=body)
    key = (await old.put("/api/v1/auth/api-keys/alice", json={})).json()["api_key"]
    await old.put("/api/v1/auth/broker-tokens/alice", json={**TOKENS, "broker": "zerodha"})
    await old.patch("/api/v1/settings", json={"smtp": {"password": "smtp-secret"}})

    # A redeploy with a new pepper and without the _PREVIOUS variables.
    lost = await client_factory(**ROTATED)
    for path in (
        "/api/v1/users/alice/totp",
        "/api/v1/auth/api-keys/alice",
        "/api/v1/auth/broker-tokens/alice/secret",
        "/api/v1/settings/smtp-password",
    ):
        problem = assert_problem(await lost.get(path), 409, "secret-unreadable")
        assert "_PREVIOUS" in problem["detail"]
    # The key's digest is under the old pepper too: to this instance it is an unknown key.
    assert_problem(await lost.post(VERIFY, json={"api_key": key}), 401, "api-key-unknown")
    # Storing fresh secrets still works: the way out is to log in again.
    put = await lost.put("/api/v1/auth/broker-tokens/alice", json={**TOKENS, "broker": "zerodha"})
    assert put.status_code == 200 and put.json()["changed"] is True
    secret = await lost.get("/api/v1/auth/broker-tokens/alice/secret")
    assert secret.json()["auth_token"] == TOKENS["auth_token"]

    # rotate-keys cannot rescue what no key held can read: it says so, and rotates the rest.
    counts = await rotate.reencrypt_all(db, Keyring(settings_factory(**ROTATED)))
    assert counts == {
        "platform_settings.smtp_password_encrypted": 0,
        "platform_settings.smtp_password_encrypted.unreadable": 1,
        "users.totp_secret_encrypted": 0,
        "users.totp_secret_encrypted.unreadable": 1,
        "broker_tokens.auth_token_encrypted": 0,  # stored again above, under the new key
        "broker_tokens.feed_token_encrypted": 0,
        "broker_tokens.refresh_token_encrypted": 0,
        "api_keys.key_encrypted": 0,
        "api_keys.key_encrypted.unreadable": 1,
        "api_keys.key_digest": 0,
        "api_keys.key_digest.unreadable": 1,
    }


def test_the_key_digest_is_hmac_sha256_of_the_pepper() -> None:
    """Stored digests must stay verifiable: the keyed-once digest is plain HMAC-SHA256."""
    import hmac

    pepper = Pepper(PEPPER.encode())
    for key in ("", "a", "k" * 64, "ключ"):
        expected = hmac.new(PEPPER.encode(), key.encode(), "sha256").hexdigest()
        assert pepper.digest(key) == expected == pepper.digest(key)
