"""auth: broker tokens, API keys (storage and order mode), sessions and login attempts.

Verification itself (cache, invalidation, problem types) is in test_api_key_verify.py.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from passlib.hash import argon2
from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.models.auth import LoginAttempt
from service.security import Pepper
from tests.support import PEPPER, RW_TOKEN, add_users, assert_problem, auth

TOKEN = {
    "auth_token": "broker-auth-token-1",
    "feed_token": "broker-feed-token-1",
    "broker": "zerodha",
}


async def _rows(db: AsyncEngine, table: str) -> list[dict[str, object]]:
    async with db.connect() as conn:
        result = await conn.execute(text(f"SELECT * FROM {table} ORDER BY id"))
        return [dict(r._mapping) for r in result]


@pytest.fixture
async def alice(db: AsyncEngine) -> str:
    await add_users(db, "alice")
    return "alice"


# --- broker tokens -----------------------------------------------------------------------------


class TestPutBrokerToken:
    async def test_stores_encrypted_and_answers_metadata_only(self, client, db, alice):
        response = await client.put(
            "/api/v1/auth/broker-tokens/alice", json={**TOKEN, "user_id": "AB1234"}
        )
        assert response.status_code == 200
        body = response.json()
        assert body == {
            "name": "alice",
            "broker": "zerodha",
            "user_id": "AB1234",
            "revoked": False,
            "has_feed_token": True,
            "has_refresh_token": False,
            "expires_at": None,
            "updated_at": body["updated_at"],
            "changed": True,
        }
        assert "broker-auth-token-1" not in response.text
        [row] = await _rows(db, "broker_tokens")
        assert row["auth_token_encrypted"].startswith("gAAAAA")
        assert "broker-auth-token-1" not in row["auth_token_encrypted"]
        assert "broker-feed-token-1" not in row["feed_token_encrypted"]

    async def test_same_token_again_is_unchanged_and_a_new_one_changed(self, client, alice):
        url = "/api/v1/auth/broker-tokens/alice"
        await client.put(url, json=TOKEN)
        again = await client.put(url, json=TOKEN)
        assert again.status_code == 200 and again.json()["changed"] is False
        new = await client.put(url, json={**TOKEN, "auth_token": "broker-auth-token-2"})
        assert new.json()["changed"] is True
        secret = await client.get(url + "/secret")
        assert secret.json()["auth_token"] == "broker-auth-token-2"

    async def test_is_a_full_replacement(self, client, db, alice):
        url = "/api/v1/auth/broker-tokens/alice"
        await client.put(url, json={**TOKEN, "user_id": "AB1234"})
        response = await client.put(url, json={"auth_token": "t2", "broker": "angel"})
        assert response.json()["has_feed_token"] is False
        assert response.json()["user_id"] is None
        [row] = await _rows(db, "broker_tokens")
        assert row["feed_token_encrypted"] is None and row["broker"] == "angel"

    async def test_put_revoked_stores_no_token(self, client, db, alice):
        response = await client.put(
            "/api/v1/auth/broker-tokens/alice", json={**TOKEN, "revoked": True}
        )
        assert response.json()["revoked"] is True
        [row] = await _rows(db, "broker_tokens")
        assert row["auth_token_encrypted"] is None and row["feed_token_encrypted"] is None

    async def test_unknown_user_is_404_and_writes_nothing(self, client, db):
        response = await client.put("/api/v1/auth/broker-tokens/nobody", json=TOKEN)
        assert_problem(response, 404, "not-found")
        assert await _rows(db, "broker_tokens") == []

    @pytest.mark.parametrize(
        "body, where",
        [
            ({"broker": "zerodha"}, "auth_token"),
            ({**TOKEN, "auth_token": ""}, "auth_token"),
            ({**TOKEN, "auth_token": "x" * 4097}, "auth_token"),
            ({**TOKEN, "feed_token": "x" * 4097}, "feed_token"),
            ({**TOKEN, "broker": "zero dha"}, "broker"),
            ({**TOKEN, "broker": "b" * 33}, "broker"),
            ({**TOKEN, "user_id": "u" * 256}, "user_id"),
            ({**TOKEN, "revoked": "perhaps"}, "revoked"),
            ({**TOKEN, "extra": 1}, "extra"),
        ],
    )
    async def test_bad_input_is_422_and_writes_nothing(self, client, db, alice, body, where):
        response = await client.put("/api/v1/auth/broker-tokens/alice", json=body)
        problem = assert_problem(response, 422, "validation")
        assert problem["errors"][0]["loc"] == ["body", where]
        assert await _rows(db, "broker_tokens") == []


class TestReadBrokerToken:
    async def test_metadata_never_has_the_tokens(self, client, alice):
        await client.put("/api/v1/auth/broker-tokens/alice", json=TOKEN)
        response = await client.get("/api/v1/auth/broker-tokens/alice", headers=auth(RW_TOKEN))
        assert response.status_code == 200
        assert set(response.json()) == {
            "name",
            "broker",
            "user_id",
            "revoked",
            "has_feed_token",
            "has_refresh_token",
            "expires_at",
            "updated_at",
        }
        assert "broker-auth-token-1" not in response.text

    async def test_secret_in_plaintext_with_the_secrets_scope(self, client, alice):
        await client.put("/api/v1/auth/broker-tokens/alice", json=TOKEN)
        response = await client.get("/api/v1/auth/broker-tokens/alice/secret")
        assert response.status_code == 200
        assert response.json() == {
            "name": "alice",
            "broker": "zerodha",
            "user_id": None,
            "auth_token": "broker-auth-token-1",
            "feed_token": "broker-feed-token-1",
            "refresh_token": None,
            "expires_at": None,
        }
        denied = await client.get("/api/v1/auth/broker-tokens/alice/secret", headers=auth(RW_TOKEN))
        assert_problem(denied, 403, "forbidden")

    async def test_missing_is_404(self, client, alice):
        assert_problem(await client.get("/api/v1/auth/broker-tokens/alice"), 404, "not-found")
        assert_problem(
            await client.get("/api/v1/auth/broker-tokens/alice/secret"), 404, "not-found"
        )


class TestRevokeBrokerToken:
    async def test_revoke_erases_the_tokens(self, client, db, alice):
        await client.put("/api/v1/auth/broker-tokens/alice", json=TOKEN)
        response = await client.post("/api/v1/auth/broker-tokens/alice/revoke")
        assert response.status_code == 200
        assert response.json()["revoked"] is True
        assert response.json()["has_feed_token"] is False
        [row] = await _rows(db, "broker_tokens")
        assert row["revoked"] in (True, 1)
        assert row["auth_token_encrypted"] is None and row["feed_token_encrypted"] is None
        secret = await client.get("/api/v1/auth/broker-tokens/alice/secret")
        assert "revoked" in assert_problem(secret, 404, "not-found")["detail"]
        relogin = await client.put("/api/v1/auth/broker-tokens/alice", json=TOKEN)
        assert relogin.json()["revoked"] is False and relogin.json()["changed"] is True

    async def test_unknown_is_404(self, client, alice):
        response = await client.post("/api/v1/auth/broker-tokens/alice/revoke")
        assert_problem(response, 404, "not-found")


# --- API keys ----------------------------------------------------------------------------------


class TestPutApiKey:
    async def test_generated_key_is_64_hex_and_stored_three_ways(self, client, db, alice):
        response = await client.put("/api/v1/auth/api-keys/alice", json={})
        assert response.status_code == 200
        body = response.json()
        key = body["api_key"]
        assert re.fullmatch(r"[0-9a-f]{64}", key)
        assert body == {
            "user_id": "alice",
            "api_key": key,
            "order_mode": "auto",
            "created_at": body["created_at"],
        }
        [row] = await _rows(db, "api_keys")
        assert row["key_digest"] == Pepper(PEPPER.encode()).digest(key)
        assert argon2.verify(key + PEPPER, row["key_hash"])
        assert row["key_encrypted"].startswith("gAAAAA")
        assert key not in str(row)

    async def test_supplied_key_is_kept(self, client, alice):
        key = "k" * 40
        response = await client.put("/api/v1/auth/api-keys/alice", json={"api_key": key})
        assert response.json()["api_key"] == key
        assert (await client.get("/api/v1/auth/api-keys/alice")).json()["api_key"] == key

    async def test_rotation_keeps_order_mode_and_renews_created_at(self, client, db, alice):
        first = (await client.put("/api/v1/auth/api-keys/alice", json={})).json()
        await client.put("/api/v1/auth/api-keys/alice/order-mode", json={"order_mode": "semi_auto"})
        second = (await client.put("/api/v1/auth/api-keys/alice", json={})).json()
        assert second["api_key"] != first["api_key"]
        assert second["order_mode"] == "semi_auto"
        assert second["created_at"] > first["created_at"]
        assert len(await _rows(db, "api_keys")) == 1

    async def test_answer_carries_the_key_so_it_needs_the_secrets_scope(self, client, db, alice):
        response = await client.put("/api/v1/auth/api-keys/alice", json={}, headers=auth(RW_TOKEN))
        assert_problem(response, 403, "forbidden")
        assert await _rows(db, "api_keys") == []

    async def test_unknown_user_is_404(self, client, db):
        response = await client.put("/api/v1/auth/api-keys/nobody", json={})
        assert_problem(response, 404, "not-found")
        assert await _rows(db, "api_keys") == []

    async def test_key_of_another_user_is_409_and_keeps_both(self, client, db):
        await add_users(db, "alice", "bob")
        key = "s" * 64
        await client.put("/api/v1/auth/api-keys/alice", json={"api_key": key})
        response = await client.put("/api/v1/auth/api-keys/bob", json={"api_key": key})
        assert_problem(response, 409, "conflict")
        assert [r["user_id"] for r in await _rows(db, "api_keys")] == ["alice"]

    @pytest.mark.parametrize(
        "body",
        [{"api_key": "short"}, {"api_key": "k" * 129}, {"api_key": "k" * 40 + "!"}, {"x": 1}],
    )
    async def test_bad_input_is_422_and_writes_nothing(self, client, db, alice, body):
        response = await client.put("/api/v1/auth/api-keys/alice", json=body)
        assert_problem(response, 422, "validation")
        assert await _rows(db, "api_keys") == []
        assert "api_key" not in body or body["api_key"] not in response.text


class TestGetAndDeleteApiKey:
    async def test_get_needs_the_secrets_scope(self, client, alice):
        await client.put("/api/v1/auth/api-keys/alice", json={})
        response = await client.get("/api/v1/auth/api-keys/alice", headers=auth(RW_TOKEN))
        assert_problem(response, 403, "forbidden")

    async def test_missing_is_404(self, client, alice):
        assert_problem(await client.get("/api/v1/auth/api-keys/alice"), 404, "not-found")
        assert_problem(await client.delete("/api/v1/auth/api-keys/alice"), 404, "not-found")

    async def test_delete(self, client, db, alice):
        await client.put("/api/v1/auth/api-keys/alice", json={})
        response = await client.delete("/api/v1/auth/api-keys/alice")
        assert response.status_code == 204
        assert await _rows(db, "api_keys") == []
        assert_problem(await client.get("/api/v1/auth/api-keys/alice"), 404, "not-found")


class TestOrderMode:
    async def test_set(self, client, db, alice):
        created = (await client.put("/api/v1/auth/api-keys/alice", json={})).json()
        response = await client.put(
            "/api/v1/auth/api-keys/alice/order-mode", json={"order_mode": "semi_auto"}
        )
        assert response.status_code == 200
        assert response.json() == {
            "user_id": "alice",
            "order_mode": "semi_auto",
            "created_at": created["created_at"],
        }
        assert (await _rows(db, "api_keys"))[0]["order_mode"] == "semi_auto"

    async def test_unknown_mode_is_422_and_writes_nothing(self, client, db, alice):
        await client.put("/api/v1/auth/api-keys/alice", json={})
        response = await client.put(
            "/api/v1/auth/api-keys/alice/order-mode", json={"order_mode": "manual"}
        )
        assert_problem(response, 422, "validation")
        assert (await _rows(db, "api_keys"))[0]["order_mode"] == "auto"

    async def test_without_a_key_is_404(self, client, alice):
        response = await client.put(
            "/api/v1/auth/api-keys/alice/order-mode", json={"order_mode": "auto"}
        )
        assert_problem(response, 404, "not-found")


# --- sessions ----------------------------------------------------------------------------------


def _session(n: int, **fields: object) -> dict[str, object]:
    return {"username": "alice", "session_id": f"session-{n:04d}", **fields}


class TestSessions:
    async def test_create_and_list(self, client, alice):
        response = await client.post(
            "/api/v1/auth/sessions",
            json=_session(1, device_info="Firefox", ip_address="10.0.0.1", broker="zerodha"),
        )
        assert response.status_code == 201
        body = response.json()
        assert body == {
            "session_id": "session-0001",
            "username": "alice",
            "device_info": "Firefox",
            "ip_address": "10.0.0.1",
            "broker": "zerodha",
            "created_at": body["created_at"],
            "last_seen": body["created_at"],
            "expires_at": body["expires_at"],
            "data": None,
        }
        listed = await client.get("/api/v1/auth/sessions", params={"username": "alice"})
        assert listed.json() == {"items": [body]}

    async def test_same_user_and_ip_replaces_the_earlier_session(self, client, db, alice):
        await client.post("/api/v1/auth/sessions", json=_session(1, ip_address="10.0.0.1"))
        await client.post("/api/v1/auth/sessions", json=_session(2, ip_address="10.0.0.2"))
        # The same address, spelled as IPv4-mapped IPv6.
        await client.post("/api/v1/auth/sessions", json=_session(3, ip_address="::ffff:10.0.0.1"))
        ids = sorted(r["session_id"] for r in await _rows(db, "sessions"))
        assert ids == ["session-0002", "session-0003"]

    async def test_at_most_five_per_user_and_the_oldest_goes(self, client, db):
        await add_users(db, "alice", "bob")
        await client.post(
            "/api/v1/auth/sessions", json={"username": "bob", "session_id": "bob-session-1"}
        )
        for n in range(1, 8):
            response = await client.post("/api/v1/auth/sessions", json=_session(n))
            assert response.status_code == 201
        rows = await _rows(db, "sessions")
        assert sorted(r["session_id"] for r in rows if r["username"] == "alice") == [
            f"session-{n:04d}" for n in range(3, 8)
        ]
        assert [r["session_id"] for r in rows if r["username"] == "bob"] == ["bob-session-1"]

    async def test_touch_moves_a_session_to_the_front(self, client, alice):
        for n in (1, 2, 3):
            await client.post("/api/v1/auth/sessions", json=_session(n))
        listed = await client.get("/api/v1/auth/sessions", params={"username": "alice"})
        assert [s["session_id"] for s in listed.json()["items"]] == [
            "session-0003",
            "session-0002",
            "session-0001",
        ]
        response = await client.post("/api/v1/auth/sessions/session-0001/touch")
        assert response.status_code == 204
        listed = await client.get("/api/v1/auth/sessions", params={"username": "alice"})
        first = listed.json()["items"][0]
        assert first["session_id"] == "session-0001"
        assert first["last_seen"] > first["created_at"]

    async def test_delete_one_and_all_of_a_user(self, client, db):
        await add_users(db, "alice", "bob")
        for n in (1, 2, 3):
            await client.post("/api/v1/auth/sessions", json=_session(n))
        await client.post(
            "/api/v1/auth/sessions", json={"username": "bob", "session_id": "bob-session-1"}
        )
        assert (await client.delete("/api/v1/auth/sessions/session-0002")).status_code == 204
        response = await client.delete("/api/v1/auth/sessions", params={"username": "alice"})
        assert response.status_code == 200 and response.json() == {"deleted": 2}
        assert [r["session_id"] for r in await _rows(db, "sessions")] == ["bob-session-1"]

    async def test_unknown_session_is_404(self, client, alice):
        assert_problem(await client.post("/api/v1/auth/sessions/nope-1234/touch"), 404, "not-found")
        assert_problem(await client.delete("/api/v1/auth/sessions/nope-1234"), 404, "not-found")

    async def test_delete_all_needs_a_username(self, client, alice):
        await client.post("/api/v1/auth/sessions", json=_session(1))
        assert_problem(await client.delete("/api/v1/auth/sessions"), 422, "validation")

    async def test_unknown_user_is_404_and_writes_nothing(self, client, db):
        response = await client.post("/api/v1/auth/sessions", json=_session(1))
        assert_problem(response, 404, "not-found")
        assert await _rows(db, "sessions") == []

    async def test_session_id_of_another_user_is_409(self, client, db):
        await add_users(db, "alice", "bob")
        await client.post("/api/v1/auth/sessions", json=_session(1))
        response = await client.post(
            "/api/v1/auth/sessions", json={"username": "bob", "session_id": "session-0001"}
        )
        assert_problem(response, 409, "conflict")
        assert [r["username"] for r in await _rows(db, "sessions")] == ["alice"]

    @pytest.mark.parametrize(
        "fields, where",
        [
            ({"ip_address": "10.0.0.300"}, "ip_address"),
            ({"ip_address": "localhost"}, "ip_address"),
            ({"device_info": "d" * 501}, "device_info"),
            ({"session_id": "short"}, "session_id"),
            ({"session_id": "has space in it"}, "session_id"),
            ({"username": "bad name"}, "username"),
        ],
    )
    async def test_bad_input_is_422_and_writes_nothing(self, client, db, alice, fields, where):
        response = await client.post("/api/v1/auth/sessions", json=_session(1, **fields))
        assert assert_problem(response, 422, "validation")["errors"][0]["loc"] == ["body", where]
        assert await _rows(db, "sessions") == []


# --- login attempts ----------------------------------------------------------------------------


class TestLoginAttempts:
    async def test_create(self, client, db):
        response = await client.post(
            "/api/v1/auth/login-attempts",
            json={
                "username": "mallory",
                "ip_address": "2001:DB8::1",
                "device_info": "curl/8",
                "status": "failed",
                "login_type": "password",
                "broker": "zerodha",
                "failure_reason": "invalid_password",
            },
        )
        assert response.status_code == 201
        body = response.json()
        assert body == {
            "id": body["id"],
            "username": "mallory",
            "ip_address": "2001:db8::1",
            "device_info": "curl/8",
            "status": "failed",
            "login_type": "password",
            "broker": "zerodha",
            "failure_reason": "invalid_password",
            "created_at": body["created_at"],
        }
        assert [r["username"] for r in await _rows(db, "login_attempts")] == ["mallory"]

    async def _arrange(self, db: AsyncEngine, count: int) -> None:
        start = datetime(2026, 1, 1, tzinfo=UTC)
        rows = [
            {
                "username": "alice" if n % 2 else "bob",
                "status": "success" if n % 3 else "failed",
                # pairs share a timestamp, so the cursor must break ties by id
                "created_at": start + timedelta(seconds=n // 2),
            }
            for n in range(count)
        ]
        async with db.begin() as conn:
            for row in rows:  # one by one, so ids follow the list
                await conn.execute(insert(LoginAttempt), row)

    async def test_cursor_walks_every_row_newest_first(self, client, db):
        await self._arrange(db, 25)
        seen: list[int] = []
        cursor = None
        while True:
            params = {"limit": 4} | ({"cursor": cursor} if cursor else {})
            response = await client.get("/api/v1/auth/login-attempts", params=params)
            assert response.status_code == 200
            page = response.json()
            assert len(page["items"]) <= 4
            seen += [item["id"] for item in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == list(range(25, 0, -1))

    async def test_a_cursor_id_past_the_32_bit_id_column_reads_the_rows_at_its_time(
        self, client, db
    ):
        """Any cursor of the documented shape is a position: one whose id no 32-bit id column
        can hold still pages (it lies after every row sharing its time), never a 422 or 500."""
        await self._arrange(db, 4)  # two rows at 00:00:00, two at 00:00:01
        at = int(datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC).timestamp() * 1_000_000)
        cursor = f"{at}_{2**40}"
        response = await client.get("/api/v1/auth/login-attempts", params={"cursor": cursor})
        assert response.status_code == 200, response.text
        assert [item["id"] for item in response.json()["items"]] == [4, 3, 2, 1]

    async def test_filters(self, client, db):
        await self._arrange(db, 12)
        failed = await client.get("/api/v1/auth/login-attempts", params={"status": "failed"})
        assert [i["id"] for i in failed.json()["items"]] == [10, 7, 4, 1]
        mine = await client.get(
            "/api/v1/auth/login-attempts", params={"username": "alice", "status": "success"}
        )
        assert [i["id"] for i in mine.json()["items"]] == [12, 8, 6, 2]
        assert all(i["username"] == "alice" for i in mine.json()["items"])

    async def test_bad_query_is_422(self, client):
        for params in ({"status": "maybe"}, {"limit": 0}, {"limit": 1001}, {"cursor": "!!"}):
            response = await client.get("/api/v1/auth/login-attempts", params=params)
            assert_problem(response, 422, "validation")

    @pytest.mark.parametrize(
        "fields, where",
        [
            ({"status": "locked"}, "status"),
            ({"username": ""}, "username"),
            ({"device_info": "x" * 501}, "device_info"),
            ({"failure_reason": "x" * 256}, "failure_reason"),
            ({"ip_address": "not-an-ip"}, "ip_address"),
        ],
    )
    async def test_bad_input_is_422_and_writes_nothing(self, client, db, fields, where):
        body = {"username": "alice", "status": "failed", **fields}
        response = await client.post("/api/v1/auth/login-attempts", json=body)
        assert assert_problem(response, 422, "validation")["errors"][0]["loc"] == ["body", where]
        assert await _rows(db, "login_attempts") == []

    async def test_delete_all_or_before(self, client, db):
        await self._arrange(db, 6)  # timestamps 00:00:00 x2, 00:00:01 x2, 00:00:02 x2
        response = await client.delete(
            "/api/v1/auth/login-attempts", params={"before": "2026-01-01T00:00:01+00:00"}
        )
        assert response.json() == {"deleted": 2}
        assert [r["id"] for r in await _rows(db, "login_attempts")] == [3, 4, 5, 6]
        assert (await client.delete("/api/v1/auth/login-attempts")).json() == {"deleted": 4}
        assert await _rows(db, "login_attempts") == []
