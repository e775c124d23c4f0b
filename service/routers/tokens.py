"""tokens: symbol <-> broker lookups, on every order's path. Answered from the in-memory index
only: these routes take no database session."""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import Response

from service.errors import NotFound, PayloadTooLarge, ValidationFailed, problems
from service.idempotency import READ_ONLY
from service.routers.base import domain_router
from service.schemas.tokens import (
    KEYS,
    MAX_BATCH,
    TokenLookupBatch,
    TokenLookupResults,
    TokenMapping,
)
from service.schemas.types import query_text
from service.state import IndexDep

router = domain_router("/tokens", "tokens")


@router.get("/lookup", response_model=TokenMapping, responses=problems(404))
async def lookup_token(
    index: IndexDep,
    exchange: Annotated[str, query_text(255, min_length=1, examples=["NFO"])],
    symbol: Annotated[str | None, query_text(255, examples=["NIFTY28NOV2424000CE"])] = None,
    token: Annotated[str | None, query_text(255)] = None,
    brsymbol: Annotated[str | None, query_text(255)] = None,
) -> Response:
    """Resolve exactly one of symbol, token or brsymbol on an exchange."""
    given = [k for k, v in zip(KEYS, (symbol, token, brsymbol), strict=True) if v is not None]
    if len(given) != 1:
        raise ValidationFailed.field(
            ["query", *given] if given else ["query", "symbol"],
            "give exactly one of symbol, token or brsymbol",
        )
    i = index.find(exchange, symbol=symbol, token=token, brsymbol=brsymbol)
    if i is None:
        raise NotFound(f"No {given[0]} {(symbol or token or brsymbol)!r} on {exchange!r}.")
    # The mapping is already the response's shape: serialised directly, this is the hot path.
    return Response(orjson.dumps(index.mapping(i)), media_type="application/json")


@router.post(
    "/lookup",
    response_model=TokenLookupResults,
    responses=problems(400, 413, 415),
    **READ_ONLY,
)
async def lookup_tokens(body: TokenLookupBatch, index: IndexDep) -> Response:
    """Resolve up to 1000 lookups at once; unknown ones answer null, in place."""
    if len(body.items) > MAX_BATCH:
        raise PayloadTooLarge(f"A batch holds at most {MAX_BATCH} items.")
    items = []
    for item in body.items:
        i = index.find(item.exchange, symbol=item.symbol, token=item.token, brsymbol=item.brsymbol)
        items.append(index.mapping(i) if i is not None else None)
    return Response(orjson.dumps({"items": items}), media_type="application/json")
