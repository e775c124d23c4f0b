"""Typed request and response bodies of the operations the platform calls on every order.

Written by hand; tests/test_client.py checks each model's fields against the served schema
(`SCHEMAS` names the component each model mirrors), so a field added or renamed on the server
fails the client's tests instead of being silently dropped."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

OrderMode = Literal["auto", "semi_auto"]
BrokerTokenState = Literal["active", "revoked", "missing"]
JsonValue = Any


class Request(BaseModel):
    """A request body: unknown fields are refused here, as the server refuses them."""

    model_config = ConfigDict(extra="forbid")


class Response(BaseModel):
    """A response body: fields a newer server adds are ignored, not fatal."""

    model_config = ConfigDict(extra="ignore")


# --- orders -------------------------------------------------------------------------------------


class OrderContextQuery(Request):
    api_key: str
    symbol: str
    exchange: str
    include_auth: bool = False
    include_feed_token: bool = False


class InstrumentRef(Request):
    symbol: str
    exchange: str


class OrderContextBasketQuery(Request):
    api_key: str
    items: list[InstrumentRef] = Field(min_length=1, max_length=50)
    include_auth: bool = False
    include_feed_token: bool = False


class SymbolRead(Response):
    symbol: str
    brsymbol: str
    name: str | None
    exchange: str
    brexchange: str | None
    token: str
    expiry: str | None
    strike: float | None
    lotsize: int | None
    instrumenttype: str | None
    tick_size: float | None


class OrderContext(Response):
    user_id: str
    order_mode: OrderMode
    broker: str | None
    broker_token: BrokerTokenState
    analyze_mode: bool
    auth_token: str | None = None
    feed_token: str | None = None
    instrument: SymbolRead


class FieldProblem(Response):
    loc: list[str | int]
    msg: str
    type: str


class Problem(Response):
    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldProblem] | None = None


class BasketItem(Response):
    symbol: str
    exchange: str
    instrument: SymbolRead | None
    problem: Problem | None


class OrderContextBasket(Response):
    user_id: str
    order_mode: OrderMode
    broker: str | None
    broker_token: BrokerTokenState
    analyze_mode: bool
    auth_token: str | None = None
    feed_token: str | None = None
    items: list[BasketItem]


class ApiLogCreate(Request):
    """One order-log or analyzer-log entry."""

    api_type: str
    request_data: JsonValue
    response_data: JsonValue
    created_at: datetime | None = None


class LatencyCreate(Request):
    order_id: str
    total_latency_ms: float
    user_id: str | None = None
    broker: str | None = None
    symbol: str | None = None
    order_type: str | None = None
    rtt_ms: float | None = None
    validation_latency_ms: float | None = None
    response_latency_ms: float | None = None
    overhead_ms: float | None = None
    request_body: JsonValue = None
    response_body: JsonValue = None
    status: Literal["SUCCESS", "FAILED", "PARTIAL"] | None = None
    error: str | None = None
    timestamp: datetime | None = None


class OrderRecordCreate(Request):
    log: ApiLogCreate
    latency: LatencyCreate
    analyze: bool | None = None


class OrderRecorded(Response):
    log_table: Literal["order_logs", "analyzer_logs"]
    log_id: int
    latency_id: int


# --- API keys and tokens ------------------------------------------------------------------------


class ApiKeyVerify(Request):
    api_key: str
    include_auth: bool = False
    include_feed_token: bool = False


class ApiKeyVerification(Response):
    user_id: str
    order_mode: OrderMode
    broker: str | None
    broker_token: BrokerTokenState
    auth_token: str | None = None
    feed_token: str | None = None


class ApiKeyPut(Request):
    api_key: str | None = None


class ApiKeyRead(Response):
    user_id: str
    order_mode: OrderMode
    created_at: datetime
    api_key: str


class TokenMapping(Response):
    symbol: str
    brsymbol: str
    exchange: str
    brexchange: str | None
    token: str
    lotsize: int | None
    tick_size: float | None
    instrumenttype: str | None


class TokenQuery(Request):
    """Exactly one of symbol, token, brsymbol, with the exchange."""

    exchange: str
    symbol: str | None = None
    token: str | int | None = None
    brsymbol: str | None = None


class TokenLookupBatch(Request):
    items: list[TokenQuery]


class TokenLookupResults(Response):
    items: list[TokenMapping | None]


# --- traffic, strategies, settings, users -------------------------------------------------------


class BanRead(Response):
    ip_address: str
    reason: str | None
    ban_count: int
    banned_at: datetime
    expires_at: datetime | None
    is_permanent: bool
    created_by: str


class BanStatus(Response):
    banned: bool
    ban: BanRead | None


class SymbolMappingRead(Response):
    id: int
    strategy_id: int
    symbol: str
    exchange: str
    quantity: int
    product_type: str


class StrategyDetail(Response):
    id: int
    name: str
    webhook_id: str
    user_id: str
    is_active: bool
    is_intraday: bool
    start_time: str | None
    end_time: str | None
    squareoff_time: str | None
    created_at: datetime
    updated_at: datetime
    platform: str
    trading_mode: Literal["LONG", "SHORT", "BOTH"]
    definition: Any = None
    symbols: list[SymbolMappingRead]


class SmtpSettings(Response):
    server: str | None = None
    port: int | None = None
    username: str | None = None
    use_tls: bool = True
    from_email: str | None = None
    helo_hostname: str | None = None
    password_set: bool = False


class SecuritySettings(Response):
    auto_ban_enabled: bool = False
    threshold_404: int = 100
    ban_duration_404_h: int = 0
    threshold_invalid_api_key: int = 100
    ban_duration_invalid_api_key_h: int = 0
    repeat_offender_limit: int = 2


class SettingsRead(Response):
    analyze_mode: bool = False
    smtp: SmtpSettings = Field(default_factory=SmtpSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)


class UserCreate(Request):
    username: str
    email: str
    password: str
    is_admin: bool = False
    first_name: str | None = None
    last_name: str | None = None


class UserRead(Response):
    id: int
    username: str
    email: str
    is_admin: bool
    totp_enabled: bool
    totp_required_for_login: bool
    totp_required_for_mcp: bool
    totp_required_for_password_reset: bool
    first_name: str | None = None
    last_name: str | None = None
    created_at: datetime
    updated_at: datetime


class Ids(Response):
    ids: list[int]


class Count(Response):
    count: int


# Model -> the component schema (or the inline request schema, by operation name) it mirrors.
SCHEMAS: dict[type[BaseModel], str] = {
    OrderContextQuery: "OrderContextQuery",
    InstrumentRef: "InstrumentRef",
    OrderContextBasketQuery: "OrderContextBasketQuery",
    SymbolRead: "SymbolRead",
    OrderContext: "OrderContext",
    FieldProblem: "FieldProblem",
    Problem: "Problem",
    BasketItem: "BasketItem",
    OrderContextBasket: "OrderContextBasket",
    OrderRecordCreate: "orders_record:request",
    ApiLogCreate: "orders_record:request.log",
    LatencyCreate: "orders_record:request.latency",
    OrderRecorded: "OrderRecorded",
    ApiKeyVerify: "ApiKeyVerify",
    ApiKeyVerification: "ApiKeyVerification",
    ApiKeyPut: "ApiKeyPut",
    ApiKeyRead: "ApiKeyRead",
    TokenMapping: "TokenMapping",
    TokenQuery: "TokenQuery",
    TokenLookupBatch: "TokenLookupBatch",
    TokenLookupResults: "TokenLookupResults",
    BanRead: "BanRead",
    BanStatus: "BanStatus",
    SymbolMappingRead: "SymbolMappingRead",
    StrategyDetail: "StrategyDetail",
    SmtpSettings: "SmtpSettings",
    SecuritySettings: "SecuritySettings",
    SettingsRead: "SettingsRead",
    UserCreate: "UserCreate",
    UserRead: "UserRead",
    Ids: "Ids",
    Count: "Count",
}
