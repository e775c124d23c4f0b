"""symbols: a master-contract row, the load's answer, the contract's statistics."""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, Field

from service.schemas.base import InputSchema, Schema
from service.schemas.types import NUL_FREE


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


EXPIRY_PATTERN = r"^[0-9]{2}-[A-Za-z]{3}-([0-9]{2}|[0-9]{4})$"
BROKER_PATTERN = r"^[A-Za-z0-9_.-]{1,32}$"
MAX_STRIKE = 1e12
# The symbol reads' bounds and defaults (the routes and the fast lane read them).
MAX_SEARCH_LIMIT = 1000
DEFAULT_SEARCH_LIMIT = 50
MAX_CHAIN_COUNT = 1000
DEFAULT_CHAIN_COUNT = 20
MAX_QUERY_TERMS = 256  # characters of a search's `q`
MAX_EXCHANGE = 64
MAX_UNDERLYING = 128
MAX_INSTRUMENT_TYPE = 32


class OptionPair(BaseModel):
    strike: float = Field(examples=[24000.0])
    CE: SymbolRead | None = Field(description="The call at this strike, if listed.")
    PE: SymbolRead | None = Field(description="The put at this strike, if listed.")


class OptionChain(BaseModel):
    exchange: str = Field(examples=["NFO"])
    underlying: str = Field(examples=["NIFTY"])
    expiry: str = Field(examples=["03-DEC-26"])
    lotsize: int | None
    tick_size: float | None
    strikes: list[OptionPair] = Field(description="By strike, lowest first.")


DownloadStatusValue = Literal["pending", "downloading", "success", "error"]


class DownloadStatus(BaseModel):
    broker: str = Field(examples=["zerodha"])
    status: DownloadStatusValue
    message: str | None
    is_ready: bool = Field(description="True once this broker's contract loaded successfully.")
    total_symbols: int = Field(description="Rows in the contract after the last success.")
    exchange_stats: dict[str, int] = Field(description="Rows per exchange after the last success.")
    last_download_time: datetime | None
    download_duration_seconds: float | None
    download_date: date | None = Field(description="The day (IST) of the last success.")
    last_updated: datetime


class DownloadStatusList(BaseModel):
    items: list[DownloadStatus]
    last_downloaded_broker: str | None = Field(
        description="The broker whose contract loaded most recently: the one loaded now."
    )


class DownloadStatusUpdate(InputSchema):
    status: Literal["pending", "downloading", "error"] = Field(
        description="`success` is recorded by `PUT /api/v1/symbols?broker=…` itself."
    )
    message: str | None = Field(default=None, max_length=2000, pattern=NUL_FREE)
