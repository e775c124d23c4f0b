"""users: accounts, passwords (argon2 + pepper), TOTP (RFC 6238) and what deleting a user takes."""

from __future__ import annotations

import base64
import types

import pytest
from passlib.hash import argon2
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service import totp
from tests.support import PEPPER, RO_TOKEN, RW_TOKEN, assert_problem, auth

ALICE = {"username": "alice", "email": "alice@example.com", "password": "correct horse 1"}


async def _rows(db: AsyncEngine, table: str = "users") -> list[dict[str, object]]:
    async with db.connect() as conn:
        result = await conn.execute(text(f"SELECT * FROM {table} ORDER BY id"))
        return [dict(r._mapping) for r in result]


async def _create(client, **fields) -> dict[str, object]:
    response = await client.post("/api/v1/users", json={**ALICE, **fields})
    assert response.status_code == 201, response.text
    return response.json()


def _freeze(monkeypatch: pytest.MonkeyPatch, at: float) -> None:
    """Fix the clock the TOTP module reads (and only that one)."""
    monkeypatch.setattr(totp, "time", types.SimpleNamespace(time=lambda: at))


class TestTotpAlgorithm:
    # RFC 6238 appendix B (SHA-1 key "12345678901234567890"), last six digits.
    @pytest.mark.parametrize(
        "unix_time, code",
        [
            (59, "287082"),
            (1111111109, "081804"),
            (1111111111, "050471"),
            (1234567890, "005924"),
            (2000000000, "279037"),
            (20000000000, "353130"),
        ],
    )
    def test_rfc_6238_vectors(self, unix_time, code):
        secret = base64.b32encode(b"12345678901234567890").decode()
        assert totp.code_at(secret, totp.current_step(unix_time)) == code
        assert totp.matching_step(secret, code, now=unix_time) == unix_time // 30

    def test_one_step_either_side_and_no_further(self):
        secret = totp.new_secret()
        now = 1_700_000_000.0
        step = totp.current_step(now)
        for offset in (-1, 0, 1):
            assert totp.matching_step(secret, totp.code_at(secret, step + offset), now=now) == (
                step + offset
            )
        for offset in (-2, 2):
            assert totp.matching_step(secret, totp.code_at(secret, step + offset), now=now) is None

    def test_new_secrets_are_160_bit_base32(self):
        secret = totp.new_secret()
        assert len(base64.b32decode(secret)) == 20
        assert secret != totp.new_secret()


class TestCreateUser:
    async def test_created_with_hashed_password_and_encrypted_totp_secret(self, client, db):
        response = await client.post("/api/v1/users", json={**ALICE, "email": "Alice@Example.COM"})
        assert response.status_code == 201
        body = response.json()
        assert body == {
            "id": body["id"],
            "username": "alice",
            "email": "alice@example.com",
            "is_admin": False,
            "totp_enabled": False,
            "totp_required_for_login": False,
            "totp_required_for_mcp": False,
            "totp_required_for_password_reset": False,
            "first_name": None,
            "last_name": None,
            "created_at": body["created_at"],
            "updated_at": body["updated_at"],
        }
        [row] = await _rows(db)
        assert row["password_hash"].startswith("$argon2id$")
        assert argon2.verify(ALICE["password"] + PEPPER, row["password_hash"])
        assert ALICE["password"] not in row["password_hash"]
        assert row["totp_secret_encrypted"].startswith("gAAAAA")  # a Fernet token
        assert row["totp_last_step"] is None

    async def test_admin_flag(self, client):
        assert (await _create(client, is_admin=True))["is_admin"] is True

    async def test_duplicate_username_is_409_and_writes_nothing(self, client, db):
        await _create(client)
        response = await client.post("/api/v1/users", json={**ALICE, "email": "other@example.com"})
        assert "username" in assert_problem(response, 409, "conflict")["detail"]
        assert len(await _rows(db)) == 1

    async def test_duplicate_email_in_another_case_is_409(self, client, db):
        await _create(client)
        response = await client.post(
            "/api/v1/users", json={**ALICE, "username": "alice2", "email": "ALICE@example.com"}
        )
        assert "email" in assert_problem(response, 409, "conflict")["detail"]
        assert len(await _rows(db)) == 1

    @pytest.mark.parametrize(
        "fields, where",
        [
            ({"password": "short7!"}, "password"),
            ({"password": "x" * 1025}, "password"),
            ({"email": "not-an-email"}, "email"),
            ({"email": "a" * 250 + "@example.com"}, "email"),
            ({"username": "al"}, "username"),
            ({"username": "a" * 81}, "username"),
            ({"username": "alice smith"}, "username"),
            ({"username": "alice/../x"}, "username"),
            ({"is_admin": "maybe"}, "is_admin"),
            ({"role": "admin"}, "role"),
        ],
    )
    async def test_bad_input_is_422_and_writes_nothing(self, client, db, fields, where):
        response = await client.post("/api/v1/users", json={**ALICE, **fields})
        problem = assert_problem(response, 422, "validation")
        assert problem["errors"][0]["loc"] == ["body", where]
        assert "password" not in fields or fields["password"] not in response.text
        assert await _rows(db) == []

    async def test_missing_password_is_422(self, client, db):
        response = await client.post("/api/v1/users", json={"username": "bob", "email": "b@x.io"})
        assert_problem(response, 422, "validation")
        assert await _rows(db) == []

    async def test_read_only_token_is_403(self, client, db):
        response = await client.post("/api/v1/users", json=ALICE, headers=auth(RO_TOKEN))
        assert_problem(response, 403, "forbidden")
        assert await _rows(db) == []


class TestListUsers:
    async def test_filters_by_admin_and_email(self, client, db):
        # Rows arranged directly: three argon2 hashes would only slow the test down.
        async with db.begin() as conn:
            for name, admin in (("carol", True), ("bob", False), ("dave", True)):
                await conn.execute(
                    text(
                        "INSERT INTO users (username, email, password_hash, is_admin, "
                        "totp_secret_encrypted, totp_enabled, totp_required_for_login, "
                        "totp_required_for_mcp, totp_required_for_password_reset, updated_at, "
                        "created_at) VALUES (:u, :e, 'x', :a, 'x', false, false, false, false, "
                        "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                    ),
                    {"u": name, "e": f"{name}@example.com", "a": admin},
                )
        everyone = (await client.get("/api/v1/users")).json()["items"]
        assert [u["username"] for u in everyone] == ["bob", "carol", "dave"]
        admins = (await client.get("/api/v1/users", params={"is_admin": "true"})).json()["items"]
        assert [u["username"] for u in admins] == ["carol", "dave"]
        others = (await client.get("/api/v1/users", params={"is_admin": "false"})).json()["items"]
        assert [u["username"] for u in others] == ["bob"]
        by_email = await client.get("/api/v1/users", params={"email": "Dave@Example.com"})
        assert [u["username"] for u in by_email.json()["items"]] == ["dave"]
        assert all("password_hash" not in u and "totp_secret" not in str(u) for u in everyone)

    async def test_empty(self, client):
        response = await client.get("/api/v1/users")
        assert response.status_code == 200
        assert response.json() == {"items": []}


class TestGetUser:
    async def test_found(self, client):
        created = await _create(client)
        response = await client.get("/api/v1/users/alice")
        assert response.status_code == 200
        assert response.json() == created

    async def test_unknown_is_404(self, client):
        assert_problem(await client.get("/api/v1/users/nobody"), 404, "not-found")


class TestUpdateUser:
    async def test_patch_changes_only_given_fields(self, client, db):
        await _create(client)
        response = await client.patch(
            "/api/v1/users/alice",
            json={"totp_enabled": True, "totp_required_for_login": True, "email": "New@X.io"},
        )
        assert response.status_code == 200
        body = response.json()
        assert body["totp_enabled"] is True
        assert body["totp_required_for_login"] is True
        assert body["totp_required_for_mcp"] is False
        assert body["email"] == "new@x.io"
        assert body["is_admin"] is False
        [row] = await _rows(db)
        assert (row["email"], row["totp_enabled"], row["totp_required_for_mcp"]) == (
            "new@x.io",
            True,
            False,
        )
        again = await client.patch("/api/v1/users/alice", json={"is_admin": True})
        assert again.json()["is_admin"] is True and again.json()["totp_enabled"] is True

    async def test_email_of_another_user_is_409(self, client, db):
        await _create(client)
        await _create(client, username="bob", email="bob@example.com")
        response = await client.patch("/api/v1/users/bob", json={"email": "alice@example.com"})
        assert_problem(response, 409, "conflict")
        assert [r["email"] for r in await _rows(db)] == ["alice@example.com", "bob@example.com"]

    @pytest.mark.parametrize(
        "body",
        [{"is_admin": None}, {"email": "nope"}, {"username": "renamed"}, {"totp_enabled": "maybe"}],
    )
    async def test_bad_input_is_422_and_writes_nothing(self, client, db, body):
        await _create(client)
        before = await _rows(db)
        assert_problem(await client.patch("/api/v1/users/alice", json=body), 422, "validation")
        assert await _rows(db) == before

    async def test_unknown_is_404(self, client):
        response = await client.patch("/api/v1/users/nobody", json={"is_admin": True})
        assert_problem(response, 404, "not-found")


class TestPasswords:
    async def test_verify_right_wrong_and_unknown(self, client):
        await _create(client)
        url = "/api/v1/users/{}/verify-password"
        right = await client.post(url.format("alice"), json={"password": ALICE["password"]})
        assert right.status_code == 200 and right.json() == {"valid": True}
        wrong = await client.post(url.format("alice"), json={"password": "wrong password"})
        assert wrong.json() == {"valid": False}
        unknown = await client.post(url.format("nobody"), json={"password": ALICE["password"]})
        assert unknown.status_code == 200 and unknown.json() == {"valid": False}

    async def test_unknown_user_costs_an_argon2_check_like_a_wrong_password(
        self, client, monkeypatch
    ):
        await _create(client)
        checks: list[str | None] = []
        hasher = client.app.state.store.keyring.passwords
        original = hasher.verify

        def counting(secret: str, stored: str | None) -> tuple[bool, str | None]:
            checks.append(stored)
            return original(secret, stored)

        monkeypatch.setattr(hasher, "verify", counting)
        url = "/api/v1/users/{}/verify-password"
        await client.post(url.format("alice"), json={"password": "wrong password"})
        await client.post(url.format("nobody"), json={"password": "wrong password"})
        assert len(checks) == 2
        assert checks[0] is not None and checks[1] is None  # the dummy-hash path

    async def test_put_password_replaces_it(self, client, db):
        await _create(client)
        before = (await _rows(db))[0]["password_hash"]
        response = await client.put(
            "/api/v1/users/alice/password", json={"password": "a new password"}
        )
        assert response.status_code == 204 and response.content == b""
        assert (await _rows(db))[0]["password_hash"] != before
        url = "/api/v1/users/alice/verify-password"
        assert (await client.post(url, json={"password": ALICE["password"]})).json()[
            "valid"
        ] is False
        assert (await client.post(url, json={"password": "a new password"})).json()["valid"] is True

    async def test_short_password_is_422_and_keeps_the_old_one(self, client, db):
        await _create(client)
        before = await _rows(db)
        response = await client.put("/api/v1/users/alice/password", json={"password": "short"})
        assert_problem(response, 422, "validation")
        assert await _rows(db) == before

    async def test_put_password_of_unknown_user_is_404(self, client):
        response = await client.put(
            "/api/v1/users/nobody/password", json={"password": "long enough"}
        )
        assert_problem(response, 404, "not-found")

    async def test_stale_hash_is_rehashed_on_the_next_successful_check(self, client, db):
        await _create(client)
        weak = argon2.using(rounds=1, memory_cost=1024, parallelism=1).hash(
            ALICE["password"] + PEPPER
        )
        async with db.begin() as conn:
            await conn.execute(text("UPDATE users SET password_hash = :h"), {"h": weak})
        url = "/api/v1/users/alice/verify-password"
        assert (await client.post(url, json={"password": "wrong password"})).json()[
            "valid"
        ] is False
        assert (await _rows(db))[0]["password_hash"] == weak  # a failed check changes nothing
        assert (await client.post(url, json={"password": ALICE["password"]})).json()[
            "valid"
        ] is True
        upgraded = (await _rows(db))[0]["password_hash"]
        assert upgraded != weak and "m=1024,t=1,p=1" not in upgraded
        assert argon2.verify(ALICE["password"] + PEPPER, upgraded)

    async def test_oversized_password_check_is_422(self, client):
        response = await client.post(
            "/api/v1/users/alice/verify-password", json={"password": "x" * 1025}
        )
        assert_problem(response, 422, "validation")


class TestTotp:
    async def _secret(self, client) -> str:
        response = await client.get("/api/v1/users/alice/totp")
        assert response.status_code == 200
        return response.json()["secret"]

    async def test_secret_and_provisioning_uri(self, client, db):
        await _create(client)
        response = await client.get("/api/v1/users/alice/totp")
        assert response.status_code == 200
        body = response.json()
        assert len(base64.b32decode(body["secret"])) == 20
        assert body["provisioning_uri"] == (
            f"otpauth://totp/AlgoWays:alice?secret={body['secret']}"
            "&issuer=AlgoWays&algorithm=SHA1&digits=6&period=30"
        )
        assert body["secret"] not in (await _rows(db))[0]["totp_secret_encrypted"]
        assert await self._secret(client) == body["secret"]  # stable

    async def test_secret_needs_the_secrets_scope(self, client):
        await _create(client)
        response = await client.get("/api/v1/users/alice/totp", headers=auth(RW_TOKEN))
        assert_problem(response, 403, "forbidden")

    async def test_secret_of_unknown_user_is_404(self, client):
        assert_problem(await client.get("/api/v1/users/nobody/totp"), 404, "not-found")

    async def test_code_is_accepted_once(self, client, db, monkeypatch):
        await _create(client)
        secret = await self._secret(client)
        now = 1_800_000_015.0
        _freeze(monkeypatch, now)
        code = totp.code_at(secret, totp.current_step(now))
        url = "/api/v1/users/alice/totp/verify"
        assert (await client.post(url, json={"code": code})).json() == {"valid": True}
        assert (await _rows(db))[0]["totp_last_step"] == totp.current_step(now)
        replay = await client.post(url, json={"code": code})
        assert replay.status_code == 200 and replay.json() == {"valid": False}
        _freeze(monkeypatch, now + 20)  # same step, still within its window
        assert (await client.post(url, json={"code": code})).json() == {"valid": False}

    async def test_one_step_tolerance_and_no_going_back(self, client, monkeypatch):
        await _create(client)
        secret = await self._secret(client)
        now = 1_800_000_015.0
        step = totp.current_step(now)
        _freeze(monkeypatch, now)
        url = "/api/v1/users/alice/totp/verify"

        async def valid(offset: int) -> bool:
            response = await client.post(url, json={"code": totp.code_at(secret, step + offset)})
            assert response.status_code == 200
            return bool(response.json()["valid"])

        assert await valid(-2) is False
        assert await valid(2) is False
        assert await valid(-1) is True  # a slow phone
        assert await valid(0) is True
        assert await valid(-1) is False  # older than the last accepted step
        assert await valid(1) is True  # a fast phone
        assert await valid(0) is False

    async def test_wrong_code_is_not_valid_and_claims_nothing(self, client, db, monkeypatch):
        await _create(client)
        secret = await self._secret(client)
        now = 1_800_000_015.0
        _freeze(monkeypatch, now)
        right = totp.code_at(secret, totp.current_step(now))
        wrong = str((int(right) + 1) % 1_000_000).zfill(6)
        response = await client.post("/api/v1/users/alice/totp/verify", json={"code": wrong})
        assert response.json() == {"valid": False}
        assert (await _rows(db))[0]["totp_last_step"] is None

    @pytest.mark.parametrize("code", ["12345", "1234567", "12a456", ""])
    async def test_malformed_code_is_422(self, client, code):
        await _create(client)
        response = await client.post("/api/v1/users/alice/totp/verify", json={"code": code})
        assert_problem(response, 422, "validation")

    async def test_verify_for_unknown_user_is_404(self, client):
        response = await client.post("/api/v1/users/nobody/totp/verify", json={"code": "123456"})
        assert_problem(response, 404, "not-found")


class TestDeleteUser:
    async def test_deletes_the_user_with_its_key_token_and_sessions(self, client, db):
        await _create(client)
        key = (await client.put("/api/v1/auth/api-keys/alice", json={})).json()["api_key"]
        verify = {"api_key": key}
        assert (await client.post("/api/v1/auth/api-keys/verify", json=verify)).status_code == 200
        await client.put(
            "/api/v1/auth/broker-tokens/alice", json={"auth_token": "t", "broker": "zerodha"}
        )
        await client.post(
            "/api/v1/auth/sessions", json={"username": "alice", "session_id": "s" * 32}
        )

        response = await client.delete("/api/v1/users/alice")
        assert response.status_code == 204
        for table in ("users", "api_keys", "broker_tokens", "sessions"):
            assert await _rows(db, table) == [], table
        gone = await client.post("/api/v1/auth/api-keys/verify", json=verify)
        assert_problem(gone, 401, "api-key-unknown")  # the cached answer went with it
        assert_problem(await client.get("/api/v1/users/alice"), 404, "not-found")

    async def test_unknown_is_404(self, client):
        assert_problem(await client.delete("/api/v1/users/nobody"), 404, "not-found")
