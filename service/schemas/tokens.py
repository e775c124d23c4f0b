"""tokens: symbol <-> broker token lookups, one by query string or many in a batch."""

from __future__ import annotations

from typing import Annotated, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator

from service.schemas.base import InputSchema
from service.schemas.types import NUL_FREE_NOT_BLANK, text

MAX_BATCH = 1000
KEYS = ("symbol", "token", "brsymbol")
# Longer than any symbol, token or exchange of a broker's master contract.
LOOKUP_LENGTH = 255
# The largest token taken as a JSON integer: more digits than any broker's token has, and exact
# as the float the OpenAPI document writes its bounds as (2^63 is not, in every validator).
MAX_INTEGER_TOKEN = 10**15 - 1


def _digits(value: object) -> object:
    # Tokens are numeric strings; a JSON integer for one (2885, or 2885.0: JSON Schema's integer)
    # is taken as its digits.
    if type(value) is float and value.is_integer():
        value = int(value)
    return str(value) if type(value) is int and 0 <= value <= MAX_INTEGER_TOKEN else value


Token = Annotated[
    str,
    BeforeValidator(_digits),
    text(LOOKUP_LENGTH, min_length=1),
    WithJsonSchema(
        {
            "anyOf": [
                {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": LOOKUP_LENGTH,
                    "pattern": NUL_FREE_NOT_BLANK,
                },
                {"type": "integer", "minimum": 0, "maximum": MAX_INTEGER_TOKEN},
            ],
            "examples": ["2885"],
        }
    ),
]


class TokenMapping(BaseModel):
    symbol: str = Field(examples=["NIFTY28NOV2424000CE"])
    brsymbol: str = Field(examples=["NIFTY24NOV24000CE"])
    exchange: str = Field(examples=["NFO"])
    brexchange: str | None
    token: str
    lotsize: int | None
    tick_size: float | None
    instrumenttype: str | None


class TokenQuery(InputSchema):
    """Exactly one of symbol, token or brsymbol, with the exchange."""

    model_config = ConfigDict(json_schema_extra={"oneOf": [{"required": [k]} for k in KEYS]})
    # Absent is "not this key"; null would be a second way to say it that the oneOf counts.
    not_nullable = frozenset(KEYS)

    symbol: str | None = text(LOOKUP_LENGTH, min_length=1, default=None)
    token: Token | None = None
    brsymbol: str | None = text(LOOKUP_LENGTH, min_length=1, default=None)
    exchange: str = text(LOOKUP_LENGTH, min_length=1)

    @model_validator(mode="after")
    def _exactly_one_key(self) -> Self:
        given = [k for k in KEYS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of symbol, token or brsymbol")
        return self


class TokenLookupBatch(InputSchema):
    items: list[TokenQuery] = Field(
        description=f"Up to {MAX_BATCH} lookups (more: 413).", examples=[[
            {"symbol": "NIFTY28NOV2424000CE", "exchange": "NFO"},
            {"token": "2885", "exchange": "NSE"},
        ]]
    )  # fmt: skip


class TokenLookupResults(BaseModel):
    items: list[TokenMapping | None] = Field(
        description="One answer per lookup, in order: the mapping, or null when unknown."
    )
