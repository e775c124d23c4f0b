"""Shared pydantic bases: read models from ORM rows, strict update bodies, list envelopes."""

from __future__ import annotations

from typing import Any, ClassVar, Generic, Self, TypeVar

from pydantic import BaseModel, ConfigDict, GetJsonSchemaHandler, model_validator
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

T = TypeVar("T")


class Schema(BaseModel):
    """Base of response models (built from ORM rows)."""

    model_config = ConfigDict(from_attributes=True)


class InputSchema(BaseModel):
    """Base of request bodies: unknown fields are a 422, not silently dropped.

    Strict: a value of another JSON type than the schema states is a 422 (no "5" for 5, no 0
    for false), so what the OpenAPI document rejects is never accepted.
    """

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, strict=True)

    # PATCH bodies: fields that may be omitted but not set to null.
    not_nullable: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="after")
    def _reject_nulls(self) -> Self:
        for name in self.not_nullable & self.model_fields_set:
            if getattr(self, name) is None:
                raise ValueError(f"{name} may be omitted but not null")
        return self

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        """The schema of a `not_nullable` field is its value's alone: no null branch, and no
        `default: null` (omitting the field is how to leave it unchanged)."""
        schema = handler(core_schema)
        properties = handler.resolve_ref_schema(schema).get("properties", {})
        for name in cls.not_nullable:
            field = cls.model_fields[name]
            prop: dict[str, Any] = properties[field.alias or name]
            branches = [b for b in prop.pop("anyOf", []) if b != {"type": "null"}]
            prop.pop("default", None)
            if len(branches) == 1:
                prop.update(branches[0])
            elif branches:
                prop["anyOf"] = branches
        return schema


class Items(BaseModel, Generic[T]):
    items: list[T]


class Deleted(BaseModel):
    deleted: int
