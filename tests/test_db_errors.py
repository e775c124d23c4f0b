"""Database errors are classified by their code (SQLSTATE, SQLite's extended code), the same way
on both backends; a request whose transaction lost a serialization race is run once more; a 405
names every method its path has."""

from __future__ import annotations

import logging
import re
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.middleware import Middleware

from service.config import DatabaseSettings, load_settings
from service.db import SessionDep, make_engine
from service.errors import (
    DatabaseFailure,
    classify_database_error,
    database_error_to_app_error,
)
from service.models.settings import PlatformSettings
from service.retry import DEFAULT_MAX_REPLAY_BYTES, ReplayOnSerializationFailure
from tests.support import BACKEND, add_users, assert_problem, auth
from tests.test_group_commit import count_rows, table_write_lock

ON_POSTGRES = BACKEND == "postgresql"


async def error_of(
    engine: AsyncEngine, sql: str, params: dict[str, Any] | None = None
) -> Exception:
    """The exception the database raises for one statement, in its own transaction."""
    try:
        async with engine.begin() as conn:
            await conn.execute(text(sql), params or {})
    except Exception as error:
        return error
    raise AssertionError(f"no error from {sql!r}")


INSERT_ORDER_LOG = (
    "INSERT INTO order_logs (id, api_type, created_at) VALUES (:id, :api_type, CURRENT_TIMESTAMP)"
)


class TestClassification:
    async def test_unique_violation_is_integrity_and_a_409(self, db):
        await add_users(db, "alice")
        error = await error_of(
            db,
            "INSERT INTO users (username, email, password_hash, is_admin, totp_secret_encrypted, "
            "totp_enabled, totp_required_for_login, totp_required_for_mcp, "
            "totp_required_for_password_reset, updated_at, created_at) VALUES ('alice', 'a@x.io', "
            "'x', false, 'x', false, false, false, false, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)",
        )
        info = classify_database_error(error)
        assert info is not None and info.failure is DatabaseFailure.INTEGRITY
        problem = database_error_to_app_error(error)
        assert problem is not None and problem.status == 409
        assert problem.detail == "A resource with the same unique key already exists."

    async def test_foreign_key_violation_is_integrity_and_names_the_reference(self, db):
        error = await error_of(
            db,
            "INSERT INTO api_keys (user_id, key_digest, key_hash, key_encrypted, order_mode, "
            "updated_at, created_at) VALUES ('ghost', 'd', 'h', 'e', 'auto', CURRENT_TIMESTAMP, "
            "CURRENT_TIMESTAMP)",
        )
        assert classify_database_error(error).failure is DatabaseFailure.INTEGRITY
        problem = database_error_to_app_error(error)
        assert (problem.status, problem.detail) == (
            409,
            "The resource refers to, or is referred to by, another resource.",
        )

    @pytest.mark.parametrize(
        "sql",
        [
            "INSERT INTO platform_settings (id) VALUES (2)",  # CHECK (id = 1)
            "INSERT INTO order_logs (api_type, created_at) VALUES (NULL, CURRENT_TIMESTAMP)",
        ],
        ids=["check", "not-null"],
    )
    async def test_other_constraints_are_integrity(self, db, sql):
        error = await error_of(db, sql)
        assert classify_database_error(error).failure is DatabaseFailure.INTEGRITY
        problem = database_error_to_app_error(error)
        assert (problem.status, problem.detail) == (
            409,
            "The change violates a database constraint.",
        )

    async def test_an_integer_past_64_bits_is_data_on_both_backends(self, db):
        error = await error_of(db, INSERT_ORDER_LOG, {"id": 2**70, "api_type": "x"})
        assert classify_database_error(error).failure is DatabaseFailure.DATA
        problem = database_error_to_app_error(error)
        assert problem is not None and problem.status == 422
        assert problem.type_ == "value-refused"
        assert str(2**70) not in problem.detail and "INSERT" not in problem.detail
        assert problem.errors and problem.errors[0]["type"] == "value_refused"
        assert await count_rows(db, "order_logs") == 0

    async def test_a_value_the_column_cannot_hold_is_data(self, db):
        if ON_POSTGRES:  # text with NUL: SQLSTATE 22021
            sql, params, code = INSERT_ORDER_LOG, {"id": 1, "api_type": "a\x00secret"}, "22021"
        else:  # text as the rowid: SQLITE_MISMATCH
            sql, params, code = (
                INSERT_ORDER_LOG,
                {"id": "a-secret", "api_type": "x"},
                "SQLITE_MISMATCH",
            )
        error = await error_of(db, sql, params)
        info = classify_database_error(error)
        assert (info.failure, info.code) == (DatabaseFailure.DATA, code)
        problem = database_error_to_app_error(error)
        assert problem.status == 422 and "secret" not in problem.detail
        assert code in problem.detail

    async def test_a_broken_statement_is_a_bug(self, db):
        error = await error_of(db, "SELECT * FROM no_such_table")
        info = classify_database_error(error)
        assert info is not None and info.failure is DatabaseFailure.BUG
        assert database_error_to_app_error(error) is None  # a 500, logged

    async def test_a_lock_wait_that_times_out_is_unavailable(self, db, database_url):
        impatient = make_engine(
            load_settings(DatabaseSettings, DATABASE_URL=database_url, DB_POOL_TIMEOUT=0.2),
            null_pool=True,
        )
        try:
            async with table_write_lock(db, "platform_settings"):
                sql = "INSERT INTO platform_settings (id) VALUES (1)"
                if ON_POSTGRES:
                    sql = f"SET LOCAL lock_timeout = '100ms'; {sql}"
                    error = await _pg_script_error(impatient, sql)
                else:
                    error = await error_of(impatient, "BEGIN IMMEDIATE")
        finally:
            await impatient.dispose()
        info = classify_database_error(error)
        assert info.failure is DatabaseFailure.UNAVAILABLE, info
        assert info.code == ("55P03" if ON_POSTGRES else "SQLITE_BUSY")
        problem = database_error_to_app_error(error)
        assert problem.status == 503 and problem.headers == {"Retry-After": "2"}

    def test_errors_that_are_not_the_database_are_not_classified(self):
        assert classify_database_error(RuntimeError("boom")) is None
        assert classify_database_error(KeyError("x")) is None

    def test_a_pool_timeout_and_a_lost_connection_are_unavailable(self):
        pool = sa_exc.TimeoutError("QueuePool limit reached")
        lost = sa_exc.OperationalError("SELECT 1", {}, ConnectionResetError("reset by peer"))
        for error in (pool, lost, TimeoutError(), ConnectionRefusedError()):
            assert classify_database_error(error).failure is DatabaseFailure.UNAVAILABLE

    def test_a_driver_stuck_after_a_cut_connection_is_unavailable(self):
        # What asyncpg raised in the outage fault test: a COPY on a connection whose previous
        # operation was cut off by the server's fast shutdown.
        stuck = asyncpg.InternalClientError(
            "cannot switch to state 21; another operation (2) is in progress"
        )
        wrapped = sa_exc.InternalError("COPY", {}, stuck)
        for error in (stuck, wrapped):
            info = classify_database_error(error)
            assert info.failure is DatabaseFailure.UNAVAILABLE
            assert info.code == "InternalClientError"

    @pytest.mark.postgres_only
    @pytest.mark.parametrize("code", ["40001", "40P01"])
    async def test_serialization_failure_and_deadlock_are_retryable(self, db, code):
        error = await error_of(
            db, f"DO $$ BEGIN RAISE EXCEPTION 'collided' USING ERRCODE = '{code}'; END $$"
        )
        assert classify_database_error(error).failure is DatabaseFailure.RETRYABLE
        assert database_error_to_app_error(error).status == 503

    @pytest.mark.postgres_only
    async def test_a_terminated_connection_is_unavailable(self, db):
        async with db.connect() as victim:
            pid = await victim.scalar(text("SELECT pg_backend_pid()"))
            async with db.connect() as killer:
                await killer.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            with pytest.raises(Exception) as raised:
                await victim.execute(text("SELECT 1"))
        assert classify_database_error(raised.value).failure is DatabaseFailure.UNAVAILABLE


async def _pg_script_error(engine: AsyncEngine, script: str) -> Exception:
    try:
        async with engine.begin() as conn:
            for statement in script.split(";"):
                await conn.execute(text(statement))
    except Exception as error:
        return error
    raise AssertionError("no error")


def _add_route(client: httpx.AsyncClient, path: str, endpoint: Any, methods: list[str]) -> None:
    client.app.router.add_api_route(path, endpoint, methods=methods)  # type: ignore[attr-defined]


class TestAnswers:
    async def test_data_error_in_a_request_is_422_and_writes_nothing(self, client, db):
        async def insert(session: SessionDep) -> None:
            await session.execute(text(INSERT_ORDER_LOG), {"id": 2**70, "api_type": "x"})

        _add_route(client, "/api/v1/_test/data", insert, ["POST"])
        response = await client.post("/api/v1/_test/data")
        assert_problem(response, 422, "value-refused")
        assert "INSERT" not in response.text and str(2**70) not in response.text
        assert await count_rows(db, "order_logs") == 0

    async def test_a_lock_wait_timeout_is_503_with_retry_after(self, client_factory, db):
        client = await client_factory(DB_POOL_TIMEOUT=0.3)  # SQLite's busy_timeout follows it

        async def write(session: SessionDep) -> None:
            if ON_POSTGRES:
                await session.execute(text("SET LOCAL lock_timeout = '100ms'"))
            session.add(PlatformSettings(id=1))
            await session.flush()

        _add_route(client, "/api/v1/_test/locked", write, ["POST"])
        async with table_write_lock(db, "platform_settings"):
            response = await client.post("/api/v1/_test/locked")
        assert_problem(response, 503, "database-unavailable")
        assert response.headers["retry-after"] == "2"
        assert await count_rows(db, "platform_settings") == 0

    async def test_a_database_bug_is_500_logged_with_its_traceback(self, client, caplog):
        async def broken(session: SessionDep) -> None:
            await session.execute(text("SELECT secret_column FROM no_such_table"))

        _add_route(client, "/api/v1/_test/broken", broken, ["GET"])
        with caplog.at_level(logging.ERROR, logger="service.errors"):
            response = await client.get("/api/v1/_test/broken")
        body = assert_problem(response, 500, "internal")
        assert body["detail"] == "The service failed to handle the request."
        assert "secret_column" not in response.text and "Traceback" not in response.text
        [record] = [r for r in caplog.records if r.name == "service.errors"]
        assert record.exc_info is not None and "no_such_table" in str(record.exc_info[1])

    @pytest.mark.skipif(ON_POSTGRES, reason="JSONB cannot hold malformed JSON")
    async def test_an_undecodable_stored_value_is_a_500_not_a_permanent_503(self, client, db):
        async with db.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO order_logs (api_type, request_data, response_data, created_at) "
                    "VALUES ('placeorder', '{\"symbol\": ', 'null', CURRENT_TIMESTAMP)"
                )
            )
        for _ in range(2):
            assert_problem(await client.get("/api/v1/order-logs/stats"), 500, "internal")


class _SerializationFailure(Exception):
    """What asyncpg raises for SQLSTATE 40001, reduced to what the classifier reads."""

    sqlstate = "40001"


def _mount_replay(app: Any, **options: Any) -> None:
    """Mount the replay wrapper inside the service middleware, as create_app should, unless it
    is mounted already (before the first request, while the middleware stack can change)."""
    if not any(m.cls is ReplayOnSerializationFailure for m in app.user_middleware):
        app.user_middleware.append(Middleware(ReplayOnSerializationFailure, **options))


@pytest.fixture
async def replaying(client: httpx.AsyncClient) -> httpx.AsyncClient:
    _mount_replay(client.app)  # type: ignore[attr-defined]
    return client


class TestReplay:
    async def test_a_serialization_failure_runs_the_whole_request_once_more(self, replaying, db):
        attempts: list[dict[str, Any]] = []

        async def collide_once(session: SessionDep, body: dict[str, int]) -> dict[str, int]:
            attempts.append(body)
            session.add(PlatformSettings(id=1, threshold_404=body["threshold"]))
            await session.flush()  # written, then lost with the first attempt's transaction
            if len(attempts) == 1:
                raise sa_exc.DBAPIError("COMMIT", {}, _SerializationFailure("could not serialize"))
            return body

        _add_route(replaying, "/api/v1/_test/collide-once", collide_once, ["POST"])
        response = await replaying.post("/api/v1/_test/collide-once", json={"threshold": 7})
        assert (response.status_code, response.json()) == (200, {"threshold": 7})
        assert attempts == [{"threshold": 7}, {"threshold": 7}]  # the body, replayed
        async with db.connect() as conn:
            rows = (
                await conn.execute(text("SELECT id, threshold_404 FROM platform_settings"))
            ).all()
        assert [tuple(r) for r in rows] == [(1, 7)]

    async def test_a_second_failure_is_503_and_nothing_is_written(self, replaying, db):
        attempts: list[int] = []

        async def always_collides(session: SessionDep) -> None:
            attempts.append(1)
            session.add(PlatformSettings(id=1))
            await session.flush()
            raise sa_exc.DBAPIError("COMMIT", {}, _SerializationFailure("could not serialize"))

        _add_route(replaying, "/api/v1/_test/collides", always_collides, ["POST"])
        response = await replaying.post("/api/v1/_test/collides", json={})
        assert_problem(response, 503, "database-unavailable")
        assert response.headers["retry-after"] == "2"
        assert len(attempts) == 2
        assert await count_rows(db, "platform_settings") == 0

    async def test_a_body_too_large_to_hold_is_not_replayed(self, replaying):
        client = replaying
        attempts: list[int] = []

        async def collides(body: dict[str, str]) -> None:
            attempts.append(1)
            raise sa_exc.DBAPIError("COMMIT", {}, _SerializationFailure("could not serialize"))

        _add_route(client, "/api/v1/_test/big", collides, ["POST"])
        pad = "x" * DEFAULT_MAX_REPLAY_BYTES
        response = await client.post("/api/v1/_test/big", json={"pad": pad})
        assert_problem(response, 503, "database-unavailable")
        assert attempts == [1]

    @pytest.mark.postgres_only
    async def test_a_real_serialization_failure_at_postgresql_is_replayed(self, replaying, db):
        async with db.begin() as conn:
            await conn.execute(text("CREATE SEQUENCE test_collisions"))
            await conn.execute(
                text(
                    """CREATE FUNCTION test_collide_once() RETURNS trigger LANGUAGE plpgsql AS $$
                       BEGIN
                         -- a sequence is not rolled back: only the first attempt collides
                         IF nextval('test_collisions') = 1 THEN
                           RAISE EXCEPTION 'could not serialize' USING ERRCODE = '40001';
                         END IF;
                         RETURN NEW;
                       END $$"""
                )
            )
            await conn.execute(
                text(
                    "CREATE TRIGGER test_collide_once BEFORE INSERT ON platform_settings "
                    "FOR EACH ROW EXECUTE FUNCTION test_collide_once()"
                )
            )
        try:
            response = await replaying.patch("/api/v1/settings", json={"analyze_mode": True})
            assert response.status_code == 200, response.text
            assert response.json()["analyze_mode"] is True
            async with db.connect() as conn:
                assert await conn.scalar(text("SELECT last_value FROM test_collisions")) == 2
                assert await conn.scalar(text("SELECT analyze_mode FROM platform_settings"))
        finally:
            async with db.begin() as conn:
                await conn.execute(text("DROP TRIGGER test_collide_once ON platform_settings"))
                await conn.execute(text("DROP FUNCTION test_collide_once()"))
                await conn.execute(text("DROP SEQUENCE test_collisions"))


def _concrete(template: str) -> str:
    return re.sub(r"\{[^}]+\}", "1", template)


def _matches(template: str, path: str, operations: dict[str, Any]) -> bool:
    """Whether `path` is an instance of `template`, each segment checked against its parameter's
    pattern in the document (a `{user_id}` of the API-key routes is never `verify`)."""
    names = re.findall(r"\{([^}]+)\}", template)
    match = re.fullmatch(re.sub(r"\{[^}]+\}", "([^/]+)", template), path)
    if match is None:
        return False
    patterns = {
        p["name"]: p["schema"].get("pattern")
        for operation in operations.values()
        for p in operation.get("parameters", [])
        if p["in"] == "path"
    }
    return all(
        patterns.get(name) is None or re.search(patterns[name], value)
        for name, value in zip(names, match.groups(), strict=True)
    )


class TestMethodNotAllowed:
    async def test_allow_lists_every_operation_of_the_path(self, client):
        """For every path of the OpenAPI document: a method it lacks is 405, and Allow names
        exactly the operations of every path template the URL matches."""
        paths: dict[str, dict[str, Any]] = (await client.get("/openapi.json")).json()["paths"]
        checked = 0
        for template in paths:
            url = _concrete(template)
            expected = {
                method.upper()
                for other, operations in paths.items()
                if _matches(other, url, operations)
                for method in operations
            }
            missing = [m for m in ("DELETE", "PUT", "PATCH", "POST", "GET") if m not in expected]
            if not missing:
                continue
            response = await client.request(missing[0], url, headers=auth())
            assert_problem(response, 405, "method-not-allowed")
            allowed = {m.strip() for m in response.headers["allow"].split(",")}
            assert allowed == expected, (template, missing[0])
            checked += 1
        assert checked > 30  # every /api/v1 path was really asked

    async def test_a_path_of_several_routes_lists_them_all(self, client):
        response = await client.put("/api/v1/users")
        assert_problem(response, 405, "method-not-allowed")
        assert response.headers["allow"] == "GET, POST"

    async def test_routes_not_in_the_schema_count_too(self, client):
        async def probe() -> None:
            return None

        client.app.router.add_api_route(  # type: ignore[attr-defined]
            "/api/v1/settings", probe, methods=["DELETE"], include_in_schema=False
        )
        response = await client.put("/api/v1/settings")
        assert response.status_code == 405
        assert response.headers["allow"] == "GET, PATCH, DELETE"
