"""IP defence: bans with expiry and repeat counting, the in-memory ban check and its coherence,
protected addresses, and the daily 404 / invalid-key counters that ban automatically."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from service.models.traffic import IPBan, IPOffenceCounter
from service.repositories import bans as bans_repo
from service.runtime import bans as runtime_bans
from tests.conftest import ClientFactory
from tests.support import assert_problem, eventually
from tests.test_group_commit import statements

BANS = "/api/v1/traffic/bans"
IP = "198.51.100.7"


async def bans(db: AsyncEngine) -> list[Any]:
    async with db.connect() as conn:
        return list((await conn.execute(select(IPBan.__table__).order_by("id"))).all())


async def counters(db: AsyncEngine) -> list[Any]:
    async with db.connect() as conn:
        query = select(IPOffenceCounter.__table__).order_by("id")
        return list((await conn.execute(query)).all())


async def security(client: Any, **values: Any) -> None:
    response = await client.patch("/api/v1/settings", json={"security": values})
    assert response.status_code == 200, response.text


def parse(value: str) -> datetime:
    return datetime.fromisoformat(value)


async def warm(client: Any, *addresses: str) -> None:
    """Ask until each answer comes from memory. On PostgreSQL an instance also receives its own
    invalidations back through NOTIFY, which may drop an entry once more shortly after a write."""

    async def cached() -> bool:
        with statements(client.app.state.store.engine) as seen:
            for address in addresses:
                await client.get(f"{BANS}/{address}")
        return not seen

    assert await eventually(cached)


def later(monkeypatch: pytest.MonkeyPatch, hours: float) -> None:
    """Move the ban logic's clock forward, as the passing of time would."""
    real = datetime.now(UTC)
    for module in (bans_repo, runtime_bans):
        monkeypatch.setattr(module, "utcnow", lambda: real + timedelta(hours=hours))


class TestCreateBan:
    async def test_new_ban_lasts_24_hours_by_default(self, client, db):
        response = await client.post(BANS, json={"ip_address": IP, "reason": "scanner"})
        assert response.status_code == 201
        ban = response.json()
        assert ban["ip_address"] == IP
        assert (ban["reason"], ban["ban_count"], ban["created_by"]) == ("scanner", 1, "manual")
        assert ban["is_permanent"] is False
        assert parse(ban["expires_at"]) - parse(ban["banned_at"]) == timedelta(hours=24)
        [row] = await bans(db)
        assert (row.ip_address, row.ban_count, row.is_permanent) == (IP, 1, False)

    @pytest.mark.parametrize(
        "given, normalised",
        [("::ffff:198.51.100.7", "198.51.100.7"), ("2001:DB8:0:0::1", "2001:db8::1")],
    )
    async def test_addresses_are_normalised(self, client, db, given, normalised):
        response = await client.post(BANS, json={"ip_address": given})
        assert response.json()["ip_address"] == normalised
        status = (await client.get(f"{BANS}/{given}")).json()
        assert status["banned"] is True
        assert status["ban"]["ip_address"] == normalised
        assert [row.ip_address for row in await bans(db)] == [normalised]

    async def test_banning_again_extends_and_counts_until_the_repeat_limit(self, client):
        await security(client, repeat_offender_limit=3)
        first = (await client.post(BANS, json={"ip_address": IP, "duration_hours": 2})).json()
        second = (await client.post(BANS, json={"ip_address": IP, "duration_hours": 2})).json()
        assert second["ban_count"] == 2
        assert second["is_permanent"] is False
        assert parse(second["expires_at"]) == parse(first["expires_at"]) + timedelta(hours=2)
        third = (await client.post(BANS, json={"ip_address": IP, "reason": "again"})).json()
        assert (third["ban_count"], third["is_permanent"], third["expires_at"]) == (3, True, None)
        assert third["reason"] == "again"

    async def test_second_ban_is_permanent_with_the_default_limit(self, client, db):
        await client.post(BANS, json={"ip_address": IP, "duration_hours": 1})
        second = (await client.post(BANS, json={"ip_address": IP, "duration_hours": 1})).json()
        assert (second["ban_count"], second["is_permanent"]) == (2, True)
        [row] = await bans(db)
        assert (row.ban_count, row.is_permanent, row.expires_at) == (2, True, None)

    async def test_an_expired_ban_counts_as_a_repeat(self, client, monkeypatch):
        await security(client, repeat_offender_limit=5)
        await client.post(BANS, json={"ip_address": IP, "duration_hours": 1})
        later(monkeypatch, 3)
        again = (await client.post(BANS, json={"ip_address": IP, "duration_hours": 1})).json()
        assert again["ban_count"] == 2
        assert parse(again["expires_at"]) == parse(again["banned_at"]) + timedelta(hours=1)

    @pytest.mark.parametrize("body", [{"permanent": True}, {"duration_hours": 0}])
    async def test_permanent_ban(self, client, body):
        ban = (await client.post(BANS, json={"ip_address": IP, **body})).json()
        assert (ban["is_permanent"], ban["expires_at"]) == (True, None)

    @pytest.mark.parametrize("address", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"])
    async def test_loopback_needs_force(self, client, db, address):
        problem = assert_problem(await client.post(BANS, json={"ip_address": address}), 422)
        assert problem["errors"][0]["loc"] == ["body", "ip_address"]
        assert "force" in problem["detail"]
        assert await bans(db) == []
        forced = await client.post(BANS, json={"ip_address": address, "force": True})
        assert forced.status_code == 201

    async def test_trusted_addresses_need_force(self, client_factory: ClientFactory, db):
        client = await client_factory(TRUSTED_IPS="10.0.0.0/8, 2001:db8::/32")
        for address in ("10.20.30.40", "2001:db8::99", "::ffff:10.0.0.1"):
            assert_problem(await client.post(BANS, json={"ip_address": address}), 422)
        assert await bans(db) == []
        assert (await client.post(BANS, json={"ip_address": "11.0.0.1"})).status_code == 201

    @pytest.mark.parametrize("address", ["999.1.1.1", "example.com", "1.2.3", ""])
    async def test_not_an_address_is_422(self, client, db, address):
        problem = assert_problem(await client.post(BANS, json={"ip_address": address}), 422)
        assert problem["errors"][0]["loc"] == ["body", "ip_address"]
        assert await bans(db) == []


class TestBanStatus:
    async def test_unknown_address_is_not_banned(self, client):
        response = await client.get(f"{BANS}/{IP}")
        assert response.status_code == 200
        assert response.json() == {"banned": False, "ban": None}

    async def test_answered_from_memory(self, client):
        await client.post(BANS, json={"ip_address": IP})
        await warm(client, IP, "203.0.113.1")
        with statements(client.app.state.store.engine) as seen:
            banned = await client.get(f"{BANS}/{IP}")
            clean = await client.get(f"{BANS}/203.0.113.1")
        assert banned.json()["banned"] is True
        assert clean.json()["banned"] is False
        assert seen == []

    async def test_every_ban_change_reaches_the_cached_answer(self, client):
        assert (await client.get(f"{BANS}/{IP}")).json()["banned"] is False  # now cached
        await client.post(BANS, json={"ip_address": IP})
        assert (await client.get(f"{BANS}/{IP}")).json()["banned"] is True
        response = await client.delete(f"{BANS}/{IP}")
        assert response.status_code == 204
        assert (await client.get(f"{BANS}/{IP}")).json() == {"banned": False, "ban": None}

    async def test_expired_ban_stops_counting_without_any_job(self, client, monkeypatch):
        await client.post(BANS, json={"ip_address": IP, "duration_hours": 1})
        assert (await client.get(f"{BANS}/{IP}")).json()["banned"] is True
        await warm(client, IP)
        later(monkeypatch, 2)
        with statements(client.app.state.store.engine) as seen:
            status = (await client.get(f"{BANS}/{IP}")).json()
        assert status == {"banned": False, "ban": None}
        assert seen == []  # decided from memory: expiry is read, not swept

    async def test_not_an_address_is_422(self, client):
        problem = assert_problem(await client.get(f"{BANS}/not-an-ip"), 422)
        assert problem["errors"][0]["loc"] == ["path", "ip"]

    @pytest.mark.postgres_only
    async def test_a_ban_through_one_instance_is_seen_by_another(
        self, client_factory: ClientFactory
    ):
        one = await client_factory()
        two = await client_factory()
        assert (await two.get(f"{BANS}/{IP}")).json()["banned"] is False  # cached on two

        async def banned_on_two() -> bool:
            return bool((await two.get(f"{BANS}/{IP}")).json()["banned"])

        await one.post(BANS, json={"ip_address": IP})
        assert await eventually(banned_on_two)
        await one.delete(f"{BANS}/{IP}")
        assert await eventually(lambda: _negate(banned_on_two))


async def _negate(check: Any) -> bool:
    return not await check()


class TestListBans:
    async def test_active_only_unless_all(self, client, db):
        now = datetime.now(UTC)
        async with db.begin() as conn:
            await conn.execute(
                insert(IPBan),
                [
                    {
                        "ip_address": "192.0.2.1",
                        "banned_at": now - timedelta(hours=5),
                        "expires_at": now - timedelta(hours=1),
                        "is_permanent": False,
                        "ban_count": 1,
                        "created_by": "manual",
                    },
                    {
                        "ip_address": "192.0.2.2",
                        "banned_at": now - timedelta(hours=2),
                        "expires_at": None,
                        "is_permanent": True,
                        "ban_count": 2,
                        "created_by": "404_detector",
                    },
                    {
                        "ip_address": "192.0.2.3",
                        "banned_at": now - timedelta(hours=1),
                        "expires_at": now + timedelta(hours=1),
                        "is_permanent": False,
                        "ban_count": 1,
                        "created_by": "manual",
                    },
                ],
            )
        active = (await client.get(BANS)).json()["items"]
        assert [b["ip_address"] for b in active] == ["192.0.2.3", "192.0.2.2"]
        everything = (await client.get(BANS, params={"all": "true"})).json()["items"]
        assert [b["ip_address"] for b in everything] == ["192.0.2.3", "192.0.2.2", "192.0.2.1"]
        assert (await client.get(f"{BANS}/192.0.2.1")).json()["banned"] is False


class TestDeleteBan:
    async def test_lifts_the_ban(self, client, db):
        await client.post(BANS, json={"ip_address": IP})
        response = await client.delete(f"{BANS}/::ffff:{IP}")
        assert response.status_code == 204
        assert await bans(db) == []

    async def test_unknown_is_404(self, client):
        assert_problem(await client.delete(f"{BANS}/{IP}"), 404, "not-found")


class TestOffenceTrackers:
    async def test_404s_count_per_address(self, client, db):
        counts = []
        for address in (IP, IP, "203.0.113.5", IP):
            response = await client.post(
                "/api/v1/traffic/404s", json={"ip_address": address, "path": "/wp-login.php"}
            )
            assert response.status_code == 200
            counts.append(response.json())
        assert [c["count"] for c in counts] == [1, 2, 1, 3]
        assert not any(c["banned"] for c in counts)  # auto-ban is off by default
        rows = {row.ip_address: row for row in await counters(db)}
        assert rows[IP].count == 3
        assert rows[IP].day == datetime.now(UTC).date()
        assert rows[IP].last_detail == "/wp-login.php"
        assert await bans(db) == []

    async def test_counts_start_afresh_each_utc_day(self, client, db):
        yesterday = datetime.now(UTC) - timedelta(days=1)
        async with db.begin() as conn:
            await conn.execute(
                insert(IPOffenceCounter).values(
                    kind="404",
                    day=yesterday.date(),
                    ip_address=IP,
                    count=99,
                    first_seen_at=yesterday,
                    last_seen_at=yesterday,
                )
            )
        response = await client.post("/api/v1/traffic/404s", json={"ip_address": IP, "path": "/x"})
        assert response.json() == {"count": 1, "banned": False}

    async def test_concurrent_events_never_lose_a_count(self, client_factory, db):
        # SQLite runs the 40 writes one after another: on a busy machine the last ones would
        # wait past the default lock timeout (503), which is not what this test is about.
        client = await client_factory(DB_POOL_TIMEOUT=30)
        responses = await asyncio.gather(
            *(
                client.post(
                    "/api/v1/traffic/invalid-api-keys",
                    json={"ip_address": IP, "api_key_fingerprint": f"{i:016x}"},
                )
                for i in range(40)
            )
        )
        assert sorted(r.json()["count"] for r in responses) == list(range(1, 41))
        [row] = await counters(db)
        assert (row.kind, row.count) == ("invalid_api_key", 40)

    async def test_auto_ban_at_the_404_threshold(self, client, db):
        await security(client, auto_ban_enabled=True, threshold_404=3, ban_duration_404_h=5)
        results = [
            (
                await client.post("/api/v1/traffic/404s", json={"ip_address": IP, "path": f"/{i}"})
            ).json()
            for i in range(3)
        ]
        assert results == [
            {"count": 1, "banned": False},
            {"count": 2, "banned": False},
            {"count": 3, "banned": True},
        ]
        [ban] = await bans(db)
        assert (ban.created_by, ban.is_permanent) == ("404_detector", False)
        assert ban.expires_at - ban.banned_at == timedelta(hours=5)
        status = (await client.get(f"{BANS}/{IP}")).json()
        assert status["banned"] is True
        assert await counters(db) == []  # the ban resets the day's count

    async def test_repeat_auto_bans_escalate_to_permanent(self, client, db, monkeypatch):
        await security(
            client,
            auto_ban_enabled=True,
            threshold_invalid_api_key=2,
            ban_duration_invalid_api_key_h=1,
            repeat_offender_limit=2,
        )
        event = {"ip_address": IP, "api_key_fingerprint": "abcd"}
        for _ in range(2):
            last = (await client.post("/api/v1/traffic/invalid-api-keys", json=event)).json()
        assert last == {"count": 2, "banned": True}
        [ban] = await bans(db)
        assert (ban.created_by, ban.is_permanent, ban.ban_count) == ("api_key_detector", False, 1)

        later(monkeypatch, 2)  # the first ban has run out
        assert (await client.get(f"{BANS}/{IP}")).json()["banned"] is False
        for _ in range(2):
            last = (await client.post("/api/v1/traffic/invalid-api-keys", json=event)).json()
        assert last["banned"] is True
        [ban] = await bans(db)
        assert (ban.ban_count, ban.is_permanent) == (2, True)

    async def test_zero_duration_auto_ban_is_permanent(self, client, db):
        await security(client, auto_ban_enabled=True, threshold_404=1)
        response = await client.post("/api/v1/traffic/404s", json={"ip_address": IP, "path": "/"})
        assert response.json() == {"count": 1, "banned": True}
        [ban] = await bans(db)
        assert (ban.is_permanent, ban.expires_at) == (True, None)

    async def test_loopback_and_trusted_are_never_auto_banned(
        self, client_factory: ClientFactory, db
    ):
        client = await client_factory(TRUSTED_IPS="172.16.0.0/12")
        await security(client, auto_ban_enabled=True, threshold_404=2)
        for address in ("127.0.0.1", "::1", "172.17.0.1"):
            for expected in (1, 2, 3):
                body = {"ip_address": address, "path": "/missing"}
                result = (await client.post("/api/v1/traffic/404s", json=body)).json()
                assert result == {"count": expected, "banned": False}
        assert await bans(db) == []

    async def test_a_whole_api_key_is_never_accepted_as_fingerprint(self, client, db):
        body = {"ip_address": IP, "api_key_fingerprint": "f" * 64}
        problem = assert_problem(
            await client.post("/api/v1/traffic/invalid-api-keys", json=body), 422
        )
        assert problem["errors"][0]["loc"] == ["body", "api_key_fingerprint"]
        assert await counters(db) == []

    async def test_suspicious_lists_addresses_above_a_third_of_the_threshold(self, client):
        await security(client, threshold_404=9, threshold_invalid_api_key=3)
        for address, n in (("192.0.2.1", 4), ("192.0.2.2", 3), ("192.0.2.3", 6)):
            for _ in range(n):
                await client.post(
                    "/api/v1/traffic/404s", json={"ip_address": address, "path": "/a"}
                )
        for fingerprint in ("k1", "k2"):  # 2 > 3 / 3; a single one would not be above it
            await client.post(
                "/api/v1/traffic/invalid-api-keys",
                json={"ip_address": "192.0.2.9", "api_key_fingerprint": fingerprint},
            )
        body = (await client.get("/api/v1/traffic/suspicious")).json()
        assert [(s["ip_address"], s["count"]) for s in body["ips_404"]] == [
            ("192.0.2.3", 6),
            ("192.0.2.1", 4),
        ]
        assert [(s["ip_address"], s["last_detail"]) for s in body["ips_invalid_api_key"]] == [
            ("192.0.2.9", "k2")
        ]
