"""RecordShaper: records in, row values and dead letters out, every record accounted."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pydantic

from etl_assets.records import RecordShaper

DAY = dt.date(2024, 3, 1)


class Order(pydantic.BaseModel):
    order_id: int
    amount: float


def shaper(model: type[pydantic.BaseModel] | None = Order) -> RecordShaper:
    return RecordShaper(("order_id", "amount"), "data_date", DAY, model)


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
        {"order_id": 1, "amount": 1.0, "data_date": DAY},
        {"order_id": 2, "amount": 1.0, "data_date": DAY + dt.timedelta(days=1)},
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
