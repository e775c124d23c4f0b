"""orders: what placing an order needs, in one call; its log and latency row, written as one."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from service.errors import Problem
from service.schemas.auth import ApiKeyVerify, BrokerTokenState, OrderMode
from service.schemas.base import InputSchema
from service.schemas.latency import LatencyCreate
from service.schemas.logs import ApiLogCreate
from service.schemas.symbols import SymbolRead
from service.schemas.tokens import LOOKUP_LENGTH
from service.schemas.types import text

# A basket of orders placed at once; more is not one order flow but a bulk job (tokens/lookup).
MAX_BASKET = 50

LogTable = Literal["order_logs", "analyzer_logs"]


class OrderContextQuery(ApiKeyVerify):
    """The API key (and whether to reveal the broker tokens, as for verify) and one instrument."""

    symbol: str = text(LOOKUP_LENGTH, min_length=1, examples=["NIFTY28NOV2424000CE"])
    exchange: str = text(LOOKUP_LENGTH, min_length=1, examples=["NFO"])


class InstrumentRef(InputSchema):
    symbol: str = text(LOOKUP_LENGTH, min_length=1, examples=["RELIANCE"])
    exchange: str = text(LOOKUP_LENGTH, min_length=1, examples=["NSE"])


class OrderContextBasketQuery(ApiKeyVerify):
    """One API key for a basket of up to 50 instruments."""

    items: list[InstrumentRef] = Field(
        min_length=1,
        max_length=MAX_BASKET,
        description=f"1 to {MAX_BASKET} instruments (more: 422), answered in order.",
    )


class _KeyContext(BaseModel):
    user_id: str
    order_mode: OrderMode
    broker: str | None = Field(description="The broker of the user's active broker token.")
    broker_token: BrokerTokenState = Field(
        description="Whether the user has an active, an expired (past its `expires_at`), a "
        "revoked or no broker token."
    )
    analyze_mode: bool = Field(description="The platform's analyze (paper trading) mode.")
    auth_token: str | None = Field(default=None, description="Only with include_auth.")
    feed_token: str | None = Field(default=None, description="Only with include_feed_token.")


class OrderContext(_KeyContext):
    instrument: SymbolRead


class BasketItem(BaseModel):
    """One instrument of the basket: its row, or the problem that it has (then `instrument` is
    null); an unknown symbol fails only its own item."""

    symbol: str
    exchange: str
    instrument: SymbolRead | None
    problem: Problem | None = Field(
        description="A problem document (`symbol-unknown`, 404) when the instrument is unknown."
    )


class OrderContextBasket(_KeyContext):
    items: list[BasketItem]


class OrderRecordCreate(InputSchema):
    """An order's API log and its latency row, written in one transaction: both or neither."""

    log: ApiLogCreate = Field(description="As posted to /order-logs (or /analyzer-logs).")
    latency: LatencyCreate = Field(description="As posted to /latency.")
    analyze: bool | None = Field(
        default=None,
        description="Which log the order belongs to: true the analyzer log, false the order "
        "log; omitted or null, the platform's analyze mode decides at the time of writing.",
    )


def record_body_openapi() -> dict[str, Any]:
    """The request body of orders/record, for its route's `openapi_extra`.

    The route parses its body itself, so that FastAPI never sees the log models as a body: it
    would split their shared `JsonValue` component into `JsonValue-Input` and `-Output`, and the
    log routes' references (service/schemas/logs.py, Batch) would name neither. The log and
    latency schemas are written out in place, as those routes write theirs.
    """
    schema = OrderRecordCreate.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = schema.pop("$defs", {})
    for name in ("log", "latency"):
        prop = schema["properties"][name]
        ref = prop.pop("$ref", None) or prop.pop("allOf")[0]["$ref"]
        schema["properties"][name] = {**defs.pop(ref.rsplit("/", 1)[1]), **prop}
    if set(defs) - {"JsonValue"}:
        raise TypeError("the log and latency bodies must be flat models")
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


class OrderRecorded(BaseModel):
    log_table: LogTable = Field(description="Where the log went.")
    log_id: int = Field(description="The id of the order (or analyzer) log row.")
    latency_id: int = Field(description="The id of the latency row.")
