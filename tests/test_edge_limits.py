"""The limits uvicorn lacks, on a live `python -m service serve` started from the checkout: a
request head over MAX_HEADER_BYTES gets 431, and clients trickling their request head are
disconnected after HEADER_TIMEOUT while /health/live keeps answering."""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest

from tests.support import FULL_TOKEN, PEPPER, SALT, SERVICE_TOKENS

CHECKOUT = Path(__file__).resolve().parent.parent
HEADER_TIMEOUT = 3.0
MAX_HEADER_BYTES = 16 * 1024
TRICKLERS = 300


@dataclass
class LiveServer:
    process: asyncio.subprocess.Process
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
async def server(
    database_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[LiveServer]:
    """`python -m service serve` on a free port; `HEADER_TIMEOUT` unless a test passes its own
    (indirect parametrization)."""
    header_timeout = getattr(request, "param", HEADER_TIMEOUT)
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(CHECKOUT),
        "DATABASE_URL": database_url,
        "API_KEY_PEPPER": PEPPER,
        "FERNET_SALT": SALT,
        "SERVICE_TOKENS": SERVICE_TOKENS,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "HEADER_TIMEOUT": str(header_timeout),
        "MAX_HEADER_BYTES": str(MAX_HEADER_BYTES),
        "LOG_LEVEL": "WARNING",
    }
    # cwd: an empty directory, so no developer's .env is read.
    log = tmp_path / "server.log"
    with log.open("wb") as output:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "service", "serve",
            cwd=tmp_path, env=env, stdout=output, stderr=output,
        )  # fmt: skip
    live = LiveServer(process, port)
    try:
        async with httpx.AsyncClient(base_url=live.url) as client:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if (await client.get("/health/ready")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert process.returncode is None, log.read_text()
                assert time.monotonic() < deadline, "the server did not become ready"
                await asyncio.sleep(0.1)
        yield live
    finally:
        if process.returncode is None:
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), timeout=15)
        except TimeoutError:
            process.kill()
            await process.wait()


async def _raw_request(port: int, head: bytes) -> bytes:
    """Send `head` on a fresh connection; everything the server sends back before closing."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()


def _split(response: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    return int(status_line.split()[1]), headers, body


def _get(path: str, *headers: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: test", f"Authorization: Bearer {FULL_TOKEN}"]
    return ("\r\n".join([*lines, *headers, "Connection: close"]) + "\r\n\r\n").encode()


class TestHeaderSize:
    async def test_a_head_over_the_limit_gets_a_431_problem(self, server: LiveServer) -> None:
        big = "X-Padding: " + "a" * MAX_HEADER_BYTES
        status, headers, body = _split(await _raw_request(server.port, _get("/health/live", big)))
        assert status == 431
        assert headers["content-type"] == "application/problem+json"
        problem = orjson.loads(body)
        assert problem["status"] == 431
        assert problem["type"].endswith("/request-header-fields-too-large")
        assert str(MAX_HEADER_BYTES) in problem["detail"]

    async def test_many_headers_add_up(self, server: LiveServer) -> None:
        many = [f"X-H{i}: {'b' * 100}" for i in range(200)]  # 200 small ones, 21 KB in all
        status, _, _ = _split(await _raw_request(server.port, _get("/health/live", *many)))
        assert status == 431

    async def test_a_long_url_counts(self, server: LiveServer) -> None:
        status, _, _ = _split(await _raw_request(server.port, _get("/health/live?" + "q" * 20000)))
        assert status == 431

    async def test_a_head_within_the_limit_is_served(self, server: LiveServer) -> None:
        padding = "X-Padding: " + "a" * (MAX_HEADER_BYTES - 1024)
        status, _, body = _split(await _raw_request(server.port, _get("/health/live", padding)))
        assert status == 200
        assert orjson.loads(body) == {"status": "ok"}

    async def test_an_endless_header_line_is_cut_off(self, server: LiveServer) -> None:
        """One header line that never ends: the server stops it once the raw bytes pass the
        bound (2 x the limit + one read) instead of buffering the megabytes that follow. Its
        431 may be lost to the reset the client's unread bytes cause, so either ends it."""
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        sent, answer, reset = 0, b"", False
        try:
            writer.write(b"GET /health/live HTTP/1.1\r\nHost: t\r\nX-Endless: ")
            for _ in range(64):  # up to 4 MiB
                writer.write(b"a" * 65536)
                await writer.drain()
                sent += 65536
                try:
                    answer += await asyncio.wait_for(reader.read(65536), timeout=0.05)
                except TimeoutError:
                    continue
                break
        except ConnectionError:
            reset = True
        finally:
            writer.close()
        assert reset or _split(answer)[0] == 431
        assert sent < 64 * 65536


TRICKLE_TIMEOUT = 6.0  # long enough for a hundred health probes while they trickle


class TestHeaderDeadline:
    @pytest.mark.parametrize("server", [TRICKLE_TIMEOUT], indirect=True)
    async def test_tricklers_are_cut_off_and_health_keeps_answering(
        self, server: LiveServer
    ) -> None:
        async with httpx.AsyncClient(base_url=server.url) as probe:
            assert (await probe.get("/health/live")).status_code == 200
        baseline = server.open_fds()

        request_line = b"GET /health/live HTTP/1.1\r\nHost: test\r\n"
        streams = [
            await asyncio.open_connection("127.0.0.1", server.port) for _ in range(TRICKLERS)
        ]
        opened = time.monotonic()
        closed_at: list[float | None] = [None] * TRICKLERS

        async def trickle(i: int) -> None:
            reader, writer = streams[i]
            for byte in request_line:  # a byte a second, never finishing the head
                try:
                    writer.write(bytes([byte]))
                    await writer.drain()
                except ConnectionError:
                    break
                try:
                    if not await asyncio.wait_for(reader.read(4096), timeout=1.0):
                        break
                    await reader.read()  # a 408 came: read up to the close
                    break
                except TimeoutError:
                    continue
                except ConnectionError:
                    break
            closed_at[i] = time.monotonic() - opened

        tricklers = [asyncio.create_task(trickle(i)) for i in range(TRICKLERS)]
        assert server.open_fds() >= baseline + TRICKLERS // 2  # they really are connected

        durations = []
        async with httpx.AsyncClient(base_url=server.url) as probe:
            while time.monotonic() - opened < TRICKLE_TIMEOUT - 0.5:
                started = time.perf_counter()
                response = await probe.get("/health/live")
                durations.append(time.perf_counter() - started)
                assert response.status_code == 200
                await asyncio.sleep(0.01)
        await asyncio.wait_for(asyncio.gather(*tricklers), timeout=TRICKLE_TIMEOUT + 10)
        for _, writer in streams:
            writer.close()

        assert len(durations) >= 50
        p99 = statistics.quantiles(durations, n=100)[98]
        # A server the tricklers starved would answer in seconds (their deadline is 6 s); a
        # busy machine stretches a healthy one's p99 past 100 ms, so the bound sits between.
        assert p99 < 0.5, f"/health/live p99 {p99 * 1000:.1f} ms with {TRICKLERS} tricklers"
        # Every trickler was cut off by the server at the deadline, none before it; a client
        # left alone would have kept its connection for its whole 41-byte request line.
        assert all(t is not None for t in closed_at)
        ended = [t for t in closed_at if t is not None]
        assert min(ended) >= TRICKLE_TIMEOUT - 0.5
        assert max(ended) < TRICKLE_TIMEOUT + 5

        deadline = time.monotonic() + 5
        while server.open_fds() > baseline and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert server.open_fds() <= baseline

    async def test_a_silent_connection_is_closed_without_an_answer(
        self, server: LiveServer
    ) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            started = time.monotonic()
            data = await asyncio.wait_for(reader.read(), timeout=HEADER_TIMEOUT + 5)
            assert data == b""
            assert time.monotonic() - started >= HEADER_TIMEOUT - 0.5
        finally:
            writer.close()

    async def test_a_partial_head_gets_a_408(self, server: LiveServer) -> None:
        data = await _raw_request(server.port, b"GET /health/live HTTP/1.1\r\nHost: t\r\n")
        status, headers, body = _split(data)
        assert status == 408
        assert headers["content-type"] == "application/problem+json"
        assert orjson.loads(body)["type"].endswith("/request-timeout")

    async def test_a_keep_alive_connection_serves_requests_past_the_deadline(
        self, server: LiveServer
    ) -> None:
        """The deadline is per request head, not per connection."""
        async with httpx.AsyncClient(base_url=server.url) as client:
            for _ in range(3):
                assert (await client.get("/health/live")).status_code == 200
                await asyncio.sleep(HEADER_TIMEOUT / 2)
            assert (await client.get("/health/live")).status_code == 200
