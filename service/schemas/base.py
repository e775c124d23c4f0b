"""Shared pydantic bases: read models from ORM rows, strict update bodies, list envelopes."""

from __future__ import annotations

from typing import ClassVar, Generic, Self, TypeVar

from pydantic import BaseModel, ConfigDict, model_validator

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


class Items(BaseModel, Generic[T]):
    items: list[T]


class Deleted(BaseModel):
    deleted: int
