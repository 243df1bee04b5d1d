"""RecordShaper: records in, row values and dead letters out, every record accounted;
the dict fast path accepts exactly what the model does."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pydantic
import pytest

from etl_assets.records import RecordShaper, fields_validator

DAY = dt.date(2024, 6, 1)


class Plain(pydantic.BaseModel):
    event_id: int
    kind: str = "view"
    amount: float | None = pydantic.Field(default=None, alias="amt", ge=0)

    @pydantic.field_validator("kind")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower()


class Strict(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", strict=True, str_strip_whitespace=True)
    event_id: int
    kind: str


class AfterModel(Plain):
    @pydantic.model_validator(mode="after")
    def _check(self) -> AfterModel:
        return self


class PostInit(Plain):
    def model_post_init(self, context: Any) -> None:
        pass


def _shapers(model: type[pydantic.BaseModel], columns: tuple[str, ...]) -> tuple[Any, Any]:
    fast = RecordShaper(columns, "data_date", DAY, model)
    slow = RecordShaper(columns, "data_date", DAY, model)
    slow._as_dicts = None  # the model path, as before the fast path existed
    return fast, slow


@pytest.mark.parametrize("model", [AfterModel, PostInit])
def test_models_with_more_than_field_validation_keep_the_model_path(
    model: type[pydantic.BaseModel],
) -> None:
    """A model validator or model_post_init gets no dict validator: the model path runs."""
    assert fields_validator(model) is None


@pytest.mark.parametrize(
    ("model", "columns", "chunk"),
    [
        (
            Plain,
            ("event_id", "kind", "amount"),
            [{"event_id": 1}, {"event_id": "2", "kind": "CLICK", "amt": 3}, {"event_id": 3.0}],
        ),
        (Strict, ("event_id", "kind"), [{"event_id": 1, "kind": " a "}]),
    ],
)
def test_valid_dicts_give_the_rows_the_model_gives(
    model: type[pydantic.BaseModel], columns: tuple[str, ...], chunk: list[dict[str, Any]]
) -> None:
    """Defaults, aliases, coercion, field validators and config act as through the model."""
    fast, slow = _shapers(model, columns)
    assert fields_validator(model) is not None
    assert fast._plain_dicts(chunk) is not None  # the fast path did it
    shaped, expected = fast.shape(5, chunk), slow.shape(5, chunk)
    assert (shaped.rows, shaped.record_nos, shaped.rejected) == (
        expected.rows,
        expected.record_nos,
        [],
    )
    assert all(row[-1] == DAY for row in shaped.rows)


@pytest.mark.parametrize(
    ("model", "columns", "chunk"),
    [
        (Plain, ("event_id", "kind", "amount"), [{"event_id": 1}, {"event_id": "x"}]),
        (Plain, ("event_id", "kind", "amount"), [{"event_id": 1, "amt": -1}]),
        (Strict, ("event_id", "kind"), [{"event_id": "1", "kind": "a"}]),
        (Strict, ("event_id", "kind"), [{"event_id": 1, "kind": "a", "extra": 1}]),
        (Plain, ("event_id", "kind", "amount"), [Plain(event_id=1), {"event_id": 2}]),
    ],
)
def test_any_invalid_record_gives_the_dead_letters_of_the_model_path(
    model: type[pydantic.BaseModel], columns: tuple[str, ...], chunk: list[Any]
) -> None:
    """A chunk the dict path refuses is shaped by the model path: same rows, same letters."""
    fast, slow = _shapers(model, columns)
    shaped, expected = fast.shape(0, chunk), slow.shape(0, chunk)
    assert (shaped.rows, shaped.record_nos, shaped.rejected) == (
        expected.rows,
        expected.record_nos,
        expected.rejected,
    )


def test_rows_leave_the_partition_column_to_the_table_when_asked() -> None:
    """With partition_from_table the rows hold the data columns only, on every path."""
    columns = ("event_id", "kind", "amount")
    for model in (None, Plain, AfterModel):
        shaper = RecordShaper(columns, "data_date", DAY, model, partition_from_table=True)
        key = "amount" if model is None else "amt"  # the models' alias
        plain = shaper.shape(0, [{"event_id": 1, "kind": "a", key: 1.0}])
        odd = shaper.shape(1, [{"event_id": 2, "kind": "b", key: 2.0, "data_date": DAY}])
        assert plain.rows == [(1, "a", 1.0)]
        assert odd.rows == [(2, "b", 2.0)]


ORDER_DAY = dt.date(2024, 3, 1)


class Order(pydantic.BaseModel):
    order_id: int
    amount: float


def shaper(model: type[pydantic.BaseModel] | None = Order) -> RecordShaper:
    return RecordShaper(("order_id", "amount"), "data_date", ORDER_DAY, model)


def values(rows: Any) -> list[tuple[Any, ...]]:
    """The data columns of each row (the partition date is the table's business)."""
    return [tuple(row[:2]) for row in rows]


def test_valid_records_become_rows_numbered_from_the_chunk_start() -> None:
    shaped = shaper().shape(100, [{"order_id": 1, "amount": 2.5}, {"order_id": "2", "amount": 3}])
    assert values(shaped.rows) == [(1, 2.5), (2, 3.0)]
    assert shaped.record_nos == [100, 101]
    assert shaped.rejected == []


def test_invalid_records_are_dead_lettered_with_their_field_errors_and_payload() -> None:
    records = [
        {"order_id": 1, "amount": 2.5},
        {"order_id": "x", "amount": 1},
        {"order_id": 3},
        {"order_id": 4, "amount": 4.0},
    ]
    shaped = shaper().shape(0, records)
    assert values(shaped.rows) == [(1, 2.5), (4, 4.0)]
    assert shaped.record_nos == [0, 3]
    assert [(d.record_no, d.error_class) for d in shaped.rejected] == [
        (1, "ValidationError"),
        (2, "ValidationError"),
    ]
    assert json.loads(shaped.rejected[0].payload) == {"order_id": "x", "amount": 1}
    assert [e["loc"] for e in json.loads(shaped.rejected[1].detail or "[]")] == [["amount"]]
    assert len(shaped.rows) + len(shaped.rejected) == len(records)


def test_a_record_of_another_day_is_rejected_not_written_into_this_partition() -> None:
    records = [
        {"order_id": 1, "amount": 1.0, "data_date": ORDER_DAY},
        {"order_id": 2, "amount": 1.0, "data_date": ORDER_DAY + dt.timedelta(days=1)},
    ]
    shaped = shaper(None).shape(0, records)
    assert values(shaped.rows) == [(1, 1.0)]
    [letter] = shaped.rejected
    assert letter.record_no == 1
    assert "2024-03-02" in letter.error_message


def test_without_a_model_a_missing_column_is_named() -> None:
    shaped = shaper(None).shape(0, [{"order_id": 1}])
    [letter] = shaped.rejected
    assert (letter.record_no, letter.error_class) == (0, "MissingColumn")
    assert "amount" in letter.error_message
