"""WORKERS: `python -m service serve` with two worker processes on PostgreSQL answers from both,
/metrics from either of them counts the requests of both, a write through one worker is seen by
the other within 5 s, and a SIGTERM drains both and exits 0. On SQLite it serves with one worker
and says why."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.contract import generate, put_contract
from tests.faults.service_process import GRACEFUL_TIMEOUT_S, ServiceProcess
from tests.support import BACKEND

SETTINGS = "/api/v1/settings"
BATCH = 40
# A new connection per request, so the kernel hands each to whichever worker accepts first.
CLOSE = {"Connection": "close"}
_SERVED = re.compile(r'^algoways_worker_requests_served\{pid="(\d+)"\} ([0-9.e+]+)$', re.M)
_SETTINGS_200 = re.compile(
    r'^algoways_http_requests_total\{method="GET",route="/api/v1/settings",status="200"\} '
    r"([0-9.e+]+)$",
    re.M,
)


@pytest.fixture
def service(database_url: str, tmp_path: Path) -> Iterator[ServiceProcess]:
    process = ServiceProcess(database_url, WORKERS="2")
    try:
        yield process
    finally:
        process.close()


async def _batch(client: httpx.AsyncClient, n: int = BATCH) -> list[httpx.Response]:
    return list(await asyncio.gather(*(client.get(SETTINGS, headers=CLOSE) for _ in range(n))))


async def _metrics(client: httpx.AsyncClient) -> str:
    response = await client.get("/metrics", headers=CLOSE)
    assert response.status_code == 200
    return response.text


def _served_by_pid(text: str) -> dict[str, float]:
    return {pid: float(value) for pid, value in _SERVED.findall(text)}


@pytest.mark.skipif(BACKEND != "postgresql", reason="several workers need PostgreSQL")
async def test_two_workers_share_the_load_the_metrics_and_the_invalidations(
    service: ServiceProcess,
) -> None:
    service.start()
    await service.wait_ready(timeout=60)
    async with service.client(timeout=30) as client:
        # Both workers answer, and the scrape of either counts every request of both.
        sent = 0
        served: dict[str, float] = {}
        for _ in range(10):
            responses = await _batch(client)
            sent += len(responses)
            assert {r.status_code for r in responses} == {200}
            assert {r.json()["analyze_mode"] for r in responses} == {False}
            await asyncio.sleep(1.2)  # each worker copies its live gauges once a second
            served = _served_by_pid(await _metrics(client))
            if len(served) == 2 and all(count > 0 for count in served.values()):
                break
        assert len(served) == 2, served
        assert all(count > 0 for count in served.values()), served
        for _ in range(4):  # whichever worker answers the scrape
            totals = _SETTINGS_200.findall(await _metrics(client))
            assert [float(total) for total in totals] == [sent]

        # A write through one worker reaches the cache of the other within 5 s.
        response = await client.patch(SETTINGS, json={"analyze_mode": True}, headers=CLOSE)
        assert response.status_code == 200
        written = time.monotonic()
        while True:
            modes = {r.json()["analyze_mode"] for r in await _batch(client)}
            if modes == {True}:
                break
            assert time.monotonic() - written < 5, "a worker still serves the old settings"
        # ... and both workers were answering: each served some of one more batch, all new.
        before = _served_by_pid(await _metrics(client))
        assert {r.json()["analyze_mode"] for r in await _batch(client)} == {True}
        await asyncio.sleep(1.2)
        after = _served_by_pid(await _metrics(client))
        assert set(after) == set(before) and len(after) == 2
        assert all(after[pid] > before[pid] for pid in after), (before, after)

    service.signal(signal.SIGTERM)
    exit_code = await service.wait_exit(GRACEFUL_TIMEOUT_S + 5)
    output = service.output()
    assert exit_code == 0, output
    assert "Traceback" not in output, output
    assert output.count("Finished server process") == 2, output
    # Each worker took its copy of the index built beside the start (service/prebuilt_index.py).
    assert output.count("from the start-up builder") == 2, output


@pytest.mark.skipif(BACKEND != "postgresql", reason="the start-up index builder is PostgreSQL's")
async def test_one_worker_serves_the_index_built_beside_its_start(
    client: httpx.AsyncClient, database_url: str, tmp_path: Path
) -> None:
    rows = generate(2000, seed=43)
    assert (await put_contract(client, rows)).status_code == 200
    process = ServiceProcess(database_url, TMPDIR=str(tmp_path))
    try:
        process.start()
        await process.wait_ready(timeout=60)
        async with process.client(timeout=30) as live:
            for r in rows[::97]:
                params = {"token": r["token"], "exchange": r["exchange"]}
                answer = await live.get("/api/v1/tokens/lookup", params=params)
                assert answer.status_code == 200, answer.text
                assert answer.json()["symbol"] == r["symbol"]
        assert _found(tmp_path, "algoways-index-*/copy-*") == []  # claimed, and gone
        process.signal(signal.SIGTERM)
        assert await process.wait_exit(GRACEFUL_TIMEOUT_S + 5) == 0, process.output()
        output = process.output()
    finally:
        process.close()
    assert "symbol index at version 1: 2000 rows from the start-up builder" in output, output
    assert _found(tmp_path, "algoways-index-*") == []  # removed when serving ended


def _found(directory: Path, pattern: str) -> list[Path]:
    return list(directory.glob(pattern))
