"""The value types every input goes through: only what both databases store faithfully, each rule
stated in the OpenAPI document exactly as it is enforced.

- Text never holds NUL (PostgreSQL cannot store it in text or JSONB) and has a maximum length,
  the column's where the column is bounded. The rule is a `pattern`, so the schema says it.
- Integers are bounded by their column (`INT32_MAX` for INTEGER, `INT64_*` for BIGINT).
- Numbers are finite and bounded (`allow_inf_nan=False`, `minimum`/`maximum`).
- Timestamps are RFC 3339 with an offset, years 1970-9999 as written, and never convert to a UTC
  instant past 9999-12-31 (Python's datetime ends there): a year-9999 time takes no negative
  offset. Strings only: a unix number is not a timestamp here.
- JSON documents (`JsonDocument`) hold no NUL in strings or keys and only numbers within the
  signed 64-bit range: PostgreSQL's JSONB refuses `\\u0000`, non-finite numbers are not JSON,
  and it returns a float such as 2.1e60 as a 61-digit integer that 64-bit JSON parsers (this
  service's COPY path, most clients) cannot read back.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import email_validator
import orjson
from fastapi import Path, Query
from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    SecretStr,
    ValidationError,
    WithJsonSchema,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, InitErrorDetails, PydanticCustomError, core_schema

INT32_MAX = 2**31 - 1
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
# What the schema states as `exclusiveMaximum`: FastAPI writes bounds as floats, and 2^63 - 1 as
# a float is 2^63, so "maximum: 2^63 - 1" would read as admitting 2^63. Both ends are exact.
INT64_LIMIT = 2**63

# --- text --------------------------------------------------------------------------------------

NUL_FREE = r"^[^\x00]*$"
# Unicode White_Space: exactly what pydantic strips from a body string (str_strip_whitespace).
_WHITESPACE = r"\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# A body string that is still non-empty once stripped: one character that is neither NUL nor
# whitespace. `min_length=1` alone would let the schema accept "   ", which stripping empties.
NUL_FREE_NOT_BLANK = rf"^[^\x00]*[^\x00{_WHITESPACE}][^\x00]*$"


def text(max_length: int, *, min_length: int = 0, **field: Any) -> Any:
    """A body string field: NUL-free, at most `max_length` characters, optionally not blank.

    Body strings are stripped of surrounding whitespace (InputSchema), so `min_length=1` means
    "not blank"; other minimums go in a field's own `pattern`.
    """
    if min_length > 1:
        raise ValueError("give a pattern for minimums above 1")
    return Field(
        min_length=min_length or None,
        max_length=max_length,
        pattern=NUL_FREE_NOT_BLANK if min_length else NUL_FREE,
        **field,
    )


@dataclass(frozen=True, slots=True)
class SecretText:
    """A SecretStr body field, checked on its text exactly as sent: never stripped (a password or
    key with surrounding spaces is that password or key), NUL-free or `pattern`, and within the
    lengths, all stated in the schema. Replaces SecretStr's own schema, so no `Field` length
    constraint goes next to it."""

    max_length: int | None = None
    min_length: int | None = None
    pattern: str = NUL_FREE

    def __get_pydantic_core_schema__(
        self, _source: Any, _handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return core_schema.no_info_after_validator_function(
            SecretStr,
            core_schema.str_schema(
                min_length=self.min_length,
                max_length=self.max_length,
                pattern=self.pattern,
                strip_whitespace=False,
            ),
        )

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {**handler(schema), "format": "password", "writeOnly": True}


def query_text(max_length: int, *, min_length: int = 0, **query: Any) -> Any:
    """A query parameter string: NUL-free, at most `max_length` characters (never stripped)."""
    return Query(min_length=min_length or None, max_length=max_length, pattern=NUL_FREE, **query)


def path_text(max_length: int, **path: Any) -> Any:
    """A path parameter string: NUL-free, at most `max_length` characters."""
    return Path(max_length=max_length, pattern=NUL_FREE, **path)


# IPv4 or IPv6, in the schema as the two standard formats (validated by the field's own parser).
IP_SCHEMA: dict[str, Any] = {
    "type": "string",
    "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}],
    "examples": ["203.0.113.7", "2001:db8::1"],
}

# --- numbers -----------------------------------------------------------------------------------

# Durations in milliseconds: up to a million seconds (11.6 days). Bounded so that a sum over
# millions of rows stays finite, and an average can never turn into infinity or NaN.
MAX_MILLISECONDS = 1e9
Milliseconds = Annotated[
    float,
    Field(ge=0, le=MAX_MILLISECONDS, allow_inf_nan=False, description="Milliseconds, 0 to 1e9."),
]


def _integral(value: object) -> object:
    # JSON Schema's `integer` is any number without a fraction, so 5.0 is one; strict parsing
    # alone would refuse it. Anything else goes to the strict int check as it came.
    return int(value) if type(value) is float and value.is_integer() else value


# Last in a body integer's Annotated, after its bounds (so they stay `minimum`/`maximum` in the
# schema): `Annotated[int, Field(ge=1), INTEGRAL]` takes 5 or 5.0, never "5" or true.
INTEGRAL = BeforeValidator(_integral)
Int64 = Annotated[int, Field(ge=INT64_MIN, lt=INT64_LIMIT), INTEGRAL]
Int32Id = Annotated[int, Field(ge=1, le=INT32_MAX), INTEGRAL]

# --- timestamps --------------------------------------------------------------------------------

_DATE = r"-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
_FRACTION = r"(\.[0-9]{1,6})?"
_OFFSET = r"([01][0-9]|2[0-3]):[0-5][0-9]"
TIMESTAMP_PATTERN = (
    rf"^((19[7-9][0-9]|[2-8][0-9]{{3}}|9[0-8][0-9]{{2}}|99[0-8][0-9]){_DATE}{_FRACTION}"
    rf"(Z|[+-]{_OFFSET})|9999{_DATE}{_FRACTION}(Z|\+{_OFFSET}))$"
)
_TIMESTAMP = re.compile(TIMESTAMP_PATTERN)
TIMESTAMP_RULE = (
    "an RFC 3339 date-time with an offset (Z or ±HH:MM), years 1970 to 9999; a year-9999 time "
    "may not have a negative offset"
)


def _timestamp(value: object) -> datetime:
    if isinstance(value, str):
        if _TIMESTAMP.match(value):
            try:
                return datetime.fromisoformat(value)
            except ValueError:  # a day the month does not have
                pass
    elif isinstance(value, datetime) and value.tzinfo is not None and value.year >= 1970:
        try:
            value.astimezone(UTC)
            return value
        except OverflowError:
            pass
    raise PydanticCustomError("timestamp", f"must be {TIMESTAMP_RULE}")


Timestamp = Annotated[
    datetime,
    BeforeValidator(_timestamp),
    WithJsonSchema({"type": "string", "format": "date-time", "pattern": TIMESTAMP_PATTERN}),
]


def pattern_message(error: Mapping[str, Any]) -> str | None:
    """A readable message for a pydantic error of one of the patterns above (the pattern itself
    is no message for a client); None for any other error."""
    if error.get("type") != "string_pattern_mismatch":
        return None
    return {
        NUL_FREE: "must not contain NUL (\\u0000)",
        NUL_FREE_NOT_BLANK: "must not be blank or contain NUL (\\u0000)",
        TIMESTAMP_PATTERN: f"must be {TIMESTAMP_RULE}",
    }.get((error.get("ctx") or {}).get("pattern", ""))


# --- JSON documents ----------------------------------------------------------------------------


def _json_value_schema(_: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
    itself = handler(core_schema.definition_reference_schema("JsonValue"))
    return {
        "description": "Any JSON value whose strings and keys hold no NUL (\\u0000) and whose "
        "numbers are within the signed 64-bit range.",
        "anyOf": [
            {
                "type": "object",
                "propertyNames": {"pattern": NUL_FREE},
                "additionalProperties": itself,
            },
            {"type": "array", "items": itself},
            {"type": "string", "pattern": NUL_FREE},
            {"type": "number", "minimum": INT64_MIN, "exclusiveMaximum": INT64_LIMIT},
            {"type": "boolean"},
            {"type": "null"},
        ],
    }


class JsonValue:
    """Any JSON value, as parsed; named in OpenAPI as the recursive `JsonValue` component.

    Validation is the parse alone: JsonDocument adds the rules for input. Output fields use this
    type for their schema only, so a row stored before the rules can still be read.
    """

    @classmethod
    def __get_pydantic_core_schema__(
        cls, _source: Any, _handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return core_schema.any_schema(
            ref="JsonValue", metadata={"pydantic_js_functions": [_json_value_schema]}
        )


# Set by a caller that has screened the raw JSON text already (logs.Batch): nothing in it can
# break a rule, so the per-value walk below is skipped on the log ingestion path.
json_screened: ContextVar[bool] = ContextVar("json_screened", default=False)

# What must appear in JSON text for a parsed value to break a rule, once every digit is read
# as 0 and E as e: a NUL escape, NaN / Infinity, an exponent, or 19 digits in a row (2^63 has
# 19). Each is one memchr-speed scan of the body.
_AS_ZERO = bytes.maketrans(b"123456789E", b"000000000e")
_SUSPECTS = (b"\\u0000", b"NaN", b"Infinity", b"0e", b"0" * 19)


def json_text_is_clean(raw: bytes) -> bool:
    """True when no JSON value parsed from `raw` can break a JsonDocument rule (a cheap scan:
    false alarms only cost the full check)."""
    zeroed = raw.translate(_AS_ZERO)
    return not any(suspect in zeroed for suspect in _SUSPECTS)


def json_problems(value: Any) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """(location inside `value`, message) of every string, key or number a JsonDocument refuses."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(value, ())]
    while stack:
        item, where = stack.pop()
        kind = type(item)
        if kind is str:
            if "\x00" in item:
                yield where, "must not contain NUL (\\u0000)"
        elif kind is dict:
            for key, child in item.items():
                if "\x00" in key:
                    yield (*where, key), "keys must not contain NUL (\\u0000)"
                stack.append((child, (*where, key)))
        elif kind is list:
            stack.extend((child, (*where, i)) for i, child in enumerate(item))
        elif kind is float:
            if not math.isfinite(item) or not INT64_MIN <= item <= INT64_MAX:
                yield where, "numbers must be finite and within the signed 64-bit range"
        elif kind is int and not INT64_MIN <= item <= INT64_MAX:
            yield where, "numbers must be within the signed 64-bit range"


def _json_document(value: Any) -> Any:
    if json_screened.get():
        return value
    problems = [
        InitErrorDetails(type=PydanticCustomError("json_value", message), loc=where, input=value)
        for where, message in json_problems(value)
    ]
    if problems:
        raise ValidationError.from_exception_data("JsonDocument", problems)
    return value


# Input: every rule checked. Output: the same schema, no check (see JsonValue).
JsonDocument = Annotated[Any, JsonValue, AfterValidator(_json_document)]
StoredJson = Annotated[Any, JsonValue]


def json_max_bytes(max_bytes: int) -> AfterValidator:
    """A JsonDocument's size limit: at most `max_bytes` bytes serialised as compact UTF-8 JSON
    (as orjson writes it), a 422 past it. JSON Schema has no word for a serialised size, so the
    field's description states it (`json_size_rule`)."""

    def _size(value: Any) -> Any:
        if len(orjson.dumps(value)) > max_bytes:
            raise PydanticCustomError(
                "json_too_large", f"must be at most {max_bytes} bytes serialised as JSON"
            )
        return value

    return AfterValidator(_size)


JSON_RULES = AfterValidator(_json_document)


def json_input_schema(max_bytes: int, what: str = "") -> WithJsonSchema:
    """The schema of a size-limited JSON body field: the shared `JsonValue` component (which the
    response models using StoredJson define) with the size rule in its description.

    Written out rather than generated: a body field generating `JsonValue` in validation mode
    next to the responses' serialization mode would make FastAPI split the component into
    `JsonValue-Input` and `-Output`, and the component's self-references would name neither.
    """
    return WithJsonSchema(
        {
            # Under allOf: pydantic resolves a bare $ref next to a description, and this one
            # is FastAPI's to resolve.
            "allOf": [{"$ref": "#/components/schemas/JsonValue"}],
            "description": f"{what}Any JSON value of at most {max_bytes} bytes serialised as "
            "compact UTF-8 JSON (more: 422), with no NUL (\\u0000) in its strings or keys and "
            "numbers within the signed 64-bit range.",
        }
    )


# --- email addresses ---------------------------------------------------------------------------

EMAIL_RULE = (
    "An email address, checked for syntax only (the domain is not looked up, and a dotless or "
    "`.test` domain is fine); domains under .arpa, .invalid, .local, .localhost and .onion are "
    "refused. Stored lower-cased."
)


def _email(value: str) -> str:
    # Syntax only: the service stores addresses, it does not mail them, and tests and private
    # deployments use addresses no public DNS knows.
    try:
        checked = email_validator.validate_email(
            value, check_deliverability=False, test_environment=True, globally_deliverable=False
        )
    except email_validator.EmailNotValidError as error:
        raise PydanticCustomError(
            "value_error", "value is not a valid email address: {reason}", {"reason": str(error)}
        ) from None
    return checked.normalized.lower()


# 254: the longest address SMTP carries (RFC 5321 with RFC 3696's erratum).
EMAIL_MAX_LENGTH = 254
EmailAddress = Annotated[
    str,
    Field(max_length=EMAIL_MAX_LENGTH),
    AfterValidator(_email),
    WithJsonSchema(
        {
            "type": "string",
            "format": "email",
            "maxLength": EMAIL_MAX_LENGTH,
            "pattern": NUL_FREE,  # the syntax check refuses NUL as any other control character
            "description": EMAIL_RULE,
        }
    ),
]
