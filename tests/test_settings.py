"""settings: defaults, partial updates, the encrypted SMTP password, cache coherence."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import ClientFactory
from tests.support import RW_TOKEN, assert_problem, auth, eventually

DEFAULTS = {
    "analyze_mode": False,
    "smtp": {
        "server": None,
        "port": None,
        "username": None,
        "use_tls": True,
        "from_email": None,
        "helo_hostname": None,
        "password_set": False,
    },
    "security": {
        "auto_ban_enabled": False,
        "threshold_404": 100,
        "ban_duration_404_h": 0,
        "threshold_invalid_api_key": 100,
        "ban_duration_invalid_api_key_h": 0,
        "repeat_offender_limit": 2,
    },
}


async def _rows(db: AsyncEngine) -> list[dict[str, object]]:
    async with db.connect() as conn:
        result = await conn.execute(text("SELECT * FROM platform_settings"))
        return [dict(r._mapping) for r in result]


class TestGetSettings:
    async def test_defaults_when_never_set(self, client, db):
        response = await client.get("/api/v1/settings")
        assert response.status_code == 200
        assert response.json() == DEFAULTS
        assert await _rows(db) == []


class TestUpdateSettings:
    async def test_partial_update_keeps_other_fields(self, client, db):
        response = await client.patch(
            "/api/v1/settings",
            json={"analyze_mode": True, "security": {"threshold_404": 7, "auto_ban_enabled": True}},
        )
        assert response.status_code == 200
        body = response.json()
        assert body["analyze_mode"] is True
        assert body["security"] == {
            **DEFAULTS["security"],
            "threshold_404": 7,
            "auto_ban_enabled": True,
        }
        assert body["smtp"] == DEFAULTS["smtp"]

        second = await client.patch(
            "/api/v1/settings", json={"smtp": {"server": "smtp.example.com", "port": 587}}
        )
        assert second.status_code == 200
        assert second.json()["security"]["threshold_404"] == 7
        assert second.json()["smtp"]["server"] == "smtp.example.com"
        assert (await client.get("/api/v1/settings")).json() == second.json()
        rows = await _rows(db)
        assert len(rows) == 1 and rows[0]["threshold_404"] == 7 and rows[0]["smtp_port"] == 587

    async def test_smtp_password_is_encrypted_and_only_on_secrets_endpoint(
        self, client, db, client_factory
    ):
        response = await client.patch(
            "/api/v1/settings", json={"smtp": {"password": "s3cret-smtp-pass"}}
        )
        assert response.status_code == 200
        assert response.json()["smtp"]["password_set"] is True
        assert "s3cret-smtp-pass" not in response.text
        stored = (await _rows(db))[0]["smtp_password_encrypted"]
        assert stored and "s3cret-smtp-pass" not in stored

        secret = await client.get("/api/v1/settings/smtp-password")
        assert secret.status_code == 200
        assert secret.json() == {"password": "s3cret-smtp-pass"}

        no_scope = await client.get("/api/v1/settings/smtp-password", headers=auth(RW_TOKEN))
        assert_problem(no_scope, 403, "forbidden")

        cleared = await client.patch("/api/v1/settings", json={"smtp": {"password": None}})
        assert cleared.json()["smtp"]["password_set"] is False
        assert (await client.get("/api/v1/settings/smtp-password")).json() == {"password": None}

    @pytest.mark.parametrize(
        "body, field",
        [
            ({"security": {"threshold_404": 0}}, "threshold_404"),
            ({"security": {"ban_duration_404_h": -1}}, "ban_duration_404_h"),
            ({"smtp": {"port": 70000}}, "port"),
            ({"smtp": {"from_email": "not-an-email"}}, "from_email"),
            ({"security": {"threshold_404": None}}, "threshold_404"),
            ({"analyze_mode": "maybe"}, "analyze_mode"),
            ({"unknown": 1}, "unknown"),
        ],
    )
    async def test_bad_input_is_422_and_writes_nothing(self, client, db, body, field):
        response = await client.patch("/api/v1/settings", json=body)
        problem = assert_problem(response, 422, "validation")
        assert field in response.text
        assert problem["errors"][0]["loc"][0] == "body"
        assert await _rows(db) == []

    async def test_malformed_json_is_400(self, client, db):
        response = await client.patch(
            "/api/v1/settings", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert_problem(response, 400, "malformed-body")
        assert await _rows(db) == []

    async def test_concurrent_first_writes_all_succeed(self, client, db):
        responses = await asyncio.gather(
            *(
                client.patch("/api/v1/settings", json={"security": {"threshold_404": n}})
                for n in range(1, 11)
            )
        )
        assert [r.status_code for r in responses] == [200] * 10
        rows = await _rows(db)
        assert len(rows) == 1 and 1 <= rows[0]["threshold_404"] <= 10
        final = (await client.get("/api/v1/settings")).json()["security"]["threshold_404"]
        assert final == rows[0]["threshold_404"]


class TestSettingsCache:
    async def test_write_is_seen_at_once_by_the_same_instance(self, client):
        assert (await client.get("/api/v1/settings")).json()["analyze_mode"] is False  # now cached
        await client.patch("/api/v1/settings", json={"analyze_mode": True})
        assert (await client.get("/api/v1/settings")).json()["analyze_mode"] is True

    @pytest.mark.postgres_only
    async def test_change_through_one_instance_is_seen_by_another(
        self, client_factory: ClientFactory
    ):
        one = await client_factory()
        two = await client_factory()
        assert (await two.get("/api/v1/settings")).json()["security"]["threshold_404"] == 100
        await one.patch("/api/v1/settings", json={"security": {"threshold_404": 42}})

        async def seen() -> bool:
            return (await two.get("/api/v1/settings")).json()["security"]["threshold_404"] == 42

        assert await eventually(seen)
        cache = two.app.state.store.caches.get("settings")
        assert cache.misses >= 2  # the second read went back to the database: invalidated, not TTL

    @pytest.mark.postgres_only
    async def test_lost_listener_flushes_caches_and_reconnects(self, client_factory, db):
        one = await client_factory()
        two = await client_factory()
        bus = two.app.state.store.bus
        await two.get("/api/v1/settings")  # cached on instance two
        cache = two.app.state.store.caches.get("settings")
        assert len(cache) == 1
        async with db.connect() as conn:
            await conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = 'algoways-store-listener'"
                    " AND datname = current_database()"
                )
            )

        async def flushed_and_back() -> bool:
            return len(cache) == 0 and bus.connected.is_set()

        assert await eventually(flushed_and_back, timeout=10)
        # Notifications flow again after the reconnect.
        await two.get("/api/v1/settings")
        await one.patch("/api/v1/settings", json={"analyze_mode": True})

        async def seen() -> bool:
            return (await two.get("/api/v1/settings")).json()["analyze_mode"] is True

        assert await eventually(seen)
