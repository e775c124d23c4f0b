"""latency: ingestion, filtered keyset pages, and statistics computed in the database that match
numpy's linear-interpolated percentiles on both backends."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy
import pytest
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from service.models.latency import OrderLatency
from tests.support import assert_problem

T0 = datetime(2026, 3, 2, 9, 15, tzinfo=UTC)
LATENCY = "/api/v1/latency"


def timing(**overrides: Any) -> dict[str, Any]:
    return {
        "order_id": "260302000001",
        "user_id": "alice",
        "broker": "zerodha",
        "symbol": "SBIN",
        "order_type": "PLACE",
        "rtt_ms": 40.5,
        "validation_latency_ms": 1.5,
        "response_latency_ms": 3.0,
        "overhead_ms": 6.0,
        "total_latency_ms": 51.0,
        "status": "SUCCESS",
        **overrides,
    }


async def stored(db: AsyncEngine) -> list[Any]:
    async with db.connect() as conn:
        return list((await conn.execute(select(OrderLatency.__table__).order_by("id"))).all())


async def arrange(db: AsyncEngine, rows: list[dict[str, Any]]) -> None:
    async with db.begin() as conn:
        await conn.execute(insert(OrderLatency), rows)


class TestCreateLatency:
    async def test_one_row_with_json_bodies(self, client, db):
        response = await client.post(
            LATENCY,
            json=timing(
                status="failed",
                request_body={"symbol": "SBIN", "quantity": 1},
                response_body=["rejected", 17],
                error="RMS rejected",
                timestamp=T0.isoformat(),
            ),
        )
        assert response.status_code == 201
        assert response.json() == {"count": 1}
        [row] = await stored(db)
        assert row.status == "FAILED"
        assert row.request_body == {"symbol": "SBIN", "quantity": 1}
        assert row.response_body == ["rejected", 17]
        assert (row.total_latency_ms, row.rtt_ms, row.timestamp) == (51.0, 40.5, T0)
        listed = (await client.get(LATENCY)).json()["items"][0]
        assert listed["response_body"] == ["rejected", 17]

    async def test_only_order_id_and_total_are_required(self, client, db):
        response = await client.post(LATENCY, json={"order_id": "x", "total_latency_ms": 3})
        assert response.status_code == 201
        [row] = await stored(db)
        assert (row.broker, row.status, row.request_body) == (None, None, None)

    async def test_batch(self, client, db):
        response = await client.post(LATENCY, json=[timing(order_id=str(i)) for i in range(12)])
        assert response.json() == {"count": 12}
        assert sorted(int(r.order_id) for r in await stored(db)) == list(range(12))

    @pytest.mark.parametrize(
        "overrides, field",
        [
            ({"total_latency_ms": None}, "total_latency_ms"),
            ({"rtt_ms": -1}, "rtt_ms"),
            ({"status": "MAYBE"}, "status"),
            ({"order_id": ""}, "order_id"),
            ({"broker": "b" * 51}, "broker"),
        ],
    )
    async def test_bad_item_is_422_naming_its_index(self, client, db, overrides, field):
        problem = assert_problem(
            await client.post(LATENCY, json=[timing(), timing(**overrides)]), 422, "validation"
        )
        assert problem["errors"][0]["loc"] == ["body", 1, field]
        assert await stored(db) == []


class TestListLatency:
    async def test_filters_newest_first(self, client, db):
        await arrange(
            db,
            [
                {
                    **timing(order_id=str(i), broker=broker, status=status),
                    "timestamp": T0 + timedelta(seconds=i),
                }
                for i, (broker, status) in enumerate(
                    [
                        ("zerodha", "SUCCESS"),
                        ("angel", "FAILED"),
                        ("zerodha", "FAILED"),
                        ("dhan", "SUCCESS"),
                    ]
                )
            ],
        )

        async def ids(**params: Any) -> list[str]:
            response = await client.get(LATENCY, params=params)
            assert response.status_code == 200, response.text
            return [item["order_id"] for item in response.json()["items"]]

        assert await ids() == ["3", "2", "1", "0"]
        assert await ids(broker="zerodha") == ["2", "0"]
        assert await ids(status="failed") == ["2", "1"]
        assert await ids(
            since=(T0 + timedelta(seconds=1)).isoformat(),
            until=(T0 + timedelta(seconds=3)).isoformat(),
        ) == ["2", "1"]
        assert await ids(limit=3) == ["3", "2", "1"]

    async def test_bad_status_filter_is_422(self, client):
        assert_problem(await client.get(LATENCY, params={"status": "nope"}), 422, "validation")


def expected_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    totals = [r["total_latency_ms"] for r in rows]
    n = len(rows)

    def share(k: int) -> float:
        return k * 100 / n

    return {
        "count": n,
        "success_rate": share(sum(r["status"] != "FAILED" for r in rows)),
        "avg_rtt_ms": numpy.mean([r["rtt_ms"] for r in rows]),
        "avg_overhead_ms": numpy.mean([r["overhead_ms"] for r in rows]),
        "avg_total_ms": numpy.mean(totals),
        **{f"p{q}_total_ms": numpy.percentile(totals, q) for q in (50, 90, 95, 99)},
        **{f"sla_{ms}ms_pct": share(sum(t <= ms for t in totals)) for ms in (100, 150, 200)},
    }


def assert_summary(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        assert actual[key] == pytest.approx(value, rel=1e-12), key


class TestLatencyStats:
    async def test_matches_numpy_overall_and_per_broker(self, client, db):
        rng = random.Random(6)
        brokers = ["zerodha", "angel", "dhan"]
        rows = [
            {
                **timing(
                    order_id=str(i),
                    broker=brokers[i % 3] if i % 7 else None,
                    status=rng.choice(["SUCCESS", "SUCCESS", "FAILED", "PARTIAL"]),
                    rtt_ms=round(rng.uniform(5, 180), 3),
                    overhead_ms=round(rng.uniform(0, 20), 3),
                    # exact SLA boundaries must count as within the SLA
                    total_latency_ms=[100.0, 150.0, 200.0][i % 3]
                    if i % 11 == 0
                    else round(rng.lognormvariate(4.5, 0.6), 3),
                ),
                "timestamp": T0 + timedelta(seconds=i),
            }
            for i in range(157)
        ]
        await arrange(db, rows)
        response = await client.get(f"{LATENCY}/stats")
        assert response.status_code == 200
        body = response.json()
        assert_summary(body["overall"], expected_summary(rows))
        assert sorted(body["by_broker"]) == sorted(brokers)
        for broker in brokers:
            mine = [r for r in rows if r["broker"] == broker]
            assert_summary(body["by_broker"][broker], expected_summary(mine))

        window = {
            "since": (T0 + timedelta(seconds=40)).isoformat(),
            "until": (T0 + timedelta(seconds=90)).isoformat(),
            "broker": "angel",
        }
        filtered = (await client.get(f"{LATENCY}/stats", params=window)).json()
        chosen = [r for r in rows[40:90] if r["broker"] == "angel"]
        assert_summary(filtered["overall"], expected_summary(chosen))
        assert list(filtered["by_broker"]) == ["angel"]

    @pytest.mark.parametrize("values", [[42.0], [3.0, 1.0], [5.0, 5.0, 5.0, 9.5]])
    async def test_small_samples(self, client, db, values):
        await arrange(db, [{**timing(total_latency_ms=v), "timestamp": T0} for v in values])
        overall = (await client.get(f"{LATENCY}/stats")).json()["overall"]
        for q in (50, 90, 95, 99):
            assert overall[f"p{q}_total_ms"] == pytest.approx(numpy.percentile(values, q))

    async def test_empty(self, client):
        body = (await client.get(f"{LATENCY}/stats")).json()
        assert body["by_broker"] == {}
        assert body["overall"]["count"] == 0
        assert {v for k, v in body["overall"].items() if k != "count"} == {None}


class TestDeleteLatency:
    async def test_deletes_older_rows(self, client, db):
        await arrange(
            db,
            [
                {**timing(order_id=str(i)), "timestamp": T0 + timedelta(days=i)}
                for i in range(-3, 2)
            ],
        )
        response = await client.delete(LATENCY, params={"before": T0.isoformat()})
        assert response.json() == {"deleted": 3}
        assert sorted(r.order_id for r in await stored(db)) == ["0", "1"]

    async def test_before_is_required(self, client):
        problem = assert_problem(await client.delete(LATENCY), 422, "validation")
        assert problem["errors"][0]["loc"] == ["query", "before"]
