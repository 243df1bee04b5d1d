"""Validation at the edge: records in, row tuples and dead letters out.

A record that fails validation is quarantined with pydantic's structured errors; it is
never allowed to crash the load, and never silently dropped.
"""

from __future__ import annotations

import datetime as dt
import json
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pydantic

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
        self._by_attr = _tuple_getter(operator.attrgetter, tuple(data_columns))
        self._by_item = _tuple_getter(operator.itemgetter, tuple(data_columns))

    def shape(self, first_record_no: int, records: Sequence[Any]) -> ShapedChunk:
        """Validate and convert ``records``, numbered from ``first_record_no``."""
        rejected: list[DeadLetter] = []
        numbered = list(enumerate(records, start=first_record_no))
        if self._adapter is not None:
            numbered, invalid = self._validate(numbered)
            rejected.extend(invalid)
        rows: list[Row] = []
        record_nos: list[int] = []
        column, day = self.partition_column, self.day
        for record_no, record in numbered:
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
            record_nos.append(record_no)
        return ShapedChunk(rows, record_nos, rejected)

    def _validate(
        self, numbered: list[tuple[int, Any]]
    ) -> tuple[list[tuple[int, Any]], list[DeadLetter]]:
        """Validate the whole chunk in one pydantic call; only on failure look closer."""
        assert self._adapter is not None
        try:
            models = self._adapter.validate_python([record for _, record in numbered])
        except pydantic.ValidationError as exc:
            bad = _errors_by_index(exc)
            good = [item for i, item in enumerate(numbered) if i not in bad]
            rejected = [
                DeadLetter(
                    numbered[i][0],
                    payload_json(numbered[i][1]),
                    "ValidationError",
                    "; ".join(_describe(e) for e in errors),
                    detail=json.dumps(errors, default=str),
                )
                for i, errors in sorted(bad.items())
            ]
            models = self._adapter.validate_python([record for _, record in good])
            return [(n, m) for (n, _), m in zip(good, models, strict=True)], rejected
        return [(n, m) for (n, _), m in zip(numbered, models, strict=True)], []


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
