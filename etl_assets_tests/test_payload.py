"""Dead-letter payloads: any value a record can hold becomes JSON that jsonb accepts."""

from __future__ import annotations

import datetime as dt
import decimal
import json
from typing import Any

import pydantic

from etl_assets.records import payload_json


class Odd:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class Reading(pydantic.BaseModel):
    value: float


def test_nan_and_infinities_become_labelled_strings() -> None:
    """jsonb rejects NaN tokens; the payload says "NaN" instead of failing the partition."""
    text = payload_json({"a": float("nan"), "b": float("inf"), "c": -float("inf"), "d": [1.5]})
    assert json.loads(text) == {"a": "NaN", "b": "Infinity", "c": "-Infinity", "d": [1.5]}


def test_nul_and_invalid_unicode_are_made_storable() -> None:
    """NUL shows as U+2400; a lone surrogate keeps its code point as an escape."""
    bad = b"caf\xff".decode("utf-8", "surrogateescape")
    assert json.loads(payload_json({"s": "a\x00b", "t": bad})) == {
        "s": "a\u2400b",
        "t": "caf\\udcff",
    }


def test_values_json_cannot_express_are_kept_as_text() -> None:
    """bytes, Decimal, datetimes and sets are kept readable, not dropped."""
    value: dict[str, Any] = {
        "b": b"\x00\x01",
        "d": decimal.Decimal("1.10"),
        "t": dt.datetime(2024, 1, 2, 3, 4, 5),
        "s": {2, 1},
    }
    assert json.loads(payload_json(value)) == {
        "b": "b'\\x00\\x01'",
        "d": "1.10",
        "t": "2024-01-02 03:04:05",
        "s": [1, 2],
    }


def test_unserializable_and_circular_values_keep_a_labelled_repr() -> None:
    """An object whose repr raises, or a list that contains itself, is still a payload."""
    circular: list[Any] = []
    circular.append(circular)
    assert json.loads(payload_json({"x": Odd()})) == {"x": "<unrepresentable Odd: RuntimeError>"}
    assert json.loads(payload_json(circular)) == {"repr": "[[...]]"}


def test_a_model_payload_is_its_json_dump() -> None:
    """A validated model is stored as pydantic dumps it."""
    assert json.loads(payload_json(Reading(value=2.5))) == {"value": 2.5}
