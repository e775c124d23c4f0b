"""Service configuration: parsed once from the environment and `.env` by pydantic-settings."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

SCOPES = frozenset({"read", "write", "secrets"})
# How the service's connections name themselves to PostgreSQL (pg_stat_activity).
APPLICATION_NAME = "algoways-store"
_TOKEN_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True, slots=True)
class ServiceToken:
    name: str
    token: str
    scopes: frozenset[str]

    def __repr__(self) -> str:  # never print the token itself
        return f"ServiceToken(name={self.name!r}, scopes={sorted(self.scopes)!r})"


# Connections an instance keeps for its steady load (DB_POOL_SIZE when unset, for all workers).
DEFAULT_POOL_SIZE = 32
DEFAULT_MAX_OVERFLOW = 8

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class DatabaseSettings(BaseSettings):
    """What it takes to reach the database (all that migrations need)."""

    model_config = SettingsConfigDict(
        env_file=".env", env_ignore_empty=True, extra="ignore", frozen=True
    )

    DATABASE_URL: str = "sqlite+aiosqlite:///./algoways.db"
    # Sized for the concurrency one instance serves, so steady load never needs an overflow
    # connection: SQLAlchemy closes those at check-in, and the next burst pays a new backend (a
    # fork on PostgreSQL) for each. Measured: 20 still churned ~25 connections/s under 32
    # concurrent uncached reads; 32 opened none in 60 s. Overflow is for bursts only. Per worker
    # process; left unset, the 32 are shared out among WORKERS (Settings below), so an instance
    # keeps about the same number of connections open whatever its worker count.
    DB_POOL_SIZE: int = Field(DEFAULT_POOL_SIZE, ge=1)
    DB_MAX_OVERFLOW: int = Field(DEFAULT_MAX_OVERFLOW, ge=0)
    DB_POOL_TIMEOUT: float = Field(5.0, gt=0)
    DB_POOL_RECYCLE: int = Field(1800, ge=-1)
    DB_POOL_PRE_PING: bool = True
    # Seconds one statement may take on PostgreSQL before the service gives up on it (503): what
    # ends a request whose connection went silent (a black-holed route, a hung server). 0 = none.
    DB_STATEMENT_TIMEOUT: float = Field(30.0, ge=0)

    @field_validator("DATABASE_URL", mode="before")
    @classmethod
    def _async_driver(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        for plain, driver in (
            ("postgresql://", "postgresql+asyncpg://"),
            ("postgres://", "postgresql+asyncpg://"),
            ("sqlite:///", "sqlite+aiosqlite:///"),
        ):
            if value.startswith(plain):
                return driver + value[len(plain) :]
        if value.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
            return value
        scheme = value.split("://", 1)[0] if "://" in value else value[:20]
        raise ValueError(
            f"unsupported scheme {scheme!r}; use postgresql+asyncpg:// or sqlite+aiosqlite:///"
        )

    @property
    def backend(self) -> str:
        return "postgresql" if self.DATABASE_URL.startswith("postgresql") else "sqlite"

    @property
    def asyncpg_dsn(self) -> str | None:
        """DATABASE_URL as asyncpg reads it (no driver in the scheme), for the connections made
        without SQLAlchemy: the invalidation listener's and the start-up index builder's. None
        on SQLite."""
        if self.backend != "postgresql":
            return None
        return "postgresql://" + self.DATABASE_URL.removeprefix("postgresql+asyncpg://")


class Settings(DatabaseSettings):
    API_KEY_PEPPER: SecretStr
    FERNET_SALT: str
    # The keys before the last rotation: still accepted for reading, never for writing.
    API_KEY_PEPPER_PREVIOUS: SecretStr | None = None
    FERNET_SALT_PREVIOUS: str | None = None

    SERVICE_TOKENS: Annotated[tuple[ServiceToken, ...], NoDecode]
    TRUSTED_IPS: Annotated[tuple[IPNetwork, ...], NoDecode] = ()

    LOG_LEVEL: Literal["CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"] = "INFO"
    LOG_FORMAT: Literal["text", "json"] = "text"
    HOST: str = "127.0.0.1"
    PORT: int = Field(8000, ge=1, le=65535)
    # Worker processes of `python -m service serve`, each with its own pool, caches and
    # invalidation listener. PostgreSQL only: SQLite runs one (its writers serialise anyway, and
    # its caches have no cross-process invalidation).
    WORKERS: int = Field(1, ge=1, le=64)

    MAX_BODY_BYTES: int = Field(10 * 1024 * 1024, ge=1024)
    MAX_UPLOAD_BYTES: int = Field(512 * 1024 * 1024, ge=1024)
    # The request line and headers of one request (`python -m service serve`): more is a 431.
    MAX_HEADER_BYTES: int = Field(16 * 1024, ge=1024, le=1024 * 1024)
    # Seconds a client has to send a request line and headers, from its first byte: then 408.
    HEADER_TIMEOUT: float = Field(10.0, gt=0, le=300)
    # Seconds the answer to a POST with an Idempotency-Key is replayed to its repeats.
    IDEMPOTENCY_TTL_SECONDS: int = Field(86_400, ge=1, le=30 * 86_400)
    # Seconds a master-contract download may go without a report before it reads as failed.
    SYMBOL_DOWNLOAD_TIMEOUT: float = Field(300.0, gt=0, le=86400)
    # Hours a web session lasts when its login gives no `expires_at` (a year at most).
    SESSION_LIFETIME_HOURS: int = Field(24, ge=1, le=8784)

    @field_validator("LOG_LEVEL", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("LOG_FORMAT", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("API_KEY_PEPPER", "API_KEY_PEPPER_PREVIOUS")
    @classmethod
    def _pepper_length(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters")
        return value

    @field_validator("FERNET_SALT", "FERNET_SALT_PREVIOUS")
    @classmethod
    def _salt_hex(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if len(value) < 32 or len(value) % 2 or not re.fullmatch(r"[0-9a-fA-F]+", value):
            raise ValueError("must be an even number (at least 32) of hex characters")
        return value.lower()

    @field_validator("SERVICE_TOKENS", mode="before")
    @classmethod
    def _parse_tokens(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        tokens: list[ServiceToken] = []
        for entry in filter(None, (part.strip() for part in value.split(","))):
            parts = entry.split(":")
            if len(parts) != 3:
                raise ValueError("each entry must be name:token:scopes")
            name, token, scope_text = parts
            if not _TOKEN_NAME.match(name):
                raise ValueError(f"token name {name!r} must be 1-64 of [A-Za-z0-9_.-]")
            if len(token) < 16:
                raise ValueError(f"token of {name!r} must be at least 16 characters")
            scopes = frozenset(s.strip() for s in scope_text.split("+") if s.strip())
            if not scopes or not scopes <= SCOPES:
                raise ValueError(f"scopes of {name!r} must be read, write, secrets joined by +")
            tokens.append(ServiceToken(name, token, scopes))
        if not tokens:
            raise ValueError("at least one name:token:scopes entry is required")
        if len({t.name for t in tokens}) != len(tokens):
            raise ValueError("token names must be unique")
        if len({t.token for t in tokens}) != len(tokens):
            raise ValueError("tokens must be unique")
        return tuple(tokens)

    @field_validator("TRUSTED_IPS", mode="before")
    @classmethod
    def _parse_networks(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        networks: list[IPNetwork] = []
        for entry in filter(None, (part.strip() for part in value.split(","))):
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or CIDR") from None
        return tuple(networks)

    @model_validator(mode="after")
    def _pool_per_worker(self) -> Settings:
        if "DB_POOL_SIZE" not in self.model_fields_set and self.WORKERS > 1:
            # frozen model: set during validation, before anyone has read it
            self.__dict__["DB_POOL_SIZE"] = max(-(-DEFAULT_POOL_SIZE // self.WORKERS), 4)
        return self

    @model_validator(mode="after")
    def _previous_keys_pair(self) -> Settings:
        if self.FERNET_SALT_PREVIOUS and not self.API_KEY_PEPPER_PREVIOUS:
            raise ValueError("API_KEY_PEPPER_PREVIOUS: required when FERNET_SALT_PREVIOUS is set")
        return self


class ConfigError(Exception):
    """A configuration value is missing or invalid; the message names the variable."""


def describe_errors(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        name = ".".join(str(p) for p in item["loc"]) or "configuration"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "missing":
            message = "is required but not set"
        lines.append(f"{name}: {message}")
    return "\n".join(lines)


def load_settings(cls: type[DatabaseSettings] | None = None, **overrides: Any) -> Any:
    """Build settings from the environment (and `.env`), raising ConfigError on bad values."""
    try:
        return (cls or Settings)(**overrides)
    except ValidationError as error:
        raise ConfigError(describe_errors(error)) from None


@lru_cache
def get_settings() -> Settings:
    settings: Settings = load_settings()
    return settings
