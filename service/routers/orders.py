"""orders: one round trip per order. The context answers from memory when warm (no database
session is taken); the record is group-committed."""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from service import orders
from service.errors import problems
from service.idempotency import READ_ONLY
from service.routers.base import domain_router
from service.schemas.orders import (
    OrderContext,
    OrderContextBasket,
    OrderContextBasketQuery,
    OrderContextQuery,
    OrderRecordCreate,
    OrderRecorded,
    record_body_openapi,
)
from service.security import PrincipalDep
from service.state import IndexDep, StateDep, VerifierDep, WritersDep

router = domain_router("/orders", "orders")

_KEY_PROBLEMS = (400, 404, 409, 410, 415)


@router.post(
    "/context",
    response_model=OrderContext,
    response_model_exclude_unset=True,
    responses=problems(*_KEY_PROBLEMS),
    **READ_ONLY,  # its answer may hold broker tokens: never stored for Idempotency-Key
)
async def get_order_context(
    body: OrderContextQuery,
    verifier: VerifierDep,
    index: IndexDep,
    state: StateDep,
    principal: PrincipalDep,
) -> Response:
    """Everything placing one order needs: the key's user, order mode and broker (and, asked for,
    its broker tokens), the platform's analyze mode and the instrument, in one call.

    Answered from the same caches as verify, tokens/lookup and GET /settings. Problems, in this
    order: 403 tokens asked for without the `secrets` scope; 401 `api-key-unknown`; 404
    `broker-token-missing` / 410 `broker-token-revoked` / 410 `broker-token-expired` (only when
    tokens are asked for, as for verify: otherwise `broker_token` says the state); 404 `symbol-unknown` naming the symbol and
    exchange.
    """
    answer = await orders.authorise_key(
        verifier,
        state.keyring,
        principal,
        body.api_key.get_secret_value(),
        auth=body.include_auth,
        feed=body.include_feed_token,
    )
    row = orders.instrument(index, body.symbol, body.exchange)
    answer["analyze_mode"] = await orders.analyze_mode(state.sessionmaker, state.caches)
    answer["instrument"] = row
    # Already the response's shape: serialised directly, this is on every order's path.
    return Response(orjson.dumps(answer), media_type="application/json")


@router.post(
    "/context/batch",
    response_model=OrderContextBasket,
    response_model_exclude_unset=True,
    responses=problems(*_KEY_PROBLEMS),
    **READ_ONLY,
)
async def get_basket_context(
    body: OrderContextBasketQuery,
    verifier: VerifierDep,
    index: IndexDep,
    state: StateDep,
    principal: PrincipalDep,
) -> Response:
    """The order context of a basket: one key, up to 50 instruments, answered in order.

    A key or broker-token problem fails the whole call, as for one instrument; an unknown symbol
    fails only its item (`instrument` null, `problem` a `symbol-unknown` document).
    """
    answer = await orders.authorise_key(
        verifier,
        state.keyring,
        principal,
        body.api_key.get_secret_value(),
        auth=body.include_auth,
        feed=body.include_feed_token,
    )
    answer["analyze_mode"] = await orders.analyze_mode(state.sessionmaker, state.caches)
    answer["items"] = orders.basket(index, [(i.symbol, i.exchange) for i in body.items])
    return Response(orjson.dumps(answer), media_type="application/json")


async def _record_body(request: Request) -> OrderRecordCreate:
    """The body, validated as FastAPI validates one (see `record_body_openapi` for why here)."""
    try:
        return OrderRecordCreate.model_validate_json(await request.body())
    except ValidationError as error:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in error.errors(include_url=False)]
        ) from None


@router.post(
    "/record",
    status_code=201,
    response_model=OrderRecorded,
    responses=problems(400, 415),
    openapi_extra=record_body_openapi(),
)
async def record_order(
    body: Annotated[OrderRecordCreate, Depends(_record_body)], writers: WritersDep, state: StateDep
) -> OrderRecorded:
    """Write an order's API log and its latency row in one transaction, both or neither;
    answered once committed.

    The log goes to the analyzer log when `analyze` is true, or when it is omitted and the
    platform's analyze mode is on; otherwise to the order log. The answer names the table and
    both new ids. A row the database refuses fails the request (422) with neither row written.
    """
    analyze = body.analyze
    if analyze is None:
        analyze = await orders.analyze_mode(state.sessionmaker, state.caches)
    table, log_id, latency_id = await orders.record(writers.orders, body, analyze=analyze)
    return OrderRecorded(log_table=table, log_id=log_id, latency_id=latency_id)
