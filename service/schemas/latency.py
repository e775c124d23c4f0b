"""Order round-trip timings and their statistics."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, BeforeValidator, Field

from service.schemas.base import Schema
from service.schemas.logs import LogItem


def _upper(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


OrderStatus = Annotated[Literal["SUCCESS", "FAILED", "PARTIAL"], BeforeValidator(_upper)]
Milliseconds = Annotated[float, Field(ge=0)]


class LatencyCreate(LogItem):
    order_id: str = Field(min_length=1, max_length=100)
    user_id: str | None = Field(default=None, max_length=255)
    broker: str | None = Field(default=None, max_length=50, examples=["zerodha"])
    symbol: str | None = Field(default=None, max_length=100)
    order_type: str | None = Field(default=None, max_length=50, examples=["PLACE"])
    rtt_ms: Milliseconds | None = None
    validation_latency_ms: Milliseconds | None = None
    response_latency_ms: Milliseconds | None = None
    overhead_ms: Milliseconds | None = None
    total_latency_ms: Milliseconds
    request_body: Any = Field(default=None, description="Any JSON value.")
    response_body: Any = Field(default=None, description="Any JSON value.")
    status: OrderStatus | None = None
    error: str | None = Field(default=None, max_length=10_000)
    timestamp: AwareDatetime | None = Field(default=None, description="Defaults to now.")


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
    request_body: Any
    response_body: Any
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
