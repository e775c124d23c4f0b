"""Users: what the user endpoints accept and return (never a hash or a TOTP secret)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, Field, RootModel, SecretStr

from service.schemas.base import InputSchema, Schema
from service.schemas.types import (
    JSON_RULES,
    EmailAddress,
    SecretText,
    StoredJson,
    json_input_schema,
    json_max_bytes,
    text,
)

USERNAME_PATTERN = r"^[A-Za-z0-9_.-]{3,80}$"

Username = Annotated[
    str,
    Field(
        min_length=3,
        max_length=80,
        pattern=USERNAME_PATTERN,
        description="3-80 characters of A-Z a-z 0-9 _ . -",
    ),
]
# Lower-cased so that one address cannot register twice in another case.
Email = EmailAddress
NewPassword = Annotated[SecretStr, SecretText(min_length=8, max_length=1024)]
NAME_LENGTH = 100
PersonName = Annotated[str, text(NAME_LENGTH)]


class UserCreate(InputSchema):
    username: Username
    email: Email
    password: NewPassword
    is_admin: bool = False
    first_name: PersonName | None = None
    last_name: PersonName | None = None


class UserUpdate(InputSchema):
    not_nullable = frozenset(
        {
            "email",
            "is_admin",
            "totp_enabled",
            "totp_required_for_login",
            "totp_required_for_mcp",
            "totp_required_for_password_reset",
        }
    )

    email: Email | None = None
    is_admin: bool | None = None
    totp_enabled: bool | None = None
    totp_required_for_login: bool | None = None
    totp_required_for_mcp: bool | None = None
    totp_required_for_password_reset: bool | None = None
    first_name: PersonName | None = Field(default=None, description="null clears it.")
    last_name: PersonName | None = Field(default=None, description="null clears it.")


class UserRead(Schema):
    id: int
    username: str
    email: str
    is_admin: bool
    totp_enabled: bool
    totp_required_for_login: bool
    totp_required_for_mcp: bool
    totp_required_for_password_reset: bool
    first_name: str | None
    last_name: str | None
    created_at: datetime
    updated_at: datetime


class PasswordChange(InputSchema):
    password: NewPassword


class PasswordCheck(InputSchema):
    # No minimum: a short guess is simply wrong, and saying so leaks nothing.
    password: Annotated[SecretStr, SecretText(max_length=1024)]


class Validity(BaseModel):
    valid: bool


class TotpSecret(BaseModel):
    secret: str = Field(description="Base32, as authenticator apps expect it.")
    provisioning_uri: str = Field(
        examples=["otpauth://totp/AlgoWays:alice?secret=…&issuer=AlgoWays"]
    )


class TotpCode(InputSchema):
    code: str = Field(pattern=r"^[0-9]{6}$", description="The 6-digit code shown by the app.")


# --- preferences -------------------------------------------------------------------------------

PREFERENCE_KEY_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
PREFERENCE_MAX_BYTES = 16 * 1024
PreferenceValue = Annotated[
    Any, JSON_RULES, json_max_bytes(PREFERENCE_MAX_BYTES), json_input_schema(PREFERENCE_MAX_BYTES)
]


class PreferencePut(InputSchema):
    value: PreferenceValue


class PreferenceRead(BaseModel):
    key: str
    value: StoredJson
    updated_at: datetime


class Preferences(RootModel[dict[str, Any]]):
    """Every preference of the user, key → value ({} when none)."""

    root: dict[str, StoredJson]
