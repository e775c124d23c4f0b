"""In-process caches and the invalidation bus that keeps every instance coherent.

The one invalidation path: a repository calls `await invalidate(session, topic, key)` inside the
transaction that changes the data. On PostgreSQL that issues `pg_notify` on one channel, which
PostgreSQL delivers to every listening instance only if and when the transaction commits. On every
backend the same invalidation is also applied locally right after the commit (SQLAlchemy's
`after_commit` session event), so the instance that made the change never serves stale data, not
even for the moment the notification takes to come back. A rollback discards it.

When the listening connection is lost, every cache is flushed (notifications may have been
missed) and it reconnects. TTLs are a backstop, never the mechanism.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

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
    """Fans invalidations out to subscribers, locally and (on PostgreSQL) across instances."""

    def __init__(self, dsn: str | None = None) -> None:
        self._dsn = dsn  # a plain asyncpg DSN; None on SQLite (one process only)
        # Tags this instance's notifications: it applies its own invalidations right after its
        # commit, so their echo from PostgreSQL is skipped instead of dropping the entry twice.
        self.instance_id = uuid.uuid4().hex[:12]
        self._handlers: dict[str, list[Handler]] = {}
        self._listener: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.connected = asyncio.Event()
        self._attempted = asyncio.Event()  # the first connection attempt is over, either way

    @property
    def distributed(self) -> bool:
        return self._dsn is not None

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
        if self._dsn is not None and self._listener is None:
            self._listener = asyncio.create_task(self._listen(), name="invalidation-listener")
            # Serving before the listener is up could miss invalidations; a database that is
            # down must not hold start-up, though: the listener keeps retrying.
            await self._attempted.wait()

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
            self._listener = None
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _listen(self) -> None:
        import asyncpg

        delay = 0.5
        reconnecting = False
        while True:
            lost = asyncio.Event()
            try:
                conn = await asyncpg.connect(
                    self._dsn, timeout=5, server_settings={"application_name": LISTENER_NAME}
                )
            except (OSError, asyncpg.PostgresError, TimeoutError) as error:
                logger.warning("invalidation listener cannot connect (%s); retrying", error)
                reconnecting = True
                self._attempted.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10)
                continue
            try:
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(CHANNEL, self._on_notify)
                if reconnecting:  # anything may have changed while we were not listening
                    self.dispatch_all()
                reconnecting = True
                self.connected.set()
                self._attempted.set()
                delay = 0.5
                while not lost.is_set():
                    try:
                        await asyncio.wait_for(lost.wait(), timeout=15)
                    except TimeoutError:
                        try:
                            await conn.execute("SELECT 1", timeout=5)
                        except Exception:
                            lost.set()
                logger.warning("invalidation listener lost its connection; reconnecting")
                self.connected.clear()
                self.dispatch_all()
            finally:
                if not conn.is_closed():
                    conn.terminate()

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

    def __init__(self, name: str, *, ttl: float | None = 300.0, max_size: int = 100_000) -> None:
        self.name = name
        self.ttl = ttl
        self.max_size = max_size
        self._data: dict[K, tuple[float, V]] = {}
        self.hits = 0
        self.misses = 0
        # Bumped by every invalidation: a filler notes it before reading the database and
        # stores its result only if no invalidation passed meanwhile (`set_if_current`).
        self.generation = 0

    def get(self, key: K) -> V | None:
        entry = self._data.get(key)
        if entry is not None and (self.ttl is None or entry[0] > time.monotonic()):
            self.hits += 1
            return entry[1]
        self.misses += 1
        return None

    def set(self, key: K, value: V, ttl: float | None = None) -> None:
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
        if generation != self.generation:
            return False
        self.set(key, value)
        return True

    def invalidate(self, key: str = ALL) -> None:
        self.generation += 1
        if key == ALL:
            self._data.clear()
        else:
            self._data.pop(key, None)  # type: ignore[call-overload]

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
            cache = LocalCache(name, ttl=ttl, max_size=max_size)
            self._caches[name] = cache
            self.bus.subscribe(topic or name, cache.invalidate)
        return cache

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._caches.values())
