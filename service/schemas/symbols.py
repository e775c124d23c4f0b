"""symbols: a master-contract row, the load's answer, the contract's statistics."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from service.schemas.base import Schema


class SymbolRead(Schema):
    symbol: str = Field(examples=["NIFTY28NOV2424000CE"])
    brsymbol: str = Field(description="The broker's symbol.", examples=["NIFTY24NOV24000CE"])
    name: str | None = Field(description="The underlying (derivatives) or company name.")
    exchange: str = Field(examples=["NFO"])
    brexchange: str | None = Field(description="The broker's exchange code.")
    token: str = Field(description="The broker's instrument token.")
    expiry: str | None = Field(examples=["28-NOV-24"])
    strike: float | None
    lotsize: int | None
    instrumenttype: str | None = Field(examples=["CE"])
    tick_size: float | None


class SymbolLoadRead(BaseModel):
    rows: int = Field(description="Rows loaded from the body.")
    exchanges: dict[str, int] = Field(description="Rows loaded per exchange.")
    version: int = Field(description="The contract's version after the load.")
    duration_ms: float = Field(description="From the first byte read to the index rebuilt.")


class SymbolStats(BaseModel):
    rows: int
    exchanges: dict[str, int] = Field(description="Rows per exchange.")
    version: int = Field(description="Bumped by every load and delete; 0 before the first.")
    loaded_at: datetime | None = Field(description="When the contract last changed.")
