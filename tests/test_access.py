"""Every /api/v1 route, read from the OpenAPI document: 401 without a known token, 403 without
the scope. Domains added later are covered without touching this file."""

from __future__ import annotations

import re

import pytest

from tests.support import FULL_TOKEN, RO_TOKEN, RW_TOKEN, WO_TOKEN, assert_problem, auth

_PARAM = re.compile(r"\{([^}]+)\}")
_TOKENS_WITHOUT = {"read": WO_TOKEN, "write": RO_TOKEN, "secrets": RW_TOKEN}


def _concrete(path: str) -> str:
    return _PARAM.sub("1", path)


async def _api_operations(client) -> list[tuple[str, str, str]]:
    document = (await client.get("/openapi.json")).json()
    operations = []
    for path, methods in document["paths"].items():
        if not path.startswith("/api/v1/"):
            continue
        for method, operation in methods.items():
            scope = operation.get("x-required-scope") or ("read" if method == "get" else "write")
            operations.append((method.upper(), _concrete(path), scope))
            assert operation.get("security") == [{"serviceToken": []}], (method, path)
            assert operation.get("summary") and operation.get("description"), (method, path)
    return operations


class TestEveryRoute:
    async def test_has_routes_to_check(self, client):
        operations = await _api_operations(client)
        assert ("GET", "/api/v1/settings", "read") in operations
        assert ("GET", "/api/v1/settings/smtp-password", "secrets") in operations

    @pytest.mark.parametrize(
        "header", [None, "Bearer nope-not-a-token", "Basic Zm9vOmJhcg==", FULL_TOKEN]
    )
    async def test_unknown_token_is_401(self, client, header):
        for method, path, _ in await _api_operations(client):
            headers = {"Authorization": header} if header else {}
            client.headers.pop("Authorization", None)
            response = await client.request(method, path, headers=headers)
            problem = assert_problem(response, 401, "unauthorized")
            assert response.headers["www-authenticate"] == "Bearer", (method, path)
            assert "token" in problem["detail"]

    async def test_missing_scope_is_403(self, client):
        for method, path, scope in await _api_operations(client):
            response = await client.request(method, path, headers=auth(_TOKENS_WITHOUT[scope]))
            problem = assert_problem(response, 403, "forbidden")
            assert scope in problem["detail"], (method, path, problem)

    async def test_problem_responses_are_documented(self, client):
        document = (await client.get("/openapi.json")).json()
        for path, methods in document["paths"].items():
            if path.startswith("/api/v1/"):
                for method, operation in methods.items():
                    for status in ("401", "403", "422", "503"):
                        assert status in operation["responses"], (method, path, status)


class TestUnauthenticatedSurface:
    async def test_health_and_docs_need_no_token(self, client):
        client.headers.pop("Authorization")
        for path in ("/health/live", "/health/ready", "/metrics", "/openapi.json", "/docs"):
            assert (await client.get(path)).status_code == 200, path

    async def test_unknown_api_path_without_token_is_401_not_404(self, client):
        client.headers.pop("Authorization")
        assert_problem(await client.get("/api/v1/no-such-thing"), 401)
