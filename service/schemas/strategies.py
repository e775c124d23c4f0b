"""Webhook strategies and their symbol mappings: the shared shapes, and the two families' variants.

Chartink differs only on the wire: it has no `platform` or `trading_mode`, and its mapping calls
the symbol `chartink_symbol` (an alias of the same `symbol` field).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field, GetJsonSchemaHandler, RootModel, model_validator
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from service.models.strategies import EXCHANGE_LENGTH, NAME_LENGTH, SYMBOL_LENGTH
from service.schemas.base import InputSchema, Schema
from service.schemas.types import (
    INT32_MAX,
    INTEGRAL,
    JSON_RULES,
    StoredJson,
    json_input_schema,
    json_max_bytes,
    text,
)

MAX_BATCH = 1000

Platform = Literal["tradingview", "amibroker", "python", "metatrader", "excel", "others"]
TradingMode = Literal["LONG", "SHORT", "BOTH"]
ProductType = Literal["MIS", "CNC", "NRML"]

Time = Annotated[
    str,
    Field(
        pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$",
        description="HH:MM, 00:00 to 23:59. An intraday strategy needs all three times, with "
        "start_time < end_time <= squareoff_time.",
    ),
]
# One example per field, consistent with the ordering the description states.
TIME_EXAMPLES = {"start_time": "09:15", "end_time": "15:00", "squareoff_time": "15:15"}
Name = Annotated[str, text(NAME_LENGTH, min_length=1)]
Symbol = Annotated[str, text(SYMBOL_LENGTH, min_length=1, examples=["RELIANCE"])]
Exchange = Annotated[str, text(EXCHANGE_LENGTH, min_length=1, examples=["NSE"])]
# Integer columns are 32-bit on PostgreSQL.
Quantity = Annotated[int, Field(gt=0, le=INT32_MAX), INTEGRAL]

TIME_FIELDS = ("start_time", "end_time", "squareoff_time")

DEFINITION_MAX_BYTES = 64 * 1024
Definition = Annotated[
    Any,
    JSON_RULES,
    json_max_bytes(DEFINITION_MAX_BYTES),
    json_input_schema(DEFINITION_MAX_BYTES, "The strategy's own definition, kept as given. "),
]


# --- strategies --------------------------------------------------------------------------------


class ChartinkStrategyCreate(InputSchema):
    """An intraday strategy needs all three times, with start < end <= squareoff."""

    name: Name
    user_id: Name
    is_active: bool = True
    is_intraday: bool = True
    start_time: Time | None = Field(default=None, examples=[TIME_EXAMPLES["start_time"]])
    end_time: Time | None = Field(default=None, examples=[TIME_EXAMPLES["end_time"]])
    squareoff_time: Time | None = Field(default=None, examples=[TIME_EXAMPLES["squareoff_time"]])
    definition: Definition | None = None


class StrategyCreate(ChartinkStrategyCreate):
    platform: Platform = "tradingview"
    trading_mode: TradingMode = "LONG"


class ChartinkStrategyUpdate(InputSchema):
    """Any subset; the times are checked against the strategy as it will be after the change."""

    not_nullable = frozenset({"name", "is_active", "is_intraday"})

    name: Name | None = None
    is_active: bool | None = None
    is_intraday: bool | None = None
    start_time: Time | None = Field(default=None, examples=[TIME_EXAMPLES["start_time"]])
    end_time: Time | None = Field(default=None, examples=[TIME_EXAMPLES["end_time"]])
    squareoff_time: Time | None = Field(default=None, examples=[TIME_EXAMPLES["squareoff_time"]])
    definition: Definition | None = Field(default=None, description="null clears it.")


class StrategyUpdate(ChartinkStrategyUpdate):
    not_nullable = ChartinkStrategyUpdate.not_nullable | {"trading_mode"}

    trading_mode: TradingMode | None = None


class ChartinkStrategyRead(Schema):
    id: int
    name: str
    webhook_id: str
    user_id: str
    is_active: bool
    is_intraday: bool
    start_time: str | None
    end_time: str | None
    squareoff_time: str | None
    definition: StoredJson | None
    created_at: datetime
    updated_at: datetime


class StrategyRead(ChartinkStrategyRead):
    platform: Platform
    trading_mode: TradingMode


# --- symbol mappings ---------------------------------------------------------------------------


class SymbolMappingCreate(InputSchema):
    symbol: Symbol
    exchange: Exchange
    quantity: Quantity
    product_type: ProductType


class ChartinkSymbolMappingCreate(SymbolMappingCreate):
    symbol: Symbol = Field(validation_alias="chartink_symbol")


class SymbolMappingRead(Schema):
    id: int
    strategy_id: int
    symbol: str
    exchange: str
    quantity: int
    product_type: str


class ChartinkSymbolMappingRead(SymbolMappingRead):
    symbol: str = Field(serialization_alias="chartink_symbol")


class _Batch(RootModel[list[Any]]):
    """One mapping or an array of them. Both are handled as an array, so a problem in the body
    is reported at its item's index (a single mapping is item 0)."""

    @model_validator(mode="before")
    @classmethod
    def _one_is_a_batch_of_one(cls, data: Any) -> Any:
        return [data] if isinstance(data, dict) else data

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        many = handler(core_schema)
        return {"oneOf": [many["items"], many], "title": cls.__name__}


class SymbolMappingBatch(_Batch):
    root: Annotated[list[SymbolMappingCreate], Field(min_length=1)]


class ChartinkSymbolMappingBatch(_Batch):
    root: Annotated[list[ChartinkSymbolMappingCreate], Field(min_length=1)]


# --- a strategy with its symbols ---------------------------------------------------------------


class StrategyDetail(StrategyRead):
    symbols: list[SymbolMappingRead]


class ChartinkStrategyDetail(ChartinkStrategyRead):
    symbols: list[ChartinkSymbolMappingRead]
