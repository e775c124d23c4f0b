"""The symbol index built beside the start-up, in a process of its own.

A start spends its time on two things that meet only at the end: importing the app (FastAPI,
SQLAlchemy, pydantic: about 1.5 s of CPU) and building the symbol index from the database
(reading 200k rows in rank order, decoding and building them: about 1 s more). One after the
other they took 3.8 s. `python -m service serve` therefore forks a builder before it imports
anything heavy, so the two run at once on two cores. The builder reads the index exactly as a
refresh does (service/symbol_source.py), writes it to a private directory and links one copy per
worker; each worker's first refresh claims a copy (`take`) instead of reading the database, then
checks the copy's version against the database as any refresh does, and rebuilds if a load
committed meanwhile. The invalidation listener is up by then, so nothing committed later is
missed either.

Whatever goes wrong on the builder's side (the database down, the process killed) leaves a
`failed` note, and the worker builds its own index as it would without a builder. A worker that
comes later (one uvicorn restarts) finds every copy taken and builds its own from the database.

PostgreSQL only: SQLite's index is read from a local file in-process, and `fork` is POSIX.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING

from service.config import APPLICATION_NAME, Settings

if TYPE_CHECKING:
    from service.symbol_index import SymbolIndex

logger = logging.getLogger("service.symbols")

# The directory a worker claims its copy from (set for the workers by `building`).
ENV = "ALGOWAYS_PREBUILT_INDEX"
_COPY = "copy-"  # one hard link per worker, claimed by renaming it
_BUILT = "built"  # every copy is linked: none left means every copy was claimed
_FAILED = "failed"  # no copies will come; holds why
# How long a worker waits for the builder; reached only if the builder hangs (it is bounded by
# the connect and statement timeouts), after which the worker reads the database itself.
WAIT_S = 120.0
_POLL_S = 0.01


@contextmanager
def building(settings: Settings, workers: int) -> Iterator[None]:
    """Fork the builder (with a PostgreSQL database) and point the workers at its directory;
    remove the directory when serving ends. Call it before the app is imported and before any
    thread starts: the child is a copy of this process as it is now."""
    if settings.backend != "postgresql" or not hasattr(os, "fork"):
        yield
        return
    directory = Path(tempfile.mkdtemp(prefix="algoways-index-"))
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child (its work is `build`, tested directly)
        _child(settings, directory, workers)
    threading.Thread(
        target=_reap, args=(pid, directory), name="index-builder-reaper", daemon=True
    ).start()
    os.environ[ENV] = str(directory)
    try:
        yield
    finally:
        os.environ.pop(ENV, None)
        shutil.rmtree(directory, ignore_errors=True)


def _child(settings: Settings, directory: Path, copies: int) -> None:
    """The builder: build, write, link a copy per worker, exit; never return to the caller."""
    status = 1
    gc.disable()  # a process of one build: the collector would only walk what it keeps
    try:
        index = asyncio.run(build(settings))
        write(index, directory, copies)
        status = 0
    except BaseException as error:
        _note_failure(directory, f"{type(error).__name__}: {error}")
    finally:
        os._exit(status)


async def build(settings: Settings) -> SymbolIndex:
    import asyncpg

    from service import symbol_source

    assert settings.asyncpg_dsn is not None, "built only for PostgreSQL"
    conn = await asyncpg.connect(
        settings.asyncpg_dsn,
        timeout=settings.DB_POOL_TIMEOUT,
        command_timeout=settings.DB_STATEMENT_TIMEOUT or None,
        server_settings={"application_name": APPLICATION_NAME, "jit": "off"},
    )
    try:
        return await symbol_source.read_index(conn, lookups=False)  # made by the reader
    finally:
        await conn.close()


def write(index: SymbolIndex, directory: Path, copies: int) -> None:
    whole = directory / "index.tmp"
    whole.write_bytes(index.to_bytes())
    for k in range(copies):
        os.link(whole, directory / f"{_COPY}{k}")
    whole.unlink()
    (directory / _BUILT).touch()


def _note_failure(directory: Path, reason: str) -> None:
    with suppress(OSError):  # the directory is gone: serving has ended
        (directory / _FAILED).write_text(reason[:500])


def _reap(pid: int, directory: Path) -> None:
    """Wait for the builder (no zombie is left), and speak for it if it died without a word."""
    _, status = os.waitpid(pid, 0)
    if status != 0 and not (directory / _FAILED).exists():
        _note_failure(directory, f"the index builder ended with wait status {status}")


async def take() -> SymbolIndex | None:
    """This worker's copy of the builder's index, or None: no builder, it failed (logged), or
    every copy is taken. Blocks the loop only to read the copy (0.2-0.3 s for 200k rows):
    it runs before the worker serves."""
    place = os.environ.get(ENV)
    if place is None:
        return None
    directory = Path(place)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while True:
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return None
        for name in sorted(names):
            if name.startswith(_COPY):
                index = _claim(directory / name)
                if index is not None:
                    return index
        if _FAILED in names:
            reason = (directory / _FAILED).read_text()
            logger.warning("no index from the start-up builder (%s): reading the database", reason)
            return None
        if _BUILT in names:
            return None  # every copy was claimed: a worker started again later
        if loop.time() > deadline:
            logger.warning("the start-up index builder took over %g s: reading the database",
                           WAIT_S)  # fmt: skip
            return None
        await asyncio.sleep(_POLL_S)


def _claim(copy: Path) -> SymbolIndex | None:
    from service.symbol_index import SymbolIndex, cycle_collection_paused

    mine = copy.with_name(f"taken-{os.getpid()}")
    try:
        copy.rename(mine)  # atomic: of two workers, one gets it
    except FileNotFoundError:
        return None
    try:
        data = mine.read_bytes()
    finally:
        mine.unlink()
    with cycle_collection_paused():
        return SymbolIndex.from_bytes(data)
