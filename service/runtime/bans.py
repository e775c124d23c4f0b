"""The ban check every inbound request of the platform makes, answered from memory."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.cache import CacheRegistry, InvalidationBus
from service.models.base import utcnow
from service.repositories import bans as bans_repo
from service.schemas.traffic import BanRead, BanStatus

_NOT_BANNED = BanStatus(banned=False, ban=None)


class BanCache:
    """Answers "is this IP banned?" from memory: every address asked about, banned or not.

    Entries are dropped through the one invalidation path (topic `bans`, key = the address) on
    every instance. Expiry is checked when answering, so a temporary ban stops counting on time
    without any job having to run. A lookup that raced with an invalidation is answered but not
    cached, so a ban committed meanwhile is never hidden behind a stale "not banned".
    """

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        caches: CacheRegistry,
        bus: InvalidationBus,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._cache = caches.get("bans", topic=bans_repo.TOPIC)
        self._generation = 0
        bus.subscribe(bans_repo.TOPIC, self._changed)

    def _changed(self, _key: str) -> None:
        self._generation += 1

    def cached(self, ip: str) -> BanStatus | None:
        """The address's status now if it is in memory; None says nothing (ask `status`)."""
        entry: BanStatus | None = self._cache.peek(ip)
        return _now(entry) if entry is not None else None

    async def status(self, ip: str) -> BanStatus:
        entry: BanStatus | None = self._cache.get(ip)
        if entry is None:
            generation = self._generation
            async with self._sessionmaker() as session:
                row = await bans_repo.find_ban(session, ip)
            entry = (
                BanStatus(banned=True, ban=BanRead.model_validate(row))
                if row is not None
                else _NOT_BANNED
            )
            if generation == self._generation:
                self._cache.set(ip, entry)
        return _now(entry)


def _now(entry: BanStatus) -> BanStatus:
    """What a stored status says now: a temporary ban past its expiry no longer counts."""
    if entry.ban is not None and not bans_repo.is_active(entry.ban, utcnow()):
        return _NOT_BANNED
    return entry
