"""schemathesis hooks of the fuzzing gate (loaded through SCHEMATHESIS_HOOKS by tests/fuzz/run.py).

They teach the generator the rules JSON Schema cannot state and the descriptions do, so that a
case schemathesis calls valid really is. Only positive cases are touched: a negative case keeps
the violation it was built for. Nothing here accepts a failure.

- Strategies (webhook and Chartink): an intraday strategy needs start_time < end_time <=
  squareoff_time, checked against the strategy as it will be stored.
- Idempotency-Key: a client sends a new key with each new request. A generated key ("0") used
  again for another body is rightly a 422, and used again for the same body (a stateful run
  recreating what it deleted) rightly gets the stored first answer: neither is new valid data.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import schemathesis
from schemathesis import GenerationMode

_TIME = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
TIME_FIELDS = ("start_time", "end_time", "squareoff_time")
# A trading day's window, for bodies whose own times break the ordering.
DEFAULT_TIMES = {"start_time": "09:15", "end_time": "15:00", "squareoff_time": "15:15"}
IDEMPOTENCY_KEY = "Idempotency-Key"
_STRATEGIES = re.compile(r"^/api/v1/(chartink/)?strategies(/\{strategy_id\})?$")


def _ordered(body: dict[str, Any]) -> bool:
    times = [body.get(f) for f in TIME_FIELDS]
    if not all(isinstance(t, str) and _TIME.match(t) for t in times):
        return False
    start, end, squareoff = times
    return bool(start < end <= squareoff)


def consistent_times(method: str, body: dict[str, Any]) -> dict[str, Any]:
    """The body with intraday times that satisfy the ordering, whatever the stored strategy."""
    if method == "POST":
        intraday = body.get("is_intraday", True) is not False
    else:
        # An update is checked against the row merged with it: stating all three times makes the
        # check independent of the row (unless the update turns intraday off).
        touches = body.get("is_intraday") is True or any(f in body for f in TIME_FIELDS)
        intraday = touches and body.get("is_intraday") is not False
    if intraday and not _ordered(body):
        return {**body, **DEFAULT_TIMES}
    return body


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    operation = context.operation
    if operation is None or case.meta is None:
        return case
    if case.meta.generation.mode != GenerationMode.POSITIVE:
        return case
    if case.headers and IDEMPOTENCY_KEY in case.headers:
        case.headers[IDEMPOTENCY_KEY] = uuid.uuid4().hex
    method = operation.method.upper()
    # POST creates on the collection, PATCH updates one strategy.
    one = "{" in operation.path
    if (method, one) in (("POST", False), ("PATCH", True)) and (
        _STRATEGIES.match(operation.path) and isinstance(case.body, dict)
    ):
        case.body = consistent_times(method, case.body)
    return case
