"""Traffic logs, their stats, IP bans and the 404 / invalid-API-key trackers."""

from __future__ import annotations

import ipaddress
import socket
from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, Field, WithJsonSchema

from service.schemas.base import InputSchema, Schema
from service.schemas.logs import LogItem
from service.schemas.types import INTEGRAL, IP_SCHEMA, Milliseconds, Timestamp, text


def normalize_ip(value: str) -> str:
    """The canonical text of an IPv4 or IPv6 address; ValueError for anything else.

    An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, what a dual-stack socket reports) is the
    IPv4 address it carries, so one client never has two spellings. Parsing goes through
    inet_pton (C), which accepts exactly the forms `ipaddress` does (no leading zeros, no
    shorthand like `10.1`) at a tenth of its cost: a 1000-row batch holds 1000 addresses.
    """
    text = value.strip()
    try:
        return socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, text))
    except OSError:
        pass
    try:
        address = ipaddress.IPv6Address(socket.inet_pton(socket.AF_INET6, text))
    except OSError:
        raise ValueError("is not an IPv4 or IPv6 address") from None
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return address.compressed


IPAddress = Annotated[
    str,
    Field(min_length=2, max_length=64),
    AfterValidator(normalize_ip),
    WithJsonSchema({**IP_SCHEMA, "minLength": 2, "maxLength": 64}),
]


class TrafficLogCreate(LogItem):
    client_ip: IPAddress
    method: Annotated[str, AfterValidator(str.upper)] = Field(
        min_length=1, max_length=10, pattern=r"^[A-Za-z]+$", examples=["GET"]
    )
    path: str = text(2048, min_length=1, examples=["/api/v1/placeorder"])
    status_code: Annotated[int, Field(ge=100, le=599), INTEGRAL]
    duration_ms: Milliseconds
    host: str | None = text(255, default=None, examples=["algoways.example.com"])
    error: str | None = text(10_000, default=None)
    user_id: str | None = text(255, default=None)
    timestamp: Timestamp | None = Field(default=None, description="Defaults to now.")


class TrafficLogRead(Schema):
    id: int
    timestamp: datetime
    client_ip: str
    method: str
    path: str
    status_code: int
    duration_ms: float
    host: str | None
    error: str | None
    user_id: str | None


class EndpointStats(BaseModel):
    path: str
    count: int
    errors: int
    avg_duration_ms: float


class TrafficStats(BaseModel):
    total_requests: int
    error_requests: int = Field(description="Requests answered with a status ≥ 400.")
    error_rate: float | None = Field(description="Percentage (0-100); null without requests.")
    avg_duration_ms: float | None
    p95_duration_ms: float | None = Field(description="Linear-interpolated 95th percentile.")
    by_endpoint: list[EndpointStats] = Field(description="The 20 most requested paths.")


class BanCreate(InputSchema):
    ip_address: IPAddress
    reason: str | None = text(255, default=None)
    duration_hours: Annotated[int, Field(ge=0, le=87_600), INTEGRAL] | None = Field(
        default=None, description="Default 24; 0 bans permanently."
    )
    permanent: bool = False
    force: bool = Field(
        default=False, description="Required to ban a loopback or TRUSTED_IPS address."
    )


class BanRead(Schema):
    ip_address: str
    reason: str | None
    ban_count: int
    banned_at: datetime
    expires_at: datetime | None
    is_permanent: bool
    created_by: str


class BanStatus(BaseModel):
    banned: bool
    ban: BanRead | None


class NotFoundEvent(InputSchema):
    ip_address: IPAddress
    path: str = text(2048, min_length=1)


class InvalidApiKeyEvent(InputSchema):
    ip_address: IPAddress
    # Short enough that a whole API key (64 hex characters) can never be stored as one.
    api_key_fingerprint: str = text(
        32,
        min_length=1,
        description="A short digest of the key tried (e.g. 16 hex chars of its SHA-256).",
    )


class OffenceCount(BaseModel):
    count: int = Field(description="Events from this IP today (UTC).")
    banned: bool


class SuspiciousIP(Schema):
    ip_address: str
    count: int
    first_seen_at: datetime
    last_seen_at: datetime
    last_detail: str | None = Field(description="The latest path, or key fingerprint.")


class Suspicious(BaseModel):
    ips_404: list[SuspiciousIP]
    ips_invalid_api_key: list[SuspiciousIP]
