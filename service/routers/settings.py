"""settings: the one row of platform settings."""

from __future__ import annotations

from service.db import SessionDep
from service.errors import problems
from service.repositories import settings as settings_repo
from service.routers.base import domain_router
from service.schemas.settings import SettingsRead, SettingsUpdate, SmtpPassword
from service.security import SECRETS
from service.state import StateDep

router = domain_router("/settings", "settings")


@router.get("", response_model=SettingsRead)
async def get_settings(session: SessionDep, state: StateDep) -> SettingsRead:
    """Read the platform settings (defaults when never set)."""
    return await settings_repo.get_settings(session, state.caches)


@router.patch("", response_model=SettingsRead, responses=problems(400, 415))
async def update_settings(
    body: SettingsUpdate, session: SessionDep, state: StateDep
) -> SettingsRead:
    """Change any subset of the settings; `smtp.password` is stored encrypted."""
    return await settings_repo.update_settings(session, state.keyring, body)


@router.get("/smtp-password", response_model=SmtpPassword, **SECRETS)  # type: ignore[arg-type]
async def get_smtp_password(session: SessionDep, state: StateDep) -> SmtpPassword:
    """Read the SMTP password in plaintext (null when unset)."""
    return SmtpPassword(password=await settings_repo.get_smtp_password(session, state.keyring))
