"""In-process caches and the invalidation bus that keeps every instance coherent.

The one invalidation path: a repository calls `await invalidate(session, topic, key)` inside the
transaction that changes the data. On PostgreSQL that issues `pg_notify` on one channel, which
PostgreSQL delivers to every listening instance only if and when the transaction commits. On every
backend the same invalidation is also applied locally right after the commit (SQLAlchemy's
`after_commit` session event), so the instance that made the change never serves stale data, not
even for the moment the notification takes to come back. A rollback discards it.

When the listening connection is lost, or cannot be set up, every cache is flushed (notifications
may have been missed) and caches stay off, neither serving nor keeping entries, until it listens
again; it retries with backoff, forever. TTLs are a backstop, never the mechanism.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Hashable, Iterator
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar, cast

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

logger = logging.getLogger("service.cache")

CHANNEL = "algoways_invalidate"
LISTENER_NAME = "algoways-store-listener"
ALL = "*"  # key meaning "everything under this topic"
_PENDING = "pending_invalidations"

Handler = Callable[[str], Awaitable[None] | None]
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class InvalidationBus:
    """Fans invalidations out to subscribers, locally and (on PostgreSQL) across instances.

    On PostgreSQL a supervised task keeps one connection LISTENing: whatever fails (connecting,
    LISTEN, the connection later) it flushes every cache and tries again with backoff, forever.
    Until it listens again `connected` is clear and caches neither serve nor keep entries, so
    reads go to the database and no instance serves data another one has changed meanwhile.
    """

    # Seconds between liveness probes of an idle listening connection, and their bound.
    probe_interval = 15.0
    probe_timeout = 5.0
    # Reconnect backoff: doubles from the first to the last, with jitter.
    backoff = (0.5, 10.0)
    # How long start() waits for the first LISTEN before serving with caches off.
    start_wait = 10.0

    def __init__(self, dsn: str | None = None) -> None:
        self._dsn = dsn  # a plain asyncpg DSN; None on SQLite (one process only)
        # Tags this instance's notifications: it applies its own invalidations right after its
        # commit, so their echo from PostgreSQL is skipped instead of dropping the entry twice.
        self.instance_id = uuid.uuid4().hex[:12]
        self._handlers: dict[str, list[Handler]] = {}
        self._listener: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        # Set while invalidations from every instance reach this one (always, on SQLite).
        self.connected = asyncio.Event()
        self._attempted = asyncio.Event()  # the first connection attempt is over, either way
        self.since = datetime.now(UTC)  # when `connected` last changed
        self.last_error: str | None = None  # why the listener is down, while it is
        self.failures = 0  # connections lost or refused since start
        if dsn is None:
            self.connected.set()

    @property
    def distributed(self) -> bool:
        return self._dsn is not None

    def caching_allowed(self) -> bool:
        """Whether caches may serve and keep entries: only while no invalidation can be missed."""
        return self.connected.is_set()

    def subscribe(self, topic: str, handler: Handler) -> None:
        self._handlers.setdefault(topic, []).append(handler)

    def dispatch(self, topic: str, key: str = ALL) -> None:
        for handler in self._handlers.get(topic, ()):
            try:
                result = handler(key)
            except Exception:
                logger.exception("invalidation handler failed for %s", topic)
                continue
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def dispatch_all(self) -> None:
        for topic in list(self._handlers):
            self.dispatch(topic, ALL)

    async def start(self) -> None:
        """Start listening; never fails and never waits longer than `start_wait`.

        Serving before the listener is up would be unsafe only with caches on, and they stay off
        until it is: a database that is down or a LISTEN that fails must not hold start-up.
        """
        if self._dsn is None or self._listener is not None:
            return
        self._listener = asyncio.create_task(self._supervise(), name="invalidation-listener")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._attempted.wait(), self.start_wait)

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
            self._listener = None
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _supervise(self) -> None:
        low, high = self.backoff
        delay = low
        while True:
            try:
                await self._listen_once()
                delay = low  # it was up: a later loss starts the backoff afresh
            except Exception as error:  # whatever failed (connect, LISTEN, a probe): again
                self._went_down(f"{type(error).__name__}: {error}"[:200])
            finally:
                self._attempted.set()
            await asyncio.sleep(delay * random.uniform(0.75, 1.25))
            delay = min(delay * 2, high)

    async def _listen_once(self) -> None:
        """One connection: LISTEN, then wait until it is lost. Raises when a step fails."""
        import asyncpg

        conn = await asyncpg.connect(
            self._dsn,
            timeout=self.probe_timeout,
            server_settings={"application_name": LISTENER_NAME},
        )
        try:
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _c: lost.set())
            await conn.add_listener(CHANNEL, self._on_notify)
            self._came_up()
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), self.probe_interval)
                if not lost.is_set():
                    await conn.execute("SELECT 1", timeout=self.probe_timeout)
            self._went_down("the listening connection was closed")
        finally:
            if not conn.is_closed():
                conn.terminate()

    def _came_up(self) -> None:
        # Anything may have changed while nobody listened, and fills that started before now
        # read what may be stale: drop the one, make the other fail its generation check.
        self.dispatch_all()
        self.connected.set()
        self._attempted.set()
        self.since = datetime.now(UTC)
        self.last_error = None
        logger.info("invalidation listener is listening")

    def _went_down(self, reason: str) -> None:
        self.failures += 1
        self.last_error = reason
        if not self.connected.is_set():  # still down: caches are off and empty already
            logger.warning("invalidation listener cannot listen (%s); retrying", reason)
            return
        self.connected.clear()
        self.since = datetime.now(UTC)
        logger.warning("invalidation listener lost (%s); caches off, reconnecting", reason)
        # Notifications may have been missed: nothing cached before this moment can be trusted.
        self.dispatch_all()

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        origin, _, rest = payload.partition(":")
        if origin != self.instance_id:
            topic, _, key = rest.partition(":")
            self.dispatch(topic, key or ALL)


async def invalidate(session: AsyncSession, topic: str, key: str = ALL) -> None:
    """Invalidate `topic`/`key` on every instance once the session's transaction commits."""
    bus: InvalidationBus = session.info["bus"]
    if bus.distributed:
        await session.execute(
            text("SELECT pg_notify(:channel, :payload)"),
            {"channel": CHANNEL, "payload": f"{bus.instance_id}:{topic}:{key}"},
        )
    session.info.setdefault(_PENDING, []).append((topic, key))


@event.listens_for(Session, "after_commit")
def _apply_after_commit(session: Session) -> None:
    pending = session.info.pop(_PENDING, None)
    if pending:
        bus: InvalidationBus = session.info["bus"]
        for topic, key in pending:
            bus.dispatch(topic, key)


@event.listens_for(Session, "after_rollback")
def _discard_after_rollback(session: Session) -> None:
    session.info.pop(_PENDING, None)


class LocalCache(Generic[K, V]):
    """A dict with hit/miss counters, an optional TTL backstop and a size bound."""

    def __init__(
        self,
        name: str,
        *,
        ttl: float | None = 300.0,
        max_size: int = 100_000,
        enabled: Callable[[], bool] | None = None,
    ) -> None:
        self.name = name
        self.ttl = ttl
        self.max_size = max_size
        # Consulted on every get and set: while it says no (the invalidation listener is down),
        # the cache neither serves nor keeps anything, so every read goes to the database.
        self._enabled = enabled or _always
        self._data: dict[K, tuple[float, V]] = {}
        self.hits = 0
        self.misses = 0
        # Bumped by every invalidation: a filler notes it before reading the database and
        # stores its result only if no invalidation passed meanwhile (`set_if_current`).
        self.generation = 0

    def get(self, key: K) -> V | None:
        value = self.peek(key)
        if value is None:
            self.misses += 1
        return value

    def peek(self, key: K) -> V | None:
        """`get` for a caller that falls back to one that calls `get` on a miss: a hit counts,
        a miss is left to the fallback to count, so it is counted once."""
        if not self._enabled():
            return None
        entry = self._data.get(key)
        if entry is not None and (self.ttl is None or entry[0] > time.monotonic()):
            self.hits += 1
            return entry[1]
        return None

    def set(self, key: K, value: V, ttl: float | None = None) -> None:
        if not self._enabled():
            return
        if len(self._data) >= self.max_size:
            self._data.clear()  # crude but bounded; a full cache refills from the database
        lifetime = ttl if ttl is not None else self.ttl
        expires = time.monotonic() + lifetime if lifetime is not None else float("inf")
        self._data[key] = (expires, value)

    def set_if_current(self, key: K, value: V, generation: int) -> bool:
        """Store `value` unless an invalidation arrived since `generation` was read.

        A read that started before a change committed would otherwise put the old value back
        after the change's invalidation had passed, and serve it until the TTL.
        """
        if generation != self.generation or not self._enabled():
            return False
        self.set(key, value)
        return True

    def invalidate(self, key: str = ALL) -> None:
        self.generation += 1
        if key == ALL:
            self._data.clear()
        else:
            self._data.pop(cast(K, key), None)

    def __len__(self) -> int:
        return len(self._data)


class CacheRegistry:
    """The per-app set of caches, each subscribed to the topic that invalidates it."""

    def __init__(self, bus: InvalidationBus) -> None:
        self.bus = bus
        self._caches: dict[str, LocalCache[Any, Any]] = {}

    def get(
        self,
        name: str,
        *,
        topic: str | None = None,
        ttl: float | None = 300.0,
        max_size: int = 100_000,
    ) -> LocalCache[Any, Any]:
        """The cache called `name`, created on first use and invalidated by `topic` (or `name`)."""
        cache = self._caches.get(name)
        if cache is None:
            cache = LocalCache(name, ttl=ttl, max_size=max_size, enabled=self.bus.caching_allowed)
            self._caches[name] = cache
            self.bus.subscribe(topic or name, cache.invalidate)
        return cache

    def __iter__(self) -> Iterator[LocalCache[Any, Any]]:
        return iter(self._caches.values())


def _always() -> bool:
    return True
