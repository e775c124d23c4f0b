"""tokens: symbol <-> broker token lookups, one by query string or many in a batch."""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.schemas.base import InputSchema

MAX_BATCH = 1000
KEYS = ("symbol", "token", "brsymbol")


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

    # Tokens are numeric strings; a JSON number for one is taken as its digits.
    model_config = ConfigDict(coerce_numbers_to_str=True)

    symbol: str | None = Field(default=None, min_length=1)
    token: str | None = Field(default=None, min_length=1)
    brsymbol: str | None = Field(default=None, min_length=1)
    exchange: str = Field(min_length=1)

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
