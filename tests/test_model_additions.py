"""The design note's model additions (issue 13 part 1), through HTTP on both backends: user names
and preferences, broker refresh tokens and expiry, session expiry and data, strategy definitions."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support import BACKEND, assert_problem

ALICE = {"username": "alice", "email": "alice@example.com", "password": "correct horse 1"}
USERS = "/api/v1/users"


async def _rows(db: AsyncEngine, sql: str, **params: Any) -> list[dict[str, Any]]:
    async with db.connect() as conn:
        return [dict(r._mapping) for r in await conn.execute(text(sql), params)]


async def _user(client, **fields: Any) -> dict[str, Any]:
    response = await client.post(USERS, json={**ALICE, **fields})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def _json(value: Any) -> Any:
    """A JSON column as read back by a raw query (text on SQLite, parsed on PostgreSQL)."""
    # SQLite gives a number back as a number (its JSON column has numeric affinity).
    return json.loads(value) if BACKEND == "sqlite" and isinstance(value, str) else value


# --- users: names --------------------------------------------------------------------------------


class TestUserNames:
    async def test_created_with_names_and_read_back(self, client, db):
        created = await _user(client, first_name="  Alice ", last_name="Liddell")
        assert (created["first_name"], created["last_name"]) == ("Alice", "Liddell")
        assert created["updated_at"] >= created["created_at"]
        read = (await client.get(f"{USERS}/alice")).json()
        assert read == created
        listed = (await client.get(USERS)).json()["items"]
        assert listed == [created]
        [row] = await _rows(db, "SELECT first_name, last_name FROM users")
        assert row == {"first_name": "Alice", "last_name": "Liddell"}

    async def test_names_default_to_null(self, client):
        created = await _user(client)
        assert created["first_name"] is None and created["last_name"] is None

    async def test_patch_changes_names_updates_updated_at_and_audits(self, client, db):
        created = await _user(client, first_name="Alice")
        response = await client.patch(f"{USERS}/alice", json={"last_name": "Liddell"})
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["first_name"], body["last_name"]) == ("Alice", "Liddell")
        assert body["updated_at"] > created["updated_at"]
        cleared = (await client.patch(f"{USERS}/alice", json={"first_name": None})).json()
        assert (cleared["first_name"], cleared["last_name"]) == (None, "Liddell")
        entries = (await client.get("/api/v1/audit", params={"resource": "user"})).json()["items"]
        changes = [e["changes"] for e in entries if e["action"] == "update"]
        assert {"first_name": {"before": "Alice", "after": None}} in changes
        assert {"last_name": {"before": None, "after": "Liddell"}} in changes

    async def test_patch_unknown_user_is_404(self, client):
        response = await client.patch(f"{USERS}/nobody", json={"first_name": "X"})
        assert_problem(response, 404)

    async def test_bad_names_are_422_and_change_nothing(self, client, db):
        await _user(client, first_name="Alice")
        for bad in ("x" * 101, "a\x00b", 5):
            response = await client.patch(f"{USERS}/alice", json={"first_name": bad})
            problem = assert_problem(response, 422)
            assert problem["errors"][0]["loc"][-1] == "first_name"
        response = await client.post(
            USERS, json={**ALICE, "username": "bob", "last_name": "y" * 101}
        )
        assert_problem(response, 422)
        rows = await _rows(db, "SELECT username, first_name FROM users")
        assert rows == [{"username": "alice", "first_name": "Alice"}]

    async def test_hundred_characters_are_accepted(self, client):
        await _user(client)
        name = "é" * 100
        response = await client.patch(f"{USERS}/alice", json={"first_name": name})
        assert response.status_code == 200 and response.json()["first_name"] == name


# --- users: preferences ------------------------------------------------------------------------


def _prefs(username: str = "alice") -> str:
    return f"{USERS}/{username}/preferences"


class TestPreferences:
    async def test_put_get_list_delete(self, client, db):
        await _user(client)
        assert (await client.get(_prefs())).json() == {}
        theme = {"mode": "dark", "sizes": [1, 2.5], "on": True, "none": None}
        response = await client.put(f"{_prefs()}/ui.theme", json={"value": theme})
        assert response.status_code == 201, response.text
        assert response.json()["key"] == "ui.theme" and response.json()["value"] == theme
        again = await client.put(f"{_prefs()}/ui.theme", json={"value": "light"})
        assert again.status_code == 200 and again.json()["value"] == "light"
        await client.put(f"{_prefs()}/a-1_Z", json={"value": None})
        await client.put(f"{_prefs()}/count", json={"value": 3})
        assert (await client.get(_prefs())).json() == {
            "a-1_Z": None,
            "count": 3,
            "ui.theme": "light",
        }
        one = (await client.get(f"{_prefs()}/count")).json()
        assert (one["key"], one["value"]) == ("count", 3)
        rows = await _rows(db, "SELECT key, value FROM user_preferences ORDER BY key")
        assert [(r["key"], _json(r["value"])) for r in rows] == [
            ("a-1_Z", None),
            ("count", 3),
            ("ui.theme", "light"),
        ]
        assert (await client.delete(f"{_prefs()}/count")).status_code == 204
        assert_problem(await client.get(f"{_prefs()}/count"), 404)
        assert_problem(await client.delete(f"{_prefs()}/count"), 404)
        assert set((await client.get(_prefs())).json()) == {"a-1_Z", "ui.theme"}

    async def test_preferences_are_per_user(self, client):
        await _user(client)
        await _user(client, username="bob", email="bob@example.com")
        await client.put(f"{_prefs()}/k", json={"value": 1})
        await client.put(f"{_prefs('bob')}/k", json={"value": 2})
        assert (await client.get(_prefs())).json() == {"k": 1}
        assert (await client.get(_prefs("bob"))).json() == {"k": 2}

    async def test_unknown_user_is_404_everywhere(self, client, db):
        assert_problem(await client.get(_prefs("nobody")), 404)
        assert_problem(await client.get(f"{_prefs('nobody')}/k"), 404)
        assert_problem(await client.put(f"{_prefs('nobody')}/k", json={"value": 1}), 404)
        assert_problem(await client.delete(f"{_prefs('nobody')}/k"), 404)
        assert await _rows(db, "SELECT id FROM user_preferences") == []

    async def test_bad_keys_and_values_are_422_and_write_nothing(self, client, db):
        await _user(client)
        for key in ("k" * 65, "a%20b", "a:b", "%C3%A9"):
            assert_problem(await client.put(f"{_prefs()}/{key}", json={"value": 1}), 422)
        for body in (
            {"value": "a\x00"},
            {"value": {"a\x00": 1}},
            {"value": 2**63},
            {},
            {"value": 1, "x": 2},
        ):
            assert_problem(await client.put(f"{_prefs()}/k", json=body), 422)
        assert await _rows(db, "SELECT id FROM user_preferences") == []

    async def test_size_limit_is_16_kib_serialised(self, client, db):
        await _user(client)
        # '"' + 16382 characters + '"' is 16384 bytes exactly.
        fits = "x" * (16 * 1024 - 2)
        assert (await client.put(f"{_prefs()}/big", json={"value": fits})).status_code == 201
        problem = assert_problem(
            await client.put(f"{_prefs()}/big", json={"value": fits + "x"}), 422
        )
        assert "16384 bytes" in problem["errors"][0]["msg"]
        [row] = await _rows(db, "SELECT value FROM user_preferences")
        assert _json(row["value"]) == fits
        # Multi-byte characters count as their UTF-8 bytes.
        wide = "é" * (8 * 1024)
        assert_problem(await client.put(f"{_prefs()}/wide", json={"value": wide}), 422)

    async def test_removed_with_the_user(self, client, db):
        await _user(client)
        await client.put(f"{_prefs()}/k", json={"value": [1]})
        assert (await client.delete(f"{USERS}/alice")).status_code == 204
        assert await _rows(db, "SELECT id FROM user_preferences") == []
        await _user(client)
        assert (await client.get(_prefs())).json() == {}

    async def test_documented(self, client):
        spec = (await client.get("/openapi.json")).json()
        item = spec["paths"]["/api/v1/users/{username}/preferences/{key}"]
        assert set(item) == {"get", "put", "delete"}
        [key] = [p for p in item["put"]["parameters"] if p["name"] == "key"]
        assert key["schema"]["pattern"] == "^[A-Za-z0-9_.-]{1,64}$"
        assert {"201", "404", "422"} <= set(item["put"]["responses"])
        body = item["put"]["requestBody"]["content"]["application/json"]["schema"]
        schema = spec["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]
        assert "16384 bytes" in json.dumps(schema["properties"]["value"])


# --- broker tokens: refresh token and expiry ---------------------------------------------------

BROKER = "/api/v1/auth/broker-tokens/alice"
REFRESHING = {
    "auth_token": "broker-auth-1",
    "feed_token": "broker-feed-1",
    "refresh_token": "broker-refresh-1",
    "broker": "zerodha",
}


def _at(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


class TestBrokerRefreshAndExpiry:
    async def test_refresh_token_stored_encrypted_and_only_the_secret_returns_it(self, client, db):
        await _user(client)
        expires = "2030-01-02T03:04:05+05:30"
        response = await client.put(BROKER, json={**REFRESHING, "expires_at": expires})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["has_refresh_token"] is True
        assert body["expires_at"] == "2030-01-01T21:34:05Z"
        assert "broker-refresh-1" not in response.text
        meta = await client.get(BROKER)
        assert meta.json()["has_refresh_token"] is True and "broker-refresh-1" not in meta.text
        secret = (await client.get(f"{BROKER}/secret")).json()
        assert secret["refresh_token"] == "broker-refresh-1"
        assert secret["expires_at"] == "2030-01-01T21:34:05Z"
        [row] = await _rows(db, "SELECT refresh_token_encrypted FROM broker_tokens")
        assert row["refresh_token_encrypted"].startswith("gAAAAA")
        assert "broker-refresh-1" not in row["refresh_token_encrypted"]
        entries = (await client.get("/api/v1/audit", params={"resource": "broker_token"})).json()
        [created] = entries["items"]
        assert "broker-refresh-1" not in json.dumps(created)
        assert created["changes"]["refresh_token"]["after"] != "broker-refresh-1"

    async def test_a_new_refresh_token_is_a_change_the_same_one_is_not(self, client):
        await _user(client)
        assert (await client.put(BROKER, json=REFRESHING)).json()["changed"] is True
        assert (await client.put(BROKER, json=REFRESHING)).json()["changed"] is False
        renewed = {**REFRESHING, "refresh_token": "broker-refresh-2"}
        assert (await client.put(BROKER, json=renewed)).json()["changed"] is True
        later = {**renewed, "expires_at": "2031-01-01T00:00:00Z"}
        assert (await client.put(BROKER, json=later)).json()["changed"] is True

    async def test_omitted_refresh_token_is_cleared_and_revoke_erases_it(self, client, db):
        await _user(client)
        await client.put(BROKER, json=REFRESHING)
        plain = {k: v for k, v in REFRESHING.items() if k != "refresh_token"}
        assert (await client.put(BROKER, json=plain)).json()["has_refresh_token"] is False
        assert (await client.get(f"{BROKER}/secret")).json()["refresh_token"] is None
        await client.put(BROKER, json={**REFRESHING, "expires_at": _at(3600)})
        revoked = (await client.post(f"{BROKER}/revoke")).json()
        assert revoked["has_refresh_token"] is False
        [row] = await _rows(db, "SELECT refresh_token_encrypted, revoked FROM broker_tokens")
        assert row["refresh_token_encrypted"] is None and row["revoked"]

    async def test_bad_refresh_token_or_expiry_is_422_and_writes_nothing(self, client, db):
        await _user(client)
        for bad in (
            {"refresh_token": ""},
            {"refresh_token": "x" * 4097},
            {"expires_at": "2030-01-01T00:00:00"},
            {"expires_at": 1893456000},
        ):
            assert_problem(await client.put(BROKER, json={**REFRESHING, **bad}), 422)
        assert await _rows(db, "SELECT id FROM broker_tokens") == []

    async def test_rotate_keys_re_encrypts_the_refresh_token(
        self, client_factory, settings_factory, db
    ):
        from service import rotate
        from tests.test_key_rotation import ROTATED, ROTATING

        old = await client_factory()
        await _user(old)
        await old.put(BROKER, json=REFRESHING)
        [before] = await _rows(db, "SELECT refresh_token_encrypted FROM broker_tokens")
        counts = await rotate.rotate_keys(settings_factory(**ROTATING))
        assert counts["broker_tokens.refresh_token_encrypted"] == 1
        [after] = await _rows(db, "SELECT refresh_token_encrypted FROM broker_tokens")
        assert after != before
        rotated = await client_factory(**ROTATED)
        secret = (await rotated.get(f"{BROKER}/secret")).json()
        assert secret["refresh_token"] == "broker-refresh-1"


class TestExpiredBrokerToken:
    async def _key(self, client, db, expires_at: str | None) -> str:
        from tests.test_orders import _arrange

        api_key = await _arrange(client, db, token=False)
        body = {**REFRESHING, "expires_at": expires_at}
        assert (await client.put(BROKER, json=body)).status_code == 200
        return api_key

    async def test_verify_and_context_answer_410_past_expiry(self, client, db):
        api_key = await self._key(client, db, "2020-01-01T00:00:00Z")
        context = {"api_key": api_key, "symbol": "RELIANCE", "exchange": "NSE"}
        for _ in range(2):  # cold (the route), then warm (the fast lane): the same answers
            for path, body in (
                ("/api/v1/auth/api-keys/verify", {"api_key": api_key}),
                ("/api/v1/orders/context", context),
            ):
                plain = await client.post(path, json=body)
                assert plain.status_code == 200, plain.text
                assert plain.json()["broker_token"] == "expired"
                assert plain.json()["broker"] == "zerodha"
                for flags in ({"include_auth": True}, {"include_feed_token": True}):
                    problem = assert_problem(
                        await client.post(path, json={**body, **flags}), 410, "broker-token-expired"
                    )
                    assert "2020-01-01" in problem["detail"]
            basket = {"api_key": api_key, "items": [{"symbol": "RELIANCE", "exchange": "NSE"}]}
            assert_problem(
                await client.post(
                    "/api/v1/orders/context/batch", json={**basket, "include_auth": True}
                ),
                410,
                "broker-token-expired",
            )
        # The secret endpoint still answers: the refresh token is what renews the session.
        secret = (await client.get(f"{BROKER}/secret")).json()
        assert secret["refresh_token"] == "broker-refresh-1"

    async def test_future_expiry_is_active(self, client, db):
        api_key = await self._key(client, db, _at(3600))
        answer = await client.post(
            "/api/v1/auth/api-keys/verify", json={"api_key": api_key, "include_auth": True}
        )
        assert answer.status_code == 200
        assert answer.json()["broker_token"] == "active"
        assert answer.json()["auth_token"] == "broker-auth-1"

    async def test_expiry_is_decided_at_answer_time_not_cache_time(self, client, db):
        api_key = await self._key(client, db, _at(1.5))
        verify = {"api_key": api_key, "include_auth": True}
        context = {**verify, "symbol": "RELIANCE", "exchange": "NSE"}
        for _ in range(2):  # filled the cache, then answered from it
            answer = await client.post("/api/v1/auth/api-keys/verify", json=verify)
            assert answer.status_code == 200 and answer.json()["broker_token"] == "active"
            answer = await client.post("/api/v1/orders/context", json=context)
            assert answer.status_code == 200 and answer.json()["auth_token"] == "broker-auth-1"
        await asyncio.sleep(2.0)
        assert_problem(
            await client.post("/api/v1/auth/api-keys/verify", json=verify),
            410,
            "broker-token-expired",
        )
        assert_problem(
            await client.post("/api/v1/orders/context", json=context), 410, "broker-token-expired"
        )
        plain = await client.post("/api/v1/auth/api-keys/verify", json={"api_key": api_key})
        assert plain.json()["broker_token"] == "expired"

    async def test_a_new_login_clears_the_expiry_at_once(self, client, db):
        api_key = await self._key(client, db, "2020-01-01T00:00:00Z")
        verify = {"api_key": api_key, "include_auth": True}
        assert_problem(
            await client.post("/api/v1/auth/api-keys/verify", json=verify),
            410,
            "broker-token-expired",
        )
        renewed = {**REFRESHING, "auth_token": "broker-auth-2", "expires_at": _at(3600)}
        assert (await client.put(BROKER, json=renewed)).status_code == 200
        answer = await client.post("/api/v1/auth/api-keys/verify", json=verify)
        assert answer.status_code == 200 and answer.json()["auth_token"] == "broker-auth-2"


# --- sessions: expiry and data -----------------------------------------------------------------

SESSIONS = "/api/v1/auth/sessions"


def _session(n: int, **fields: Any) -> dict[str, Any]:
    return {"username": "alice", "session_id": f"session-{n:04d}", **fields}


def _parse(at: str) -> datetime:
    return datetime.fromisoformat(at)


class TestSessionExpiry:
    async def test_default_lifetime_is_the_setting(self, client_factory, db):
        for hours in (24, 3):
            client = await client_factory(
                **({} if hours == 24 else {"SESSION_LIFETIME_HOURS": hours})
            )
            if hours == 24:
                await _user(client)
            body = (await client.post(SESSIONS, json=_session(hours))).json()
            lifetime = _parse(body["expires_at"]) - _parse(body["created_at"])
            assert lifetime == timedelta(hours=hours), body
        rows = await _rows(db, "SELECT session_id, expires_at FROM sessions ORDER BY id")
        assert [r["session_id"] for r in rows] == ["session-0024", "session-0003"]

    async def test_given_expiry_and_data_are_kept(self, client, db):
        await _user(client)
        data = {"csrf": "abc", "cart": [1, 2], "nested": {"x": None}}
        response = await client.post(
            SESSIONS, json=_session(1, expires_at="2030-05-06T07:08:09+02:00", data=data)
        )
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["expires_at"] == "2030-05-06T05:08:09Z" and body["data"] == data
        assert (await client.get(SESSIONS)).json()["items"] == [body]
        [row] = await _rows(db, "SELECT data FROM sessions")
        assert _json(row["data"]) == data

    async def test_bad_expiry_or_data_is_422_and_writes_nothing(self, client, db):
        await _user(client)
        for bad in (
            {"expires_at": "2030-01-01"},
            {"data": {"k": "\x00"}},
            {"data": "x" * (16 * 1024)},
        ):
            assert_problem(await client.post(SESSIONS, json=_session(1, **bad)), 422)
        assert await _rows(db, "SELECT id FROM sessions") == []

    async def _expire(self, db: AsyncEngine, session_id: str) -> None:
        past = datetime.now(UTC) - timedelta(minutes=1)
        if BACKEND == "sqlite":
            past = past.replace(tzinfo=None)
        async with db.begin() as conn:
            await conn.execute(
                text("UPDATE sessions SET expires_at = :at WHERE session_id = :id"),
                {"at": past, "id": session_id},
            )

    async def test_expired_sessions_are_not_listed_or_touched(self, client, db):
        await _user(client)
        for n in (1, 2):
            await client.post(SESSIONS, json=_session(n, ip_address=f"10.0.0.{n}"))
        await self._expire(db, "session-0001")
        listed = (await client.get(SESSIONS, params={"username": "alice"})).json()["items"]
        assert [s["session_id"] for s in listed] == ["session-0002"]
        assert [s["session_id"] for s in (await client.get(SESSIONS)).json()["items"]] == [
            "session-0002"
        ]
        [before] = await _rows(
            db, "SELECT last_seen FROM sessions WHERE session_id = 'session-0001'"
        )
        assert_problem(await client.post(f"{SESSIONS}/session-0001/touch"), 404)
        [after] = await _rows(
            db, "SELECT last_seen FROM sessions WHERE session_id = 'session-0001'"
        )
        assert after == before
        assert (await client.post(f"{SESSIONS}/session-0002/touch")).status_code == 204

    async def test_expired_sessions_do_not_count_for_the_cap_and_go_at_login(self, client, db):
        await _user(client)
        for n in range(1, 6):
            await client.post(SESSIONS, json=_session(n, ip_address=f"10.0.0.{n}"))
        await self._expire(db, "session-0003")
        await client.post(SESSIONS, json=_session(6, ip_address="10.0.0.6"))
        ids = [
            r["session_id"] for r in await _rows(db, "SELECT session_id FROM sessions ORDER BY id")
        ]
        # The expired one went, so the oldest live one (1) stays: five live sessions.
        assert ids == [
            "session-0001",
            "session-0002",
            "session-0004",
            "session-0005",
            "session-0006",
        ]

    async def test_a_past_expiry_makes_a_session_expired_at_once(self, client, db):
        await _user(client)
        response = await client.post(SESSIONS, json=_session(1, expires_at="2020-01-01T00:00:00Z"))
        assert (
            response.status_code == 201 and response.json()["expires_at"] == "2020-01-01T00:00:00Z"
        )
        assert (await client.get(SESSIONS)).json() == {"items": []}
        assert_problem(await client.post(f"{SESSIONS}/session-0001/touch"), 404)
        assert (await client.delete("/api/v1/auth/expired-sessions")).json() == {"deleted": 1}

    async def test_retention_purges_expired_sessions(self, client, db):
        await _user(client)
        await _user(client, username="bob", email="bob@example.com")
        await client.post(SESSIONS, json=_session(1))
        await client.post(SESSIONS, json={**_session(2), "username": "bob"})
        await client.post(SESSIONS, json=_session(3, ip_address="10.0.0.3"))
        await self._expire(db, "session-0001")
        await self._expire(db, "session-0002")
        response = await client.delete("/api/v1/auth/expired-sessions")
        assert response.status_code == 200 and response.json() == {"deleted": 2}
        ids = [r["session_id"] for r in await _rows(db, "SELECT session_id FROM sessions")]
        assert ids == ["session-0003"]
        assert (await client.delete("/api/v1/auth/expired-sessions")).json() == {"deleted": 0}


# --- strategies: definition --------------------------------------------------------------------

FAMILIES = pytest.mark.parametrize(
    "prefix, table",
    [("/api/v1/strategies", "strategies"), ("/api/v1/chartink/strategies", "chartink_strategies")],
    ids=["strategies", "chartink"],
)
DEFINITION = {"entry": {"rsi_below": 30, "ma": [20, 50]}, "exit": "trailing", "risk": 0.5}


class TestStrategyDefinition:
    @FAMILIES
    async def test_created_read_updated_and_cleared(self, client, db, prefix, table):
        body = {"name": "Momentum", "user_id": "alice", "is_intraday": False}
        response = await client.post(prefix, json={**body, "definition": DEFINITION})
        assert response.status_code == 201, response.text
        created = response.json()
        assert created["definition"] == DEFINITION
        sid, webhook = created["id"], created["webhook_id"]
        by_id = await client.get(f"{prefix}/{sid}")
        assert by_id.json()["definition"] == DEFINITION
        hook = f"{prefix}/by-webhook/{webhook}"
        for _ in range(2):  # cold, then from the cache
            assert (await client.get(hook)).json()["definition"] == DEFINITION
        assert (await client.get(prefix)).json()["items"][0]["definition"] == DEFINITION
        [row] = await _rows(db, f"SELECT definition FROM {table}")
        assert _json(row["definition"]) == DEFINITION

        changed = {"entry": {"rsi_below": 25}}
        patched = await client.patch(f"{prefix}/{sid}", json={"definition": changed})
        assert patched.status_code == 200 and patched.json()["definition"] == changed
        # The cached by-webhook answer was invalidated by the change.
        assert (await client.get(hook)).json()["definition"] == changed
        renamed = await client.patch(f"{prefix}/{sid}", json={"name": "Renamed"})
        assert renamed.json()["definition"] == changed
        cleared = await client.patch(f"{prefix}/{sid}", json={"definition": None})
        assert cleared.json()["definition"] is None
        assert (await client.get(hook)).json()["definition"] is None

    @FAMILIES
    async def test_omitted_definition_is_null(self, client, prefix, table):
        created = await client.post(
            prefix, json={"name": "Plain", "user_id": "alice", "is_intraday": False}
        )
        assert created.json()["definition"] is None

    @FAMILIES
    async def test_size_limit_is_64_kib_and_bad_values_are_422(self, client, db, prefix, table):
        body = {"name": "Big", "user_id": "alice", "is_intraday": False}
        fits = "x" * (64 * 1024 - 2)
        created = await client.post(prefix, json={**body, "definition": fits})
        assert created.status_code == 201, created.text
        for bad in (fits + "x", {"k": "\x00"}, [2**64]):
            assert_problem(await client.post(prefix, json={**body, "definition": bad}), 422)
            patched = await client.patch(
                f"{prefix}/{created.json()['id']}", json={"definition": bad}
            )
            assert_problem(patched, 422)
        rows = await _rows(db, f"SELECT definition FROM {table}")
        assert [_json(r["definition"]) for r in rows] == [fits]
