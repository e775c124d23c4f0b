"""traffic logs: ingestion with normalised addresses, filtered keyset pages, request stats,
retention."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy
import pytest
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from service.models.traffic import IPOffenceCounter, TrafficLog
from tests.support import assert_problem

T0 = datetime(2026, 3, 2, 9, 15, tzinfo=UTC)
LOGS = "/api/v1/traffic/logs"


def request_log(i: int = 0, **overrides: Any) -> dict[str, Any]:
    return {
        "client_ip": "203.0.113.9",
        "method": "POST",
        "path": "/api/v1/placeorder",
        "status_code": 200,
        "duration_ms": 12.5,
        "host": "algoways.example",
        "user_id": "alice",
        **overrides,
    }


async def stored(db: AsyncEngine) -> list[Any]:
    async with db.connect() as conn:
        return list((await conn.execute(select(TrafficLog.__table__).order_by("id"))).all())


async def arrange(db: AsyncEngine, rows: list[dict[str, Any]]) -> None:
    async with db.begin() as conn:
        await conn.execute(insert(TrafficLog), rows)


class TestCreateTrafficLogs:
    async def test_one_row(self, client, db):
        response = await client.post(
            LOGS, json=request_log(error="boom", timestamp="2026-03-02T09:15:00Z", method="post")
        )
        assert response.status_code == 201
        assert response.json() == {"count": 1}
        [row] = await stored(db)
        assert row.client_ip == "203.0.113.9"
        assert row.method == "POST"
        assert (row.path, row.status_code, row.duration_ms) == ("/api/v1/placeorder", 200, 12.5)
        assert (row.host, row.error, row.user_id) == ("algoways.example", "boom", "alice")
        assert row.timestamp == T0

    async def test_timestamp_defaults_to_arrival(self, client, db):
        before = datetime.now(UTC)
        await client.post(LOGS, json=request_log())
        [row] = await stored(db)
        assert before <= row.timestamp <= datetime.now(UTC)

    @pytest.mark.parametrize(
        "given, stored_as",
        [
            ("::ffff:192.0.2.10", "192.0.2.10"),
            ("2001:0DB8:0000:0000:0000:0000:0000:0001", "2001:db8::1"),
            (" 198.51.100.3 ", "198.51.100.3"),
        ],
    )
    async def test_addresses_are_normalised(self, client, db, given, stored_as):
        assert (await client.post(LOGS, json=request_log(client_ip=given))).status_code == 201
        [row] = await stored(db)
        assert row.client_ip == stored_as

    async def test_batch(self, client, db):
        response = await client.post(LOGS, json=[request_log(duration_ms=i) for i in range(40)])
        assert response.json() == {"count": 40}
        assert sorted(r.duration_ms for r in await stored(db)) == list(range(40))

    @pytest.mark.parametrize(
        "overrides, field",
        [
            ({"client_ip": "localhost"}, "client_ip"),
            ({"client_ip": "10.0.0.256"}, "client_ip"),
            ({"client_ip": "fe80::1%eth0"}, "client_ip"),
            ({"status_code": 99}, "status_code"),
            ({"duration_ms": -1}, "duration_ms"),
            ({"method": "GET /"}, "method"),
            ({"path": ""}, "path"),
        ],
    )
    async def test_bad_item_is_422_naming_its_index(self, client, db, overrides, field):
        batch = [request_log(), request_log(), request_log(**overrides)]
        problem = assert_problem(await client.post(LOGS, json=batch), 422, "validation")
        assert problem["errors"][0]["loc"] == ["body", 2, field]
        assert await stored(db) == []

    async def test_more_than_1000_is_413(self, client, db):
        assert_problem(await client.post(LOGS, json=[request_log()] * 1001), 413)
        assert await stored(db) == []

    async def test_openapi_documents_one_or_many(self, client):
        operation = (await client.get("/openapi.json")).json()["paths"][LOGS]["post"]
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        single, many = schema["oneOf"]
        assert "client_ip" in single["properties"]
        assert many["maxItems"] == 1000
        assert {"201", "413", "422"} <= set(operation["responses"])


class TestListTrafficLogs:
    async def test_filters(self, client, db):
        await arrange(
            db,
            [
                {**request_log(), "timestamp": T0, "path": "/api/v1/placeorder"},
                {
                    **request_log(),
                    "timestamp": T0 + timedelta(seconds=1),
                    "client_ip": "2001:db8::7",
                    "status_code": 404,
                    "path": "/wp-admin",
                },
                {
                    **request_log(),
                    "timestamp": T0 + timedelta(seconds=2),
                    "path": "/api/v1/quotes",
                    "status_code": 500,
                },
                {**request_log(), "timestamp": T0 + timedelta(seconds=3), "path": "/API/v1/quotes"},
                {**request_log(), "timestamp": T0 + timedelta(seconds=4), "path": "/api/v1_%x"},
            ],
        )

        async def paths(**params: Any) -> list[str]:
            response = await client.get(LOGS, params=params)
            assert response.status_code == 200, response.text
            return [item["path"] for item in response.json()["items"]]

        assert await paths() == [
            "/api/v1_%x",
            "/API/v1/quotes",
            "/api/v1/quotes",
            "/wp-admin",
            "/api/v1/placeorder",
        ]
        assert await paths(client_ip="2001:DB8:0::7") == ["/wp-admin"]
        assert await paths(status_code=500) == ["/api/v1/quotes"]
        # A prefix is literal and case-sensitive on both backends (no LIKE wildcards).
        assert await paths(path_prefix="/api/v1/") == ["/api/v1/quotes", "/api/v1/placeorder"]
        assert await paths(path_prefix="/api/v1_%") == ["/api/v1_%x"]
        since, until = (
            (T0 + timedelta(seconds=1)).isoformat(),
            (T0 + timedelta(seconds=3)).isoformat(),
        )
        assert await paths(since=since, until=until) == ["/api/v1/quotes", "/wp-admin"]

    async def test_bad_address_filter_is_422(self, client):
        problem = assert_problem(await client.get(LOGS, params={"client_ip": "nope"}), 422)
        assert problem["errors"][0]["loc"] == ["query", "client_ip"]

    async def test_cursor_walks_every_row_once(self, client, db):
        await arrange(
            db,
            [
                {**request_log(), "timestamp": T0 + timedelta(seconds=i // 4), "duration_ms": i}
                for i in range(30)
            ],
        )
        seen: list[float] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 7, "path_prefix": "/api"}
            if cursor:
                params["cursor"] = cursor
            body = (await client.get(LOGS, params=params)).json()
            seen += [item["duration_ms"] for item in body["items"]]
            await client.post(LOGS, json=request_log())  # arrives while the walk goes on
            if not (cursor := body["next_cursor"]):
                break
        assert seen == sorted(range(30), reverse=True)


class TestTrafficStats:
    async def test_totals_errors_durations_and_top_paths(self, client, db):
        rows = []
        for i in range(30):
            path = f"/api/v1/endpoint{i % 25:02d}"
            rows.append(
                {
                    **request_log(),
                    "timestamp": T0,
                    "path": path,
                    "status_code": 404 if i % 4 == 0 else 200,
                    "duration_ms": float((i * 37) % 101),
                }
            )
        rows.append(
            {
                **request_log(),
                "timestamp": T0 - timedelta(days=2),
                "status_code": 500,
                "duration_ms": 5000.0,
            }
        )
        await arrange(db, rows)

        body = (await client.get("/api/v1/traffic/stats", params={"since": T0.isoformat()})).json()
        durations = [r["duration_ms"] for r in rows[:30]]
        assert body["total_requests"] == 30
        assert body["error_requests"] == 8
        assert body["error_rate"] == pytest.approx(8 * 100 / 30)
        assert body["avg_duration_ms"] == pytest.approx(numpy.mean(durations))
        assert body["p95_duration_ms"] == pytest.approx(numpy.percentile(durations, 95), rel=1e-12)
        top = body["by_endpoint"]
        assert len(top) == 20
        # endpoints 00-04 were hit twice; the rest once, ties by path.
        assert [e["path"] for e in top[:6]] == [f"/api/v1/endpoint{i:02d}" for i in range(6)]
        assert [e["count"] for e in top[:6]] == [2, 2, 2, 2, 2, 1]
        first = top[0]
        assert first["errors"] == 1  # i = 0 (404) and i = 25 (200)
        assert first["avg_duration_ms"] == pytest.approx((0 + (25 * 37) % 101) / 2)

        everything = (await client.get("/api/v1/traffic/stats")).json()
        assert everything["total_requests"] == 31
        assert everything["error_requests"] == 9

    async def test_empty(self, client):
        assert (await client.get("/api/v1/traffic/stats")).json() == {
            "total_requests": 0,
            "error_requests": 0,
            "error_rate": None,
            "avg_duration_ms": None,
            "p95_duration_ms": None,
            "by_endpoint": [],
        }


class TestDeleteTrafficLogs:
    async def test_deletes_older_rows(self, client, db):
        await arrange(
            db,
            [
                {**request_log(), "timestamp": T0 + timedelta(minutes=i), "duration_ms": i}
                for i in range(-5, 3)
            ],
        )
        response = await client.delete(LOGS, params={"before": T0.isoformat()})
        assert response.json() == {"deleted": 5}
        assert sorted(r.duration_ms for r in await stored(db)) == [0, 1, 2]

    async def test_also_drops_offence_counters_of_past_days(self, client, db):
        async with db.begin() as conn:
            await conn.execute(
                insert(IPOffenceCounter),
                [
                    {
                        "kind": "404",
                        "day": (T0 - timedelta(days=d)).date(),
                        "ip_address": "192.0.2.1",
                        "count": 5,
                        "first_seen_at": T0,
                        "last_seen_at": T0,
                    }
                    for d in range(3)
                ],
            )
        await client.delete(LOGS, params={"before": (T0 - timedelta(days=1)).isoformat()})
        async with db.connect() as conn:
            days = (await conn.execute(select(IPOffenceCounter.day))).scalars().all()
        assert sorted(days) == [(T0 - timedelta(days=1)).date(), T0.date()]

    async def test_before_is_required(self, client, db):
        await arrange(db, [{**request_log(), "timestamp": T0}])
        assert_problem(await client.delete(LOGS), 422, "validation")
        assert len(await stored(db)) == 1
