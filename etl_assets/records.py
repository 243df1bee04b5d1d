"""Validation at the edge: records in, row tuples and dead letters out.

A record that fails validation is quarantined with pydantic's structured errors; it is
never allowed to crash the load, and never silently dropped.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pydantic

from etl_assets import collector

__all__ = ["DeadLetter", "RecordShaper", "ShapedChunk", "payload_json"]

Row = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One record that could not be written, with why."""

    record_no: int
    payload: str  # JSON text
    error_class: str
    error_message: str
    sqlstate: str | None = None
    detail: str | None = None  # JSON text (pydantic errors) or the server's DETAIL


@dataclass(frozen=True, slots=True)
class ShapedChunk:
    """Rows ready for COPY, each with its record number, and the records rejected."""

    rows: list[Row]
    record_nos: list[int]
    rejected: list[DeadLetter]


def payload_json(value: Any) -> str:
    """JSON for the dead-letter payload; never raises (a record we cannot encode is still kept).

    jsonb rejects ``\\u0000``, and a NUL byte is a classic poison value, so NULs are shown
    as U+2400 (SYMBOL FOR NULL) instead of making the dead letter itself fail.
    """
    if isinstance(value, pydantic.BaseModel):
        text = value.model_dump_json()
    else:
        try:
            text = json.dumps(value, default=str, ensure_ascii=False)
        except (TypeError, ValueError):  # circular or exotic: keep its repr rather than lose it
            text = json.dumps({"repr": repr(value)}, ensure_ascii=False)
    if "\\u0000" in text:
        text = json.dumps(_without_nul(json.loads(text)), ensure_ascii=False)
    return text


NUL_SYMBOL = "\u2400"


def no_nul(text: str) -> str:
    """Text columns cannot hold NUL either: show it as U+2400."""
    return text.replace("\x00", NUL_SYMBOL)


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return no_nul(value)
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    if isinstance(value, dict):
        return {no_nul(k): _without_nul(v) for k, v in value.items()}
    return value


class RecordShaper:
    """Turns records into row tuples: the data columns, then the partition column last.

    The partition column is filled with the partition's data date. A record that carries
    that column with another date is rejected rather than written into the wrong
    partition (the partition key is the truth, never a clock).
    """

    def __init__(
        self,
        data_columns: Sequence[str],
        partition_column: str,
        day: dt.date,
        model: type[pydantic.BaseModel] | None = None,
    ) -> None:
        if partition_column in data_columns:
            raise ValueError(f"{partition_column!r} is the partition column, not a data column")
        self.columns = (*data_columns, partition_column)
        self.partition_column = partition_column
        self.day = day
        self._adapter = pydantic.TypeAdapter(list[model]) if model is not None else None  # type: ignore[valid-type]
        self._model_has_partition_column = (
            model is not None and partition_column in model.model_fields
        )
        self._by_attr = _tuple_getter(operator.attrgetter, tuple(data_columns))
        self._by_item = _tuple_getter(operator.itemgetter, tuple(data_columns))

    def shape(self, first_record_no: int, records: Sequence[Any]) -> ShapedChunk:
        """Validate and convert ``records``, numbered from ``first_record_no``.

        The common case (every record a dict with exactly the data columns, or a
        validated model without the partition column) is converted with C-level
        ``map`` calls; anything else takes the record-by-record path, which can name
        what is wrong with each record.

        The cyclic garbage collector is paused meanwhile (see ``etl_assets.collector``):
        a batch allocates tens of thousands of objects that all survive it.
        """
        with collector.paused():
            return self._shape(first_record_no, records)

    def _shape(self, first_record_no: int, records: Sequence[Any]) -> ShapedChunk:
        items: Sequence[Any] = records
        record_nos: Sequence[int] = range(first_record_no, first_record_no + len(records))
        rejected: list[DeadLetter] = []
        if self._adapter is not None:
            items, record_nos, rejected = self._validate(records, record_nos)
            rows = self._rows_of_models(items)
        else:
            rows = self._rows_of_plain_dicts(items)
        if rows is not None:
            return ShapedChunk(rows, list(record_nos), rejected)
        slow = self._shape_one_by_one(items, record_nos)
        return ShapedChunk(slow.rows, slow.record_nos, sorted_letters([*rejected, *slow.rejected]))

    def _with_day(self, values: Iterable[Row]) -> list[Row]:
        return list(map(operator.add, values, itertools.repeat((self.day,))))

    def _rows_of_plain_dicts(self, items: Sequence[Any]) -> list[Row] | None:
        """Dicts holding exactly the data columns cannot carry another date: no per-row check."""
        if set(map(type, items)) - {dict} or set(map(len, items)) - {len(self.columns) - 1}:
            return None
        try:
            return self._with_day(map(self._by_item, items))
        except KeyError:  # a wrong key of the right count: the slow path names it
            return None

    def _rows_of_models(self, models: Sequence[Any]) -> list[Row] | None:
        if self._model_has_partition_column:  # its date must be checked record by record
            return None
        try:
            return self._with_day(map(self._by_attr, models))
        except AttributeError:  # a declared column the model lacks: the slow path names it
            return None

    def _shape_one_by_one(self, items: Sequence[Any], record_nos: Sequence[int]) -> ShapedChunk:
        rows: list[Row] = []
        kept: list[int] = []
        rejected: list[DeadLetter] = []
        column, day = self.partition_column, self.day
        for record_no, record in zip(record_nos, items, strict=True):
            try:
                if isinstance(record, dict):
                    values, record_day = self._by_item(record), record.get(column, day)
                else:
                    values, record_day = self._by_attr(record), getattr(record, column, day)
            except (KeyError, AttributeError, TypeError) as exc:
                rejected.append(
                    DeadLetter(record_no, payload_json(record), "MissingColumn", _missing(exc))
                )
                continue
            if record_day != day:
                rejected.append(
                    DeadLetter(
                        record_no,
                        payload_json(record),
                        "WrongPartition",
                        f"{column}={record_day!s} does not belong to partition {day.isoformat()}",
                    )
                )
                continue
            rows.append((*values, day))
            kept.append(record_no)
        return ShapedChunk(rows, kept, rejected)

    def _validate(
        self, records: Sequence[Any], record_nos: Sequence[int]
    ) -> tuple[list[Any], Sequence[int], list[DeadLetter]]:
        """Validate the whole chunk in one pydantic call; only on failure look closer."""
        assert self._adapter is not None
        try:
            return self._adapter.validate_python(records), record_nos, []
        except pydantic.ValidationError as exc:
            bad = _errors_by_index(exc)
        rejected = [
            DeadLetter(
                record_nos[i],
                payload_json(records[i]),
                "ValidationError",
                "; ".join(_describe(e) for e in errors),
                detail=json.dumps(errors, default=str),
            )
            for i, errors in sorted(bad.items())
        ]
        good = [i for i in range(len(records)) if i not in bad]
        models = self._adapter.validate_python([records[i] for i in good])
        return models, [record_nos[i] for i in good], rejected


def sorted_letters(letters: Iterable[DeadLetter]) -> list[DeadLetter]:
    return sorted(letters, key=operator.attrgetter("record_no"))


def _tuple_getter(
    factory: Callable[..., Callable[[Any], Any]], columns: tuple[str, ...]
) -> Callable[[Any], Row]:
    getter = factory(*columns)
    if len(columns) == 1:
        return lambda record: (getter(record),)
    return getter


def _errors_by_index(exc: pydantic.ValidationError) -> dict[int, list[dict[str, Any]]]:
    """Group a list validation's errors by item index, with the index stripped from loc."""
    by_index: dict[int, list[dict[str, Any]]] = {}
    for error in exc.errors(include_url=False, include_context=False, include_input=False):
        index, *loc = error["loc"]
        by_index.setdefault(int(index), []).append(
            {"loc": loc, "msg": error["msg"], "type": error["type"]}
        )
    return by_index


def _describe(error: dict[str, Any]) -> str:
    """``field.path: message``; a model-level error has no path."""
    loc = ".".join(map(str, error["loc"]))
    return f"{loc}: {error['msg']}" if loc else str(error["msg"])


def _missing(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"record has no column {exc.args[0]!r}"
    return f"record cannot supply every column: {exc}"
