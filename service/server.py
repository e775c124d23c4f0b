"""The HTTP protocol `python -m service serve` runs: uvicorn's httptools protocol plus the two
limits uvicorn lacks, enforced before a request reaches the app.

- Request line and headers over MAX_HEADER_BYTES: 431 (problem+json), connection closed.
  httptools buffers a header line whole before handing it over, so the raw bytes of an
  unfinished head are bounded too (2 x the limit plus one read), which caps memory per client.
- A head not complete within HEADER_TIMEOUT seconds of its first byte (or of the connection
  opening, or of bytes arriving while no request runs): 408 if part of a request came, and the
  connection closed. A client trickling a byte a second holds a socket for that long, no more.

Only the httptools protocol (uvicorn's default when httptools is installed) is extended.
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.process import BaseProcess
from typing import Any

import orjson
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from service.config import Settings, get_settings
from service.problem_types import PROBLEM_CONTENT_TYPE, PROBLEM_TYPE_BASE

_collector_paused = False


def pause_collector_for_imports() -> None:
    """Turn the cyclic garbage collector off until the app is built (`app_from_env` resumes
    it). Importing the app makes hundreds of thousands of objects that all live as long as the
    process, and the collector walked them over and over as they piled up: a quarter of the
    imports' time (2.6 s with it, 2.1 s without, on the bench machine). Reference counting still
    frees everything else meanwhile."""
    global _collector_paused
    if gc.isenabled():
        gc.disable()
        _collector_paused = True


def resume_collector() -> None:
    """Undo `pause_collector_for_imports` (and only that: a host that runs without the
    collector on purpose keeps it off)."""
    global _collector_paused
    if _collector_paused:
        gc.enable()
        _collector_paused = False


# The first generation's threshold while serving (Python's default is 700; the older two keep
# their defaults). See `collector_for_serving`.
SERVING_YOUNG_THRESHOLD = 50_000


def collector_for_serving() -> None:
    """Collect the youngest generation once 50,000 containers more than were freed have piled
    up, not 700. One 1000-row log batch makes a model and a dict per row: with the default, a
    few young collections ran during every batch while the batches before it were still in
    flight, so their rows were promoted and walked again by the older collections. On 1000-row
    batches at 4 connections (table truncated before each 8 s run, alternating): 14-18 us of the
    service's CPU a row and 43-48k rows/s with the default, 9-11 us and 49-66k rows/s with this.
    A young collection of 50,000 survivors takes 1.4 ms here; requests rarely leave that many
    behind, so most of them never run."""
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(SERVING_YOUNG_THRESHOLD, older, oldest)


def start_key_material(settings: Settings) -> None:
    """With one worker, make the key material (PBKDF2, the argon2 dummy hash) on threads now,
    while this process imports the app, rather than when the app starts: measured on a database
    without symbols, the app's start waited 0.32-0.37 s for it after its imports. Both results
    are cached per process, so the app's own Keyring finds them made; the imports take longer
    than they do (1.5 s against 0.4 s here), and were they to ask first, the cache does not
    wait for a computation under way: they would be made twice, never wrongly."""
    from service.security import Keyring

    Keyring(settings)


def import_app_for_workers(settings: Settings) -> None:
    """With WORKERS > 1, the supervisor imports the app once and its workers are forked from it
    (`forked_workers`): each starts with the app imported instead of importing it again, 1.5 s
    of CPU per worker, all at once on the same cores. Only modules are loaded here: the app, its
    loop, its connections and threads are made in each worker (uvicorn calls the factory there).

    The key material is made here too, once: a worker's keyring finds it made (it is cached
    per process) instead of spending 0.35 s of CPU on it in each worker. It is made after the
    imports, on threads (PBKDF2 and argon2 let go of the GIL), while the index builder still
    writes its copies: the workers could not start serving before those anyway, and a core
    is then free for it. What the imports made is set aside from the collector (gc.freeze), so
    that a worker's collections do not walk it while it starts and its memory stays shared with
    the supervisor's. The symbol index decides from its first snapshot on: a large one is set
    aside with everything else, a small one hands everything back (symbol_index._handed_back)."""
    pause_collector_for_imports()
    import service.main  # noqa: F401
    from service.security import Keyring

    Keyring(settings).wait()
    resume_collector()
    gc.freeze()


@contextmanager
def forked_workers() -> Iterator[None]:
    """uvicorn's supervisor forks its workers instead of spawning them (see
    `import_app_for_workers`); a worker it restarts later is forked too.

    uvicorn makes every worker through one function, `get_subprocess`, which spawns; it is
    replaced for as long as this supervisor runs. A forked worker inherits the supervisor's
    signal handlers (uvicorn's, which only queue the signal for the supervisor's loop): a
    SIGTERM that arrives before the worker's server installs its own is therefore not fatal,
    and once the worker has drained, the SIGTERM its server re-raises ends it with status 0."""
    from uvicorn.supervisors import multiprocess

    # Not exported by uvicorn: tests/test_workers.py fails if it moves.
    spawned = multiprocess.get_subprocess  # type: ignore[attr-defined]
    multiprocess.get_subprocess = _forked_subprocess  # type: ignore[attr-defined,assignment]
    try:
        yield
    finally:
        multiprocess.get_subprocess = spawned  # type: ignore[attr-defined]


_fork = multiprocessing.get_context("fork")


def _forked_subprocess(
    config: Config, target: Callable[..., None], sockets: list[socket.socket]
) -> BaseProcess:
    from uvicorn._subprocess import subprocess_started

    # stdin is inherited as it is: nothing to reopen.
    kwargs = {"config": config, "target": target, "sockets": sockets, "stdin_fileno": None}
    return _fork.Process(target=subprocess_started, kwargs=kwargs)


# Bytes of a header line beyond name and value: ": " and CRLF.
_HEADER_FRAMING = 4


def _problem(status: int, reason: str, type_: str, detail: str) -> bytes:
    body = orjson.dumps(
        {"type": PROBLEM_TYPE_BASE + type_, "title": reason, "status": status, "detail": detail}
    )
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        f"content-type: {PROBLEM_CONTENT_TYPE}\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class HeaderLimitError(Exception):
    """Raised inside a parser callback to stop parsing a head that grew past the limit."""


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with a request-head size limit and a request-head deadline.

    The limits come from the service settings (MAX_HEADER_BYTES, HEADER_TIMEOUT), read once per
    connection from the cached settings; every worker process reads the same environment.
    """

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        settings = get_settings()
        self.max_header_bytes: int = settings.MAX_HEADER_BYTES
        self.header_timeout: float = settings.HEADER_TIMEOUT
        self._head_bytes = 0  # of the current head, counted as the parser hands it over
        self._raw_head_bytes = 0  # received while the current head is unfinished
        self._reading_head = False
        self._head_too_large = False
        self._head_deadline: asyncio.TimerHandle | None = None

    # --- the deadline ---------------------------------------------------------------------------

    def _arm_head_deadline(self) -> None:
        if self._head_deadline is None:
            self._head_deadline = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _disarm_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        if self.transport.is_closing():
            return
        self.logger.info("request head not complete within %g s: closing", self.header_timeout)
        if self._reading_head:
            self.transport.write(
                _problem(
                    408,
                    "Request Timeout",
                    "request-timeout",
                    f"The request line and headers took longer than {self.header_timeout:g} s.",
                )
            )
        self.transport.close()

    def _idle(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    # --- protocol interface ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._idle() and not self.transport.is_closing():
            # Bytes with no request running: the start of the next head (or stray CRLFs).
            self._arm_head_deadline()
        super().data_received(data)
        if self._reading_head and not self.transport.is_closing():
            self._raw_head_bytes += len(data)
            if self._raw_head_bytes > 2 * self.max_header_bytes + 65536:
                self._head_too_large = True
                self.send_400_response("")  # answers 431: see below

    def send_400_response(self, msg: str) -> None:
        if not self._head_too_large:
            super().send_400_response(msg)
            return
        self._disarm_head_deadline()
        self.logger.info("request head over %d bytes: 431", self.max_header_bytes)
        self.transport.write(
            _problem(
                431,
                "Request Header Fields Too Large",
                "request-header-fields-too-large",
                f"The request line and headers exceed {self.max_header_bytes} bytes.",
            )
        )
        self.transport.close()

    # --- parser callbacks -----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        self._raw_head_bytes = 0
        self._reading_head = True
        self._arm_head_deadline()

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self.max_header_bytes:
            self._head_too_large = True
            # Stops the parser: httptools re-raises it as an HttpParserError, which uvicorn
            # answers through send_400_response, a 431 here.
            raise HeaderLimitError

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + _HEADER_FRAMING)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._disarm_head_deadline()
        super().on_headers_complete()
