"""Order round-trip timings and their statistics."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, Field

from service.schemas.base import Schema
from service.schemas.logs import LogItem
from service.schemas.types import JsonDocument, Milliseconds, StoredJson, Timestamp, text


def _upper(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


OrderStatus = Annotated[Literal["SUCCESS", "FAILED", "PARTIAL"], BeforeValidator(_upper)]


class LatencyCreate(LogItem):
    order_id: str = text(100, min_length=1)
    user_id: str | None = text(255, default=None)
    broker: str | None = text(50, default=None, examples=["zerodha"])
    symbol: str | None = text(100, default=None, examples=["RELIANCE"])
    order_type: str | None = text(50, default=None, examples=["PLACE"])
    rtt_ms: Milliseconds | None = None
    validation_latency_ms: Milliseconds | None = None
    response_latency_ms: Milliseconds | None = None
    overhead_ms: Milliseconds | None = None
    total_latency_ms: Milliseconds
    request_body: JsonDocument = None
    response_body: JsonDocument = None
    status: OrderStatus | None = None
    error: str | None = text(10_000, default=None)
    timestamp: Timestamp | None = Field(default=None, description="Defaults to now.")


class LatencyRead(Schema):
    id: int
    timestamp: datetime
    order_id: str
    user_id: str | None
    broker: str | None
    symbol: str | None
    order_type: str | None
    rtt_ms: float | None
    validation_latency_ms: float | None
    response_latency_ms: float | None
    overhead_ms: float | None
    total_latency_ms: float
    request_body: StoredJson
    response_body: StoredJson
    status: str | None
    error: str | None


class LatencySummary(BaseModel):
    """Percentages are 0-100; averages and percentiles are null when there are no rows."""

    count: int
    success_rate: float | None = Field(description="Share of rows whose status is not FAILED.")
    avg_rtt_ms: float | None
    avg_overhead_ms: float | None
    avg_total_ms: float | None
    p50_total_ms: float | None
    p90_total_ms: float | None
    p95_total_ms: float | None
    p99_total_ms: float | None
    sla_100ms_pct: float | None = Field(description="Share of rows with total ≤ 100 ms.")
    sla_150ms_pct: float | None
    sla_200ms_pct: float | None


class LatencyStats(BaseModel):
    overall: LatencySummary
    by_broker: dict[str, LatencySummary]
