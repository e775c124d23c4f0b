"""Migrations: the models and the migrations agree (no autogenerate diff) on this backend, and
`alembic upgrade head` and `python -m service migrate` reach the same schema."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from service import migrate
from service.models import Base
from service.models.base import compared
from tests.support import BACKEND

ROOT = Path(__file__).resolve().parent.parent


def _diff(connection) -> list[object]:
    context = MigrationContext.configure(
        connection,
        opts={
            "compare_type": True,
            "render_as_batch": BACKEND == "sqlite",
            "include_object": compared,
        },
    )
    return list(compare_metadata(context, Base.metadata))


def _schema(connection) -> dict[str, object]:
    inspector = inspect(connection)
    return {
        table: (
            sorted(
                (c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(table)
            ),
            sorted(i["name"] for i in inspector.get_indexes(table)),
            sorted(str(u["name"]) for u in inspector.get_unique_constraints(table)),
        )
        for table in sorted(inspector.get_table_names())
    }


class TestDrift:
    async def test_models_match_migrations(self, db):
        async with db.connect() as conn:
            assert await conn.run_sync(_diff) == []

    async def test_database_is_at_the_single_head(self, db):
        assert await migrate.current_revision(db) == migrate.head_revision()

    def test_the_head_is_alembics_own(self):
        from alembic.script import ScriptDirectory

        script = ScriptDirectory.from_config(migrate.alembic_config())
        assert migrate.head_revision() == script.get_current_head() is not None


class TestMigrateCommands:
    def _run(self, args: list[str], url: str) -> None:
        env = {**os.environ, "DATABASE_URL": url, "PYTHONPATH": str(ROOT)}
        result = subprocess.run(
            args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr

    async def test_alembic_and_service_migrate_agree(self, tmp_path, database_url):
        from sqlalchemy.engine import make_url

        from service.config import DatabaseSettings, load_settings
        from service.db import make_engine
        from tests.conftest import _admin_execute

        if BACKEND == "sqlite":
            urls = [f"sqlite+aiosqlite:///{tmp_path}/a.db", f"sqlite+aiosqlite:///{tmp_path}/b.db"]
        else:
            base = make_url(database_url)
            urls = []
            for suffix in ("_cli_a", "_cli_b"):
                name = f"{base.database}{suffix}"
                await _admin_execute(database_url, f'DROP DATABASE IF EXISTS "{name}"')
                await _admin_execute(database_url, f'CREATE DATABASE "{name}"')
                urls.append(base.set(database=name).render_as_string(hide_password=False))
        try:
            self._run([sys.executable, "-m", "alembic", "upgrade", "head"], urls[0])
            self._run([sys.executable, "-m", "service", "migrate"], urls[1])
            schemas = []
            for url in urls:
                engine = make_engine(
                    load_settings(DatabaseSettings, DATABASE_URL=url), null_pool=True
                )
                async with engine.connect() as conn:
                    schemas.append(await conn.run_sync(_schema))
                assert await migrate.current_revision(engine) == migrate.head_revision()
                await engine.dispose()
            assert schemas[0] == schemas[1]
            assert "platform_settings" in schemas[0]
        finally:
            if BACKEND == "postgresql":
                for url in urls:
                    name = make_url(url).database
                    await _admin_execute(
                        database_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
                    )
