"""Platform settings: what GET returns and what PATCH accepts."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field, SecretStr

from service.schemas.base import InputSchema
from service.schemas.types import INTEGRAL, EmailAddress, SecretText, text


class SmtpSettings(BaseModel):
    server: str | None = None
    port: int | None = None
    username: str | None = None
    use_tls: bool = True
    from_email: str | None = None
    helo_hostname: str | None = None
    password_set: bool = False


class SecuritySettings(BaseModel):
    auto_ban_enabled: bool = False
    threshold_404: int = 100
    ban_duration_404_h: int = 0
    threshold_invalid_api_key: int = 100
    ban_duration_invalid_api_key_h: int = 0
    repeat_offender_limit: int = 2


class SettingsRead(BaseModel):
    analyze_mode: bool = False
    smtp: SmtpSettings = SmtpSettings()
    security: SecuritySettings = SecuritySettings()


class SmtpUpdate(InputSchema):
    not_nullable = frozenset({"use_tls"})

    server: str | None = text(255, default=None, examples=["smtp.example.com"])
    port: Annotated[int, Field(ge=1, le=65535), INTEGRAL] | None = None
    username: str | None = text(255, default=None)
    password: Annotated[SecretStr, SecretText(max_length=512)] | None = Field(
        default=None, description="Stored encrypted; null clears it."
    )
    use_tls: bool | None = None
    from_email: EmailAddress | None = None
    helo_hostname: str | None = text(255, default=None)


class SecurityUpdate(InputSchema):
    not_nullable = frozenset(SecuritySettings.model_fields)

    auto_ban_enabled: bool | None = None
    threshold_404: Annotated[int, Field(ge=1, le=1_000_000), INTEGRAL] | None = None
    ban_duration_404_h: Annotated[int, Field(ge=0, le=87_600), INTEGRAL] | None = Field(
        default=None, description="Hours; 0 bans permanently."
    )
    threshold_invalid_api_key: Annotated[int, Field(ge=1, le=1_000_000), INTEGRAL] | None = None
    ban_duration_invalid_api_key_h: Annotated[int, Field(ge=0, le=87_600), INTEGRAL] | None = None
    repeat_offender_limit: Annotated[int, Field(ge=1, le=1000), INTEGRAL] | None = None


class SettingsUpdate(InputSchema):
    not_nullable = frozenset({"analyze_mode"})

    analyze_mode: bool | None = None
    smtp: SmtpUpdate | None = None
    security: SecurityUpdate | None = None


class SmtpPassword(BaseModel):
    password: str | None
