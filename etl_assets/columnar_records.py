"""Plain records as one Arrow batch, when binary COPY would store every value as it is.

The record path turns each record into a tuple and asyncpg encodes every value into
COPY's binary format in its own call: about half of what a record costs on the client
(docs/PERFORMANCE.md). When a batch's records are dicts that need no per-value care (an
int in range for an integer column, a ``float`` for ``double precision``, a ``str`` for
text, a zoned ``datetime`` for ``timestamptz``, and so on), its columns are handed to
pyarrow whole and the batch goes through the columnar writer (pgpq encodes it in Rust),
key digest included, with no Python object per value.

It is an optimisation, never a second set of rules: a batch with any value outside those
kinds (a naive datetime, a float in an integer column, an ``Enum``, a str for a number,
text pyarrow refuses) is shaped by :class:`~etl_assets.records.RecordShaper` as before,
which names each bad value. What COPY stores, and what the server refuses (a NUL in
text, a too-long ``varchar``), is the same either way: ``test_columnar_records`` writes
the same awkward values both ways and compares tables and dead letters.
"""

from __future__ import annotations

import datetime as dt
import itertools
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from etl_assets.postgres.arrow_copy import ArrowRows

__all__ = ["ColumnarRecords"]

_NONE = type(None)
_UTC_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
# asyncpg sends 9999-12-31 23:59:59.999999 UTC and 0001-01-01 UTC (and date.max, date.min)
# as PostgreSQL's infinity and -infinity, and refuses instants beyond them; a batch holding
# one takes the record path, so it is stored (or refused) as it always was.
_MIN_US, _MAX_US = -62_135_596_800_000_000, 253_402_300_799_999_999
_INFINITE_DAYS = frozenset({dt.date.max, dt.date.min})

Convert = Callable[[Any, list[Any]], Any]
"""``(pyarrow, values)``: the column as an Arrow array, or None for the record path."""


def _present(values: list[Any], kinds: set[type]) -> list[Any]:
    return [v for v in values if v is not None] if _NONE in kinds else values


def _whole(bits: int) -> Convert:
    low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    arrow = f"int{bits}"

    def convert(pa: Any, values: list[Any]) -> Any:
        kinds = set(map(type, values))
        if not kinds <= {int, _NONE}:  # bool, float, Decimal, str: the record path decides
            return None
        present = _present(values, kinds)
        if present and not (low <= min(present) and max(present) <= high):
            return None
        return pa.array(values, type=getattr(pa, arrow)())

    return convert


def _of_kind(kind: type, arrow: str) -> Convert:
    allowed = {kind, _NONE}

    def convert(pa: Any, values: list[Any]) -> Any:
        if not set(map(type, values)) <= allowed:
            return None
        return pa.array(values, type=getattr(pa, arrow)())

    return convert


def _date(pa: Any, values: list[Any]) -> Any:
    kinds = set(map(type, values))
    if not kinds <= {dt.date, _NONE}:  # exactly date: a datetime is a date subclass
        return None
    if _INFINITE_DAYS.intersection(_present(values, kinds)):
        return None
    return pa.array(values, type=pa.date32())


def _timestamptz(pa: Any, values: list[Any]) -> Any:
    """Aware datetimes as microseconds since the epoch, in UTC.

    ``datetime - epoch`` is the instant by the value's own ``utcoffset`` (what asyncpg's
    ``astimezone(utc)`` uses too, whatever the zone), exact to the microsecond, and about
    5x faster than letting pyarrow convert each aware datetime itself.
    """
    kinds = set(map(type, values))
    if not kinds <= {dt.datetime, _NONE}:
        return None
    if None in set(map(_TZINFO, _present(values, kinds))):  # naive: the record path says why
        return None
    try:
        if _NONE in kinds:
            since = [None if v is None else v - _UTC_EPOCH for v in values]
        else:
            since = list(map(operator.sub, values, itertools.repeat(_UTC_EPOCH)))
    except TypeError:  # a tzinfo whose utcoffset is None: naive after all
        return None
    micros = pa.array(since, type=pa.duration("us")).view(pa.int64())
    if micros.null_count < len(micros):
        bounds = pa.compute.min_max(micros)
        if not (bounds["min"].as_py() > _MIN_US and bounds["max"].as_py() < _MAX_US):
            return None
    return micros.view(pa.timestamp("us", tz="UTC"))


_TZINFO = operator.attrgetter("tzinfo")

_CONVERT: dict[str, Convert] = {
    "smallint": _whole(16),
    "integer": _whole(32),
    "bigint": _whole(64),
    "double precision": _of_kind(float, "float64"),
    "text": _of_kind(str, "string"),
    "character varying": _of_kind(str, "string"),  # no length: varchar(n) is checked per value
    "boolean": _of_kind(bool, "bool_"),
    "date": _date,
    "timestamp with time zone": _timestamptz,
}
"""Per column type (``format_type``'s spelling): the conversion that is exact for it.
Other types always take the record path."""


@dataclass(frozen=True, slots=True)
class _Column:
    value_of: Callable[[Any], Any]
    convert: Convert


class ColumnarRecords:
    """Batches of plain dicts as :class:`ArrowRows` (data columns, partition column last)."""

    def __init__(self, pa: Any, columns: Sequence[_Column], names: Sequence[str], day: dt.date):
        self._pa = pa
        self._columns = columns
        self._names = list(names)
        self._day = pa.scalar(day, pa.date32())

    @classmethod
    def for_load(
        cls,
        column_types: Mapping[str, str],
        data_columns: Sequence[str],
        partition_column: str,
        day: dt.date,
    ) -> ColumnarRecords | None:
        """The columnar form of a load's records, or None if a column cannot take it
        (a type outside ``_CONVERT``, a partition column that is not a ``date``, or
        pyarrow and pgpq not installed)."""
        try:
            import pgpq  # noqa: F401  the encoder copy_arrow uses
            import pyarrow as pa
        except ImportError:  # the arrow extra is optional: records stay tuples
            return None
        import pyarrow.compute

        if column_types.get(partition_column) != "date":  # the batch carries it as a date
            return None
        columns = []
        for name in data_columns:
            convert = _CONVERT.get(column_types.get(name, ""))
            if convert is None:
                return None
            columns.append(_Column(operator.itemgetter(name), convert))
        return cls(pa, columns, [*data_columns, partition_column], day)

    def rows(self, records: Sequence[dict[str, Any]]) -> ArrowRows | None:
        """``records`` as one batch, or None if any value needs the record path's care."""
        pa = self._pa
        arrays = []
        for column in self._columns:
            try:
                values = list(map(column.value_of, records))
            except KeyError:  # a record without this column: the record path names it
                return None
            try:
                array = column.convert(pa, values)
            except (pa.ArrowException, UnicodeEncodeError, OverflowError):
                return None  # e.g. text with lone surrogates: the record path names it
            if array is None:
                return None
            arrays.append(array)
        arrays.append(pa.repeat(self._day, len(records)))
        return ArrowRows(pa.RecordBatch.from_arrays(arrays, names=self._names))
