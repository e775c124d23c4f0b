"""Download status per broker: the loader's reports, the success a load records, the timeout of
a download that stopped reporting, and refused reports that write nothing."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import text

from tests.contract import generate, put_contract, row, to_csv
from tests.support import assert_problem

TODAY = date(2026, 11, 30)
CONTRACT = generate(2000, seed=11, base=date(2026, 11, 26))


async def status_rows(db) -> list[tuple]:
    async with db.connect() as conn:
        result = await conn.execute(
            text("SELECT broker, status, message, is_ready FROM master_contract_status"
                 " ORDER BY broker")
        )  # fmt: skip
        return [tuple(r) for r in result]


@pytest.fixture
def pinned(client):
    client.app.state.store.market_clock = lambda: TODAY
    return client


class TestStatus:
    async def test_nothing_reported_yet(self, pinned):
        response = await pinned.get("/api/v1/symbols/status")
        assert response.json() == {"items": [], "last_downloaded_broker": None}
        problem = assert_problem(await pinned.get("/api/v1/symbols/status/zerodha"), 404)
        assert "zerodha" in problem["detail"]

    async def test_the_life_cycle_of_a_download(self, pinned, db):
        response = await pinned.put(
            "/api/v1/symbols/status/zerodha", json={"status": "downloading"}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["status"], body["is_ready"], body["total_symbols"]) == (
            "downloading",
            False,
            0,
        )
        assert await status_rows(db) == [("zerodha", "downloading", None, False)]

        body_bytes = await pinned.put(
            "/api/v1/symbols",
            params={"broker": "zerodha"},
            content=_csv(CONTRACT),
            headers={"content-type": "text/csv"},
        )
        assert body_bytes.status_code == 200, body_bytes.text
        status = (await pinned.get("/api/v1/symbols/status/zerodha")).json()
        counts: dict[str, int] = {}
        for r in CONTRACT:
            counts[r["exchange"]] = counts.get(r["exchange"], 0) + 1
        assert status["status"] == "success" and status["is_ready"] is True
        assert status["total_symbols"] == len(CONTRACT) == 2000
        assert status["exchange_stats"] == dict(sorted(counts.items()))
        assert status["download_date"] == TODAY.isoformat()
        assert isinstance(status["download_duration_seconds"], float)
        assert status["download_duration_seconds"] >= 0
        assert datetime.fromisoformat(status["last_download_time"]).tzinfo is not None
        listing = (await pinned.get("/api/v1/symbols/status")).json()
        assert listing["last_downloaded_broker"] == "zerodha"
        assert [item["broker"] for item in listing["items"]] == ["zerodha"]

        # A later download of another broker becomes the one loaded; the first keeps its record.
        await pinned.put("/api/v1/symbols/status/angel", json={"status": "downloading"})
        response = await pinned.put(
            "/api/v1/symbols",
            params={"broker": "angel"},
            content=_csv([row("SBIN", "NSE")]),
            headers={"content-type": "text/csv"},
        )
        assert response.status_code == 200
        listing = (await pinned.get("/api/v1/symbols/status")).json()
        assert listing["last_downloaded_broker"] == "angel"
        by_broker = {item["broker"]: item for item in listing["items"]}
        assert by_broker["angel"]["total_symbols"] == 1
        assert by_broker["angel"]["exchange_stats"] == {"NSE": 1}
        assert by_broker["zerodha"]["total_symbols"] == 2000

        # The loader reports a failure: the broker is no longer ready, its counts stay.
        response = await pinned.put(
            "/api/v1/symbols/status/zerodha", json={"status": "error", "message": "HTTP 502"}
        )
        assert response.json()["status"] == "error" and response.json()["is_ready"] is False
        assert response.json()["message"] == "HTTP 502"
        assert response.json()["total_symbols"] == 2000

    async def test_a_refused_contract_records_an_error(self, pinned, db):
        await put_contract(pinned, [row("SBIN", "NSE")])
        response = await pinned.put(
            "/api/v1/symbols",
            params={"broker": "zerodha"},
            content=b"symbol,brsymbol\nA,B\n",
            headers={"content-type": "text/csv"},
        )
        assert_problem(response, 422, "validation")
        status = (await pinned.get("/api/v1/symbols/status/zerodha")).json()
        assert status["status"] == "error" and "missing column" in status["message"]
        stats = (await pinned.get("/api/v1/symbols/stats")).json()
        assert stats["rows"] == 1  # the old contract stays

    async def test_a_download_that_stopped_reporting_reads_as_error(self, pinned, db):
        await pinned.put("/api/v1/symbols/status/zerodha", json={"status": "downloading"})
        fresh = (await pinned.get("/api/v1/symbols/status/zerodha")).json()
        assert fresh["status"] == "downloading"
        stale = datetime.now(UTC) - timedelta(minutes=6)
        async with db.begin() as conn:
            await conn.execute(
                text("UPDATE master_contract_status SET last_updated = :t"), {"t": stale}
            )
        body = (await pinned.get("/api/v1/symbols/status/zerodha")).json()
        assert body["status"] == "error" and body["is_ready"] is False
        assert "5 minutes" in body["message"]
        listing = (await pinned.get("/api/v1/symbols/status")).json()
        assert listing["items"][0]["status"] == "error"

    async def test_the_timeout_is_a_setting(self, client_factory, db):
        client = await client_factory(SYMBOL_DOWNLOAD_TIMEOUT=90)
        await client.put("/api/v1/symbols/status/zerodha", json={"status": "downloading"})
        for age_s, status in [(60, "downloading"), (120, "error")]:
            async with db.begin() as conn:
                await conn.execute(
                    text("UPDATE master_contract_status SET last_updated = :t"),
                    {"t": datetime.now(UTC) - timedelta(seconds=age_s)},
                )
            body = (await client.get("/api/v1/symbols/status/zerodha")).json()
            assert body["status"] == status, age_s
        assert "1.5 minutes" in body["message"]

    @pytest.mark.parametrize(
        "path, body, where",
        [
            ("zerodha", {"status": "success"}, ["body", "status"]),
            ("zerodha", {"status": "done"}, ["body", "status"]),
            ("zerodha", {}, ["body", "status"]),
            ("zerodha", {"status": "error", "message": "a\x00b"}, ["body", "message"]),
            ("zerodha", {"status": "error", "extra": 1}, ["body", "extra"]),
            ("zer%20odha", {"status": "error"}, ["path", "broker"]),
        ],
    )
    async def test_bad_reports_are_422_and_write_nothing(self, pinned, db, path, body, where):
        response = await pinned.put(f"/api/v1/symbols/status/{path}", json=body)
        problem = assert_problem(response, 422, "validation")
        assert problem["errors"][0]["loc"] == where
        assert await status_rows(db) == []


def _csv(rows) -> bytes:
    return to_csv(rows)
