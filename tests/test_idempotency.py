"""Idempotency-Key on the POSTs that write: a repeat gets the first answer and writes nothing, on
both backends, across instances and restarts, for the configured time."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import Table, insert, select, text, update

from service import idempotency
from service.models.idempotency import IdempotencyKey
from tests.support import RW_TOKEN, add_users, assert_problem, auth

TABLE: Table = IdempotencyKey.__table__  # type: ignore[assignment]
KEY = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"


async def count(db: Any, sql: str, **params: Any) -> int:
    async with db.connect() as conn:
        return int((await conn.execute(text(sql), params)).scalar_one())


async def keys(db: Any) -> list[Any]:
    async with db.connect() as conn:
        return list((await conn.execute(select(TABLE).order_by(TABLE.c.id))).all())


def keyed(key: str, **headers: str) -> dict[str, str]:
    return {KEY: key, **headers}


def same_answer(first: httpx.Response, repeat: httpx.Response) -> None:
    assert repeat.status_code == first.status_code
    assert repeat.content == first.content
    assert repeat.headers["content-type"] == first.headers["content-type"]
    assert repeat.headers[REPLAYED] == "true"
    assert REPLAYED not in first.headers


# One POST of each family that writes, and the count of what it wrote.
FAMILIES = {
    "users": (
        "/api/v1/users",
        {"username": "carol", "email": "carol@example.com", "password": "correct horse 1"},
        "SELECT count(*) FROM users WHERE username = 'carol'",
    ),
    "order-logs": (
        "/api/v1/order-logs",
        {"api_type": "placeorder", "request_data": {"symbol": "SBIN"}, "response_data": {}},
        "SELECT count(*) FROM order_logs",
    ),
    "strategies": (
        "/api/v1/strategies",
        {
            "name": "Momentum",
            "user_id": "alice",
            "start_time": "09:15",
            "end_time": "15:00",
            "squareoff_time": "15:15",
        },
        "SELECT count(*) FROM strategies",
    ),
    # Banning again would extend the ban and count the repeat: the count must stay at 1.
    "bans": (
        "/api/v1/traffic/bans",
        {"ip_address": "203.0.113.9", "duration_hours": 2},
        "SELECT sum(ban_count) FROM ip_bans",
    ),
    "404 tracker": (
        "/api/v1/traffic/404s",
        {"ip_address": "203.0.113.10", "path": "/wp-login.php"},
        "SELECT sum(count) FROM ip_offence_counters",
    ),
    "sessions": (
        "/api/v1/auth/sessions",
        {"username": "alice", "session_id": "session-0001"},
        "SELECT count(*) FROM sessions",
    ),
}


@pytest.fixture(params=list(FAMILIES), ids=list(FAMILIES))
async def family(request: pytest.FixtureRequest, db: Any) -> tuple[str, dict[str, Any], str]:
    await add_users(db, "alice")
    return FAMILIES[request.param]


class TestRepeat:
    async def test_a_repeat_gets_the_first_answer_and_writes_nothing(self, client, db, family):
        path, body, written = family
        first = await client.post(path, json=body, headers=keyed("k-1"))
        assert first.status_code in (200, 201), first.text
        assert await count(db, written) == 1
        for _ in range(2):
            repeat = await client.post(path, json=body, headers=keyed("k-1"))
            same_answer(first, repeat)
        assert await count(db, written) == 1
        [row] = await keys(db)
        assert (row.caller, row.key, row.status) == ("full", "k-1", first.status_code)

    async def test_without_a_key_every_post_writes(self, client, db):
        path, body, written = FAMILIES["order-logs"]
        for _ in range(2):
            assert (await client.post(path, json=body)).status_code == 201
        assert await count(db, written) == 2
        assert await keys(db) == []

    async def test_another_key_is_another_request(self, client, db):
        path, body, written = FAMILIES["order-logs"]
        one = await client.post(path, json=body, headers=keyed("one"))
        two = await client.post(path, json=body, headers=keyed("two"))
        assert one.json() != two.json()
        assert REPLAYED not in two.headers
        assert await count(db, written) == 2

    async def test_the_location_and_other_headers_are_replayed(self, client):
        path, body, _ = FAMILIES["users"]
        first = await client.post(path, json=body, headers=keyed("loc"))
        repeat = await client.post(path, json=body, headers=keyed("loc"))
        same_answer(first, repeat)
        # Everything the route answered, byte for byte; the request id is each request's own.
        for name in ("content-length", "content-type"):
            assert repeat.headers[name] == first.headers[name]
        assert repeat.headers["x-request-id"] != first.headers["x-request-id"]

    async def test_replays_are_counted_under_their_route(self, client):
        path, body, _ = FAMILIES["order-logs"]
        for _ in range(3):
            await client.post(path, json=body, headers=keyed("m"))
        metrics = (await client.get("/metrics")).text
        line = 'algoways_http_requests_total{method="POST",route="/api/v1/order-logs",status="201"}'
        assert f"{line} 3.0" in metrics

    async def test_a_4xx_is_kept_too(self, client, db):
        path, body, written = FAMILIES["users"]
        bad = {**body, "email": "not an email"}
        first = assert_problem(await client.post(path, json=bad, headers=keyed("bad")), 422)
        repeat = await client.post(path, json=bad, headers=keyed("bad"))
        assert_problem(repeat, 422)
        assert repeat.json() == first and repeat.headers[REPLAYED] == "true"
        assert await count(db, written) == 0

    async def test_a_conflict_is_replayed_even_once_it_is_gone(self, client, db):
        path, body, written = FAMILIES["users"]
        assert (await client.post(path, json=body)).status_code == 201
        conflict = await client.post(path, json=body, headers=keyed("dup"))
        assert_problem(conflict, 409)
        assert (await client.delete("/api/v1/users/carol")).status_code == 204
        repeat = await client.post(path, json=body, headers=keyed("dup"))
        same_answer(conflict, repeat)
        assert await count(db, written) == 0


class TestAnotherRequest:
    async def test_another_body_is_422_and_writes_nothing(self, client, db):
        path, body, written = FAMILIES["users"]
        first = await client.post(path, json=body, headers=keyed("k"))
        assert first.status_code == 201
        other = {**body, "username": "dave", "email": "dave@example.com"}
        problem = assert_problem(
            await client.post(path, json=other, headers=keyed("k")), 422, "idempotency-key-reused"
        )
        assert problem["errors"][0]["loc"] == ["header", KEY]
        assert await count(db, written) == 1
        assert await count(db, "SELECT count(*) FROM users WHERE username = 'dave'") == 0
        # The stored answer is untouched: the first request still gets it.
        same_answer(first, await client.post(path, json=body, headers=keyed("k")))

    async def test_the_same_body_on_another_route_is_422(self, client, db):
        assert (
            await client.post(
                "/api/v1/order-logs", json=FAMILIES["order-logs"][1], headers=keyed("r")
            )
        ).status_code == 201
        response = await client.post(
            "/api/v1/analyzer-logs", json=FAMILIES["order-logs"][1], headers=keyed("r")
        )
        assert_problem(response, 422, "idempotency-key-reused")
        assert await count(db, "SELECT count(*) FROM analyzer_logs") == 0

    async def test_the_body_is_compared_byte_for_byte(self, client, db):
        path, _, written = FAMILIES["order-logs"]
        compact = b'{"api_type":"placeorder","request_data":{},"response_data":{}}'
        spaced = b'{"api_type": "placeorder", "request_data": {}, "response_data": {}}'
        json_type = {"Content-Type": "application/json"}
        first = await client.post(path, content=compact, headers=keyed("b", **json_type))
        assert first.status_code == 201
        again = await client.post(path, content=spaced, headers=keyed("b", **json_type))
        assert_problem(again, 422, "idempotency-key-reused")
        assert await count(db, written) == 1


class TestConcurrentDuplicates:
    @pytest.mark.parametrize("name", ["users", "order-logs", "bans"])
    async def test_ten_at_once_write_once(self, client, db, name):
        path, body, written = FAMILIES[name]
        answers = await asyncio.gather(
            *(client.post(path, json=body, headers=keyed("burst")) for _ in range(10))
        )
        statuses = {a.status_code for a in answers}
        assert statuses == {201}, [a.text for a in answers]
        assert len({a.content for a in answers}) == 1
        assert sum(REPLAYED not in a.headers for a in answers) == 1
        assert await count(db, written) == 1

    async def test_on_two_instances_at_once_write_once(self, client_factory, db):
        path, body, written = FAMILIES["order-logs"]
        one, two = await client_factory(), await client_factory()
        answers = await asyncio.gather(
            *(c.post(path, json=body, headers=keyed("spread")) for c in [one, two] * 5)
        )
        assert {a.status_code for a in answers} == {201}
        assert len({a.content for a in answers}) == 1
        assert await count(db, written) == 1

    async def test_one_still_running_past_the_wait_is_409_with_retry_after(
        self, client, db, monkeypatch
    ):
        path, body, written = FAMILIES["order-logs"]
        first = await client.post(path, json=body, headers=keyed("done"))
        [row] = await keys(db)
        # Another instance holds "busy" for the same request and has not answered yet.
        now = datetime.now(UTC)
        async with db.begin() as conn:
            await conn.execute(
                insert(TABLE).values(
                    caller="full",
                    key="busy",
                    fingerprint=row.fingerprint,
                    locked_at=now,
                    expires_at=now + timedelta(hours=1),
                )
            )
        monkeypatch.setattr(idempotency, "WAIT_S", 0.3)
        busy = await client.post(path, json=body, headers=keyed("busy"))
        assert_problem(busy, 409, "idempotency-key-in-flight")
        assert busy.headers["retry-after"] == "1"
        assert await count(db, written) == 1
        # Past its lease the claim is taken over: the request runs, once.
        async with db.begin() as conn:
            await conn.execute(
                update(TABLE)
                .where(TABLE.c.key == "busy")
                .values(locked_at=now - timedelta(seconds=idempotency.IN_FLIGHT_LEASE_S + 1))
            )
        taken = await client.post(path, json=body, headers=keyed("busy"))
        assert taken.status_code == 201 and REPLAYED not in taken.headers
        assert taken.json() != first.json()
        assert await count(db, written) == 2
        same_answer(taken, await client.post(path, json=body, headers=keyed("busy")))


class TestScope:
    async def test_two_callers_with_one_key_are_independent(self, client, db):
        path, body, written = FAMILIES["order-logs"]
        mine = await client.post(path, json=body, headers=keyed("shared"))
        other_body = {**body, "api_type": "cancelorder"}
        theirs = await client.post(path, json=other_body, headers=keyed("shared", **auth(RW_TOKEN)))
        assert theirs.status_code == 201 and REPLAYED not in theirs.headers
        assert theirs.json() != mine.json()
        assert await count(db, written) == 2
        same_answer(mine, await client.post(path, json=body, headers=keyed("shared")))
        same_answer(
            theirs,
            await client.post(path, json=other_body, headers=keyed("shared", **auth(RW_TOKEN))),
        )
        assert sorted(r.caller for r in await keys(db)) == ["full", "rw"]


class TestDurability:
    async def test_a_new_instance_replays_the_stored_answer(self, client_factory, db):
        path, body, written = FAMILIES["strategies"]
        before = await client_factory()
        first = await before.post(path, json=body, headers=keyed("restart"))
        assert first.status_code == 201
        after = await client_factory()  # another instance, or this one restarted
        same_answer(first, await after.post(path, json=body, headers=keyed("restart")))
        assert await count(db, written) == 1

    async def test_answers_are_kept_for_the_configured_time(self, client_factory, db):
        client = await client_factory(IDEMPOTENCY_TTL_SECONDS=60)
        path, body, written = FAMILIES["order-logs"]
        first = await client.post(path, json=body, headers=keyed("ttl"))
        [row] = await keys(db)
        kept = _seconds(row.expires_at) - _seconds(row.locked_at)
        assert 59 < kept <= 61
        same_answer(first, await client.post(path, json=body, headers=keyed("ttl")))
        # Expired: the key is free again and the request runs anew.
        await _expire(db, "ttl")
        again = await client.post(path, json=body, headers=keyed("ttl"))
        assert again.status_code == 201 and REPLAYED not in again.headers
        assert again.json() != first.json()
        assert await count(db, written) == 2

    async def test_the_default_is_24_hours(self, client, db):
        path, body, _ = FAMILIES["order-logs"]
        await client.post(path, json=body, headers=keyed("day"))
        [row] = await keys(db)
        assert 86_399 < _seconds(row.expires_at) - _seconds(row.locked_at) <= 86_401

    async def test_expired_keys_are_purged(self, client_factory, db):
        path, body, _ = FAMILIES["order-logs"]
        first = await client_factory()
        for key in ("old-1", "old-2", "fresh"):
            await first.post(path, json=body, headers=keyed(key))
        await _expire(db, "old-1")
        await _expire(db, "old-2")
        # A new instance purges on its first keyed answer (then at most every few minutes).
        second = await client_factory()
        await second.post(path, json=body, headers=keyed("new"))
        assert sorted(r.key for r in await keys(db)) == ["fresh", "new"]


def _seconds(value: datetime) -> float:
    return value.timestamp()


async def _expire(db: Any, key: str) -> None:
    async with db.begin() as conn:
        await conn.execute(
            update(TABLE)
            .where(TABLE.c.key == key)
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )


class TestNotKept:
    async def test_a_5xx_is_not_kept_and_the_retry_runs(self, client_factory, db):
        path, body, written = FAMILIES["order-logs"]
        stopping = await client_factory()
        # This instance is shutting down: its log writer refuses rows with 503.
        await stopping.app.state.store.runtime.writers.order_logs.stop()
        refused = await stopping.post(path, json=body, headers=keyed("retry"))
        assert_problem(refused, 503)
        assert await keys(db) == []
        retried = await (await client_factory()).post(path, json=body, headers=keyed("retry"))
        assert retried.status_code == 201 and REPLAYED not in retried.headers
        assert await count(db, written) == 1

    async def test_a_token_without_the_scope_is_not_kept(self, client_factory, db):
        from tests.support import RO_TOKEN

        path, body, _ = FAMILIES["order-logs"]
        client = await client_factory()
        assert_problem(
            await client.post(path, json=body, headers=keyed("ro", **auth(RO_TOKEN))), 403
        )
        assert await keys(db) == []

    @pytest.mark.parametrize(
        "path, body",
        [
            ("/api/v1/auth/api-keys/verify", {"api_key": "x" * 32}),
            ("/api/v1/tokens/lookup", {"items": [{"exchange": "NSE", "symbol": "SBIN"}]}),
            ("/api/v1/users/alice/verify-password", {"password": "whatever"}),
        ],
    )
    async def test_read_only_posts_ignore_the_key(self, client, db, path, body):
        await add_users(db, "alice")
        first = await client.post(path, json=body, headers=keyed("ro"))
        second = await client.post(path, json=body, headers=keyed("ro"))
        assert first.status_code == second.status_code
        assert REPLAYED not in second.headers
        assert await keys(db) == []


class TestKeyForm:
    @pytest.mark.parametrize(
        "value",
        [b"", b"k" * 256, b" padded", b"tab\there", "caf\u00e9".encode("latin-1"), b"nul\x7f"],
        ids=["empty", "too-long", "leading-space", "tab", "non-ascii", "del"],
    )
    async def test_a_malformed_key_is_422_and_writes_nothing(self, client, db, value):
        path, body, written = FAMILIES["order-logs"]
        request = client.build_request("POST", path, json=body)
        request.headers = httpx.Headers([*request.headers.raw, (KEY.encode(), value)])
        problem = assert_problem(await client.send(request), 422, "validation")
        assert problem["errors"][0]["loc"] == ["header", KEY]
        assert await count(db, written) == 0
        assert await keys(db) == []

    async def test_the_longest_key_and_inner_spaces_are_fine(self, client):
        path, body, _ = FAMILIES["order-logs"]
        for value in ("k" * 255, "a key with ~ punctuation!"):
            response = await client.post(path, json=body, headers=keyed(value))
            assert response.status_code == 201

    async def test_two_keys_are_422(self, client, db):
        path, body, written = FAMILIES["order-logs"]
        request = client.build_request("POST", path, json=body)
        request.headers = httpx.Headers([*request.headers.multi_items(), (KEY, "a"), (KEY, "b")])
        assert_problem(await client.send(request), 422, "validation")
        assert await count(db, written) == 0

    async def test_a_streamed_body_over_the_limit_is_413(self, client_factory, db):
        client = await client_factory(MAX_BODY_BYTES=1024)
        path, _, written = FAMILIES["order-logs"]

        async def chunked():  # no Content-Length: the limit is met while the body is read
            for _ in range(4):
                yield b" " * 512

        response = await client.post(
            path,
            content=chunked(),
            headers=keyed("big", **{"Content-Type": "application/json"}),
        )
        assert_problem(response, 413)
        assert await count(db, written) == 0
        assert await keys(db) == []


class TestDocument:
    async def test_the_header_is_on_exactly_the_posts_that_write(self, client):
        document = (await client.get("/openapi.json")).json()
        with_key, without = set(), set()
        for path, operations in document["paths"].items():
            post = operations.get("post")
            if post is None or not path.startswith("/api/v1"):
                continue
            names = [p["name"] for p in post.get("parameters", []) if p["in"] == "header"]
            (with_key if KEY in names else without).add(path)
            if KEY in names:
                conflict = post["responses"]["409"]
                assert conflict["headers"]["Retry-After"]["schema"]["type"] == "integer"
                created = next(r for c, r in post["responses"].items() if c.startswith("2"))
                assert REPLAYED in created["headers"]
        assert without == {
            "/api/v1/auth/api-keys/verify",
            "/api/v1/tokens/lookup",
            "/api/v1/users/{username}/verify-password",
            "/api/v1/orders/context",
            "/api/v1/orders/context/batch",
        }
        assert "/api/v1/orders/record" in with_key
        for path in (
            "/api/v1/users",
            "/api/v1/auth/sessions",
            "/api/v1/auth/login-attempts",
            "/api/v1/strategies",
            "/api/v1/strategies/{strategy_id}/symbols",
            "/api/v1/chartink/strategies",
            "/api/v1/order-logs",
            "/api/v1/analyzer-logs",
            "/api/v1/traffic/logs",
            "/api/v1/traffic/bans",
            "/api/v1/traffic/404s",
            "/api/v1/traffic/invalid-api-keys",
            "/api/v1/latency",
        ):
            assert path in with_key, path
