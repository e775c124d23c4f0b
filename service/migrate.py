"""Alembic, driven from the service: upgrade to head and compare current with head."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

ROOT = Path(__file__).resolve().parent.parent


def alembic_config(database_url: str | None = None) -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    if database_url is not None:
        config.attributes["database_url"] = database_url
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        has_table = await conn.run_sync(
            lambda sync: sync.dialect.has_table(sync, "alembic_version")
        )
        if not has_table:
            return None
        version: str | None = await conn.scalar(text("SELECT version_num FROM alembic_version"))
        return version


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the database behind `engine` to `revision`, on that engine's own connection."""

    def run(connection: Connection) -> None:
        config = alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    async with engine.begin() as conn:
        await conn.run_sync(run)
