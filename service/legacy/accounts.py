"""Settings, users, API keys, broker tokens and web sessions: imported by natural key.

A row the service holds already (an earlier run, or the service's own) is kept as it is, never
overwritten: after an import the service is where these live. Secrets are decrypted with the
legacy keys and stored under this service's keyring; a secret no legacy key opens is reported
and never stored.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import or_, select

from service import totp
from service.accounts import hash_secret
from service.cache import invalidate
from service.legacy.context import Context, validated
from service.legacy.convert import IST, Skip, boolean, integer, text, timestamp
from service.legacy.convert import optional_timestamp as maybe_timestamp
from service.legacy.crypto import Undecryptable
from service.legacy.source import LegacyFile
from service.models.auth import ApiKey, BrokerToken, UserSession
from service.models.settings import PlatformSettings
from service.models.users import User
from service.repositories import api_keys as api_keys_repo
from service.repositories import settings as settings_repo
from service.schemas.auth import BrokerTokenPut, SessionCreate
from service.schemas.types import EmailAddress
from service.schemas.users import USERNAME_PATTERN, Username

_username = TypeAdapter(Username)
_email = TypeAdapter(EmailAddress)
# Legacy columns this service has no place for (yet): counted and named in the report.
SAMCO_COLUMNS = (
    "secret_api_key",
    "primary_ip",
    "secondary_ip",
    "ip_updated_at",
    "aux_param1",
    "aux_param2",
    "aux_param3",
    "aux_param4",
)


# --- settings ----------------------------------------------------------------------------------


def _settings_row(ctx: Context, legacy: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    def bounded(column: str, default: int, low: int, high: int) -> int:
        value = integer(legacy[column], what=column, default=default, low=low)
        if value > high:
            raise Skip(f"{column} out of range")
        return value

    password = None
    stored = text(legacy["smtp_password_encrypted"])
    if stored:
        try:
            password = ctx.keyring.encrypt(ctx.keys.decrypt_smtp(stored))
        except Undecryptable:
            notes.append("SMTP password undecryptable: imported without it (set it again)")
    port = legacy["smtp_port"]
    return {
        "id": 1,
        "analyze_mode": boolean(legacy["analyze_mode"], False),
        "smtp_server": text(legacy["smtp_server"]) or None,
        "smtp_port": bounded("smtp_port", 0, 1, 65535) if port not in (None, "") else None,
        "smtp_username": text(legacy["smtp_username"]) or None,
        "smtp_password_encrypted": password,
        "smtp_use_tls": boolean(legacy["smtp_use_tls"], True),
        "smtp_from_email": text(legacy["smtp_from_email"]) or None,
        "smtp_helo_hostname": text(legacy["smtp_helo_hostname"]) or None,
        "auto_ban_enabled": boolean(legacy["security_auto_ban_enabled"], False),
        "threshold_404": bounded("security_404_threshold", 100, 1, 1_000_000),
        "ban_duration_404_h": bounded("security_404_ban_duration", 0, 0, 87_600),
        "threshold_invalid_api_key": bounded("security_api_threshold", 100, 1, 1_000_000),
        "ban_duration_invalid_api_key_h": bounded("security_api_ban_duration", 0, 0, 87_600),
        "repeat_offender_limit": bounded("security_repeat_offender_limit", 2, 1, 1000),
        "updated_at": datetime.now(UTC),
    }


SETTINGS_COLUMNS = [
    "id",
    "analyze_mode",
    "smtp_server",
    "smtp_port",
    "smtp_username",
    "smtp_password_encrypted",
    "smtp_use_tls",
    "smtp_from_email",
    "smtp_helo_hostname",
    "security_auto_ban_enabled",
    "security_404_threshold",
    "security_404_ban_duration",
    "security_api_threshold",
    "security_api_ban_duration",
    "security_repeat_offender_limit",
]


async def import_settings(ctx: Context, source: LegacyFile) -> None:
    report = ctx.report.table(f"{source.label}.settings", "platform_settings")
    if not source.has("settings"):
        report.missing = True
        return
    rows = [row for batch in source.stream("settings", SETTINGS_COLUMNS, batch=2) for row in batch]
    if not rows:
        return
    report.read = source.count("settings")
    legacy = rows[0]  # the legacy layer only ever read the first row
    for extra in rows[1:]:
        report.skip("a second settings row (the legacy layer read the first only)", extra["id"])
    notes: list[str] = []
    try:
        row = _settings_row(ctx, legacy, notes)
    except Skip as reason:
        report.skip(str(reason), legacy["id"])
        return
    for note in notes:
        report.note(note)
    async with ctx.batch() as session:
        if await session.get(PlatformSettings, 1) is not None:
            report.present += 1
            return
        if ctx.write:
            await session.execute(ctx.insert(PlatformSettings).values(row).on_conflict_do_nothing())
            await invalidate(session, settings_repo.TOPIC)
        report.imported += 1


# --- users -------------------------------------------------------------------------------------


def _base32(secret: str) -> bool:
    try:
        base64.b32decode(secret.upper() + "=" * (-len(secret) % 8))
    except (binascii.Error, ValueError):
        return False
    return bool(secret)


def _user_row(ctx: Context, legacy: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    try:
        username = _username.validate_python(text(legacy["username"]))
    except ValidationError:
        raise Skip(f"username is not {USERNAME_PATTERN} (the API could not address it)") from None
    try:
        email = _email.validate_python(text(legacy["email"]) or "")
    except ValidationError:
        raise Skip("email is not a valid address") from None
    password_hash = text(legacy["password_hash"]) or ""
    if not password_hash.startswith("$argon2") or len(password_hash) > 255:
        raise Skip("password_hash is not an argon2 hash")
    stored = text(legacy["totp_secret"]) or ""
    try:
        secret, plaintext = ctx.keys.totp_secret(stored)
        if not _base32(secret):
            raise Undecryptable()
        if plaintext:
            notes.append("TOTP secret was stored in plaintext: now encrypted")
    except Undecryptable:
        secret = totp.new_secret()
        notes.append("TOTP secret undecryptable: replaced by a new one (re-enrol the app)")
    return {
        "username": username,
        "email": email,
        "password_hash": password_hash,
        "is_admin": boolean(legacy["is_admin"], False),
        "totp_secret_encrypted": ctx.keyring.encrypt(secret.upper()),
        "totp_enabled": boolean(legacy["totp_enabled"], False),
        "totp_required_for_login": boolean(legacy["totp_required_for_login"], False),
        "totp_required_for_mcp": boolean(legacy["totp_required_for_mcp"], False),
        "totp_required_for_password_reset": boolean(
            legacy["totp_required_for_password_reset"], False
        ),
    }


USER_COLUMNS = [
    "id",
    "username",
    "email",
    "password_hash",
    "totp_secret",
    "is_admin",
    "totp_enabled",
    "totp_required_for_login",
    "totp_required_for_mcp",
    "totp_required_for_password_reset",
]


async def import_users(ctx: Context, source: LegacyFile) -> None:
    name = f"{source.label}.users"
    report = ctx.report.table(name, "users")
    if not source.has("users"):
        report.missing = True
        return
    progress = ctx.progress(name, source.count("users"))
    emails: set[str] = set()
    for batch in source.stream("users", USER_COLUMNS):
        report.read += len(batch)
        rows: dict[str, tuple[Any, dict[str, Any], list[str]]] = {}
        for legacy in batch:
            notes: list[str] = []
            try:
                row = _user_row(ctx, legacy, notes)
            except Skip as reason:
                report.skip(str(reason), legacy["id"])
                continue
            rows[row["username"]] = (legacy["id"], row, notes)
        async with ctx.batch() as session:
            taken = (
                await session.execute(
                    select(User.username, User.email).where(
                        or_(
                            User.username.in_(rows),
                            User.email.in_([r["email"] for _, r, _ in rows.values()]),
                        )
                    )
                )
            ).all()
            present = {t.username for t in taken}
            taken_emails = {t.email: t.username for t in taken}
            new = []
            for username, (legacy_id, row, notes) in rows.items():
                if username in present:
                    report.present += 1
                    ctx.users.add(username)
                elif row["email"] in taken_emails or row["email"] in emails:
                    report.skip("email belongs to another user", legacy_id)
                else:
                    new.append(row)
                    emails.add(row["email"])
                    for note in notes:
                        report.note(note)
            if ctx.write and new:
                inserted = set(
                    await session.scalars(
                        ctx.insert(User).on_conflict_do_nothing().returning(User.username), new
                    )
                )
                for row in new:
                    if row["username"] not in inserted:  # written by someone else meanwhile
                        report.skip("username or email taken meanwhile")
                new = [row for row in new if row["username"] in inserted]
            ctx.users.update(row["username"] for row in new)
            report.imported += len(new)
        progress.advance(len(batch))
    progress.close()


# --- API keys ----------------------------------------------------------------------------------


async def import_api_keys(ctx: Context, source: LegacyFile) -> None:
    name = f"{source.label}.api_keys"
    report = ctx.report.table(name, "api_keys")
    if not source.has("api_keys"):
        report.missing = True
        return
    progress = ctx.progress(name, source.count("api_keys"))
    columns = ["id", "user_id", "api_key_encrypted", "created_at", "order_mode"]
    for batch in source.stream("api_keys", columns):
        report.read += len(batch)
        candidates: dict[str, tuple[Any, dict[str, Any], str]] = {}
        for legacy in batch:
            try:
                user = text(legacy["user_id"]) or ""
                if user not in ctx.users:
                    raise Skip("its user was not imported")
                mode = text(legacy["order_mode"]) or "auto"
                if mode not in ("auto", "semi_auto"):
                    raise Skip(f"order_mode {mode!r} unknown")
                try:
                    plaintext = ctx.keys.decrypt(text(legacy["api_key_encrypted"]) or "")
                except Undecryptable:
                    raise Skip("api_key_encrypted undecryptable under the legacy keys") from None
                if not plaintext or len(plaintext) > 256 or "\x00" in plaintext:
                    raise Skip("the decrypted API key is empty or malformed")
                row = {
                    "user_id": user,
                    "order_mode": mode,
                    "created_at": maybe_timestamp(legacy["created_at"], UTC) or datetime.now(UTC),
                    "key_digest": ctx.keyring.pepper.digest(plaintext),
                    "key_encrypted": ctx.keyring.encrypt(plaintext),
                }
            except Skip as reason:
                report.skip(str(reason), legacy["id"])
                continue
            candidates[user] = (legacy["id"], row, plaintext)
        async with ctx.batch() as session:
            taken = (
                await session.execute(
                    select(ApiKey.user_id, ApiKey.key_digest).where(
                        or_(
                            ApiKey.user_id.in_(candidates),
                            ApiKey.key_digest.in_(
                                [r["key_digest"] for _, r, _ in candidates.values()]
                            ),
                        )
                    )
                )
            ).all()
        present = {t.user_id for t in taken}
        digests = {t.key_digest for t in taken}
        new = []
        for user, (legacy_id, row, plaintext) in candidates.items():
            if user in present:
                report.present += 1
            elif row["key_digest"] in digests:
                report.skip("the same key belongs to another user", legacy_id)
            else:
                new.append((row, plaintext))
        if ctx.write and new:
            # argon2 before the transaction: a write transaction holds SQLite's one lock.
            for row, plaintext in new:
                row["key_hash"] = await hash_secret(ctx.keyring, plaintext)
            async with ctx.batch() as session:
                inserted = set(
                    await session.scalars(
                        ctx.insert(ApiKey).on_conflict_do_nothing().returning(ApiKey.key_digest),
                        [row for row, _ in new],
                    )
                )
                for digest in inserted:
                    # The digest may sit in the unknown-key cache of a running instance.
                    await invalidate(session, api_keys_repo.TOPIC, digest)
            report.present += len(new) - len(inserted)
            report.imported += len(inserted)
        elif new:
            report.imported += len(new)
        progress.advance(len(batch))
    progress.close()


# --- broker tokens -----------------------------------------------------------------------------


def _broker_row(ctx: Context, legacy: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    name = text(legacy["name"]) or ""
    if name not in ctx.users:
        raise Skip("its user was not imported")
    revoked = boolean(legacy["is_revoked"], False)
    broker = text(legacy["broker"]) or ""
    if revoked:
        # A revoked row keeps no token (the legacy one kept "" or a placeholder).
        return {
            "name": name,
            "broker": broker[:32],
            "user_id": None,
            "revoked": True,
            "auth_token_encrypted": None,
            "feed_token_encrypted": None,
        }
    try:
        auth_token = ctx.keys.decrypt(text(legacy["auth"]) or "")
    except Undecryptable:
        raise Skip("auth token undecryptable under the legacy keys") from None
    feed_token = None
    stored_feed = text(legacy["feed_token"])
    if stored_feed:
        try:
            feed_token = ctx.keys.decrypt(stored_feed)
        except Undecryptable:
            notes.append("feed token undecryptable: imported without it")
    item = validated(
        BrokerTokenPut,
        {
            "auth_token": auth_token,
            "feed_token": feed_token or None,
            "broker": broker,
            "user_id": text(legacy["user_id"]) or None,
        },
    )
    return {
        "name": name,
        "broker": item.broker,
        "user_id": item.user_id,
        "revoked": False,
        "auth_token_encrypted": ctx.keyring.encrypt(item.auth_token.get_secret_value()),
        "feed_token_encrypted": (
            ctx.keyring.encrypt(item.feed_token.get_secret_value()) if item.feed_token else None
        ),
    }


async def import_broker_tokens(ctx: Context, source: LegacyFile) -> None:
    name = f"{source.label}.auth"
    report = ctx.report.table(name, "broker_tokens")
    if not source.has("auth"):
        report.missing = True
        return
    ctx.not_imported(source, "auth", SAMCO_COLUMNS)
    progress = ctx.progress(name, source.count("auth"))
    columns = ["id", "name", "auth", "feed_token", "broker", "user_id", "is_revoked"]
    for batch in source.stream("auth", columns):
        report.read += len(batch)
        rows: dict[str, tuple[Any, dict[str, Any], list[str]]] = {}
        for legacy in batch:
            notes: list[str] = []
            try:
                row = _broker_row(ctx, legacy, notes)
            except Skip as reason:
                report.skip(str(reason), legacy["id"])
                continue
            rows[row["name"]] = (legacy["id"], row, notes)
        async with ctx.batch() as session:
            present = set(
                await session.scalars(select(BrokerToken.name).where(BrokerToken.name.in_(rows)))
            )
            new = [row for user, (_, row, _) in rows.items() if user not in present]
            for user, (_, _, notes) in rows.items():
                if user not in present:
                    for note in notes:
                        report.note(note)
            report.present += len(present)
            if ctx.write and new:
                inserted = list(
                    await session.scalars(
                        ctx.insert(BrokerToken)
                        .on_conflict_do_nothing()
                        .returning(BrokerToken.name),
                        new,
                    )
                )
                for user in inserted:
                    await api_keys_repo.invalidate_user(session, user)
                report.present += len(new) - len(inserted)
                new = new[: len(inserted)]
            report.imported += len(new)
        progress.advance(len(batch))
    progress.close()


# --- web sessions ------------------------------------------------------------------------------


async def import_sessions(ctx: Context, source: LegacyFile) -> None:
    name = f"{source.label}.active_sessions"
    report = ctx.report.table(name, "sessions")
    if not source.has("active_sessions"):
        report.missing = True
        return
    progress = ctx.progress(name, source.count("active_sessions"))
    columns = [
        "id",
        "username",
        "session_id",
        "device_info",
        "ip_address",
        "broker",
        "login_time",
        "last_seen",
    ]
    for batch in source.stream("active_sessions", columns):
        report.read += len(batch)
        rows: dict[str, dict[str, Any]] = {}
        for legacy in batch:
            try:
                item = validated(
                    SessionCreate,
                    {
                        key: text(legacy[key]) or None
                        for key in ("username", "session_id", "device_info", "ip_address", "broker")
                    },
                )
                if item.username not in ctx.users:
                    raise Skip("its user was not imported")
                login = timestamp(legacy["login_time"], IST, what="login_time")
                seen = maybe_timestamp(legacy["last_seen"], IST, what="last_seen") or login
            except Skip as reason:
                report.skip(str(reason), legacy["id"])
                continue
            # The legacy layer kept no expiry: the session lasts the configured lifetime from
            # its last activity, as the migration gives sessions that predate expiry.
            expires = seen + timedelta(hours=ctx.settings.SESSION_LIFETIME_HOURS)
            rows[item.session_id] = {
                **item.model_dump(),
                "created_at": login,
                "last_seen": seen,
                "expires_at": expires,
            }
        async with ctx.batch() as session:
            present = set(
                await session.scalars(
                    select(UserSession.session_id).where(UserSession.session_id.in_(rows))
                )
            )
            new = [row for key, row in rows.items() if key not in present]
            report.present += len(present)
            if ctx.write and new:
                count = len(
                    list(
                        await session.scalars(
                            ctx.insert(UserSession)
                            .on_conflict_do_nothing()
                            .returning(UserSession.id),
                            new,
                        )
                    )
                )
                report.present += len(new) - count
                new = new[:count]
            report.imported += len(new)
        progress.advance(len(batch))
    progress.close()
