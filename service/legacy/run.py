"""The import as a whole: the legacy keys, a check that they open the install's secrets, the
tables in dependency order (users before what belongs to them, strategies before their
mappings), and the report."""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from dotenv import dotenv_values
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from service import migrate
from service.cache import InvalidationBus
from service.config import Settings
from service.db import make_engine, make_sessionmaker
from service.legacy import accounts, contract, records, strategies
from service.legacy.context import Context
from service.legacy.crypto import SMTP_DEFAULT_SALT, LegacyKeys, salt_from_hex
from service.legacy.ledger import ConcurrentImport
from service.legacy.report import Report
from service.legacy.source import LegacyFile, LegacyFileError
from service.repositories.strategies import CHARTINK, STRATEGIES
from service.security import Keyring

# What a preflight samples of the install's secrets to tell a wrong pepper or salt at once.
PREFLIGHT_ROWS = 200


class ImportAborted(Exception):
    """Nothing was imported; the message says why."""


@dataclass(frozen=True)
class Options:
    db: Path
    logs: Path | None = None
    latency: Path | None = None
    dry_run: bool = False
    legacy_env: Path | None = None


def legacy_keys(settings: Settings, options: Options) -> LegacyKeys:
    """The install's pepper and salts: LEGACY_* variables, else its `.env` (--legacy-env), else
    this service's own (an operator who carried API_KEY_PEPPER and FERNET_SALT over)."""
    found: dict[str, str | None] = {}
    if options.legacy_env is not None:
        if not options.legacy_env.is_file():
            raise ImportAborted(f"{options.legacy_env}: no such file")
        found = dict(dotenv_values(options.legacy_env))

    def pick(name: str) -> str | None:
        return os.environ.get(f"LEGACY_{name}") or found.get(name) or None

    pepper = pick("API_KEY_PEPPER")
    if pepper is not None:
        peppers: tuple[str, ...] = (pepper,)
    else:
        peppers = tuple(p.value.decode() for p in Keyring(settings).peppers)
    salt_text = pick("FERNET_SALT")
    salt = (
        salt_from_hex(salt_text) if salt_text is not None else salt_from_hex(settings.FERNET_SALT)
    )
    return LegacyKeys(peppers, salt, pick("SMTP_KEY_SALT") or SMTP_DEFAULT_SALT)


def preflight(keys: LegacyKeys, source: LegacyFile) -> None:
    """Refuse to start when none of the install's encrypted values opens: the pepper or salt
    given is not the install's, and every secret would be skipped."""
    samples: list[str] = []
    for table, column, where in (
        ("api_keys", "api_key_encrypted", ""),
        ("auth", "auth", " WHERE is_revoked = 0 OR is_revoked IS NULL"),
        ("auth", "feed_token", ""),
    ):
        if source.has(table) and column in source.columns(table):
            rows = source.query(f'SELECT "{column}" FROM "{table}"{where} LIMIT {PREFLIGHT_ROWS}')
            samples.extend(str(value) for (value,) in rows if value)
    if samples and not any(keys.opens(sample) for sample in samples):
        raise ImportAborted(
            "none of the install's encrypted API keys or broker tokens opens with the pepper and "
            "salt given: set LEGACY_API_KEY_PEPPER and LEGACY_FERNET_SALT (or --legacy-env with "
            "the install's .env) to the install's values"
        )
    keys.used.clear()


Step = Callable[[Context, LegacyFile], Awaitable[None]]

OPENALGO_STEPS: list[Step] = [
    accounts.import_settings,
    accounts.import_users,
    accounts.import_api_keys,
    accounts.import_broker_tokens,
    accounts.import_sessions,
    records.import_login_attempts,
    lambda ctx, src: strategies.import_strategies(ctx, src, STRATEGIES),
    lambda ctx, src: strategies.import_mappings(ctx, src, STRATEGIES),
    lambda ctx, src: strategies.import_strategies(ctx, src, CHARTINK),
    lambda ctx, src: strategies.import_mappings(ctx, src, CHARTINK),
    contract.import_contract,
    contract.import_contract_status,
    records.import_order_logs,
    records.import_analyzer_logs,
]
LOGS_STEPS: list[Step] = [
    records.import_traffic_logs,
    records.import_bans,
    records.import_404_tracker,
    records.import_invalid_key_tracker,
]
LATENCY_STEPS: list[Step] = [records.import_latency]


def _open(label: str, path: Path | None) -> LegacyFile | None:
    if path is None:
        return None
    try:
        return LegacyFile(label, path)
    except LegacyFileError as error:
        raise ImportAborted(str(error)) from None


async def import_legacy(settings: Settings, options: Options, out: TextIO | None = None) -> Report:
    """Run the import; the report says what happened to every legacy table."""
    out = out or sys.stdout
    keys = legacy_keys(settings, options)
    files = [
        (_open("openalgo", options.db), OPENALGO_STEPS),
        (_open("logs", options.logs), LOGS_STEPS),
        (_open("latency", options.latency), LATENCY_STEPS),
    ]
    engine = make_engine(settings, null_pool=True)
    report = Report(dry_run=options.dry_run)
    try:
        main = files[0][0]
        assert main is not None
        preflight(keys, main)
        await _schema_at_head(engine, options.dry_run)
        keyring = Keyring(settings)
        ctx = Context(
            settings=settings,
            engine=engine,
            sessionmaker=make_sessionmaker(engine, InvalidationBus(settings.asyncpg_dsn)),
            keyring=keyring,
            keys=keys,
            report=report,
            dry_run=options.dry_run,
            out=out,
        )
        for source, steps in files:
            if source is not None:
                for step in steps:
                    await step(ctx, source)
        _warn_about_keys(ctx)
    finally:
        await engine.dispose()
        for source, _ in files:
            if source is not None:
                source.close()
    return report


async def _schema_at_head(engine: AsyncEngine, dry_run: bool) -> None:
    """The schema the service would serve: SQLite is migrated as the service migrates it at
    start-up (except by a dry run, which writes nothing); PostgreSQL must have been."""
    head = migrate.head_revision()
    if engine.dialect.name == "sqlite" and not dry_run:
        await migrate.upgrade(engine)
    current = await migrate.current_revision(engine)
    if current != head:
        raise ImportAborted(
            f"the database schema is at {current} but head is {head}: "
            "run `python -m service migrate` first"
        )


def _warn_about_keys(ctx: Context) -> None:
    held = {p.value.decode() for p in ctx.keyring.peppers}
    if ctx.keys.peppers[0] not in held:
        ctx.report.warnings.append(
            "the install's API_KEY_PEPPER is not one this service holds: imported passwords will "
            "not verify until it is set as API_KEY_PEPPER_PREVIOUS (they are re-hashed under the "
            "current pepper at each user's next login)"
        )
    static = sum(n for label, n in ctx.keys.used.items() if label.startswith("static salt"))
    if static:
        ctx.report.warnings.append(
            f"{static} secrets were encrypted under the legacy static salt (read, and now "
            "stored under this service's key)"
        )


def run_cli(settings: Settings, args: object) -> int:
    """`python -m service import-legacy ...`: 0 when done (skips are in the report), 1 when
    aborted before anything was written."""
    import asyncio

    def path(name: str) -> Path | None:
        value = getattr(args, name, None)
        return Path(value) if value else None

    db = path("db")
    assert db is not None
    options = Options(
        db=db,
        logs=path("logs"),
        latency=path("latency"),
        dry_run=bool(getattr(args, "dry_run", False)),
        legacy_env=path("legacy_env"),
    )
    try:
        report = asyncio.run(import_legacy(settings, options))
    except (ImportAborted, ConcurrentImport) as error:
        print(f"import-legacy: {error}", file=sys.stderr)
        return 1
    except (DBAPIError, OSError) as error:
        # Every batch committed so far stays, with its mark: running again resumes.
        print(
            f"import-legacy: stopped by {type(error).__name__}: {str(error)[:300]}; "
            "run the same command again to resume",
            file=sys.stderr,
        )
        return 1
    print(report.render())
    return 0
