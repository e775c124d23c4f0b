"""Platform settings: one row, read through an in-memory cache, written with invalidation."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from service.cache import CacheRegistry, invalidate
from service.db import dialect_of
from service.models.settings import PlatformSettings
from service.schemas.settings import (
    SecuritySettings,
    SettingsRead,
    SettingsUpdate,
    SmtpSettings,
)
from service.security import Keyring

TOPIC = "settings"
_KEY = "current"


def _to_read(row: PlatformSettings | None) -> SettingsRead:
    if row is None:
        return SettingsRead()
    return SettingsRead(
        analyze_mode=row.analyze_mode,
        smtp=SmtpSettings(
            server=row.smtp_server,
            port=row.smtp_port,
            username=row.smtp_username,
            use_tls=row.smtp_use_tls,
            from_email=row.smtp_from_email,
            helo_hostname=row.smtp_helo_hostname,
            password_set=row.smtp_password_encrypted is not None,
        ),
        security=SecuritySettings(
            auto_ban_enabled=row.auto_ban_enabled,
            threshold_404=row.threshold_404,
            ban_duration_404_h=row.ban_duration_404_h,
            threshold_invalid_api_key=row.threshold_invalid_api_key,
            ban_duration_invalid_api_key_h=row.ban_duration_invalid_api_key_h,
            repeat_offender_limit=row.repeat_offender_limit,
        ),
    )


def cached_settings(caches: CacheRegistry) -> SettingsRead | None:
    """The current settings if they are in memory; None says nothing (ask `get_settings`)."""
    cached: SettingsRead | None = caches.get("settings", topic=TOPIC).peek(_KEY)
    return cached


async def get_settings(session: AsyncSession, caches: CacheRegistry) -> SettingsRead:
    """The current settings (defaults when never set), from memory when cached."""
    cache = caches.get("settings", topic=TOPIC)
    cached: SettingsRead | None = cache.get(_KEY)
    if cached is None:
        generation = cache.generation
        cached = _to_read(await session.get(PlatformSettings, 1))
        cache.set_if_current(_KEY, cached, generation)
    return cached


async def update_settings(
    session: AsyncSession, keyring: Keyring, data: SettingsUpdate
) -> SettingsRead:
    # Create the row if needed and lock it, so concurrent first writes cannot collide.
    insert = pg_insert if dialect_of(session) == "postgresql" else sqlite_insert
    await session.execute(insert(PlatformSettings).values(id=1).on_conflict_do_nothing())
    row = await session.get(PlatformSettings, 1, with_for_update=True, populate_existing=True)
    assert row is not None
    changes: dict[str, Any] = {}
    if "analyze_mode" in data.model_fields_set:
        changes["analyze_mode"] = data.analyze_mode
    if data.smtp is not None:
        for field in data.smtp.model_fields_set:
            value = getattr(data.smtp, field)
            if field == "password":
                changes["smtp_password_encrypted"] = (
                    keyring.encrypt(value.get_secret_value()) if value is not None else None
                )
            else:
                changes[f"smtp_{field}"] = value
    if data.security is not None:
        for field in data.security.model_fields_set:
            changes[field] = getattr(data.security, field)
    for column, value in changes.items():
        setattr(row, column, value)
    await session.flush()
    await invalidate(session, TOPIC)
    return _to_read(row)


async def get_smtp_password(session: AsyncSession, keyring: Keyring) -> str | None:
    stored = await session.scalar(
        select(PlatformSettings.smtp_password_encrypted).where(PlatformSettings.id == 1)
    )
    return keyring.decrypt(stored) if stored is not None else None
