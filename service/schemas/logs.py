"""Log ingestion bodies (one object or a batch) and the API-log (order/analyzer) schemas."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Query, Request
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from service.errors import AppError, MalformedBody, PayloadTooLarge, ValidationFailed
from service.schemas.base import InputSchema, Schema
from service.schemas.types import (
    JsonDocument,
    JsonValue,
    StoredJson,
    Timestamp,
    json_screened,
    json_text_is_clean,
    pattern_message,
    text,
)

MAX_BATCH = 1000

SinceParam = Annotated[Timestamp | None, Query(description="From this time on (inclusive).")]
UntilParam = Annotated[Timestamp | None, Query(description="Before this time (exclusive).")]
BeforeParam = Annotated[Timestamp, Query(description="Delete rows older than this.")]

M = TypeVar("M", bound=BaseModel)


class Batch(Generic[M]):
    """A request body that is one `model` object or an array of up to 1000 of them.

    A FastAPI dependency yielding the validated items as a list. It parses the body itself
    because a `Model | list[Model]` body would report errors under union branch names; here a bad
    item is named by its index (`["body", 3, "status_code"]`), and a batch is all-or-nothing.
    """

    def __init__(self, model: type[M]) -> None:
        self.model = model
        self._many: TypeAdapter[list[M]] = TypeAdapter(
            Annotated[list[model], Field(min_length=1, max_length=MAX_BATCH)]  # type: ignore[arg-type,valid-type]
        )
        self._has_json = any(JsonValue in f.metadata for f in model.model_fields.values())

    async def __call__(self, request: Request) -> list[M]:
        return self.parse(await request.body())

    def parse(self, raw: bytes) -> list[M]:
        # Validating straight from the bytes (pydantic's own JSON parser) skips building an
        # intermediate Python object tree: a third less CPU on a 1000-row batch.
        # JSON documents are checked value by value only when the raw text could hold a value
        # they refuse: on a clean 1000-row batch that walk would double the validation time.
        screened = json_screened.set(self._has_json and json_text_is_clean(raw))
        try:
            if raw.lstrip()[:1] != b"[":
                return [self.model.model_validate_json(raw)]
            return self._many.validate_json(raw)
        except ValidationError as error:
            raise _problem(error) from None
        finally:
            json_screened.reset(screened)

    @property
    def openapi(self) -> dict[str, Any]:
        """The request body for the route's `openapi_extra` (FastAPI does not see this body)."""
        item = self.model.model_json_schema(ref_template="#/components/schemas/{model}")
        # Nested models would need components of their own; keep bodies flat. JsonValue is one
        # already: the read model of the same rows (a response FastAPI documents) has it.
        if set(item.pop("$defs", {})) - {"JsonValue"}:
            raise TypeError(f"{self.model.__name__} must be a flat model to be a batch item")
        schema = {
            "oneOf": [
                item,
                {"type": "array", "items": item, "minItems": 1, "maxItems": MAX_BATCH},
            ]
        }
        return {
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": schema}},
            }
        }


def _problem(error: ValidationError) -> AppError:
    details = error.errors(include_url=False)
    if any(item["type"] == "json_invalid" for item in details):
        return MalformedBody()
    if any(item["type"] == "too_long" and not item["loc"] for item in details):
        return PayloadTooLarge(f"A batch holds at most {MAX_BATCH} items.")
    errors = [
        {
            "loc": ["body", *item["loc"]],
            "msg": pattern_message(item) or str(item["msg"]).removeprefix("Value error, "),
            "type": item["type"],
        }
        for item in details
    ]
    first = errors[0]
    detail = f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
    if len(errors) > 1:
        detail += f" (and {len(errors) - 1} more)"
    return ValidationFailed(detail, errors=errors)


class LogItem(BaseModel):
    """Base of log items: InputSchema's strictness (unknown fields are a 422, strings stripped)
    without its PATCH-only after-validator, a Python call per instance that cost a quarter of
    the CPU of a 1000-row batch."""

    model_config = InputSchema.model_config


class Ids(BaseModel):
    ids: list[int] = Field(description="The new rows' ids, in the order they were posted.")


class Count(BaseModel):
    count: int = Field(description="How many rows were written.")


class ApiLogCreate(LogItem):
    api_type: str = text(50, min_length=1, examples=["placeorder"])
    request_data: JsonDocument
    response_data: JsonDocument
    created_at: Timestamp | None = Field(default=None, description="Defaults to now.")


class ApiLogRead(Schema):
    id: int
    api_type: str
    request_data: StoredJson
    response_data: StoredJson
    created_at: datetime


class ApiLogStats(BaseModel):
    total: int
    by_api_type: dict[str, int]
    by_symbol: dict[str, int] = Field(description="From `request_data.symbol`, when present.")
    by_exchange: dict[str, int] = Field(description="From `request_data.exchange`, when present.")
