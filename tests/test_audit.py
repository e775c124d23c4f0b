"""The audit trail: every change to users, API keys, broker tokens, settings, bans and the master
contract is recorded once, by whom and in which request, with no secret in it; a change that
fails leaves no entry; GET /api/v1/audit filters and pages; retention."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service import audit
from service.errors import DatabaseUnavailable
from service.repositories import bans as bans_repo
from tests.contract import generate, put_contract, row
from tests.support import RO_TOKEN, RW_TOKEN, WO_TOKEN, assert_problem

AUDIT = "/api/v1/audit"
R = "[redacted]"
PASSWORD = "correct horse battery 1"
ALICE = {"username": "alice", "email": "alice@example.com", "password": PASSWORD}
TOKEN = {"auth_token": "broker-auth-token-1", "feed_token": "broker-feed-token-1"}
API_KEY = "a1" * 32


def rid(name: str) -> dict[str, str]:
    return {"X-Request-ID": name}


async def listed(client: Any, **params: Any) -> list[dict[str, Any]]:
    """Every entry matching `params`, newest first, walked page by page."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = await client.get(AUDIT, params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        items.extend(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return items


async def raw_trail(client: Any) -> str:
    response = await client.get(AUDIT, params={"limit": 1000})
    assert response.status_code == 200
    return response.text


async def stored(db: AsyncEngine, query: str) -> list[Any]:
    async with db.connect() as conn:
        return list((await conn.execute(text(query))).all())


async def count_entries(db: AsyncEngine) -> int:
    [(n,)] = await stored(db, "SELECT count(*) FROM audit_entries")
    return int(n)


def only(entries: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    """The one entry with these values (exactly one must match)."""
    found = [e for e in entries if all(e[k] == v for k, v in match.items())]
    assert len(found) == 1, (match, entries)
    return found[0]


def assert_absent(raw: str, *secrets: Any) -> None:
    for secret in secrets:
        assert secret, "a secret to look for must not be empty"
        assert str(secret) not in raw, secret


async def create_alice(client: Any, request_id: str = "create-alice") -> None:
    response = await client.post("/api/v1/users", json=ALICE, headers=rid(request_id))
    assert response.status_code == 201, response.text


class TestUsers:
    async def test_create_is_recorded_with_actor_request_and_no_secret(self, client, db):
        await create_alice(client)
        [entry] = await listed(client)
        assert isinstance(entry["id"], int)
        assert datetime.fromisoformat(entry["at"]) > datetime.now(UTC) - timedelta(minutes=1)
        assert {k: entry[k] for k in ("actor", "action", "resource", "resource_id")} == {
            "actor": "full",
            "action": "create",
            "resource": "user",
            "resource_id": "alice",
        }
        assert entry["request_id"] == "create-alice"
        assert entry["changes"] == {
            "username": {"before": None, "after": "alice"},
            "email": {"before": None, "after": "alice@example.com"},
            "is_admin": {"before": None, "after": False},
            "totp_enabled": {"before": None, "after": False},
            "totp_required_for_login": {"before": None, "after": False},
            "totp_required_for_mcp": {"before": None, "after": False},
            "totp_required_for_password_reset": {"before": None, "after": False},
            "password": {"before": None, "after": R},
            "totp_secret": {"before": None, "after": R},
        }
        totp_secret = (await client.get("/api/v1/users/alice/totp")).json()["secret"]
        [(password_hash, totp_encrypted)] = await stored(
            db, "SELECT password_hash, totp_secret_encrypted FROM users"
        )
        assert_absent(await raw_trail(client), PASSWORD, password_hash, totp_encrypted, totp_secret)

    async def test_a_conflicting_create_records_nothing(self, client, db):
        await create_alice(client)
        response = await client.post("/api/v1/users", json={**ALICE, "email": "b@example.com"})
        assert_problem(response, 409)
        assert [e["action"] for e in await listed(client)] == ["create"]
        assert await count_entries(db) == 1

    async def test_admin_flag_and_totp_settings_are_one_update(self, client):
        await create_alice(client)
        response = await client.patch(
            "/api/v1/users/alice",
            json={"is_admin": True, "totp_enabled": True, "totp_required_for_login": False},
            headers=rid("patch-alice"),
        )
        assert response.status_code == 200
        entry = only(await listed(client, resource="user"), action="update")
        assert entry["resource_id"] == "alice"
        assert entry["request_id"] == "patch-alice"
        # Only what changed: totp_required_for_login was false already.
        assert entry["changes"] == {
            "is_admin": {"before": False, "after": True},
            "totp_enabled": {"before": False, "after": True},
        }

    async def test_an_update_that_fails_records_nothing(self, client, db):
        await create_alice(client)
        await client.post(
            "/api/v1/users",
            json={"username": "bob", "email": "bob@example.com", "password": "x" * 8},
        )
        response = await client.patch("/api/v1/users/alice", json={"email": "bob@example.com"})
        assert_problem(response, 409)
        response = await client.patch("/api/v1/users/nobody", json={"is_admin": True})
        assert_problem(response, 404)
        response = await client.patch("/api/v1/users/alice", json={"is_admin": "yes"})
        assert_problem(response, 422)
        assert [e["action"] for e in await listed(client)] == ["create", "create"]

    async def test_password_change_is_recorded_as_redacted(self, client, db):
        await create_alice(client)
        [(old_hash,)] = await stored(db, "SELECT password_hash FROM users")
        new_password = "another secret pass 2"
        response = await client.put(
            "/api/v1/users/alice/password", json={"password": new_password}, headers=rid("pw")
        )
        assert response.status_code == 204
        entry = only(await listed(client), action="set_password")
        assert (entry["resource"], entry["resource_id"], entry["request_id"]) == (
            "user",
            "alice",
            "pw",
        )
        assert entry["changes"] == {"password": {"before": R, "after": R}}
        [(new_hash,)] = await stored(db, "SELECT password_hash FROM users")
        assert_absent(await raw_trail(client), PASSWORD, new_password, old_hash, new_hash)

    async def test_delete_records_the_user_and_what_went_with_it(self, client, db):
        await create_alice(client)
        await client.put("/api/v1/auth/api-keys/alice", json={"api_key": API_KEY})
        await client.put("/api/v1/auth/broker-tokens/alice", json={**TOKEN, "broker": "zerodha"})
        response = await client.delete("/api/v1/users/alice", headers=rid("del-alice"))
        assert response.status_code == 204
        deleted = [e for e in await listed(client) if e["action"] == "delete"]
        assert sorted(e["resource"] for e in deleted) == ["api_key", "broker_token", "user"]
        for entry in deleted:
            assert (entry["resource_id"], entry["request_id"]) == ("alice", "del-alice")
            assert all(change["after"] is None for change in entry["changes"].values())
        user = only(deleted, resource="user")
        assert user["changes"]["username"] == {"before": "alice", "after": None}
        assert user["changes"]["password"] == {"before": R, "after": None}
        token = only(deleted, resource="broker_token")
        assert token["changes"]["auth_token"] == {"before": R, "after": None}
        assert_absent(await raw_trail(client), API_KEY, *TOKEN.values(), PASSWORD)

    async def test_deleting_an_unknown_user_records_nothing(self, client, db):
        assert_problem(await client.delete("/api/v1/users/nobody"), 404)
        assert await count_entries(db) == 0


class TestApiKeys:
    async def test_create_rotate_order_mode_delete(self, client, db):
        await create_alice(client)
        url = "/api/v1/auth/api-keys/alice"
        assert (
            await client.put(url, json={"api_key": API_KEY}, headers=rid("k1"))
        ).status_code == 200
        [(first_hash, first_encrypted, first_digest)] = await stored(
            db, "SELECT key_hash, key_encrypted, key_digest FROM api_keys"
        )
        rotated = await client.put(url, json={}, headers=rid("k2"))
        assert rotated.status_code == 200
        second_key = rotated.json()["api_key"]
        [(second_hash, second_encrypted, second_digest)] = await stored(
            db, "SELECT key_hash, key_encrypted, key_digest FROM api_keys"
        )
        mode = await client.put(
            f"{url}/order-mode", json={"order_mode": "semi_auto"}, headers=rid("k3")
        )
        assert mode.status_code == 200
        # The same mode again changes nothing, and records nothing.
        again = await client.put(f"{url}/order-mode", json={"order_mode": "semi_auto"})
        assert again.status_code == 200
        assert (await client.delete(url, headers=rid("k4"))).status_code == 204

        entries = await listed(client, resource="api_key")
        assert [e["action"] for e in entries] == ["delete", "update", "rotate", "create"]
        assert {e["request_id"] for e in entries} == {"k1", "k2", "k3", "k4"}
        assert {(e["actor"], e["resource_id"]) for e in entries} == {("full", "alice")}
        created = only(entries, action="create")["changes"]
        assert set(created) == {"user_id", "order_mode", "created_at", "api_key"}
        assert created["api_key"] == {"before": None, "after": R}
        assert created["order_mode"] == {"before": None, "after": "auto"}
        rotate = only(entries, action="rotate")["changes"]
        assert set(rotate) == {"api_key", "created_at"}
        assert rotate["api_key"] == {"before": R, "after": R}
        assert only(entries, action="update")["changes"] == {
            "order_mode": {"before": "auto", "after": "semi_auto"}
        }
        removed = only(entries, action="delete")["changes"]
        assert removed["api_key"] == {"before": R, "after": None}
        assert removed["order_mode"] == {"before": "semi_auto", "after": None}
        assert_absent(
            await raw_trail(client),
            API_KEY,
            second_key,
            first_hash,
            first_encrypted,
            first_digest,
            second_hash,
            second_encrypted,
            second_digest,
        )

    async def test_a_key_that_fails_to_store_records_nothing(self, client, db):
        await create_alice(client)
        await client.post(
            "/api/v1/users",
            json={"username": "bob", "email": "bob@example.com", "password": "x" * 8},
        )
        assert (
            await client.put("/api/v1/auth/api-keys/alice", json={"api_key": API_KEY})
        ).status_code == 200
        before = await count_entries(db)
        # Another user's key: the unique digest refuses it.
        assert_problem(
            await client.put("/api/v1/auth/api-keys/bob", json={"api_key": API_KEY}), 409
        )
        assert_problem(await client.put("/api/v1/auth/api-keys/nobody", json={}), 404)
        assert_problem(await client.delete("/api/v1/auth/api-keys/bob"), 404)
        assert await count_entries(db) == before
        assert await listed(client, resource_id="bob", resource="api_key") == []


class TestBrokerTokens:
    async def test_store_update_revoke(self, client, db):
        await create_alice(client)
        url = "/api/v1/auth/broker-tokens/alice"
        body = {**TOKEN, "broker": "zerodha", "user_id": "AB1234"}
        assert (await client.put(url, json=body, headers=rid("t1"))).status_code == 200
        [(auth_encrypted, feed_encrypted)] = await stored(
            db, "SELECT auth_token_encrypted, feed_token_encrypted FROM broker_tokens"
        )
        # The same tokens again: encrypted anew, but no change, and no entry.
        assert (await client.put(url, json=body)).json()["changed"] is False
        new_auth = "broker-auth-token-2"
        assert (
            await client.put(url, json={**body, "auth_token": new_auth}, headers=rid("t2"))
        ).status_code == 200
        assert (await client.post(f"{url}/revoke", headers=rid("t3"))).status_code == 200
        # Revoking a revoked token changes nothing.
        assert (await client.post(f"{url}/revoke")).status_code == 200

        entries = await listed(client, resource="broker_token")
        assert [(e["action"], e["request_id"]) for e in entries] == [
            ("revoke", "t3"),
            ("update", "t2"),
            ("create", "t1"),
        ]
        assert only(entries, action="create")["changes"] == {
            "name": {"before": None, "after": "alice"},
            "broker": {"before": None, "after": "zerodha"},
            "user_id": {"before": None, "after": "AB1234"},
            "revoked": {"before": None, "after": False},
            "auth_token": {"before": None, "after": R},
            "feed_token": {"before": None, "after": R},
        }
        assert only(entries, action="update")["changes"] == {
            "auth_token": {"before": R, "after": R}
        }
        assert only(entries, action="revoke")["changes"] == {
            "revoked": {"before": False, "after": True},
            "auth_token": {"before": R, "after": None},
            "feed_token": {"before": R, "after": None},
        }
        assert_absent(
            await raw_trail(client), *TOKEN.values(), new_auth, auth_encrypted, feed_encrypted
        )

    async def test_a_token_for_an_unknown_user_records_nothing(self, client, db):
        response = await client.put(
            "/api/v1/auth/broker-tokens/nobody", json={**TOKEN, "broker": "zerodha"}
        )
        assert_problem(response, 404)
        assert_problem(await client.post("/api/v1/auth/broker-tokens/nobody/revoke"), 404)
        assert await count_entries(db) == 0


class TestSettings:
    async def test_a_patch_records_what_changed_and_never_the_smtp_password(self, client, db):
        smtp_password = "smtp-secret-password"
        response = await client.patch(
            "/api/v1/settings",
            json={
                "analyze_mode": True,
                "smtp": {"server": "smtp.example.com", "password": smtp_password},
                "security": {"threshold_404": 100, "repeat_offender_limit": 3},
            },
            headers=rid("s1"),
        )
        assert response.status_code == 200
        [entry] = await listed(client, resource="settings")
        assert (entry["action"], entry["resource_id"], entry["request_id"]) == (
            "update",
            None,
            "s1",
        )
        # threshold_404 was 100 already.
        assert entry["changes"] == {
            "analyze_mode": {"before": False, "after": True},
            "smtp.server": {"before": None, "after": "smtp.example.com"},
            "smtp.password": {"before": None, "after": R},
            "security.repeat_offender_limit": {"before": 2, "after": 3},
        }
        response = await client.patch("/api/v1/settings", json={"smtp": {"password": None}})
        assert response.status_code == 200
        latest = (await listed(client, resource="settings"))[0]
        assert latest["changes"] == {"smtp.password": {"before": R, "after": None}}
        assert_absent(await raw_trail(client), smtp_password)

    async def test_a_refused_patch_and_a_patch_changing_nothing_record_nothing(self, client, db):
        assert_problem(await client.patch("/api/v1/settings", json={"analyze_mode": None}), 422)
        response = await client.patch("/api/v1/settings", json={"analyze_mode": False})
        assert response.status_code == 200
        assert await count_entries(db) == 0


class TestBans:
    async def test_add_repeat_remove(self, client):
        bans = "/api/v1/traffic/bans"
        ip = "198.51.100.7"
        body = {"ip_address": ip, "reason": "scanner"}
        assert (await client.post(bans, json=body, headers=rid("b1"))).status_code == 201
        assert (await client.post(bans, json=body, headers=rid("b2"))).status_code == 201
        assert (await client.delete(f"{bans}/{ip}", headers=rid("b3"))).status_code == 204
        entries = await listed(client, resource="ip_ban")
        assert [(e["action"], e["request_id"], e["resource_id"]) for e in entries] == [
            ("delete", "b3", ip),
            ("update", "b2", ip),
            ("create", "b1", ip),
        ]
        created = only(entries, action="create")["changes"]
        assert created["ban_count"] == {"before": None, "after": 1}
        assert created["created_by"] == {"before": None, "after": "manual"}
        banned_at = datetime.fromisoformat(created["banned_at"]["after"])
        expires_at = datetime.fromisoformat(created["expires_at"]["after"])
        assert expires_at - banned_at == timedelta(hours=24)
        repeat = only(entries, action="update")["changes"]
        assert repeat["ban_count"] == {"before": 1, "after": 2}
        # The repeat offender limit (2) is reached: permanent from now on.
        assert repeat["is_permanent"] == {"before": False, "after": True}
        assert repeat["expires_at"] == {"before": created["expires_at"]["after"], "after": None}
        removed = only(entries, action="delete")["changes"]
        assert removed["ban_count"] == {"before": 2, "after": None}
        assert removed["ip_address"] == {"before": ip, "after": None}

    async def test_refused_bans_record_nothing(self, client, db):
        bans = "/api/v1/traffic/bans"
        assert_problem(await client.post(bans, json={"ip_address": "127.0.0.1"}), 422)
        assert_problem(await client.post(bans, json={"ip_address": "not an ip"}), 422)
        assert_problem(await client.delete(f"{bans}/198.51.100.9"), 404)
        assert await count_entries(db) == 0

    async def test_an_automatic_ban_is_recorded_with_the_reporting_token(self, client_factory):
        client = await client_factory()
        reporter = await client_factory(token=RW_TOKEN)
        settings = {"security": {"auto_ban_enabled": True, "threshold_404": 2}}
        assert (await client.patch("/api/v1/settings", json=settings)).status_code == 200
        ip = "203.0.113.5"
        for _ in range(2):
            response = await reporter.post(
                "/api/v1/traffic/404s", json={"ip_address": ip, "path": "/x"}
            )
            assert response.status_code == 200
        assert response.json()["banned"] is True
        [entry] = await listed(client, resource="ip_ban")
        assert (entry["actor"], entry["action"], entry["resource_id"]) == ("rw", "create", ip)
        assert entry["changes"]["created_by"] == {"before": None, "after": "404_detector"}


class TestMasterContract:
    async def test_a_load_records_counts_not_rows(self, client):
        contract = [row("RELIANCE", "NSE"), row("TCS", "NSE"), row("SBIN", "BSE")]
        response = await put_contract(client, contract)
        assert response.status_code == 200, response.text
        [entry] = await listed(client, resource="symbols")
        assert (entry["action"], entry["resource_id"], entry["actor"]) == ("load", "1", "full")
        assert entry["changes"] == {
            "rows": {"before": 0, "after": 3},
            "exchanges": {"before": {"BSE": 0, "NSE": 0}, "after": {"BSE": 1, "NSE": 2}},
            "version": {"before": 0, "after": 1},
        }
        assert entry["request_id"] == response.headers["x-request-id"]
        raw = await raw_trail(client)
        assert "RELIANCE" not in raw and "SBIN" not in raw

    async def test_a_partial_load_and_a_delete_per_exchange(self, client):
        contract = generate(60, seed=3)
        assert (await put_contract(client, contract)).status_code == 200
        counts: dict[str, int] = {}
        for r in contract:
            counts[r["exchange"]] = counts.get(r["exchange"], 0) + 1
        exchange = sorted(counts)[0]
        replacement = [row("NEWONE", exchange), row("NEWTWO", exchange)]
        assert (await put_contract(client, replacement, exchanges=[exchange])).status_code == 200
        response = await client.delete(
            "/api/v1/symbols", params={"exchange": exchange}, headers=rid("sym-del")
        )
        assert response.json() == {"deleted": 2}
        # Deleting what is not there changes nothing: no entry.
        await client.delete("/api/v1/symbols", params={"exchange": exchange})
        entries = await listed(client, resource="symbols")
        assert [(e["action"], e["resource_id"]) for e in entries] == [
            ("delete", "3"),
            ("load", "2"),
            ("load", "1"),
        ]
        total = len(contract)
        assert entries[1]["changes"] == {
            "rows": {"before": total, "after": total - counts[exchange] + 2},
            "exchanges": {"before": {exchange: counts[exchange]}, "after": {exchange: 2}},
            "version": {"before": 1, "after": 2},
        }
        assert entries[0]["request_id"] == "sym-del"
        assert entries[0]["changes"] == {
            "rows": {"before": total - counts[exchange] + 2, "after": total - counts[exchange]},
            "exchanges": {"before": {exchange: 2}, "after": {exchange: 0}},
            "version": {"before": 2, "after": 3},
        }

    async def test_a_refused_load_records_nothing(self, client, db):
        body = b"symbol,exchange\nRELIANCE,NSE\n"
        response = await client.put(
            "/api/v1/symbols", content=body, headers={"content-type": "text/csv"}
        )
        assert_problem(response, 422)
        assert await count_entries(db) == 0


class TestSameTransaction:
    async def test_a_change_that_fails_after_its_entry_leaves_neither(
        self, client, db, monkeypatch: pytest.MonkeyPatch
    ):
        """The entry is written in the change's transaction: when the request fails after the
        entry, both roll back."""
        real = audit.record

        async def record_then_fail(*args: Any, **kwargs: Any) -> bool:
            await real(*args, **kwargs)
            assert await args[0].scalar(text("SELECT count(*) FROM audit_entries")) == 1
            raise DatabaseUnavailable()

        monkeypatch.setattr(bans_repo.audit, "record", record_then_fail)
        response = await client.post("/api/v1/traffic/bans", json={"ip_address": "198.51.100.3"})
        assert_problem(response, 503)
        assert await count_entries(db) == 0
        assert await stored(db, "SELECT id FROM ip_bans") == []


class TestList:
    async def _arrange(self, client_factory) -> tuple[Any, Any]:
        full = await client_factory()
        rw = await client_factory(token=RW_TOKEN)
        await create_alice(full)
        for i in range(3):
            ban = {"ip_address": f"198.51.100.{i + 1}"}
            assert (await rw.post("/api/v1/traffic/bans", json=ban)).status_code == 201
        assert (
            await full.patch("/api/v1/settings", json={"analyze_mode": True})
        ).status_code == 200
        return full, rw

    async def test_filters_by_resource_actor_and_resource_id(self, client_factory):
        full, _ = await self._arrange(client_factory)
        assert len(await listed(full)) == 5
        assert [e["resource"] for e in await listed(full, resource="ip_ban")] == ["ip_ban"] * 3
        assert {e["resource"] for e in await listed(full, actor="full")} == {"user", "settings"}
        assert len(await listed(full, actor="rw")) == 3
        assert await listed(full, actor="nobody") == []
        [entry] = await listed(full, resource_id="198.51.100.2")
        assert entry["actor"] == "rw"
        assert await listed(full, resource="user", actor="rw") == []

    async def test_since_and_until(self, client_factory, db):
        full, _ = await self._arrange(client_factory)
        entries = await listed(full)
        newest, oldest = entries[0], entries[-1]
        assert [e["id"] for e in await listed(full, since=newest["at"])] == [newest["id"]]
        before_newest = await listed(full, until=newest["at"])
        assert newest["id"] not in [e["id"] for e in before_newest]
        assert oldest["id"] in [e["id"] for e in before_newest]
        later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        assert await listed(full, since=later) == []

    async def test_pages_walk_every_entry_once_newest_first(self, client_factory):
        full, _ = await self._arrange(client_factory)
        everything = await listed(full)
        paged = await listed(full, limit=2)
        assert [e["id"] for e in paged] == [e["id"] for e in everything]
        assert len({e["id"] for e in paged}) == 5
        stamps = [(e["at"], e["id"]) for e in paged]
        assert stamps == sorted(stamps, reverse=True)
        first = (await full.get(AUDIT, params={"limit": 2})).json()
        assert len(first["items"]) == 2 and first["next_cursor"]

    @pytest.mark.parametrize(
        "params",
        [
            {"resource": "orders"},
            {"actor": "has space"},
            {"actor": "x" * 65},
            {"limit": 0},
            {"limit": 1001},
            {"cursor": "nope"},
            {"since": "yesterday"},
        ],
    )
    async def test_bad_filters_are_422(self, client, params):
        assert_problem(await client.get(AUDIT, params=params), 422)

    async def test_reading_needs_the_read_scope(self, client_factory):
        write_only = await client_factory(token=WO_TOKEN)
        assert_problem(await write_only.get(AUDIT), 403)
        anonymous = await client_factory(token=None)
        assert_problem(await anonymous.get(AUDIT), 401)
        read_only = await client_factory(token=RO_TOKEN)
        assert (await read_only.get(AUDIT)).json() == {"items": [], "next_cursor": None}

    async def test_the_route_documents_its_statuses(self, client):
        document = (await client.get("/openapi.json")).json()
        operation = document["paths"]["/api/v1/audit"]["get"]
        assert {"200", "401", "403", "422", "503"} <= set(operation["responses"])
        names = {p["name"] for p in operation["parameters"]}
        assert {"resource", "resource_id", "actor", "since", "until", "limit", "cursor"} <= names


class TestRetention:
    async def test_delete_before_removes_older_entries_and_records_the_purge(
        self, client_factory, db
    ):
        full = await client_factory()
        await create_alice(full)
        cut = datetime.now(UTC) + timedelta(seconds=1)
        response = await full.delete(
            AUDIT, params={"before": cut.isoformat()}, headers=rid("purge")
        )
        assert response.status_code == 200
        assert response.json() == {"deleted": 1}
        [entry] = await listed(full)
        assert (entry["action"], entry["resource"], entry["request_id"]) == (
            "purge",
            "audit",
            "purge",
        )
        assert entry["changes"]["entries"] == {"before": 1, "after": 0}
        assert datetime.fromisoformat(entry["changes"]["older_than"]["after"]) == cut
        # Nothing older: nothing deleted, nothing recorded.
        past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
        assert (await full.delete(AUDIT, params={"before": past})).json() == {"deleted": 0}
        assert await count_entries(db) == 1

    async def test_deleting_needs_the_write_scope(self, client_factory, db):
        read_only = await client_factory(token=RO_TOKEN)
        now = datetime.now(UTC).isoformat()
        assert_problem(await read_only.delete(AUDIT, params={"before": now}), 403)
        assert_problem(await (await client_factory(token=RW_TOKEN)).delete(AUDIT), 422)
        assert await count_entries(db) == 0
