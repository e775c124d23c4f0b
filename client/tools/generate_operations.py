"""Write `src/algoways_store_client/_operations.py` from the served OpenAPI document.

    python client/tools/generate_operations.py openapi.json   # or: ... --app (imports service)

One entry per operation (method + path) in `OPERATIONS`, and one named method per operation in
`GeneratedOperations`, except the operations `client.py` types by hand (`HAND_TYPED`).
tests/test_client.py fails when the table and the served document drift.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

TARGET = Path(__file__).resolve().parents[1] / "src" / "algoways_store_client" / "_operations.py"

# Friendly names for the operations the platform calls on every order.
RENAMES = {
    "get_order_context": "orders_context",
    "get_basket_context": "orders_context_batch",
    "record_order": "orders_record",
    "get_ban_status": "ban_status",
    "get_strategy_by_webhook": "strategy_by_webhook",
    "metrics": "get_metrics",
    "live": "health_live",
    "ready": "health_ready",
}
HAND_TYPED = {
    "orders_context",
    "orders_context_batch",
    "orders_record",
    "verify_api_key",
    "lookup_token",
    "lookup_tokens",
    "ban_status",
    "strategy_by_webhook",
    "get_settings",
    "create_order_logs",
    "create_analyzer_logs",
    "create_latency",
    "create_user",
    "get_user",
    "list_users",
    "put_api_key",
    "get_api_key",
    "delete_api_key",
}
SCALARS = {"string": "str", "integer": "int", "boolean": "bool", "number": "float"}


def _py_type(schema: dict[str, Any]) -> str:
    if "anyOf" in schema:
        return " | ".join(dict.fromkeys(_py_type(s) for s in schema["anyOf"]))
    if schema.get("type") == "null":
        return "None"
    if schema.get("type") == "array":
        return f"list[{_py_type(schema.get('items', {}))}]"
    return SCALARS.get(schema.get("type", ""), "Any")


def method_name(operation_id: str, method: str, path: str) -> str:
    suffix = re.sub(r"\W", "_", path) + "_" + method
    name = operation_id.removesuffix(suffix)
    name = RENAMES.get(name, name)
    if path.startswith("/api/v1/chartink/"):
        name = "chartink_" + name
    return name


def operations(document: dict[str, Any]) -> list[tuple[str, str, str, bool, dict[str, Any]]]:
    """(method name, HTTP method, path, writes, operation) for every operation of the document."""
    found = []
    for path, by_method in document["paths"].items():
        for method, operation in by_method.items():
            name = method_name(operation["operationId"], method, path)
            verb = method.upper()
            # A POST writes when the server takes an Idempotency-Key for it (its document says
            # so); the others only read, and are safe to retry without one.
            headers = {p["name"] for p in operation.get("parameters", []) if p["in"] == "header"}
            writes = verb == "POST" and "Idempotency-Key" in headers
            found.append((name, verb, path, writes, operation))
    return found


def generate(document: dict[str, Any]) -> str:
    table: list[str] = []
    methods: list[str] = []
    for name, verb, path, writes, operation in operations(document):
        table.append(f"    {name!r}: Operation({verb!r}, {path!r}, writes={writes}),")
        if name in HAND_TYPED:
            continue
        args: list[str] = ["self"]
        path_args: list[str] = []
        query: list[str] = []
        for p in operation.get("parameters", []):
            pname, where = p["name"], p["in"]
            ptype = _py_type(p.get("schema", {}))
            if where == "path":
                args.append(f"{pname}: {ptype}")
                path_args.append(f"{pname!r}: {pname}")
        kw: list[str] = []
        for p in operation.get("parameters", []):
            if p["in"] != "query":
                continue
            pname = p["name"]
            ident = pname + "_" if pname in {"all", "format"} else pname
            ptype = _py_type(p.get("schema", {}))
            if p.get("required"):
                kw.append(f"{ident}: {ptype}")
            else:
                kw.append(
                    f"{ident}: {ptype} | None = None"
                    if "None" not in ptype
                    else f"{ident}: {ptype} = None"
                )
            query.append(f"{pname!r}: {ident}")
        content = operation.get("requestBody", {}).get("content", {})
        body_arg = ""
        if "application/json" in content:
            required = operation["requestBody"].get("required", False)
            kw.insert(0, "body: Any" if required else "body: Any = None")
            body_arg = ", json=body"
        elif content:
            kw.insert(0, "content: str | bytes")
            kw.insert(1, f"content_type: str = {next(iter(content))!r}")
            body_arg = ", content=content, content_type=content_type"
        if writes:
            kw.append("idempotency_key: str | None = None")
            body_arg += ", idempotency_key=idempotency_key"
        signature = ", ".join(args + (["*", *kw] if kw else []))
        summary = (operation.get("summary") or name).replace('"', "'")
        call_args = f"{name!r}"
        if path_args:
            call_args += ", path={" + ", ".join(path_args) + "}"
        if query:
            call_args += ", params={" + ", ".join(query) + "}"
        methods.append(
            f"    async def {name}({signature}) -> Any:\n"
            f'        """{verb} {path}: {summary}."""\n'
            f"        return await self._call({call_args}{body_arg})\n"
        )
    return HEADER + "\n".join(table) + "\n}\n\n" + CLASS + "\n".join(methods)


HEADER = '''"""Generated by client/tools/generate_operations.py from the served /openapi.json: do not edit.

Every operation of the API, by method name; tests/test_client.py fails when this drifts from the
served document."""

from __future__ import annotations

from typing import Any, NamedTuple


class Operation(NamedTuple):
    method: str
    path: str
    # A POST that creates or writes: retried only under an Idempotency-Key.
    writes: bool


OPERATIONS: dict[str, Operation] = {
'''

CLASS = '''class GeneratedOperations:
    """One method per operation the client does not type by hand; each returns the decoded JSON
    body (None for 204, text for non-JSON answers)."""

    async def _call(
        self,
        name: str,
        *,
        path: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        json: Any = None,
        content: str | bytes | None = None,
        content_type: str | None = None,
        idempotency_key: str | None = None,
    ) -> Any:
        raise NotImplementedError

'''


def main() -> None:
    if sys.argv[1:] == ["--app"]:
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
        from service.main import create_app
        from tests.support import make_settings

        document = create_app(make_settings("sqlite+aiosqlite:///:memory:")).openapi()
    else:
        document = json.loads(Path(sys.argv[1]).read_text())
    TARGET.write_text(generate(document))


if __name__ == "__main__":
    main()
