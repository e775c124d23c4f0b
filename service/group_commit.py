"""Group commit: concurrent writes to one table coalesced into one insert and one transaction.

Each request hands its rows to the table's writer and waits; the writer takes everything that
queued up while its previous flush ran (at most `concurrency` flushes run at once), inserts it in
one statement (or COPY) in its own session, commits, and only then resolves every waiting request. So a request is answered after its rows are
durable, a burst of N single-row posts costs a handful of transactions instead of N, and the
requests themselves hold no pooled connection while they wait.

The queue is bounded in rows: when it is full, new writes wait for room (backpressure) and give up
with 503 after `wait_timeout`, rather than growing memory without limit. Stopping the writer (the
app's lifespan exit, which SIGTERM reaches once in-flight requests are done) flushes every row
already accepted before it returns.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.db import begin_write
from service.errors import (
    AppError,
    DatabaseFailure,
    DatabaseUnavailable,
    classify_database_error,
    database_error_to_app_error,
)

logger = logging.getLogger("service.group_commit")

Row = dict[str, Any]
# Inserts `rows` in the session's transaction, never changing them (a retry or a split writes
# them again); returns their ids in input order (or None).
WriteFn = Callable[[AsyncSession, list[Row]], Awaitable[list[int] | None]]


@dataclass(slots=True)
class _Entry:
    rows: Sequence[Row]
    future: asyncio.Future[list[int] | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class WriterClosed(DatabaseUnavailable):
    default_detail = "The service is shutting down; retry against another instance."


class GroupCommitWriter:
    """One per table: a background task that turns queued rows into committed multi-row inserts."""

    def __init__(
        self,
        name: str,
        sessionmaker: async_sessionmaker[AsyncSession],
        write: WriteFn,
        *,
        max_batch_rows: int = 10_000,
        max_pending_rows: int = 100_000,
        wait_timeout: float = 5.0,
        concurrency: int = 1,
    ) -> None:
        self.name = name
        self.concurrency = concurrency
        self._sessionmaker = sessionmaker
        self._write = write
        self.max_batch_rows = max_batch_rows
        self.max_pending_rows = max_pending_rows
        self.wait_timeout = wait_timeout
        self._queue: deque[_Entry] = deque()
        self._pending_rows = 0  # queued plus being flushed
        self._work = asyncio.Event()
        self._room = asyncio.Condition()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    @property
    def pending_rows(self) -> int:
        return self._pending_rows

    async def submit(self, rows: Sequence[Row]) -> list[int] | None:
        """Queue `rows` and wait until they are committed; their ids in order (or None)."""
        if self._closing or self._task is None:
            raise WriterClosed()
        if self._pending_rows + len(rows) > self.max_pending_rows:
            await self._wait_for_room(len(rows))
        entry = _Entry(rows)
        self._queue.append(entry)
        self._pending_rows += len(rows)
        self._work.set()
        # shield: a client that disconnects must not cancel rows the writer may already hold.
        return await asyncio.shield(entry.future)

    async def _wait_for_room(self, wanted: int) -> None:
        def has_room() -> bool:
            return self._closing or self._pending_rows + wanted <= self.max_pending_rows

        async with self._room:
            try:
                await asyncio.wait_for(self._room.wait_for(has_room), self.wait_timeout)
            except TimeoutError:
                raise DatabaseUnavailable(
                    f"The {self.name} writer is saturated; retry shortly."
                ) from None
        if self._closing:
            raise WriterClosed()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"group-commit-{self.name}")

    async def stop(self) -> None:
        """Refuse new rows, flush every row already accepted, then return."""
        self._closing = True
        self._work.set()
        async with self._room:
            self._room.notify_all()
        if self._task is not None:
            await self._task

    @asynccontextmanager
    async def running(self) -> AsyncIterator[GroupCommitWriter]:
        await self.start()
        try:
            yield self
        finally:
            await self.stop()

    async def _run(self) -> None:
        slots = asyncio.Semaphore(self.concurrency)
        flushing: set[asyncio.Task[None]] = set()

        def done(task: asyncio.Task[None]) -> None:
            flushing.discard(task)
            slots.release()

        while True:
            if not self._queue:
                if self._closing:
                    break
                self._work.clear()
                await self._work.wait()
                continue
            await slots.acquire()  # while every slot is busy, the next batch keeps growing
            # Let requests that are already runnable queue their rows into this batch.
            await asyncio.sleep(0)
            task = asyncio.create_task(self._flush(self._take_batch()))
            flushing.add(task)
            task.add_done_callback(done)
        if flushing:
            await asyncio.gather(*flushing)

    def _take_batch(self) -> list[_Entry]:
        batch = [self._queue.popleft()]
        size = len(batch[0].rows)
        while self._queue and size + len(self._queue[0].rows) <= self.max_batch_rows:
            entry = self._queue.popleft()
            size += len(entry.rows)
            batch.append(entry)
        return batch

    async def _flush(self, batch: list[_Entry]) -> None:
        try:
            await self._commit_isolating(batch)
        finally:
            self._pending_rows -= sum(len(entry.rows) for entry in batch)
            async with self._room:
                self._room.notify_all()

    async def _commit_isolating(self, batch: list[_Entry]) -> None:
        """Commit `batch`; when it fails on one request's data, commit all the other requests.

        Each entry is one request, written all or nothing. A failure the request caused (a value
        or constraint the database refuses, or a 4xx the write function raises) is narrowed down
        by splitting the batch in halves and committing each on its own, down to single entries:
        one bad entry among n costs about 2·log2(n) extra transactions, and only it gets the error.
        Any other failure (the database unreachable, a bug) fails the whole batch: the rows were
        not written.
        """
        error = await self._commit(batch)
        if error is None:
            return
        if len(batch) > 1 and _caused_by_request(error):
            middle = len(batch) // 2
            await self._commit_isolating(batch[:middle])
            await self._commit_isolating(batch[middle:])
            return
        self._log_failure(error, batch)
        for entry in batch:
            _resolve(entry, error=_problem_for(error))

    async def _commit(self, batch: list[_Entry]) -> Exception | None:
        """One transaction for `batch`, retried once after a serialization failure or deadlock;
        resolves every entry with its ids on success, returns the error otherwise."""
        # The submitted rows themselves: a write function never changes them, so a retry or a
        # split starts from the rows as submitted.
        rows = [row for entry in batch for row in entry.rows]
        for attempt in range(2):
            try:
                async with self._sessionmaker() as session:
                    await begin_write(session)
                    ids = await self._write(session, rows)
                    await session.commit()
            except Exception as error:
                info = classify_database_error(error)
                if attempt == 0 and info is not None and info.failure is DatabaseFailure.RETRYABLE:
                    logger.info("%s writer retries a flush: %s", self.name, info.code)
                    continue
                return error
            offset = 0
            for entry in batch:
                size = len(entry.rows)
                _resolve(entry, ids[offset : offset + size] if ids is not None else None)
                offset += size
            return None
        raise AssertionError("unreachable: the second attempt returns")

    def _log_failure(self, error: Exception, batch: list[_Entry]) -> None:
        rows = sum(len(entry.rows) for entry in batch)
        if isinstance(error, AppError) or database_error_to_app_error(error) is not None:
            logger.warning("%s writer failed on %d rows: %s", self.name, rows, _describe(error))
        else:
            logger.error("%s writer failed on %d rows", self.name, rows, exc_info=error)


def _caused_by_request(error: Exception) -> bool:
    """Whether the failure lies in some request's rows rather than in the database or the code."""
    if isinstance(error, AppError):
        return 400 <= error.status < 500
    info = classify_database_error(error)
    return info is not None and info.failure in (DatabaseFailure.DATA, DatabaseFailure.INTEGRITY)


def _describe(error: Exception) -> str:
    info = classify_database_error(error)
    return f"{type(error).__name__} [{info.code}]" if info is not None else type(error).__name__


def _problem_for(error: Exception) -> Exception:
    """A fresh exception per waiting request (one shared instance would pile up tracebacks)."""
    if isinstance(error, AppError):
        return type(error)(error.detail, errors=error.errors, headers=error.headers)
    mapped = database_error_to_app_error(error)
    if mapped is not None:
        return mapped
    return RuntimeError(f"group commit failed: {type(error).__name__}")


def _resolve(
    entry: _Entry, ids: list[int] | None = None, *, error: Exception | None = None
) -> None:
    if entry.future.done():
        return
    if error is not None:
        entry.future.set_exception(error)
    else:
        entry.future.set_result(ids)
