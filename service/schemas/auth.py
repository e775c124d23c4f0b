"""Auth: broker tokens, API keys, sessions and login attempts."""

from __future__ import annotations

import ipaddress
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, SecretStr, WithJsonSchema

from service.schemas.base import InputSchema, Schema
from service.schemas.types import (
    IP_SCHEMA,
    JSON_RULES,
    SecretText,
    StoredJson,
    Timestamp,
    json_input_schema,
    json_max_bytes,
    text,
)
from service.schemas.users import Username

OrderMode = Literal["auto", "semi_auto"]
LoginStatus = Literal["success", "failed", "resumed"]
BrokerTokenState = Literal["active", "expired", "revoked", "missing"]

API_KEY_PATTERN = r"^[A-Za-z0-9_-]{32,128}$"


def _ip(value: str) -> str:
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError("must be an IPv4 or IPv6 address") from None
    # One client, one spelling: an IPv4-mapped IPv6 address is the IPv4 address.
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped or address)


IpAddress = Annotated[
    str, Field(max_length=45), AfterValidator(_ip), WithJsonSchema({**IP_SCHEMA, "maxLength": 45})
]
Broker = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_.-]+$")]
# Stored encrypted, so any length the cipher text column holds (8192 base64 characters).
BrokerSecret = Annotated[SecretStr, SecretText(min_length=1, max_length=4096)]


# --- broker tokens -----------------------------------------------------------------------------


class BrokerTokenPut(InputSchema):
    """A full replacement: an omitted feed token or user id is cleared."""

    auth_token: BrokerSecret
    feed_token: BrokerSecret | None = None
    refresh_token: BrokerSecret | None = Field(
        default=None, description="Stored encrypted; only the secret endpoint returns it."
    )
    expires_at: Timestamp | None = Field(
        default=None,
        description="When the broker session ends: past it, verify and the order context "
        "answer 410 `broker-token-expired` when the tokens are asked for. Omitted: no expiry.",
    )
    broker: Broker
    user_id: str | None = text(
        255, default=None, description="The client id the broker knows the user by."
    )
    revoked: bool = Field(default=False, description="A revoked token is not stored at all.")


class BrokerTokenRead(BaseModel):
    name: str
    broker: str
    user_id: str | None
    revoked: bool
    has_feed_token: bool
    has_refresh_token: bool
    expires_at: datetime | None
    updated_at: datetime


class BrokerTokenWritten(BrokerTokenRead):
    changed: bool = Field(
        description="False when the same token, feed token, broker and state were stored already "
        "(a second device logging in): callers need not tear down their broker feeds."
    )


class BrokerTokenSecret(BaseModel):
    name: str
    broker: str
    user_id: str | None
    auth_token: str
    feed_token: str | None
    refresh_token: str | None
    expires_at: datetime | None = Field(
        description="Returned even when past: the refresh token is what renews the session."
    )


# --- API keys ----------------------------------------------------------------------------------


class ApiKeyPut(InputSchema):
    api_key: Annotated[SecretStr, SecretText(pattern=API_KEY_PATTERN)] | None = Field(
        default=None,
        description="32-128 characters of A-Z a-z 0-9 _ -. Omit to have one generated "
        "(64 hex characters, from `secrets`).",
    )


class ApiKeyInfo(BaseModel):
    user_id: str
    order_mode: OrderMode
    created_at: datetime = Field(description="When the current key was made.")


class ApiKeyRead(ApiKeyInfo):
    api_key: str


class OrderModeUpdate(InputSchema):
    order_mode: OrderMode


class ApiKeyVerify(InputSchema):
    api_key: Annotated[SecretStr, SecretText(min_length=1, max_length=256)]
    include_auth: bool = False
    include_feed_token: bool = False


class ApiKeyVerification(BaseModel):
    user_id: str
    order_mode: OrderMode
    broker: str | None = Field(description="The broker of the user's active broker token.")
    broker_token: BrokerTokenState = Field(
        description="Whether the user has an active, an expired (past its `expires_at`), a "
        "revoked or no broker token."
    )
    auth_token: str | None = Field(default=None, description="Only with include_auth.")
    feed_token: str | None = Field(default=None, description="Only with include_feed_token.")


# --- sessions and login attempts ---------------------------------------------------------------


SESSION_DATA_MAX_BYTES = 16 * 1024
SessionData = Annotated[
    Any,
    JSON_RULES,
    json_max_bytes(SESSION_DATA_MAX_BYTES),
    json_input_schema(SESSION_DATA_MAX_BYTES),
]


class SessionCreate(InputSchema):
    username: Username
    session_id: str = Field(pattern=r"^[A-Za-z0-9._~-]{8,128}$")
    device_info: str | None = text(500, default=None)
    ip_address: IpAddress | None = None
    broker: Broker | None = None
    expires_at: Timestamp | None = Field(
        default=None,
        description="When the session ends (a time already past makes a session that is "
        "expired at once: stored, never listed). Omitted: `SESSION_LIFETIME_HOURS` (24 by "
        "default) from now.",
    )
    data: SessionData | None = None


class SessionRead(Schema):
    session_id: str
    username: str
    device_info: str | None
    ip_address: str | None
    broker: str | None
    created_at: datetime = Field(description="The login time.")
    last_seen: datetime
    expires_at: datetime = Field(
        description="Past it the session is not listed, not touched, and retention purges it."
    )
    data: StoredJson | None


class LoginAttemptCreate(InputSchema):
    username: str = text(255, min_length=1, description="As typed: known or not.")
    ip_address: IpAddress | None = None
    device_info: str | None = text(500, default=None)
    status: LoginStatus
    login_type: str | None = text(20, default=None, examples=["password"])
    broker: Broker | None = None
    failure_reason: str | None = text(255, default=None)


class LoginAttemptRead(Schema):
    id: int
    username: str
    ip_address: str | None
    device_info: str | None
    status: LoginStatus
    login_type: str | None
    broker: str | None
    failure_reason: str | None
    created_at: datetime
