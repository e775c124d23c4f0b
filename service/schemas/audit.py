"""The audit trail as the API shows it."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from service.schemas.base import Schema
from service.schemas.types import StoredJson

# What an entry can be about, and what was done to it.
AuditResource = Literal["user", "api_key", "broker_token", "settings", "ip_ban", "symbols", "audit"]
AuditAction = Literal[
    "create", "update", "delete", "set_password", "rotate", "revoke", "load", "purge"
]

REDACTED = "[redacted]"

# A service token's name (as SERVICE_TOKENS allows it), or "system".
ACTOR_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"


class Change(BaseModel):
    before: StoredJson = Field(description=f"The value before; a secret reads {REDACTED!r}.")
    after: StoredJson = Field(description=f"The value after; a secret reads {REDACTED!r}.")


class AuditEntryRead(Schema):
    id: int
    at: datetime
    actor: str = Field(description="The name of the service token that made the change.")
    action: AuditAction
    resource: AuditResource
    resource_id: str | None = Field(
        description="The username (user, api_key, broker_token), the address (ip_ban), the "
        "contract version made (symbols); null for settings and audit."
    )
    request_id: str | None = Field(description="The X-Request-ID of the request that made it.")
    changes: dict[str, Change] = Field(
        description="Only the fields that changed; no secret value ever appears."
    )
