"""IP defence: bans (with expiry and repeat counting) and the daily
404 / invalid-API-key counters that ban automatically at the thresholds in settings."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import delete, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service import audit
from service.cache import invalidate
from service.config import IPNetwork
from service.db import begin_write
from service.errors import NotFound, ValidationFailed
from service.models.base import utcnow
from service.models.traffic import IPBan, IPOffenceCounter
from service.schemas.audit import AuditAction
from service.schemas.settings import SecuritySettings
from service.schemas.traffic import BanRead, OffenceCount, SuspiciousIP

TOPIC = "bans"
DEFAULT_BAN_HOURS = 24
SUSPICIOUS_LIMIT = 100

Kind = Literal["404", "invalid_api_key"]


def is_protected(ip: str, trusted: tuple[IPNetwork, ...]) -> bool:
    """Loopback and TRUSTED_IPS addresses: never banned automatically (a proxy's own address
    among them would lock every user out)."""
    address = ipaddress.ip_address(ip)
    return address.is_loopback or any(address in network for network in trusted)


def is_active(ban: IPBan | BanRead, now: datetime) -> bool:
    return ban.is_permanent or (ban.expires_at is not None and ban.expires_at > now)


def _insert(session: AsyncSession) -> Callable[[Any], Any]:
    """The dialect's INSERT, which has ON CONFLICT DO UPDATE on both backends."""
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


async def ban_ip(
    session: AsyncSession,
    *,
    ip: str,
    reason: str | None,
    hours: int,
    permanent: bool,
    created_by: str,
    repeat_offender_limit: int,
) -> IPBan:
    """Ban `ip`, or ban it again: a repeat extends the ban and counts in `ban_count`, and the
    ban turns permanent once `ban_count` reaches the repeat-offender limit.

    The upsert takes the row lock (PostgreSQL) or runs under the write lock (SQLite), so two
    concurrent bans of one address count twice rather than one overwriting the other.
    """
    now = utcnow()
    permanent = permanent or hours == 0 or repeat_offender_limit <= 1
    statement = (
        _insert(session)(IPBan)
        .values(
            ip_address=ip,
            reason=reason,
            ban_count=1,
            banned_at=now,
            expires_at=None if permanent else now + timedelta(hours=hours),
            is_permanent=permanent,
            created_by=created_by,
        )
        .on_conflict_do_update(
            index_elements=[IPBan.ip_address], set_={"ban_count": IPBan.ban_count + 1}
        )
        .returning(IPBan)
        .execution_options(populate_existing=True)
    )
    ban: IPBan = (await session.scalars(statement)).one()
    # The upsert has only counted the repeat so far: the row as it was, but for the count.
    before: dict[str, Any] | None = None
    if ban.ban_count > 1:
        before = {**audit.IP_BAN.snapshot(ban), "ban_count": ban.ban_count - 1}
        ban.reason = reason or ban.reason
        ban.banned_at = now
        ban.created_by = created_by
        if permanent or ban.is_permanent or ban.ban_count >= repeat_offender_limit:
            ban.is_permanent, ban.expires_at = True, None
        else:
            still_running = ban.expires_at if ban.expires_at and ban.expires_at > now else now
            ban.expires_at = still_running + timedelta(hours=hours)
        await session.flush()
    await invalidate(session, TOPIC, ip)
    action: AuditAction = "create" if before is None else "update"
    await audit.record(
        session, audit.IP_BAN, action, ip, before=before, after=audit.IP_BAN.snapshot(ban)
    )
    return ban


async def create_ban(
    session: AsyncSession,
    *,
    ip: str,
    reason: str | None,
    hours: int | None,
    permanent: bool,
    force: bool,
    trusted: tuple[IPNetwork, ...],
    repeat_offender_limit: int,
) -> IPBan:
    """A manual ban; a loopback or trusted address needs `force`."""
    if not force and is_protected(ip, trusted):
        raise ValidationFailed.field(
            ["body", "ip_address"],
            "is a loopback or trusted address; set force: true to ban it anyway",
        )
    return await ban_ip(
        session,
        ip=ip,
        reason=reason,
        hours=DEFAULT_BAN_HOURS if hours is None else hours,
        permanent=permanent,
        created_by="manual",
        repeat_offender_limit=repeat_offender_limit,
    )


async def delete_ban(session: AsyncSession, ip: str) -> None:
    ban = await session.scalar(
        delete(IPBan).where(IPBan.ip_address == ip).returning(IPBan),
        execution_options={"synchronize_session": False},
    )
    if ban is None:
        raise NotFound(f"{ip} has no ban.")
    await invalidate(session, TOPIC, ip)
    await audit.record(session, audit.IP_BAN, "delete", ip, before=audit.IP_BAN.snapshot(ban))


async def list_bans(session: AsyncSession, *, include_expired: bool, limit: int) -> list[IPBan]:
    query = select(IPBan).order_by(IPBan.banned_at.desc(), IPBan.id.desc()).limit(limit)
    if not include_expired:
        query = query.where(or_(IPBan.is_permanent, IPBan.expires_at > utcnow()))
    return list((await session.scalars(query)).all())


async def find_ban(session: AsyncSession, ip: str) -> IPBan | None:
    return await session.scalar(select(IPBan).where(IPBan.ip_address == ip))


# --- 404 and invalid-API-key counters ----------------------------------------------------------

_DETECTORS: dict[Kind, str] = {"404": "404_detector", "invalid_api_key": "api_key_detector"}


def _threshold(kind: Kind, security: SecuritySettings) -> tuple[int, int]:
    """(events per day that trigger a ban, ban hours) for `kind`."""
    if kind == "404":
        return security.threshold_404, security.ban_duration_404_h
    return security.threshold_invalid_api_key, security.ban_duration_invalid_api_key_h


async def record_offence(
    session: AsyncSession,
    *,
    kind: Kind,
    ip: str,
    detail: str,
    security: SecuritySettings,
    trusted: tuple[IPNetwork, ...],
) -> OffenceCount:
    """Count one event for `ip` today (UTC); ban it at the threshold when auto-ban is on.

    The increment is one INSERT ... ON CONFLICT DO UPDATE ... RETURNING, so concurrent events
    never lose a count. A ban resets the day's counter, so an address whose temporary ban ran out
    gets a fresh threshold, and repeat bans escalate through the repeat-offender limit.
    """
    now = utcnow()
    day = now.date()
    statement = (
        _insert(session)(IPOffenceCounter)
        .values(
            kind=kind,
            day=day,
            ip_address=ip,
            count=1,
            first_seen_at=now,
            last_seen_at=now,
            last_detail=detail,
        )
        .on_conflict_do_update(
            index_elements=[
                IPOffenceCounter.kind,
                IPOffenceCounter.day,
                IPOffenceCounter.ip_address,
            ],
            set_={
                "count": IPOffenceCounter.count + 1,
                "last_seen_at": now,
                "last_detail": detail,
            },
        )
        .returning(IPOffenceCounter.count)
    )
    count: int = (await session.execute(statement)).scalar_one()
    ban = await session.scalar(select(IPBan).where(IPBan.ip_address == ip))
    banned = ban is not None and is_active(ban, now)
    threshold, hours = _threshold(kind, security)
    if (
        not banned
        and security.auto_ban_enabled
        and count >= threshold
        and not is_protected(ip, trusted)
    ):
        await ban_ip(
            session,
            ip=ip,
            reason=f"{count} {'404s' if kind == '404' else 'invalid API keys'} on {day}",
            hours=hours,
            permanent=hours == 0,
            created_by=_DETECTORS[kind],
            repeat_offender_limit=security.repeat_offender_limit,
        )
        await session.execute(delete(IPOffenceCounter).where(*_key(kind, day, ip)))
        banned = True
    return OffenceCount(count=count, banned=banned)


def _key(kind: Kind, day: date, ip: str) -> tuple[Any, ...]:
    return (
        IPOffenceCounter.kind == kind,
        IPOffenceCounter.day == day,
        IPOffenceCounter.ip_address == ip,
    )


async def suspicious(
    session: AsyncSession, kind: Kind, security: SecuritySettings
) -> list[SuspiciousIP]:
    """Today's addresses above a third of the ban threshold, most events first."""
    threshold, _ = _threshold(kind, security)
    rows = await session.scalars(
        select(IPOffenceCounter)
        .where(
            IPOffenceCounter.kind == kind,
            IPOffenceCounter.day == utcnow().date(),
            IPOffenceCounter.count * 3 > threshold,
        )
        .order_by(IPOffenceCounter.count.desc(), IPOffenceCounter.ip_address)
        .limit(SUSPICIOUS_LIMIT)
    )
    return [SuspiciousIP.model_validate(row) for row in rows]


async def prune_counters(sessionmaker: async_sessionmaker[AsyncSession], before: datetime) -> None:
    """Drop the counters of days wholly before `before`: they only ever mattered on their day."""
    day = before.astimezone(UTC).date()
    async with sessionmaker() as session:
        await begin_write(session)
        await session.execute(delete(IPOffenceCounter).where(IPOffenceCounter.day < day))
        await session.commit()
