"""POST /api/v1/auth/api-keys/verify: one read and one argon2 check cold, memory warm, distinct
problems, and every write that changes an answer seen at once (on every instance)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from cryptography.fernet import Fernet
from passlib.hash import argon2
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.repositories import api_keys as api_keys_repo
from service.security import Pepper
from tests.conftest import ClientFactory
from tests.support import PEPPER, RW_TOKEN, add_users, assert_problem, auth, eventually

VERIFY = "/api/v1/auth/api-keys/verify"
TOKEN = {"auth_token": "broker-auth-1", "feed_token": "broker-feed-1", "broker": "zerodha"}


async def _add_keys(db: AsyncEngine, count: int) -> None:
    """Other users with keys, arranged directly: one cheap hash for all, a digest each."""
    names = [f"user{n:03d}" for n in range(count)]
    await add_users(db, *names)
    shared_hash = argon2.using(rounds=1, memory_cost=1024, parallelism=1).hash("x")
    pepper = Pepper(PEPPER.encode())
    async with db.begin() as conn:
        for name in names:
            await conn.execute(
                text(
                    "INSERT INTO api_keys (user_id, key_digest, key_hash, key_encrypted, "
                    "order_mode, updated_at, created_at) VALUES (:u, :d, :h, 'x', 'auto', "
                    "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                ),
                {"u": name, "d": pepper.digest(secrets.token_hex(32)), "h": shared_hash},
            )


@pytest.fixture
async def key(client, db) -> str:
    """Alice's API key, made through the API."""
    await add_users(db, "alice")
    response = await client.put("/api/v1/auth/api-keys/alice", json={})
    assert response.status_code == 200
    return str(response.json()["api_key"])


class Probe:
    """Counts the SQL statements an app instance runs and the argon2 checks it makes."""

    def __init__(self) -> None:
        self.statements: list[str] = []
        self.checks = 0

    def reset(self) -> None:
        self.statements.clear()
        self.checks = 0


@contextmanager
def probe(client, monkeypatch: pytest.MonkeyPatch) -> Iterator[Probe]:
    state = client.app.state.store
    found = Probe()

    def on_execute(_conn, _cursor, statement, *_args) -> None:  # type: ignore[no-untyped-def]
        if not statement.lstrip().upper().startswith(("BEGIN", "COMMIT", "ROLLBACK")):
            found.statements.append(statement)

    hasher = state.keyring.passwords
    original = hasher.verify

    def counting(secret: str, stored: str | None) -> tuple[bool, str | None]:
        found.checks += 1
        return original(secret, stored)

    monkeypatch.setattr(hasher, "verify", counting)
    event.listen(state.engine.sync_engine, "before_cursor_execute", on_execute)
    try:
        yield found
    finally:
        event.remove(state.engine.sync_engine, "before_cursor_execute", on_execute)


class TestKnownKey:
    async def test_answer_of_a_user_without_broker_token(self, client, key):
        response = await client.post(VERIFY, json={"api_key": key})
        assert response.status_code == 200
        assert response.json() == {
            "user_id": "alice",
            "order_mode": "auto",
            "broker": None,
            "broker_token": "missing",
        }

    async def test_cold_is_one_read_and_one_check_then_warm_is_memory(
        self, client, db, key, monkeypatch
    ):
        await _add_keys(db, 40)
        cache = client.app.state.store.caches.get("api_keys")
        with probe(client, monkeypatch) as seen:
            assert (await client.post(VERIFY, json={"api_key": key})).status_code == 200
            assert len(seen.statements) == 1 and "api_keys" in seen.statements[0]
            assert seen.checks == 1
            seen.reset()
            hits = cache.hits
            for _ in range(3):
                response = await client.post(VERIFY, json={"api_key": key})
                assert response.json()["user_id"] == "alice"
            assert seen.statements == [] and seen.checks == 0
            assert cache.hits == hits + 3

    async def test_cached_by_digest_never_by_the_key(self, client, key):
        await client.post(VERIFY, json={"api_key": key})
        cache = client.app.state.store.caches.get("api_keys")
        assert cache.get(Pepper(PEPPER.encode()).digest(key)) is not None
        assert cache.get(key) is None
        assert len(cache) == 1


class TestUnknownKey:
    async def test_is_401_with_its_own_type(self, client, key):
        response = await client.post(VERIFY, json={"api_key": key[:-1] + "x"})
        problem = assert_problem(response, 401, "api-key-unknown")
        assert problem["title"] == "Unknown API key"

    async def test_a_flood_costs_no_argon2_and_repeats_no_read(self, client, key, monkeypatch):
        bad = [secrets.token_hex(32) for _ in range(20)]
        with probe(client, monkeypatch) as seen:
            for candidate in bad:
                assert_problem(await client.post(VERIFY, json={"api_key": candidate}), 401)
            assert seen.checks == 0
            assert len(seen.statements) == 20
            seen.reset()
            for candidate in bad:
                assert_problem(await client.post(VERIFY, json={"api_key": candidate}), 401)
            assert seen.statements == [] and seen.checks == 0

    async def test_a_key_tried_before_it_existed_verifies_once_stored(self, client, db):
        await add_users(db, "alice")
        chosen = secrets.token_hex(32)
        assert_problem(await client.post(VERIFY, json={"api_key": chosen}), 401)  # now cached
        await client.put("/api/v1/auth/api-keys/alice", json={"api_key": chosen})
        response = await client.post(VERIFY, json={"api_key": chosen})
        assert response.status_code == 200 and response.json()["user_id"] == "alice"

    @pytest.mark.parametrize(
        "body",
        [
            {},
            {"api_key": ""},
            {"api_key": "k" * 257},
            {"api_key": "k" * 64, "include_auth": "maybe"},
            {"api_key": "k" * 64, "extra": True},
        ],
    )
    async def test_bad_input_is_422(self, client, body):
        assert_problem(await client.post(VERIFY, json=body), 422, "validation")


class TestBrokerTokens:
    async def test_tokens_need_the_secrets_scope_before_anything_else(self, client, key):
        for body in (
            {"api_key": key, "include_auth": True},
            {"api_key": key, "include_feed_token": True},
            {"api_key": "0" * 64, "include_auth": True},
        ):
            response = await client.post(VERIFY, json=body, headers=auth(RW_TOKEN))
            assert "secrets" in assert_problem(response, 403, "forbidden")["detail"]
        plain = await client.post(VERIFY, json={"api_key": key}, headers=auth(RW_TOKEN))
        assert plain.status_code == 200

    async def test_no_broker_token_is_its_own_problem(self, client, key):
        response = await client.post(VERIFY, json={"api_key": key, "include_auth": True})
        assert_problem(response, 404, "broker-token-missing")

    async def test_revoked_broker_token_is_its_own_problem(self, client, key):
        await client.put("/api/v1/auth/broker-tokens/alice", json=TOKEN)
        await client.post("/api/v1/auth/broker-tokens/alice/revoke")
        response = await client.post(VERIFY, json={"api_key": key, "include_auth": True})
        assert_problem(response, 410, "broker-token-revoked")
        plain = await client.post(VERIFY, json={"api_key": key})
        assert plain.json() == {
            "user_id": "alice",
            "order_mode": "auto",
            "broker": None,
            "broker_token": "revoked",
        }

    async def test_active_token_only_what_was_asked_for(self, client, key):
        await client.put("/api/v1/auth/broker-tokens/alice", json=TOKEN)
        plain = await client.post(VERIFY, json={"api_key": key})
        assert plain.json() == {
            "user_id": "alice",
            "order_mode": "auto",
            "broker": "zerodha",
            "broker_token": "active",
        }
        auth_only = await client.post(VERIFY, json={"api_key": key, "include_auth": True})
        assert auth_only.json() == {**plain.json(), "auth_token": "broker-auth-1"}
        feed_only = await client.post(VERIFY, json={"api_key": key, "include_feed_token": True})
        assert feed_only.json() == {**plain.json(), "feed_token": "broker-feed-1"}
        both = await client.post(
            VERIFY, json={"api_key": key, "include_auth": True, "include_feed_token": True}
        )
        assert both.json() == {
            **plain.json(),
            "auth_token": "broker-auth-1",
            "feed_token": "broker-feed-1",
        }

    async def test_absent_feed_token_is_null(self, client, key):
        await client.put(
            "/api/v1/auth/broker-tokens/alice", json={"auth_token": "a", "broker": "angel"}
        )
        response = await client.post(VERIFY, json={"api_key": key, "include_feed_token": True})
        assert response.json()["feed_token"] is None

    async def test_undecryptable_token_is_a_409_not_garbage(self, client, db, key):
        await client.put("/api/v1/auth/broker-tokens/alice", json=TOKEN)
        foreign = Fernet(Fernet.generate_key()).encrypt(b"made under another key").decode()
        async with db.begin() as conn:
            await conn.execute(
                text("UPDATE broker_tokens SET auth_token_encrypted = :c"), {"c": foreign}
            )
        response = await client.post(VERIFY, json={"api_key": key, "include_auth": True})
        assert_problem(response, 409, "secret-unreadable")
        assert (await client.post(VERIFY, json={"api_key": key})).status_code == 200


class TestWritesAreSeenAtOnce:
    """Each answer is cached first, then changed through the API."""

    async def _cached(self, client, key: str) -> dict[str, object]:
        response = await client.post(VERIFY, json={"api_key": key, "include_auth": True})
        assert (await client.post(VERIFY, json={"api_key": key})).status_code == 200
        return {"status": response.status_code, **response.json()}

    async def test_broker_token_first_login_and_relogin(self, client, key):
        assert (await self._cached(client, key))["status"] == 404
        await client.put("/api/v1/auth/broker-tokens/alice", json=TOKEN)
        response = await client.post(VERIFY, json={"api_key": key, "include_auth": True})
        assert response.json()["auth_token"] == "broker-auth-1"
        await client.put(
            "/api/v1/auth/broker-tokens/alice",
            json={**TOKEN, "auth_token": "broker-auth-2", "broker": "angel"},
        )
        response = await client.post(VERIFY, json={"api_key": key, "include_auth": True})
        assert (response.json()["auth_token"], response.json()["broker"]) == (
            "broker-auth-2",
            "angel",
        )

    async def test_revoke(self, client, key):
        await client.put("/api/v1/auth/broker-tokens/alice", json=TOKEN)
        assert (await self._cached(client, key))["auth_token"] == "broker-auth-1"
        await client.post("/api/v1/auth/broker-tokens/alice/revoke")
        response = await client.post(VERIFY, json={"api_key": key, "include_auth": True})
        assert_problem(response, 410, "broker-token-revoked")

    async def test_order_mode(self, client, key):
        await self._cached(client, key)
        await client.put("/api/v1/auth/api-keys/alice/order-mode", json={"order_mode": "semi_auto"})
        assert (await client.post(VERIFY, json={"api_key": key})).json()["order_mode"] == (
            "semi_auto"
        )

    async def test_rotation(self, client, key):
        await self._cached(client, key)
        new = (await client.put("/api/v1/auth/api-keys/alice", json={})).json()["api_key"]
        assert_problem(await client.post(VERIFY, json={"api_key": key}), 401, "api-key-unknown")
        assert (await client.post(VERIFY, json={"api_key": new})).json()["user_id"] == "alice"

    async def test_deletion(self, client, key):
        await self._cached(client, key)
        assert (await client.delete("/api/v1/auth/api-keys/alice")).status_code == 204
        assert_problem(await client.post(VERIFY, json={"api_key": key}), 401, "api-key-unknown")

    async def test_a_lookup_overtaken_by_its_invalidation_is_not_cached(
        self, client, key, monkeypatch
    ):
        state = client.app.state.store
        verifier = state.runtime.verifier
        original = verifier._look_up
        cache = state.caches.get("api_keys")

        def look_up_while_a_write_commits(invalidated: str):  # type: ignore[no-untyped-def]
            async def look_up(*args):  # type: ignore[no-untyped-def]
                result = await original(*args)
                state.bus.dispatch(api_keys_repo.TOPIC, invalidated)
                return result

            return look_up

        # Another user's write does not stop this answer from being cached...
        monkeypatch.setattr(verifier, "_look_up", look_up_while_a_write_commits("0" * 64))
        assert (await client.post(VERIFY, json={"api_key": key})).status_code == 200
        assert len(cache) == 1
        cache.invalidate()
        # ...but a write to this key's row does: what the lookup read may already be stale.
        digest = Pepper(PEPPER.encode()).digest(key)
        monkeypatch.setattr(verifier, "_look_up", look_up_while_a_write_commits(digest))
        assert (await client.post(VERIFY, json={"api_key": key})).status_code == 200
        assert len(cache) == 0


class TestConcurrentColdRequests:
    async def test_share_one_lookup(self, client, key, monkeypatch):
        with probe(client, monkeypatch) as seen:
            responses = await asyncio.gather(
                *(client.post(VERIFY, json={"api_key": key}) for _ in range(8))
            )
        assert {r.status_code for r in responses} == {200}
        assert seen.checks == 1 and len(seen.statements) == 1

    async def test_a_request_after_an_invalidation_does_not_join_the_earlier_lookup(
        self, client, key, monkeypatch
    ):
        state = client.app.state.store
        verifier = state.runtime.verifier
        original = verifier._look_up
        calls = 0
        late: list[asyncio.Task[object]] = []

        async def look_up(*args):  # type: ignore[no-untyped-def]
            nonlocal calls
            calls += 1
            if calls == 1:  # a write commits while the first lookup runs, then a request comes
                state.bus.dispatch(api_keys_repo.TOPIC, Pepper(PEPPER.encode()).digest(key))
                late.append(asyncio.ensure_future(client.post(VERIFY, json={"api_key": key})))
                await asyncio.sleep(0.05)
            return await original(*args)

        monkeypatch.setattr(verifier, "_look_up", look_up)
        assert (await client.post(VERIFY, json={"api_key": key})).status_code == 200
        assert (await late[0]).status_code == 200
        assert calls == 2


@pytest.mark.postgres_only
class TestAcrossInstances:
    """Two app instances on one PostgreSQL: a write on one is seen by the other's cache."""

    async def _pair(self, client_factory: ClientFactory, db: AsyncEngine):  # type: ignore[no-untyped-def]
        one = await client_factory()
        two = await client_factory()
        await add_users(db, "alice")
        key = (await one.put("/api/v1/auth/api-keys/alice", json={})).json()["api_key"]
        await one.put("/api/v1/auth/broker-tokens/alice", json=TOKEN)

        async def warm() -> bool:
            # A lookup that overlaps the arrival of one's notifications is (rightly) not cached.
            response = await two.post(VERIFY, json={"api_key": key, "include_auth": True})
            assert response.json()["auth_token"] == "broker-auth-1"
            return len(two.app.state.store.caches.get("api_keys")) == 1

        assert await eventually(warm)
        return one, two, key

    async def test_rotation_on_one_fails_the_old_key_on_two(self, client_factory, db):
        one, two, key = await self._pair(client_factory, db)
        new = (await one.put("/api/v1/auth/api-keys/alice", json={})).json()["api_key"]

        async def old_key_refused() -> bool:
            return (await two.post(VERIFY, json={"api_key": key})).status_code == 401

        assert await eventually(old_key_refused)
        assert (await two.post(VERIFY, json={"api_key": new})).status_code == 200

    async def test_deletion_on_one_fails_the_key_on_two(self, client_factory, db):
        one, two, key = await self._pair(client_factory, db)
        await one.delete("/api/v1/auth/api-keys/alice")

        async def refused() -> bool:
            return (await two.post(VERIFY, json={"api_key": key})).status_code == 401

        assert await eventually(refused)

    async def test_revoke_on_one_is_410_on_two(self, client_factory, db):
        one, two, key = await self._pair(client_factory, db)
        await one.post("/api/v1/auth/broker-tokens/alice/revoke")

        async def revoked() -> bool:
            response = await two.post(VERIFY, json={"api_key": key, "include_auth": True})
            return response.status_code == 410

        assert await eventually(revoked)

    async def test_order_mode_on_one_is_seen_by_two(self, client_factory, db):
        one, two, key = await self._pair(client_factory, db)
        await one.put("/api/v1/auth/api-keys/alice/order-mode", json={"order_mode": "semi_auto"})

        async def seen() -> bool:
            response = await two.post(VERIFY, json={"api_key": key})
            return response.json()["order_mode"] == "semi_auto"

        assert await eventually(seen)
