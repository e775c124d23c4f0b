"""The lists that are not keyset pages (users, sessions, strategies, bans) are bounded: at most
`limit` items (default and maximum 1000), in their documented order."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.support import add_users, assert_problem

STRATEGY = {"name": "Momentum", "user_id": "alice", "is_intraday": False}


async def _ids(client: httpx.AsyncClient, url: str, key: str, **params: Any) -> list[Any]:
    response = await client.get(url, params=params)
    assert response.status_code == 200, response.text
    return [item[key] for item in response.json()["items"]]


async def test_users_stop_at_the_limit_in_username_order(client, db):
    await add_users(db, "carol", "alice", "bob")
    assert await _ids(client, "/api/v1/users", "username", limit=2) == ["alice", "bob"]
    assert await _ids(client, "/api/v1/users", "username") == ["alice", "bob", "carol"]


async def test_sessions_stop_at_the_limit_most_recent_first(client, db):
    await add_users(db, "alice")
    for n in range(3):
        body = {"username": "alice", "session_id": f"session-{n:04d}", "ip_address": f"10.0.0.{n}"}
        assert (await client.post("/api/v1/auth/sessions", json=body)).status_code == 201
    everything = await _ids(client, "/api/v1/auth/sessions", "session_id")
    assert len(everything) == 3
    assert await _ids(client, "/api/v1/auth/sessions", "session_id", limit=2) == everything[:2]


@pytest.mark.parametrize("path", ["/api/v1/strategies", "/api/v1/chartink/strategies"])
async def test_strategies_stop_at_the_limit_in_creation_order(client, path):
    created = []
    for n in range(3):
        response = await client.post(path, json={**STRATEGY, "name": f"S{n}"})
        assert response.status_code == 201, response.text
        created.append(response.json()["id"])
    assert await _ids(client, path, "id", limit=2) == created[:2]


async def test_bans_stop_at_the_limit_expired_ones_included_too(client):
    for n in range(3):
        body = {"ip_address": f"203.0.113.{n + 1}", "reason": "scanner"}
        assert (await client.post("/api/v1/traffic/bans", json=body)).status_code == 201
    newest_first = await _ids(client, "/api/v1/traffic/bans", "ip_address")
    assert len(newest_first) == 3
    assert await _ids(client, "/api/v1/traffic/bans", "ip_address", limit=1) == newest_first[:1]
    assert len(await _ids(client, "/api/v1/traffic/bans", "ip_address", all="true", limit=2)) == 2


@pytest.mark.parametrize(
    "path",
    ["/api/v1/users", "/api/v1/auth/sessions", "/api/v1/strategies", "/api/v1/traffic/bans"],
)
@pytest.mark.parametrize("limit", [0, 1001])
async def test_a_limit_outside_1_to_1000_is_refused(client, path, limit):
    problem = assert_problem(await client.get(path, params={"limit": limit}), 422, "validation")
    assert problem["errors"][0]["loc"] == ["query", "limit"]


async def test_the_openapi_document_states_the_bound(client):
    document = (await client.get("/openapi.json")).json()
    for path in ("/api/v1/users", "/api/v1/auth/sessions", "/api/v1/traffic/bans"):
        (limit,) = [p for p in document["paths"][path]["get"]["parameters"] if p["name"] == "limit"]
        assert (limit["schema"]["minimum"], limit["schema"]["maximum"]) == (1, 1000)
        assert limit["schema"]["default"] == 1000
