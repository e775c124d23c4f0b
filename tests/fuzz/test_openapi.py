"""The OpenAPI document the fuzzing gate reads: links that resolve, and every generic status declared
the way the service really answers it."""

from __future__ import annotations

import re
from typing import Any

import pytest

from service.openapi import LINKS, generic_statuses
from tests.support import assert_problem

PROBLEM_CONTENT = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
_PARAM = re.compile(r"\{([^}]+)\}")


@pytest.fixture
async def document(client) -> dict[str, Any]:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    return response.json()


def _operations(document: dict[str, Any]):
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            yield path, method, operation


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _pointer_resolves(document: dict[str, Any], schema: dict[str, Any], pointer: str) -> bool:
    """Whether a JSON pointer into a response body names a property its schema declares."""
    for part in pointer.strip("/").split("/"):
        schema = _resolve(document, schema)
        if part.isdigit():
            if schema.get("type") != "array":
                return False
            schema = schema["items"]
        elif part in schema.get("properties", {}):
            schema = schema["properties"][part]
        else:
            return False
    return True


def _split(method_and_path: str) -> tuple[str, str]:
    method, path = method_and_path.split(" ", 1)
    return path, method.lower()


class TestLinks:
    async def test_every_link_is_in_the_document(self, document):
        for link in LINKS:
            path, method = _split(link.source)
            response = document["paths"][path][method]["responses"][str(link.status)]
            target_path, target_method = _split(link.target)
            target = document["paths"][target_path][target_method]
            assert response["links"][link.name]["operationId"] == target["operationId"], link

    async def test_every_expression_names_what_exists(self, document):
        for link in LINKS:
            path, method = _split(link.source)
            source = document["paths"][path][method]
            body_schema = source["responses"][str(link.status)]["content"]["application/json"]
            target_path, target_method = _split(link.target)
            target = document["paths"][target_path][target_method]
            target_parameters = {p["name"] for p in target.get("parameters", [])}
            assert set(link.parameters) <= target_parameters, link
            if link.body is not None:
                request = target["requestBody"]["content"]["application/json"]["schema"]
                assert set(link.body) <= set(_resolve(document, request)["properties"]), link
            for expression in [*link.parameters.values(), *(link.body or {}).values()]:
                if expression.startswith("$response.body#"):
                    pointer = expression.removeprefix("$response.body#")
                    assert _pointer_resolves(document, body_schema["schema"], pointer), link
                elif expression.startswith("$request.path."):
                    assert expression.removeprefix("$request.path.") in _PARAM.findall(path), link
                else:
                    assert expression.startswith("$request.body#/"), link

    async def test_a_created_user_reaches_its_keys_sessions_and_strategies(self, document):
        links = document["paths"]["/api/v1/users"]["post"]["responses"]["201"]["links"]
        targets = {link["operationId"] for link in links.values()}
        wanted = {
            ("put", "/api/v1/auth/broker-tokens/{name}"),
            ("put", "/api/v1/auth/api-keys/{user_id}"),
            ("post", "/api/v1/auth/sessions"),
            ("post", "/api/v1/strategies"),
            ("post", "/api/v1/chartink/strategies"),
        }
        for method, path in wanted:
            assert document["paths"][path][method]["operationId"] in targets, (method, path)


class TestDeclaredStatuses:
    async def test_generic_statuses_on_every_operation(self, document):
        for path, method, operation in _operations(document):
            declared = {int(code) for code in operation["responses"] if code.isdigit()}
            expected = {405, 431}
            if path.startswith("/api/v1/"):
                expected |= {401, 403, 422, 503}
                if method in ("post", "put", "patch"):
                    expected |= {413, 415}
            if "{" in path:
                expected.add(404)
            assert expected <= declared, (method, path, expected - declared)
            assert generic_statuses(path, method, operation) <= declared

    async def test_json_bodies_declare_400(self, document):
        for path, method, operation in _operations(document):
            if "application/json" in operation.get("requestBody", {}).get("content", {}):
                assert "400" in operation["responses"], (method, path)

    async def test_problems_are_problem_json_with_their_headers(self, document):
        for path, method, operation in _operations(document):
            allow = {m.upper() for m in document["paths"][path]}
            for code, response in operation["responses"].items():
                if int(code) < 400 or (path, code) == ("/health/ready", "503"):
                    continue
                content = response["content"]
                assert list(content) == ["application/problem+json"], (method, path, code)
                assert (
                    content["application/problem+json"]["schema"]
                    == PROBLEM_CONTENT["application/problem+json"]["schema"]
                )
                assert content["application/problem+json"]["example"]["status"] == int(code)
                headers = response.get("headers", {})
                if code == "405":
                    assert headers["Allow"]["required"] is True
                    assert set(headers["Allow"]["example"].split(", ")) == allow
                if code == "503":
                    assert headers["Retry-After"]["schema"]["type"] == "integer"
                if code == "401":
                    assert headers["WWW-Authenticate"]["schema"]["type"] == "string"

    async def test_every_tag_is_described(self, document):
        described = {tag["name"] for tag in document["tags"] if tag.get("description")}
        for path, method, operation in _operations(document):
            assert set(operation["tags"]) <= described, (method, path)


class TestDeclarationsMatchAnswers:
    """The generic statuses as the service really answers them, against what the document says."""

    async def test_401_carries_the_declared_header(self, client, document):
        response = await client.get("/api/v1/settings", headers={"Authorization": ""})
        assert_problem(response, 401, "unauthorized")
        declared = document["paths"]["/api/v1/settings"]["get"]["responses"]["401"]["headers"]
        assert response.headers[next(iter(declared))] == "Bearer"

    async def test_415_and_400_on_a_json_body(self, client, document):
        declared = document["paths"]["/api/v1/users"]["post"]["responses"]
        wrong_type = await client.post(
            "/api/v1/users", content=b"a=b", headers={"Content-Type": "text/plain"}
        )
        assert_problem(
            wrong_type,
            415,
            declared["415"]["content"]["application/problem+json"]["example"]["type"].rsplit(
                "/", 1
            )[1],
        )
        malformed = await client.post(
            "/api/v1/users", content=b"{", headers={"Content-Type": "application/json"}
        )
        assert_problem(malformed, 400, "malformed-body")
        assert (await client.get("/api/v1/users")).json()["items"] == []

    async def test_405_declares_allow_and_answers_it(self, client):
        response = await client.request("PATCH", "/health/live")
        assert_problem(response, 405, "method-not-allowed")
        assert response.headers["allow"] == "GET"


async def test_api_key_verify_path_is_the_verify_route_alone(client, document) -> None:
    # `verify` is not a user_id of the API-key routes, so the path has POST only and says so.
    methods = set(document["paths"]["/api/v1/auth/api-keys/verify"])
    assert methods == {"post"}
    response = await client.get("/api/v1/auth/api-keys/verify")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert "/api/v1/auth/api-keys/{user_id}" in document["paths"]
