"""The audit trail: who changed what, and when.

A repository that changes an audited row calls `record` with its own session, so the entry is
written in the transaction of the change: both commit or neither does. Who and in which request
come from the request being served (the middleware binds the service token's principal, and the
request id), so no signature between the router and the repository has to carry them.

A record holds only the fields that changed, each as `{before, after}`. Secrets (password hashes,
TOTP secrets, API keys, broker tokens, the SMTP password: every hashed or encrypted column) are
compared as stored, so a new secret still shows as a change, but only the marker is ever written:
the trail holds no secret, not even a hash or a ciphertext.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Literal

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.db import short_transaction
from service.logs import request_id_var
from service.models.audit import AuditEntry
from service.models.base import utcnow
from service.repositories import logs as logs_repo
from service.schemas.audit import REDACTED, AuditAction, AuditResource
from service.security import principal_var

# The actor of a change made outside any request (a maintenance command, a test's direct call).
SYSTEM = "system"

Snapshot = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Resource:
    """An audited kind of row: its name in the trail, and its fields as the trail names them
    (the API's names) mapped to the attributes they are read from."""

    name: AuditResource
    fields: Mapping[str, str]
    secrets: frozenset[str] = frozenset()

    def snapshot(self, row: object) -> dict[str, Any]:
        """The row's audited fields as stored (secrets included: `record` never writes them)."""
        return {field: getattr(row, attribute) for field, attribute in self.fields.items()}

    def snapshot_if(self, row: object | None) -> dict[str, Any] | None:
        """The snapshot of a row that may not exist (before a create, or what a cascade took)."""
        return None if row is None else self.snapshot(row)


def _same_names(*names: str) -> dict[str, str]:
    return {name: name for name in names}


USER = Resource(
    "user",
    {
        **_same_names(
            "username",
            "email",
            "is_admin",
            "totp_enabled",
            "totp_required_for_login",
            "totp_required_for_mcp",
            "totp_required_for_password_reset",
            "first_name",
            "last_name",
        ),
        "password": "password_hash",
        "totp_secret": "totp_secret_encrypted",
    },
    secrets=frozenset({"password", "totp_secret"}),
)
# The key is compared by its digest: the same key stored again is no change of `api_key`, only
# of `created_at` (when the current key was made), another key is both.
API_KEY = Resource(
    "api_key",
    {
        **_same_names("user_id", "order_mode", "created_at"),
        "api_key": "key_digest",
    },
    secrets=frozenset({"api_key"}),
)
BROKER_TOKEN = Resource(
    "broker_token",
    {
        **_same_names("name", "broker", "user_id", "revoked", "expires_at"),
        "auth_token": "auth_token_encrypted",
        "feed_token": "feed_token_encrypted",
        "refresh_token": "refresh_token_encrypted",
    },
    secrets=frozenset({"auth_token", "feed_token", "refresh_token"}),
)
SETTINGS = Resource(
    "settings",
    {
        "analyze_mode": "analyze_mode",
        **{
            f"smtp.{name}": f"smtp_{name}"
            for name in ("server", "port", "username", "use_tls", "from_email", "helo_hostname")
        },
        "smtp.password": "smtp_password_encrypted",
        **{
            f"security.{name}": name
            for name in (
                "auto_ban_enabled",
                "threshold_404",
                "ban_duration_404_h",
                "threshold_invalid_api_key",
                "ban_duration_invalid_api_key_h",
                "repeat_offender_limit",
            )
        },
    },
    secrets=frozenset({"smtp.password"}),
)
IP_BAN = Resource(
    "ip_ban",
    _same_names(
        "ip_address", "reason", "ban_count", "banned_at", "expires_at", "is_permanent", "created_by"
    ),
)
# The master contract is recorded by its counts, never its rows: `rows` in all, per exchange
# touched, and the contract version.
SYMBOLS = Resource("symbols", {})
AUDIT = Resource("audit", {})


def actor() -> str:
    principal = principal_var.get()
    return principal.name if principal is not None else SYSTEM


def _plain(value: Any) -> Any:
    """A stored value as JSON: timestamps in ISO 8601, mappings and lists walked."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def changes(
    resource: Resource,
    before: Snapshot | None,
    after: Snapshot | None,
    *,
    unchanged: Collection[str] = (),
) -> dict[str, dict[str, Any]]:
    """`{field: {before, after}}` for every field whose value differs, secrets as the marker.

    `unchanged` names fields the caller knows to hold the same value although their stored form
    differs (a secret encrypted again)."""
    old, new = before or {}, after or {}
    diff: dict[str, dict[str, Any]] = {}
    for field in dict.fromkeys([*old, *new]):
        was, now = old.get(field), new.get(field)
        if was == now or field in unchanged:
            continue
        if field in resource.secrets:
            was = REDACTED if was is not None else None
            now = REDACTED if now is not None else None
        diff[field] = {"before": _plain(was), "after": _plain(now)}
    return diff


async def record(
    session: AsyncSession,
    resource: Resource,
    action: AuditAction,
    resource_id: str | None,
    *,
    before: Snapshot | None = None,
    after: Snapshot | None = None,
    unchanged: Collection[str] = (),
) -> bool:
    """Write the entry of a change in `session`'s transaction; nothing when no field changed.

    Returns whether an entry was written."""
    diff = changes(resource, before, after, unchanged=unchanged)
    if not diff:
        return False
    await session.execute(
        insert(AuditEntry).values(
            at=utcnow(),
            actor=actor(),
            action=action,
            resource=resource.name,
            resource_id=resource_id,
            request_id=request_id_var.get(),
            changes=diff,
        )
    )
    return True


async def record_contract(
    session: AsyncSession,
    action: Literal["load", "delete"],
    *,
    before: tuple[int, Mapping[str, int]],
    after: tuple[int, Mapping[str, int]],
    scope: Collection[str] | None,
) -> None:
    """Record a load or delete of the master contract by its counts: the rows in all, the rows of
    each exchange in `scope` (every exchange when None), and the version, before and after.
    `before` and `after` are (version, rows per exchange)."""
    exchanges = sorted(scope if scope is not None else {*before[1], *after[1]})

    def counts(version: int, rows: Mapping[str, int]) -> dict[str, Any]:
        return {
            "rows": sum(rows.values()),
            "exchanges": {exchange: rows.get(exchange, 0) for exchange in exchanges},
            "version": version,
        }

    await record(
        session, SYMBOLS, action, str(after[0]), before=counts(*before), after=counts(*after)
    )


async def purge(sessionmaker: async_sessionmaker[AsyncSession], before: datetime) -> int:
    """Delete the entries older than `before` in chunks, as log retention does; how many went.

    The purge is itself recorded, in a transaction of its own after the last chunk (a chunked
    delete has no one transaction to share)."""
    table = AuditEntry.__table__
    deleted = await logs_repo.delete_before(sessionmaker, table, table.c.at, before)  # type: ignore[arg-type]
    if deleted:
        async with short_transaction(sessionmaker, write=True) as session:
            await record(
                session,
                AUDIT,
                "purge",
                None,
                before={"entries": deleted, "older_than": None},
                after={"entries": 0, "older_than": before},
            )
    return deleted
