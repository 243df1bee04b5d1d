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


class Constrained(pydantic.BaseModel):
    id: int = pydantic.Field(ge=0)


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


def test_a_model_of_plain_types_is_validated_by_arrow_casts() -> None:
    """Types and Optional are all Arrow needs to check."""
    assert vectorisable(Plain) is True


@pytest.mark.parametrize("model", [Constrained, Validated, Choice, Strict, Closed])
def test_anything_types_cannot_express_goes_through_pydantic(
    model: type[pydantic.BaseModel],
) -> None:
    """Constraints, validators, Literal, strict mode and extra='forbid' need pydantic per row."""
    assert vectorisable(model) is False
