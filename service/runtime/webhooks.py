"""The by-webhook lookup every webhook alert makes, answered from memory."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.cache import CacheRegistry, LocalCache
from service.db import begin_autocommit_read
from service.errors import NotFound
from service.repositories import strategies as strategies_repo
from service.repositories.strategies import StrategyKind


class WebhookLookup:
    """webhook_id → the strategy with its symbols, rendered as JSON once and kept in memory until
    a change to the strategy or its mappings invalidates it (on every instance).

    The hit path touches no session at all; a miss opens its own. A fill is kept only if no
    invalidation of the topic arrived while it read: a read that started before a change
    committed would otherwise store the old strategy after its invalidation had passed, and
    serve it until the TTL backstop.
    """

    def __init__(
        self,
        kind: StrategyKind,
        sessionmaker: async_sessionmaker[AsyncSession],
        caches: CacheRegistry,
    ) -> None:
        self.kind = kind
        self.entries: LocalCache[str, bytes] = caches.get(kind.topic, topic=kind.topic)
        self._sessionmaker = sessionmaker

    def cached(self, webhook_id: str) -> bytes | None:
        """The rendered strategy if it is in memory; None says nothing (ask `get`)."""
        return self.entries.peek(webhook_id)

    async def get(self, webhook_id: str) -> bytes:
        body = self.entries.get(webhook_id)
        if body is not None:
            return body
        generation = self.entries.generation
        async with self._sessionmaker() as session:
            await begin_autocommit_read(session)
            detail = await strategies_repo.get_detail_by_webhook(session, self.kind, webhook_id)
        if detail is None:
            raise NotFound(f"No {self.kind.label} has webhook id {webhook_id!r}.")
        body = self.kind.detail.model_validate(detail).model_dump_json(by_alias=True).encode()
        self.entries.set_if_current(webhook_id, body, generation)
        return body
