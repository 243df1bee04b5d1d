"""Which models the columnar path can validate by types alone (no database)."""

from __future__ import annotations

import datetime as dt
from typing import Literal

import pydantic
import pytest

from etl_assets.arrow_shaper import vectorisable


class Plain(pydantic.BaseModel):
    id: int
    name: str
    score: float | None = None
    seen: dt.datetime | None = None
    day: dt.date | None = None
    ok: bool = True
    blob: bytes | None = None


class Bounded(pydantic.BaseModel):
    id: int = pydantic.Field(ge=0, lt=100)
    code: str = pydantic.Field(min_length=1, max_length=5)
    kind: Literal["a", "b"] | None = None


class Patterned(pydantic.BaseModel):
    code: str = pydantic.Field(pattern="^[a-z]+$")


class Validated(pydantic.BaseModel):
    id: int

    @pydantic.field_validator("id")
    @classmethod
    def _positive(cls, value: int) -> int:
        return value


class Choice(pydantic.BaseModel):
    kind: Literal["a", "b"]


class Strict(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(strict=True)
    id: int


class Closed(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    id: int


@pytest.mark.parametrize("model", [Plain, Bounded, Choice])
def test_types_bounds_lengths_and_literals_are_checked_column_wise(
    model: type[pydantic.BaseModel],
) -> None:
    """Types, Optional, ge/gt/le/lt, min/max_length and Literal are all Arrow compute."""
    assert vectorisable(model) is True


@pytest.mark.parametrize("model", [Validated, Patterned, Strict, Closed])
def test_anything_types_cannot_express_goes_through_pydantic(
    model: type[pydantic.BaseModel],
) -> None:
    """Validators, patterns, strict mode and extra='forbid' need pydantic per row."""
    assert vectorisable(model) is False
