"""The OpenAPI document: what FastAPI generates, plus the service-wide parts it cannot know.

FastAPI documents what each route declares. What happens around the routes is added here, from
what the middleware, the error handlers and routing really answer: the token check (401/403), the
body limits and content-type check (413/415), malformed JSON (400), a path parameter naming
nothing (404), a method the path lacks (405 with `Allow`), oversized headers (431), an unavailable
database (503 with `Retry-After`). Every problem is `application/problem+json` with the `Problem`
schema. The links let a client (and stateful fuzzing) follow a created resource to the
operations on it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service import idempotency
from service.errors import (
    AppError,
    FieldProblem,
    MalformedBody,
    Problem,
)
from service.problem_types import PROBLEM_CONTENT_TYPE, PROBLEM_TYPE_BASE

API_PREFIX = "/api/v1"
# The middleware applies the body limit and the content-type check to these methods.
BODY_METHODS = frozenset({"post", "put", "patch"})
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}

TAGS = [
    {"name": "health", "description": "Liveness, readiness and Prometheus metrics; no token."},
    {"name": "settings", "description": "The platform's settings: one row, SMTP and security."},
    {"name": "users", "description": "Users, their passwords (argon2) and TOTP secrets."},
    {
        "name": "auth",
        "description": "Broker tokens, API keys (and their verification), login sessions and the "
        "audit log of login attempts.",
    },
    {"name": "symbols", "description": "The master contract: upload, search and lookups."},
    {"name": "tokens", "description": "Broker token ↔ symbol lookups, from memory."},
    {"name": "strategies", "description": "Webhook strategies and their symbol mappings."},
    {"name": "chartink", "description": "Chartink scanner strategies and their symbol mappings."},
    {"name": "order-logs", "description": "The log of every order request and its answer."},
    {"name": "analyzer-logs", "description": "The log of requests in analyze (dry-run) mode."},
    {"name": "traffic", "description": "Traffic logs, IP bans and suspicious-activity counters."},
    {"name": "latency", "description": "Order round-trip latency samples and their statistics."},
    {"name": "orders", "description": "One round trip per order: its context, and its logs."},
    {
        "name": "audit",
        "description": "Who changed what: users, API keys, broker tokens, settings, bans and the "
        "master contract, each change recorded in its own transaction, secrets redacted.",
    },
]

# What each generic status means, for the reader of /docs.
DESCRIPTIONS = {
    400: "The body is not valid JSON.",
    401: "No service token, or one the service does not know (`WWW-Authenticate: Bearer`).",
    403: "The token lacks the scope this operation needs.",
    404: "Nothing exists at this path (no such resource, or no such route).",
    405: "The path does not have this method; `Allow` lists the methods it has.",
    413: "The body is larger than the service accepts.",
    415: "The body is not `application/json` (or another `+json` type).",
    422: "A parameter or a body field is invalid; `errors` names each one.",
    431: "The request's headers are larger than the service accepts.",
    503: "The database is unreachable, busy or not ready; retry after `Retry-After` seconds.",
}

HEADERS: dict[int, dict[str, dict[str, Any]]] = {
    401: {
        "WWW-Authenticate": {
            # Not on a route's own 401 (an unknown API key at /auth/api-keys/verify).
            "description": "`Bearer`, when the service token is missing or unknown.",
            "required": False,
            "schema": {"type": "string", "examples": ["Bearer"]},
        }
    },
    405: {
        "Allow": {
            "description": "The methods this path has.",
            "required": True,
            "schema": {"type": "string"},
        }
    },
    503: {
        "Retry-After": {
            "description": "Seconds to wait before retrying.",
            "required": True,
            "schema": {"type": "integer", "minimum": 0},
        }
    },
}

# Problems answered outside any AppError (Starlette's routing, uvicorn-level limits).
_FALLBACK_EXAMPLES = {
    404: ("not-found", "Not found", "No such route."),
    405: ("method-not-allowed", "Method not allowed", "Method Not Allowed"),
    431: (
        "headers-too-large",
        "Request header fields too large",
        "The request headers are too large.",
    ),
}


def build_openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
            tags=TAGS,
        )
        components = schema.setdefault("components", {})
        components["securitySchemes"] = {
            "serviceToken": {
                "type": "http",
                "scheme": "bearer",
                "description": "A token from `SERVICE_TOKENS`, with the scope the operation needs.",
            }
        }
        _add_problem_schema(components.setdefault("schemas", {}))
        idempotency.document(schema)
        examples = _problem_examples()
        for path, operations in schema.get("paths", {}).items():
            allow = ", ".join(m.upper() for m in HTTP_METHODS if m in operations)
            for method, operation in operations.items():
                if path.startswith(API_PREFIX):
                    operation["security"] = [{"serviceToken": []}]
                _complete_responses(path, method, operation, allow, examples)
        _exactly_one_lookup_key(schema)
        add_links(schema)
        app.openapi_schema = schema
    return app.openapi_schema


def _add_problem_schema(schemas: dict[str, Any]) -> None:
    """Problem is in the document even if no route names it (FastAPI only adds what it sees)."""
    for model in (Problem, FieldProblem):
        if model.__name__ not in schemas:
            generated = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(generated.pop("$defs", {}))
            schemas[model.__name__] = generated


def generic_statuses(path: str, method: str, operation: dict[str, Any]) -> set[int]:
    """The statuses the service may answer for this operation whatever its route does."""
    statuses = {405, 431}
    if path.startswith(API_PREFIX):
        statuses |= {401, 403, 422, 503}
        if method in BODY_METHODS:
            statuses |= {413, 415}
        if "application/json" in operation.get("requestBody", {}).get("content", {}):
            statuses.add(400)
    if any(p.get("in") == "path" for p in operation.get("parameters", [])):
        statuses.add(404)
    return statuses


def _complete_responses(
    path: str,
    method: str,
    operation: dict[str, Any],
    allow: str,
    examples: dict[int, dict[str, Any]],
) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    for status in generic_statuses(path, method, operation):
        responses.setdefault(str(status), {"description": DESCRIPTIONS[status]})
    for code, response in responses.items():
        status = int(code) if code.isdigit() else 0
        if status < 400:
            continue
        headers = dict(HEADERS.get(status, {}))
        if status == 405:
            headers["Allow"] = {**headers["Allow"], "example": allow}
        if headers:
            response.setdefault("headers", {}).update(headers)
        if _is_problem(response):
            # FastAPI puts a route's `model=Problem` under application/json; the service answers
            # problem+json, so that is the one content type a problem has.
            content: dict[str, Any] = {"schema": PROBLEM_REF}
            if status in examples:
                content["example"] = examples[status]
            response["content"] = {PROBLEM_CONTENT_TYPE: content}
    operation["responses"] = dict(sorted(responses.items()))


def _is_problem(response: dict[str, Any]) -> bool:
    content = response.get("content")
    if not content:
        return True  # a generic status just added, or a problem a route declared bare
    if PROBLEM_CONTENT_TYPE in content:
        return True
    schema = content.get("application/json", {}).get("schema")
    return bool(schema == PROBLEM_REF)


def _problem_examples() -> dict[int, dict[str, Any]]:
    """One example problem per status, from the AppError classes the handlers answer with."""
    examples: dict[int, dict[str, Any]] = {}
    pending: list[type[AppError]] = list(AppError.__subclasses__())
    while pending:  # breadth first: the most general class of a status speaks for it
        cls = pending.pop(0)
        pending.extend(cls.__subclasses__())
        examples.setdefault(
            cls.status, _example(cls.status, cls.type_, cls.title, cls.default_detail)
        )
    # Generically, a 400 is a body that is not JSON, whatever else a route may call a 400.
    examples[400] = _example(
        400, MalformedBody.type_, MalformedBody.title, MalformedBody.default_detail
    )
    for status, (type_, title, detail) in _FALLBACK_EXAMPLES.items():
        examples.setdefault(status, _example(status, type_, title, detail))
    examples[422] = {
        **examples[422],
        "detail": "body.email: value is not a valid email address",
        "errors": [
            {
                "loc": ["body", "email"],
                "msg": "value is not a valid email address",
                "type": "value_error",
            }
        ],
    }
    return examples


def _example(status: int, type_: str, title: str, detail: str) -> dict[str, Any]:
    return {"type": PROBLEM_TYPE_BASE + type_, "title": title, "status": status, "detail": detail}


# --- one of several query parameters ------------------------------------------------------------

LOOKUP_KEYS = ("symbol", "token", "brsymbol")


def _exactly_one_lookup_key(schema: dict[str, Any]) -> None:
    """GET /tokens/lookup takes exactly one of symbol, token or brsymbol (422 otherwise).

    Three optional parameters cannot say "exactly one"; one object-typed query parameter, written
    as its properties (`style: form, explode: true`, so `?symbol=…&exchange=…` on the wire
    as before), can: one property, named from the three.
    """
    operation = _operation(schema.get("paths", {}), f"GET {API_PREFIX}/tokens/lookup")
    if operation is None:
        return
    params = operation.get("parameters", [])
    keys = {p["name"]: p for p in params if p.get("in") == "query" and p["name"] in LOOKUP_KEYS}
    if set(keys) != set(LOOKUP_KEYS):
        return
    value = {"type": "string", "pattern": "^[^\\x00]*$"}
    lookup = {
        "name": "lookup",
        "in": "query",
        "required": True,
        "style": "form",
        "explode": True,
        "description": "Exactly one of `symbol`, `token` or `brsymbol`, as its own query "
        "parameter: `?symbol=NIFTY28NOV2424000CE&exchange=NFO`.",
        "schema": {
            "type": "object",
            "properties": dict.fromkeys(LOOKUP_KEYS, value),
            "propertyNames": {"enum": list(LOOKUP_KEYS)},
            "minProperties": 1,
            "maxProperties": 1,
        },
    }
    operation["parameters"] = [p for p in params if p["name"] not in LOOKUP_KEYS] + [lookup]


# --- links -------------------------------------------------------------------------------------


class Link(NamedTuple):
    """An OpenAPI link: from a response of `source` to `target`, both "METHOD /path".

    Parameters and body are runtime expressions; the body is merged into a generated one.
    """

    source: str
    status: int
    name: str
    target: str
    parameters: dict[str, str] = {}
    body: dict[str, str] | None = None


USER = {"username": "$response.body#/username"}
AS_USER_ID = {"user_id": "$response.body#/username"}


def _strategy_links(base: str, kind: str) -> list[Link]:
    """A strategy kind (webhook or Chartink) and its symbol mappings, under `base`.

    No link leads to the by-webhook read: it is the same resource as `{strategy_id}` under
    another path, so a stateful run that deleted it through `{strategy_id}` would take the
    by-webhook 404 for a created resource gone missing.
    """
    one, symbols = f"{base}/{{strategy_id}}", f"{base}/{{strategy_id}}/symbols"
    created = {"strategy_id": "$response.body#/id"}
    same = {"strategy_id": "$request.path.strategy_id"}
    mapping = {**same, "mapping_id": "$response.body#/items/0/id"}
    return [
        Link(f"POST {base}", 201, f"Get{kind}Strategy", f"GET {one}", created),
        Link(f"POST {base}", 201, f"Update{kind}Strategy", f"PATCH {one}", created),
        Link(f"POST {base}", 201, f"Delete{kind}Strategy", f"DELETE {one}", created),
        Link(f"POST {base}", 201, f"List{kind}Symbols", f"GET {symbols}", created),
        Link(f"POST {base}", 201, f"Add{kind}Symbols", f"POST {symbols}", created),
        Link(f"POST {symbols}", 201, f"List{kind}Symbols", f"GET {symbols}", same),
        Link(
            f"POST {symbols}",
            201,
            f"Delete{kind}Symbol",
            f"DELETE {symbols}/{{mapping_id}}",
            mapping,
        ),
        Link(
            f"PATCH {one}",
            200,
            f"Get{kind}Strategy",
            f"GET {one}",
            {"strategy_id": "$response.body#/id"},
        ),
    ]


def _links() -> list[Link]:
    users, user = "/api/v1/users", "/api/v1/users/{username}"
    token, key = "/api/v1/auth/broker-tokens/{name}", "/api/v1/auth/api-keys/{user_id}"
    sessions, session = "/api/v1/auth/sessions", "/api/v1/auth/sessions/{session_id}"
    written_token = {"name": "$response.body#/name"}
    written_key = {"user_id": "$response.body#/user_id"}
    plaintext_key = {"api_key": "$response.body#/api_key"}
    created_session = {"session_id": "$response.body#/session_id"}
    ban = {"ip": "$response.body#/ip_address"}
    return [
        # A user, and everything that hangs off its username.
        Link(f"POST {users}", 201, "GetUser", f"GET {user}", USER),
        Link(f"POST {users}", 201, "UpdateUser", f"PATCH {user}", USER),
        Link(f"POST {users}", 201, "DeleteUser", f"DELETE {user}", USER),
        Link(f"POST {users}", 201, "SetPassword", f"PUT {user}/password", USER),
        Link(
            f"POST {users}",
            201,
            "VerifyPassword",
            f"POST {user}/verify-password",
            USER,
            {"password": "$request.body#/password"},
        ),
        Link(f"POST {users}", 201, "GetTotp", f"GET {user}/totp", USER),
        Link(f"POST {users}", 201, "VerifyTotp", f"POST {user}/totp/verify", USER),
        Link(
            f"POST {users}", 201, "FindByEmail", f"GET {users}", {"email": "$response.body#/email"}
        ),
        Link(
            f"POST {users}",
            201,
            "PutBrokerToken",
            f"PUT {token}",
            {"name": "$response.body#/username"},
        ),
        Link(f"POST {users}", 201, "PutApiKey", f"PUT {key}", AS_USER_ID),
        Link(f"POST {users}", 201, "GetApiKey", f"GET {key}", AS_USER_ID),
        Link(f"POST {users}", 201, "CreateSession", f"POST {sessions}", body=USER),
        Link(f"POST {users}", 201, "ListSessions", f"GET {sessions}", USER),
        Link(f"POST {users}", 201, "DeleteUserSessions", f"DELETE {sessions}", USER),
        Link(f"POST {users}", 201, "CreateStrategy", "POST /api/v1/strategies", body=AS_USER_ID),
        Link(f"POST {users}", 201, "ListStrategies", "GET /api/v1/strategies", AS_USER_ID),
        Link(
            f"POST {users}",
            201,
            "CreateChartinkStrategy",
            "POST /api/v1/chartink/strategies",
            body=AS_USER_ID,
        ),
        Link(
            f"POST {users}",
            201,
            "ListChartinkStrategies",
            "GET /api/v1/chartink/strategies",
            AS_USER_ID,
        ),
        Link(f"PATCH {user}", 200, "GetUser", f"GET {user}", USER),
        # Broker tokens and API keys, by the username they were stored under.
        Link(f"PUT {token}", 200, "GetBrokerToken", f"GET {token}", written_token),
        Link(f"PUT {token}", 200, "GetBrokerSecret", f"GET {token}/secret", written_token),
        Link(f"PUT {token}", 200, "RevokeBrokerToken", f"POST {token}/revoke", written_token),
        Link(f"PUT {key}", 200, "GetApiKey", f"GET {key}", written_key),
        Link(f"PUT {key}", 200, "DeleteApiKey", f"DELETE {key}", written_key),
        Link(f"PUT {key}", 200, "SetOrderMode", f"PUT {key}/order-mode", written_key),
        Link(
            f"PUT {key}",
            200,
            "VerifyApiKey",
            "POST /api/v1/auth/api-keys/verify",
            body=plaintext_key,
        ),
        Link(
            f"GET {key}",
            200,
            "VerifyApiKey",
            "POST /api/v1/auth/api-keys/verify",
            body=plaintext_key,
        ),
        # Sessions.
        Link(f"POST {sessions}", 201, "TouchSession", f"POST {session}/touch", created_session),
        Link(f"POST {sessions}", 201, "DeleteSession", f"DELETE {session}", created_session),
        Link(f"POST {sessions}", 201, "ListSessions", f"GET {sessions}", USER),
        # Strategies of both kinds, their symbol mappings; bans.
        *_strategy_links("/api/v1/strategies", ""),
        *_strategy_links("/api/v1/chartink/strategies", "Chartink"),
        Link(
            "POST /api/v1/traffic/bans", 201, "GetBanStatus", "GET /api/v1/traffic/bans/{ip}", ban
        ),
        Link(
            "POST /api/v1/traffic/bans", 201, "DeleteBan", "DELETE /api/v1/traffic/bans/{ip}", ban
        ),
    ]


LINKS = _links()


def _operation(paths: dict[str, Any], method_and_path: str) -> dict[str, Any] | None:
    method, path = method_and_path.split(" ", 1)
    operation: dict[str, Any] | None = paths.get(path, {}).get(method.lower())
    return operation


def add_links(schema: dict[str, Any]) -> None:
    """Put each link on its source response, naming the target by its operationId.

    A link whose source or target the document lacks is left out rather than breaking the
    document; tests/fuzz/test_openapi.py fails on it.
    """
    paths = schema.get("paths", {})
    for link in LINKS:
        source, target = _operation(paths, link.source), _operation(paths, link.target)
        response = (source or {}).get("responses", {}).get(str(link.status))
        if response is None or target is None:
            continue
        definition: dict[str, Any] = {"operationId": target["operationId"]}
        if link.parameters:
            definition["parameters"] = link.parameters
        if link.body is not None:
            definition["requestBody"] = link.body
        response.setdefault("links", {})[link.name] = definition
