"""Values the databases cannot store are refused at the edge, the same way on both backends: a
422 problem naming the field, and nothing written. One endpoint per kind of value and place
(path, query, body, nested JSON); the OpenAPI document states each rule."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support import add_users, assert_problem

TRAFFIC = "/api/v1/traffic/logs"
ORDER_LOGS = "/api/v1/order-logs"
LATENCY = "/api/v1/latency"
JSON = {"content-type": "application/json"}


async def count(db: AsyncEngine, table: str) -> int:
    async with db.connect() as conn:
        return int(await conn.scalar(text(f"SELECT count(*) FROM {table}")))


def request_log(**overrides: Any) -> dict[str, Any]:
    return {
        "client_ip": "203.0.113.9",
        "method": "POST",
        "path": "/api/v1/placeorder",
        "status_code": 200,
        "duration_ms": 12.5,
        **overrides,
    }


def order_log(request_data: Any = None, **overrides: Any) -> dict[str, Any]:
    return {
        "api_type": "placeorder",
        "request_data": {"symbol": "SBIN"} if request_data is None else request_data,
        "response_data": {"status": "success"},
        **overrides,
    }


def refused(response: httpx.Response, loc: list[Any]) -> dict[str, Any]:
    """A 422 problem whose errors name `loc`."""
    body = assert_problem(response, 422, "validation")
    assert loc in [error["loc"] for error in body["errors"]], body
    return body


# --- NUL ---------------------------------------------------------------------------------------


class TestNul:
    async def test_in_a_body_string(self, client, db):
        response = await client.post(TRAFFIC, json=request_log(path="/api/\x00v1"))
        body = refused(response, ["body", "path"])
        assert body["errors"][0]["msg"] == "must not be blank or contain NUL (\\u0000)"
        assert await count(db, "traffic_logs") == 0

    async def test_in_an_item_of_a_batch(self, client, db):
        batch = [request_log(), request_log(user_id="al\x00ice")]
        refused(await client.post(TRAFFIC, json=batch), ["body", 1, "user_id"])
        assert await count(db, "traffic_logs") == 0

    @pytest.mark.parametrize(
        ("request_data", "loc"),
        [
            ({"symbol": "SB\x00IN"}, ["request_data", "symbol"]),
            ({"legs": [{"note": "\x00"}]}, ["request_data", "legs", 0, "note"]),
            ({"sym\x00bol": "SBIN"}, ["request_data", "sym\x00bol"]),
            ("\x00", ["request_data"]),
        ],
    )
    async def test_in_nested_json_values_and_keys(self, client, db, request_data, loc):
        body = refused(await client.post(ORDER_LOGS, json=order_log(request_data)), ["body", *loc])
        assert "NUL" in body["errors"][0]["msg"]
        assert await count(db, "order_logs") == 0

    async def test_in_a_query_parameter(self, client, db):
        await add_users(db, "alice")
        session = {"username": "alice", "session_id": "session-0001"}
        assert (await client.post("/api/v1/auth/sessions", json=session)).status_code == 201
        response = await client.delete("/api/v1/auth/sessions", params={"username": "ali\x00ce"})
        refused(response, ["query", "username"])
        assert await count(db, "sessions") == 1

    async def test_in_a_path_parameter(self, client, db):
        await add_users(db, "alice")
        body = {"auth_token": "token", "broker": "zerodha"}
        response = await client.put("/api/v1/auth/broker-tokens/ali%00ce", json=body)
        refused(response, ["path", "name"])
        assert await count(db, "broker_tokens") == 0

    async def test_in_a_read_filter(self, client):
        response = await client.get("/api/v1/strategies", params={"user_id": "\x00"})
        refused(response, ["query", "user_id"])

    async def test_in_a_secret(self, client, db):
        await add_users(db, "alice")
        body = {"auth_token": "tok\x00en", "broker": "zerodha"}
        response = await client.put("/api/v1/auth/broker-tokens/alice", json=body)
        refused(response, ["body", "auth_token"])
        assert await count(db, "broker_tokens") == 0


# --- numbers -----------------------------------------------------------------------------------


class TestNumbers:
    @pytest.mark.parametrize("number", [b"1e999", b"-1e999", b"NaN", b"Infinity", b"-Infinity"])
    async def test_a_non_finite_latency_is_refused(self, client, db, number):
        raw = b'{"order_id": "o-1", "total_latency_ms": ' + number + b"}"
        refused(await client.post(LATENCY, content=raw, headers=JSON), ["body", "total_latency_ms"])
        assert await count(db, "order_latency") == 0

    @pytest.mark.parametrize(("field", "value"), [("rtt_ms", 1e10), ("overhead_ms", -0.5)])
    async def test_a_latency_out_of_range_is_refused(self, client, db, field, value):
        body = {"order_id": "o-1", "total_latency_ms": 5, field: value}
        refused(await client.post(LATENCY, json=body), ["body", field])
        assert await count(db, "order_latency") == 0

    async def test_stats_stay_numbers_after_a_refused_post(self, client):
        """A stored infinity nulled the averages on SQLite and made stats 503; now it is never
        stored, and the stats of what is are exact."""
        raw = b'[{"order_id": "o-1", "total_latency_ms": 1e999}]'
        assert (await client.post(LATENCY, content=raw, headers=JSON)).status_code == 422
        good = [{"order_id": "o-2", "total_latency_ms": 40}, {"order_id": "o-3", "total_latency_ms": 60}]  # fmt: skip
        assert (await client.post(LATENCY, json=good)).status_code == 201
        overall = (await client.get(f"{LATENCY}/stats")).json()["overall"]
        assert (overall["count"], overall["avg_total_ms"], overall["p50_total_ms"]) == (2, 50, 50)

    @pytest.mark.parametrize(
        "number",
        [
            b"1e999",
            b"NaN",
            b"-Infinity",
            b"2.1e60",  # PostgreSQL hands it back as a 61-digit integer
            b"9223372036854775808",  # 2^63
            b"-9223372036854775809",
            b"123456789012345678901234567890",
            b"9.3e18",
        ],
    )
    async def test_nested_json_numbers_out_of_range_are_refused(self, client, db, number):
        raw = b'{"api_type": "x", "request_data": {"a": [1, ' + number + b'], "b": 2}, '
        raw += b'"response_data": null}'
        body = refused(await client.post(ORDER_LOGS, content=raw, headers=JSON), ["body", "request_data", "a", 1])  # fmt: skip
        assert "64-bit" in body["errors"][0]["msg"]
        assert await count(db, "order_logs") == 0

    @pytest.mark.parametrize(
        ("number", "value"),
        [
            (b"9223372036854775807", 2**63 - 1),
            (b"-9223372036854775808", -(2**63)),
            (b"1.5e18", 1.5e18),
            (b"0.1", 0.1),
            (b"-2.5e-300", -2.5e-300),
        ],
    )
    async def test_nested_json_numbers_in_range_round_trip(self, client, number, value):
        raw = b'{"api_type": "x", "request_data": {"n": ' + number + b'}, "response_data": 1}'
        response = await client.post(ORDER_LOGS, content=raw, headers=JSON)
        assert response.status_code == 201, response.text
        [item] = (await client.get(ORDER_LOGS)).json()["items"]
        assert item["request_data"]["n"] == value

    async def test_a_mapping_quantity_past_64_bits_is_refused(self, client, db):
        strategy = {"name": "s", "user_id": "alice", "is_intraday": False}
        created = await client.post("/api/v1/strategies", json=strategy)
        strategy_id = created.json()["id"]
        mapping = {"symbol": "SBIN", "exchange": "NSE", "product_type": "MIS"}
        raw = orjson.dumps(mapping)[:-1] + b', "quantity": 18446744073709551616}'
        response = await client.post(
            f"/api/v1/strategies/{strategy_id}/symbols", content=raw, headers=JSON
        )
        refused(response, ["body", 0, "quantity"])
        assert await count(db, "strategy_symbol_mappings") == 0

    async def test_an_id_past_64_bits_in_the_path(self, client):
        response = await client.get("/api/v1/strategies/18446744073709551616")
        refused(response, ["path", "strategy_id"])

    async def test_an_integer_past_64_bits_in_the_query(self, client):
        response = await client.get(TRAFFIC, params={"status_code": str(2**64)})
        refused(response, ["query", "status_code"])


# --- timestamps --------------------------------------------------------------------------------


class TestTimestamps:
    @pytest.mark.parametrize(
        "value",
        [
            "0001-01-01T00:00:00Z",
            "1969-12-31T23:59:59Z",
            "0001-01-01T00:00:00+01:00",  # before Python's first instant once in UTC
            "9999-12-31T23:00:00-05:00",  # after its last
            "2026-03-02T09:15:00",  # no offset
            "2026-02-30T09:15:00Z",
            "2026-03-02 09:15:00Z",
            "2026-03-02T09:15:00.1234567Z",
            "1772442900",
            1772442900,
            0.0,
        ],
    )
    async def test_in_a_body_outside_the_range_or_form(self, client, db, value):
        body = refused(await client.post(TRAFFIC, json=request_log(timestamp=value)), ["body", "timestamp"])  # fmt: skip
        assert "1970" in body["errors"][0]["msg"]
        assert await count(db, "traffic_logs") == 0

    @pytest.mark.parametrize(
        "value",
        [
            "1970-01-01T00:00:00Z",
            "1970-01-01T00:30:00+05:30",  # 1969 in UTC: stored as such
            "9999-12-31T23:59:59.999999Z",
            "9999-12-31T23:59:59+14:00",
        ],
    )
    async def test_the_edges_of_the_range_round_trip(self, client, value):
        response = await client.post(TRAFFIC, json=request_log(timestamp=value))
        assert response.status_code == 201, response.text
        [item] = (await client.get(TRAFFIC)).json()["items"]
        stored = datetime.fromisoformat(item["timestamp"])
        assert stored == datetime.fromisoformat(value)
        assert stored.utcoffset() == timedelta(0)

    @pytest.mark.parametrize("value", ["0.0", "0001-01-01T00:00:00Z", "yesterday"])
    async def test_in_a_query_parameter(self, client, value):
        refused(await client.get(f"{LATENCY}/stats", params={"until": value}), ["query", "until"])

    async def test_a_far_until_is_fine(self, client):
        response = await client.get(f"{LATENCY}/stats", params={"until": "9999-12-31T23:59:59Z"})
        assert response.status_code == 200

    async def test_a_retention_delete_with_a_bad_bound_deletes_nothing(self, client, db):
        assert (await client.post(TRAFFIC, json=request_log())).status_code == 201
        response = await client.delete(TRAFFIC, params={"before": "0001-01-01T00:00:00+05:00"})
        refused(response, ["query", "before"])
        assert await count(db, "traffic_logs") == 1

    async def test_a_cursor_with_a_timestamp_python_cannot_convert(self, client):
        import base64

        raw = orjson.dumps(["0001-01-01T00:00:00+05:00", 1])
        cursor = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        refused(await client.get(TRAFFIC, params={"cursor": cursor}), ["query", "cursor"])


# --- lengths, blanks and types -----------------------------------------------------------------


class TestTextAndTypes:
    async def test_text_over_its_column_length(self, client, db):
        response = await client.post(TRAFFIC, json=request_log(path="/" + "p" * 2048))
        body = refused(response, ["body", "path"])
        assert body["errors"][0]["type"] == "string_too_long"
        assert await count(db, "traffic_logs") == 0

    async def test_a_query_filter_over_its_column_length(self, client):
        response = await client.get(ORDER_LOGS, params={"api_type": "a" * 51})
        refused(response, ["query", "api_type"])

    async def test_a_blank_name(self, client, db):
        response = await client.post(
            "/api/v1/strategies", json={"name": " \u3000\t", "user_id": "a"}
        )
        refused(response, ["body", "name"])
        assert await count(db, "strategies") == 0

    @pytest.mark.parametrize(
        ("field", "value"), [("status_code", "200"), ("duration_ms", "1.5"), ("path", 5)]
    )
    async def test_a_value_of_another_json_type(self, client, db, field, value):
        refused(await client.post(TRAFFIC, json=request_log(**{field: value})), ["body", field])
        assert await count(db, "traffic_logs") == 0

    async def test_a_bool_is_not_a_number_and_a_number_not_a_bool(self, client, db):
        response = await client.post(
            "/api/v1/strategies", json={"name": "s", "user_id": "a", "is_active": 1}
        )
        refused(response, ["body", "is_active"])
        assert await count(db, "strategies") == 0

    async def test_a_token_lookup_takes_a_numeric_token_as_digits(self, client):
        response = await client.post(
            "/api/v1/tokens/lookup", json={"items": [{"token": 2885, "exchange": "NSE"}]}
        )
        assert response.status_code in (200, 503), response.text  # no index: 503, never 422
        refused(
            await client.post(
                "/api/v1/tokens/lookup", json={"items": [{"token": 28.5, "exchange": "NSE"}]}
            ),
            ["body", "items", 0, "token"],
        )


# --- the OpenAPI document states the rules -----------------------------------------------------


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        node: Any = document
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        schema = node
    return schema


def _string_schemas(
    document: dict[str, Any], schema: dict[str, Any], where: str, seen: set[int]
) -> list[tuple[str, dict[str, Any]]]:
    """Every string schema reachable from `schema`, with where it is."""
    if schema.get("$ref") == "#/components/schemas/JsonValue":
        return []  # free-form: its strings have no length but the body's (its own test below)
    schema = _resolve(document, schema)
    if id(schema) in seen:
        return []
    seen.add(id(schema))
    found = [(where, schema)] if schema.get("type") == "string" else []
    for key in ("anyOf", "oneOf", "allOf"):
        for i, part in enumerate(schema.get(key, [])):
            merged = {"type": schema["type"], **part} if "type" in schema and "type" not in part else part  # fmt: skip
            found += _string_schemas(document, merged, f"{where}/{key}{i}", seen)
    for name, part in schema.get("properties", {}).items():
        found += _string_schemas(document, part, f"{where}.{name}", seen)
    for key in ("items", "additionalProperties", "propertyNames"):
        if isinstance(schema.get(key), dict):
            found += _string_schemas(document, schema[key], f"{where}[{key}]", seen)
    return found


def _refuses_nul(schema: dict[str, Any]) -> bool:
    if "enum" in schema or "const" in schema:
        return all("\x00" not in str(v) for v in schema.get("enum", [schema.get("const")]))
    if schema.get("format") in ("ipv4", "ipv6", "email", "date-time") or "anyOf" in schema:
        return True  # the format itself excludes NUL (anyOf: checked part by part)
    pattern = schema.get("pattern")
    return pattern is not None and re.search(pattern, "a\x00b") is None


class TestOpenApi:
    @pytest.fixture
    async def document(self, client) -> dict[str, Any]:
        return (await client.get("/openapi.json")).json()

    async def test_every_reference_resolves(self, document):
        refs = re.findall(r'"\$ref":"([^"]+)"', orjson.dumps(document).decode())
        assert refs
        for ref in set(refs):
            _resolve(document, {"$ref": ref})

    async def test_every_body_string_is_bounded_and_refuses_nul(self, document):
        problems = []
        for path, operations in document["paths"].items():
            for method, operation in operations.items():
                content = operation.get("requestBody", {}).get("content", {})
                schema = content.get("application/json", {}).get("schema")
                if schema is None:
                    continue
                for where, string in _string_schemas(document, schema, "", set()):
                    bounded = "maxLength" in string or "enum" in string or "anyOf" in string
                    bounded = bounded or string.get("format") in ("date-time", "ipv4", "ipv6")
                    # a pattern without * or + or {n,} bounds the length by itself
                    pattern = string.get("pattern", "*")
                    bounded = bounded or not re.search(r"[*+]|\{\d+,\}", pattern)
                    if not bounded or not _refuses_nul(string):
                        problems.append(f"{method.upper()} {path} {where}: {string}")
        assert problems == []

    async def test_json_documents_state_their_rules(self, document):
        value = document["components"]["schemas"]["JsonValue"]
        kinds = {part["type"]: part for part in value["anyOf"]}
        assert kinds["number"]["exclusiveMaximum"] == 2**63  # what a float can state exactly
        assert kinds["number"]["minimum"] == -(2**63)
        assert re.search(kinds["string"]["pattern"], "\x00") is None
        assert re.search(kinds["object"]["propertyNames"]["pattern"], "\x00") is None
        create = document["paths"][ORDER_LOGS]["post"]["requestBody"]["content"]
        item = create["application/json"]["schema"]["oneOf"][0]
        assert item["properties"]["request_data"] == {"$ref": "#/components/schemas/JsonValue"}

    async def test_timestamp_parameters_state_the_range(self, document):
        [until] = [
            p for p in document["paths"][f"{LATENCY}/stats"]["get"]["parameters"]
            if p["name"] == "until"
        ]  # fmt: skip
        schema = until["schema"]["anyOf"][0]
        assert schema["format"] == "date-time"
        pattern = re.compile(schema["pattern"])
        for good in ("1970-01-01T00:00:00Z", "9999-12-31T23:59:59+14:00", "2026-03-02T09:15:00.5-05:30"):  # fmt: skip
            assert pattern.search(good), good
        for bad in ("1969-12-31T23:59:59Z", "9999-12-31T23:00:00-05:00", "2026-03-02T09:15:00"):
            assert not pattern.search(bad), bad


def test_timestamps_in_range_convert_to_utc():
    """Any time the pattern admits has a UTC instant Python can hold (the bound's reason)."""
    latest = datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=23, minutes=59)))
    earliest = datetime(1970, 1, 1, tzinfo=timezone(timedelta(hours=23, minutes=59)))
    assert latest.astimezone(UTC).year == 9999
    assert earliest.astimezone(UTC).year == 1969
