"""The HTTP behaviour every route shares: problems, the session's transaction, 503s, metrics,
request ids and logs."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import httpx
import pytest
from sqlalchemy import text

from service.db import SessionDep
from service.errors import NotFound
from service.logs import configure_logging
from service.models.settings import PlatformSettings
from tests.support import assert_problem, auth


async def _settings_rows(db) -> int:
    async with db.connect() as conn:
        return int(await conn.scalar(text("SELECT count(*) FROM platform_settings")))


def _add_route(client, path, endpoint, methods=("POST",)):
    client.app.router.add_api_route(path, endpoint, methods=list(methods))


class TestProblems:
    async def test_unknown_route_is_404_problem(self, client):
        body = assert_problem(await client.get("/api/v1/nothing-here"), 404, "not-found")
        assert body["detail"] == "No such route."
        assert_problem(await client.get("/nothing"), 404)

    async def test_wrong_method_is_405_problem(self, client):
        assert_problem(await client.delete("/api/v1/settings"), 405, "method-not-allowed")

    async def test_wrong_content_type_is_415(self, client, db):
        response = await client.patch(
            "/api/v1/settings", content=b"analyze_mode=true", headers={"content-type": "text/plain"}
        )
        assert_problem(response, 415, "unsupported-media-type")
        assert await _settings_rows(db) == 0

    async def test_too_large_body_is_413(self, client_factory, db):
        client = await client_factory(MAX_BODY_BYTES=2048)
        body = json.dumps({"smtp": {"server": "x" * 4000}}).encode()
        response = await client.patch(
            "/api/v1/settings", content=body, headers={"content-type": "application/json"}
        )
        assert_problem(response, 413, "payload-too-large")

        async def chunks():  # no Content-Length: counted while streaming
            for _ in range(4):
                yield b" " * 1000

        streamed = await client.patch(
            "/api/v1/settings", content=chunks(), headers={"content-type": "application/json"}
        )
        assert_problem(streamed, 413, "payload-too-large")
        assert await _settings_rows(db) == 0

    async def test_500_leaks_no_traceback_or_sql(self, client_factory, caplog):
        client = await client_factory()

        async def boom() -> None:
            raise RuntimeError("SELECT password FROM users -- internal detail")

        _add_route(client, "/api/v1/_test/boom", boom, methods=("GET",))
        transport = httpx.ASGITransport(app=client.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=auth()) as c:
            response = await c.get("/api/v1/_test/boom")
        body = assert_problem(response, 500, "internal")
        assert "SELECT" not in response.text and "Traceback" not in response.text
        assert body["detail"] == "The service failed to handle the request."


class TestSessionTransaction:
    async def test_failing_handler_leaves_nothing_written(self, client, db):
        async def write_then_fail(session: SessionDep) -> None:
            session.add(PlatformSettings(id=1, analyze_mode=True))
            await session.flush()
            raise NotFound("gone after writing")

        _add_route(client, "/api/v1/_test/fail", write_then_fail)
        assert_problem(await client.post("/api/v1/_test/fail"), 404)
        assert await _settings_rows(db) == 0

    async def test_handler_that_returns_commits_before_the_response(self, client, db):
        async def write(session: SessionDep) -> dict[str, bool]:
            session.add(PlatformSettings(id=1, analyze_mode=True))
            return {"written": True}

        _add_route(client, "/api/v1/_test/write", write)
        response = await client.post("/api/v1/_test/write")
        assert response.status_code == 200
        assert await _settings_rows(db) == 1  # visible to another connection at once

    async def test_commit_failure_is_a_problem_not_a_2xx(self, client, db):
        async def violates_at_commit(session: SessionDep) -> dict[str, bool]:
            # Not flushed here: the CHECK (id = 1) fails only when the commit flushes it.
            session.add(PlatformSettings(id=2))
            return {"written": True}

        _add_route(client, "/api/v1/_test/commit-fails", violates_at_commit)
        response = await client.post("/api/v1/_test/commit-fails")
        assert_problem(response, 409, "conflict")
        assert await _settings_rows(db) == 0


class TestDatabaseUnavailable:
    async def test_unreachable_database_is_503_with_retry_after(self, client_factory):
        client = await client_factory(
            DATABASE_URL="postgresql://postgres@127.0.0.1:9/nowhere", DB_POOL_TIMEOUT=1
        )
        response = await client.get("/api/v1/settings")
        body = assert_problem(response, 503, "database-unavailable")
        assert response.headers["retry-after"] == "2"
        assert "not ready" in body["detail"]
        ready = await client.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json()["status"] == "unavailable"
        assert ready.json()["database"]["ok"] is False
        assert (await client.get("/health/live")).status_code == 200

    async def test_exhausted_pool_is_503_within_the_pool_timeout(self, client_factory, db):
        client = await client_factory(DB_POOL_SIZE=1, DB_MAX_OVERFLOW=0, DB_POOL_TIMEOUT=0.5)
        release = asyncio.Event()

        async def hold(session: SessionDep) -> dict[str, bool]:
            await session.execute(text("SELECT 1"))
            await release.wait()
            return {"held": True}

        _add_route(client, "/api/v1/_test/hold", hold, methods=("GET",))
        holder = asyncio.create_task(client.get("/api/v1/_test/hold"))
        await asyncio.sleep(0.2)
        response = await asyncio.wait_for(
            client.patch("/api/v1/settings", json={"analyze_mode": True}), timeout=5
        )
        assert_problem(response, 503, "database-unavailable")
        assert response.headers["retry-after"] == "2"
        release.set()
        assert (await holder).status_code == 200
        assert await _settings_rows(db) == 0
        # The pool recovers as soon as the connection is back.
        again = await client.patch("/api/v1/settings", json={"analyze_mode": True})
        assert again.status_code == 200

    @pytest.mark.postgres_only
    async def test_pool_replaces_connections_the_server_dropped(self, client, db):
        assert (
            await client.patch("/api/v1/settings", json={"analyze_mode": True})
        ).status_code == 200
        async with db.connect() as conn:
            killed = await conn.scalar(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = 'algoways-store' AND pid <> pg_backend_pid()"
                    " AND datname = current_database()"
                )
            )
        assert killed >= 1
        # Pre-ping finds the dead connection at checkout and opens a new one: no error surfaces.
        response = await client.patch("/api/v1/settings", json={"analyze_mode": False})
        assert response.status_code == 200
        assert response.json()["analyze_mode"] is False


class TestHealth:
    async def test_ready_reports_database_migrations_and_pool(self, client):
        response = await client.get("/health/ready")
        assert response.status_code == 200
        body = response.json()
        assert body["status"] == "ok"
        assert body["database"]["ok"] is True
        assert body["database"]["backend"] == client.app.state.store.backend
        assert body["database"]["latency_ms"] >= 0
        assert body["migrations"]["current"] == body["migrations"]["head"] is not None
        assert set(body["pool"]) == {"size", "checked_out", "overflow"}

    async def test_live(self, client):
        response = await client.get("/health/live")
        assert (response.status_code, response.json()) == (200, {"status": "ok"})


class TestMetrics:
    async def test_requests_by_route_template_and_status(self, client):
        await client.get("/api/v1/settings")
        await client.get("/api/v1/settings")
        await client.get("/api/v1/nope")
        text_ = (await client.get("/metrics")).text
        assert (
            'algoways_http_requests_total{method="GET",route="/api/v1/settings",status="200"} 2.0'
            in text_
        )
        assert 'route="<unmatched>",status="404"' in text_
        assert "algoways_http_request_duration_seconds_bucket" in text_
        assert "algoways_db_pool_checked_out" in text_
        assert 'algoways_cache_hits_total{cache="settings"} 1.0' in text_
        assert 'algoways_cache_misses_total{cache="settings"} 1.0' in text_


class TestRequestIdAndLogs:
    async def test_request_id_echoed_and_generated(self, client):
        given = await client.get("/health/live", headers={"X-Request-ID": "abc-123"})
        assert given.headers["x-request-id"] == "abc-123"
        made = await client.get("/health/live", headers={"X-Request-ID": "bad id\n"})
        assert len(made.headers["x-request-id"]) == 32

    async def test_json_logs_carry_the_request_id(self, client):
        stream = io.StringIO()
        root = logging.getLogger()
        saved = root.handlers[:], root.level
        writer = configure_logging("INFO", "json", stream)
        try:
            await client.get("/api/v1/settings", headers={"X-Request-ID": "req-42"})
        finally:
            root.handlers, level = saved
            root.setLevel(level)
            writer.stop()  # writes what the writer thread still holds
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        access = [line for line in lines if line["logger"] == "service.access"]
        assert access, lines
        assert access[-1]["request_id"] == "req-42"
        assert access[-1]["status"] == 200
        assert access[-1]["message"].startswith("GET /api/v1/settings 200")


@pytest.fixture
async def empty_postgres(database_url):
    """A second, never-migrated database on the same server (dropped after the app stops)."""
    from sqlalchemy.engine import make_url

    from tests.conftest import _admin_execute

    scratch = make_url(database_url)
    scratch = scratch.set(database=f"{scratch.database}_empty")
    await _admin_execute(database_url, f'CREATE DATABASE "{scratch.database}"')
    yield scratch.render_as_string(hide_password=False)
    await _admin_execute(database_url, f'DROP DATABASE IF EXISTS "{scratch.database}" WITH (FORCE)')


@pytest.mark.postgres_only
class TestNotMigrated:
    async def test_not_ready_until_migrated_then_recovers_by_itself(
        self, empty_postgres, client_factory
    ):
        from service import migrate
        from service.config import DatabaseSettings, load_settings
        from service.db import make_engine
        from tests.support import eventually

        client = await client_factory(DATABASE_URL=empty_postgres)
        ready = await client.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json()["migrations"]["current"] is None
        assert "python -m service migrate" in ready.json()["database"]["error"]
        assert_problem(await client.get("/api/v1/settings"), 503)

        engine = make_engine(
            load_settings(DatabaseSettings, DATABASE_URL=empty_postgres), null_pool=True
        )
        await migrate.upgrade(engine)
        await engine.dispose()

        async def becomes_ready() -> bool:
            return (await client.get("/health/ready")).status_code == 200

        assert await eventually(becomes_ready, timeout=5)
        assert (await client.get("/api/v1/settings")).status_code == 200
