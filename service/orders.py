"""orders: what one order needs (key, broker tokens, instrument, analyze mode) from the runtime
objects that answer the separate calls, and its log and latency row written as one.

The key goes through the API-key verifier, the instrument through the symbol index, analyze mode
through the settings cache: the same objects, caches and invalidations as verify, tokens/lookup
and GET /settings, so this answer is never staler or fresher than theirs. The key's part is
verify's answer (runtime/api_keys.py `verification`), under verify's scope rule.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.cache import CacheRegistry
from service.errors import AppError, Forbidden
from service.group_commit import GroupCommitWriter
from service.models.latency import OrderLatency
from service.models.logs import AnalyzerLog, OrderLog
from service.problem_types import PROBLEM_TYPE_BASE
from service.repositories import logs as logs_repo
from service.repositories import settings as settings_repo
from service.runtime.api_keys import ApiKeyVerifier, verification
from service.schemas.orders import LogTable, OrderRecordCreate
from service.security import Keyring, Principal
from service.symbol_index import SymbolIndex


class SymbolUnknown(AppError):
    status = 404
    title = "Unknown symbol"
    type_ = "symbol-unknown"
    default_detail = "No instrument has this symbol on this exchange."


async def authorise_key(
    verifier: ApiKeyVerifier,
    keyring: Keyring,
    principal: Principal,
    api_key: str,
    *,
    auth: bool,
    feed: bool,
) -> dict[str, Any]:
    """What verify answers for `api_key` (runtime/api_keys.py `verification`), by its rules.

    Asking for a token without the `secrets` scope is 403 before the key is looked at (so a token
    without it learns nothing about keys); an unknown key 401 `api-key-unknown`; a token asked
    for but missing 404 `broker-token-missing`, revoked 410 `broker-token-revoked`.
    """
    if (auth or feed) and not principal.has("secrets"):
        raise Forbidden("include_auth and include_feed_token need the 'secrets' scope.")
    owner = await verifier.verify(api_key)
    return verification(keyring, owner, auth=auth, feed=feed)


def instrument(index: SymbolIndex, symbol: str, exchange: str) -> dict[str, Any]:
    """The contract row of `symbol` on `exchange`; 404 `symbol-unknown` naming both."""
    i = index.find(exchange, symbol=symbol)
    if i is None:
        raise SymbolUnknown(f"No symbol {symbol!r} on exchange {exchange!r}.")
    return index.row(i)


def problem_of(error: AppError) -> dict[str, Any]:
    """The problem document of `error`, for a failure reported inside a 2xx answer."""
    return {
        "type": PROBLEM_TYPE_BASE + error.type_,
        "title": error.title,
        "status": error.status,
        "detail": error.detail,
        "errors": None,
    }


def basket(index: SymbolIndex, items: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Each (symbol, exchange) with its row, or with its problem: one unknown symbol does not
    fail the basket."""
    answers = []
    for symbol, exchange in items:
        answer: dict[str, Any] = {"symbol": symbol, "exchange": exchange}
        try:
            answer["instrument"], answer["problem"] = instrument(index, symbol, exchange), None
        except SymbolUnknown as error:
            answer["instrument"], answer["problem"] = None, problem_of(error)
        answers.append(answer)
    return answers


async def analyze_mode(
    sessionmaker: async_sessionmaker[AsyncSession], caches: CacheRegistry
) -> bool:
    """The platform's analyze mode, from the settings cache GET /settings fills and reads; a
    session only on a miss (making one costs more than the rest of a warm order context)."""
    settings = settings_repo.cached_settings(caches)
    if settings is None:
        async with sessionmaker() as session:
            settings = await settings_repo.get_settings(session, caches)
    return settings.analyze_mode


_TABLES: dict[LogTable, Table] = {
    "order_logs": OrderLog.__table__,  # type: ignore[dict-item]
    "analyzer_logs": AnalyzerLog.__table__,  # type: ignore[dict-item]
}
_LATENCY: Table = OrderLatency.__table__  # type: ignore[assignment]


async def record(
    writer: GroupCommitWriter, body: OrderRecordCreate, *, analyze: bool
) -> tuple[LogTable, int, int]:
    """Write the order's log (to the analyzer log when `analyze`) and its latency row in one
    group-committed transaction; (table, log id, latency id) once committed."""
    table: LogTable = "analyzer_logs" if analyze else "order_logs"
    log = logs_repo.rows_from([body.log], "created_at")[0]
    latency = logs_repo.rows_from([body.latency], "timestamp")[0]
    ids = await writer.submit(
        [{"table": _TABLES[table], "row": log}, {"table": _LATENCY, "row": latency}]
    )
    assert ids is not None and len(ids) == 2
    return table, ids[0], ids[1]
