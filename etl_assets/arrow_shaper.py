"""Validation at the edge for columnar data: whole columns at a time, pydantic for the rejects.

A batch is checked the way the record path's pydantic model would check each record,
but vectorised (Arrow compute, no Python object per value):

* each model column is cast to its target column's type with Arrow's *safe* cast, which
  refuses what pydantic refuses: a fractional or NaN float for an int, an overflow, an
  unparseable string; a column of the wrong kind altogether (text for a date, a number
  for a string) is a schema mistake and fails the load with a message naming it;
* nulls in columns whose model field does not allow None are rejected;
* a partition column, if the frame carries one, must hold the partition's date.

* bounds (``ge``/``gt``/``le``/``lt``), lengths (``min_length``/``max_length``) and
  ``Literal`` values are compared column-wise too.

Only the rejected rows become Python objects: pydantic validates them to give the dead
letter its structured errors (``ValidationError`` when pydantic agrees, ``ArrowCastError``
with Arrow's reason when only the cast refused). A model with validators or constraints
Arrow cannot express (``@field_validator``, ``pattern``, ``multiple_of``, enums,
``strict``, ``extra="forbid"``) or a
target column pgpq cannot encode (numeric, uuid, jsonb) cannot be checked by types
alone: those batches go through the record path's pydantic validation unchanged
(:class:`~etl_assets.records.RecordShaper`), slower but never less strict.

pandas note: ``NaN`` in a float column is pandas' missing value; it arrives as null, so it
is NULL in an optional column and a dead letter in a required one.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

import annotated_types
import pydantic

from etl_assets import collector
from etl_assets.errors import ConfigurationError
from etl_assets.frames import INVALID_TEXT_COLUMN, require_pyarrow
from etl_assets.postgres.arrow_copy import ArrowRows, arrow_type
from etl_assets.postgres.conversions import (
    ConversionPlan,
    Family,
    FieldKind,
    Verdict,
    array_item_type,
    arrow_kind,
    column_type,
    columnar_kind,
    field_kind,
    refusal,
    verdict,
)
from etl_assets.records import DeadLetter, RecordShaper, ShapedChunk, payload_json, sorted_letters

__all__ = ["ArrowShaper", "vectorisable"]

_PLAIN = (int, float, str, bool, bytes, dt.date, dt.datetime, dt.time)


class _LossyReason(str):
    """A reason from the conversion plan: pydantic accepts the value, the column would change it."""

    __slots__ = ()


def _plain_annotation(annotation: Any) -> tuple[type | None, bool]:
    """(the plain Python type, None allowed) of a field, or (None, _) if it is not plain.

    A ``Literal`` of strings (or of ints) counts as ``str`` (``int``): its values are
    checked column-wise with ``is_in``.
    """
    nullable = False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        nullable = len(args) != len(typing.get_args(annotation))
        if len(args) != 1:
            return None, nullable
        annotation = args[0]
    if typing.get_origin(annotation) is typing.Literal:
        kinds = {type(v) for v in typing.get_args(annotation)}
        return (kinds.pop() if kinds in ({str}, {int}) else None), nullable
    if typing.get_origin(annotation) is list:  # list[int]: items of one plain type, no None
        items = typing.get_args(annotation)
        return (list if len(items) == 1 and items[0] in _PLAIN else None), nullable
    return (annotation if annotation in _PLAIN else None), nullable


# Field constraints Arrow can check column-wise: (compute function of a violation, message).
_BOUNDS = {
    annotated_types.Ge: ("less", "ge", "greater than or equal to"),
    annotated_types.Gt: ("less_equal", "gt", "greater than"),
    annotated_types.Le: ("greater", "le", "less than or equal to"),
    annotated_types.Lt: ("greater_equal", "lt", "less than"),
}
_LENGTHS = {
    annotated_types.MinLen: ("less", "min_length", "at least"),
    annotated_types.MaxLen: ("greater", "max_length", "at most"),
}


def _checkable(constraint: Any) -> bool:
    return type(constraint) in _BOUNDS or type(constraint) in _LENGTHS


def vectorisable(model: type[pydantic.BaseModel]) -> bool:
    """True if types and nullability are all the model checks (no constraint, no validator)."""
    decorators = model.__pydantic_decorators__
    if (
        decorators.field_validators
        or decorators.model_validators
        or decorators.validators
        or decorators.root_validators
        or model.model_config.get("strict")
        or model.model_config.get("extra") == "forbid"  # extra columns must be refused per row
    ):
        return False
    return all(
        _plain_annotation(f.annotation)[0] is not None
        and all(map(_checkable, f.metadata))
        and not (f.metadata and _plain_annotation(f.annotation)[0] is list)  # item bounds
        for f in model.model_fields.values()
    )


def _holds_struct(pa: Any, arrow_type: Any) -> bool:
    """True if an Arrow type is, or nests, a struct."""
    t = pa.types
    if t.is_struct(arrow_type):
        return True
    if t.is_list(arrow_type) or t.is_large_list(arrow_type) or t.is_fixed_size_list(arrow_type):
        return _holds_struct(pa, arrow_type.value_type)
    if t.is_map(arrow_type):
        return _holds_struct(pa, arrow_type.key_type) or _holds_struct(pa, arrow_type.item_type)
    return False


def _json_or_text(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


# Source Arrow type kinds a target kind accepts, mirroring pydantic's lax mode.
def _accepts(pa: Any, target: Any, source: Any) -> bool:
    t, s = pa.types, source
    if t.is_null(s):
        return True
    if t.is_integer(target) or t.is_floating(target):
        return bool(t.is_integer(s) or t.is_floating(s) or t.is_decimal(s) or _is_text(t, s))
    if t.is_string(target):
        return _is_text(t, s)
    if t.is_boolean(target):
        return bool(t.is_boolean(s))
    if t.is_binary(target):
        return bool(t.is_binary(s) or t.is_large_binary(s) or _is_text(t, s))
    if t.is_date(target):
        return bool(t.is_date(s) or _is_text(t, s))
    if t.is_timestamp(target):
        return bool(t.is_timestamp(s) or t.is_date(s) or _is_text(t, s))
    if t.is_time(target):
        return bool(t.is_time(s) or _is_text(t, s))
    if t.is_list(target):
        lists = t.is_list(s) or t.is_large_list(s) or t.is_fixed_size_list(s)
        return bool(lists and _accepts(pa, target.value_type, s.value_type))
    return False


def _literal_values(annotation: Any) -> list[Any] | None:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = args[0] if len(args) == 1 else annotation
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    return None


def _is_text(t: Any, s: Any) -> bool:
    return bool(t.is_string(s) or t.is_large_string(s) or getattr(t, "is_string_view", bool)(s))


class ArrowShaper:
    """Arrow batch in, :class:`ArrowRows` (target types, partition column last) out."""

    def __init__(
        self,
        column_types: Mapping[str, str],
        data_columns: Sequence[str],
        partition_column: str,
        day: dt.date,
        model: type[pydantic.BaseModel] | None,
        *,
        partition_from_table: bool = False,
        plan: ConversionPlan | None = None,
        table_sql: str = "",
    ) -> None:
        """``partition_from_table``: the row tuples of batches pydantic must shape (not
        the Arrow rows, which always carry the partition column) leave it to the table.

        ``plan``: the load's conversion plan; its checks run column-wise here (and per
        value for the batches pydantic shapes). ``table_sql`` names the table in the
        ALTER a refusal suggests.
        """
        self._pa = require_pyarrow("a DataFrame output")
        self._pc = importlib.import_module("pyarrow.compute")
        self._columns = tuple(data_columns)
        self._partition_column = partition_column
        self._day = day
        self._model = model
        self._plan = plan or ConversionPlan()
        self._table_sql = table_sql
        self._column_types = {c: column_type(column_types[c]) for c in self._columns}
        self._kinds = {
            c: field_kind(model.model_fields[c].annotation) if model is not None else FieldKind.ANY
            for c in self._columns
        }
        self._records = RecordShaper(
            data_columns,
            partition_column,
            day,
            model,
            partition_from_table=partition_from_table,
            checks=self._plan.checks,
            encodings=self._plan.encodings,
        )
        self._adapter = pydantic.TypeAdapter(model) if model is not None else None
        types_ = {c: arrow_type(self._pa, column_types[c]) for c in self._columns}
        self._types: dict[str, Any] = {c: t for c, t in types_.items() if t is not None}
        self.vectorised = len(self._types) == len(self._columns) and (
            model is None or vectorisable(model)
        )
        self._required = {
            name
            for name, f in (model.model_fields.items() if model is not None else ())
            if name in self._types and not _plain_annotation(f.annotation)[1]
        }
        self._lists_without_none = {
            name
            for name, f in (model.model_fields.items() if model is not None else ())
            if name in self._types and _plain_annotation(f.annotation)[0] is list
        }
        self._days: Any = self._pa.array([], self._pa.date32())

    def shape(self, first_record_no: int, batch: Any) -> ShapedChunk:
        """Validate and convert one batch, its rows numbered from ``first_record_no``."""
        if INVALID_TEXT_COLUMN in batch.schema.names:
            return self._without_invalid_text(first_record_no, batch)
        if not self.vectorised:  # constraints or types only pydantic can check
            return self._records.shape(first_record_no, self._as_records(batch))
        with collector.paused():
            return self._shape(first_record_no, batch)

    def _as_records(self, batch: Any) -> list[dict[str, Any]]:
        """The batch as dicts for the record path, its JSON columns as the model holds them.

        A column bound for ``json``/``jsonb`` must not be an Arrow struct: Arrow gives
        every dict of a column every key any of them has (a key one lacks reads as null),
        so what it holds is not what the source said; refused, naming the way that is.
        Text there is JSON text: for a field that holds a dict or a list (not ``str``)
        it is parsed, as the model would have it (text that is not JSON stays text, and
        the model's validation dead-letters it).
        """
        parsed, parsed_items = [], []
        for name in self._columns:
            col = self._column_types[name]
            item_col = array_item_type(col)
            items_json = item_col is not None and item_col.family is Family.JSON
            if (col.family is not Family.JSON and not items_json) or (
                name not in batch.schema.names
            ):
                continue
            arrow = batch.schema.field(name).type
            if _holds_struct(self._pa, arrow):
                raise ConfigurationError(
                    f"column {name!r} of the DataFrame is {arrow}: Arrow gave each dict every "
                    "key of the column (a missing key reads as null), so it cannot be stored "
                    f"into {self._column_types[name].spelling} as the source had it. Carry "
                    "the column as JSON text (e.g. df[col].map(json.dumps)), or return the "
                    "rows as records"
                )
            if self._kinds[name] in (FieldKind.STR, FieldKind.ANY):
                continue
            if items_json:
                parsed_items.append(name)
            elif _is_text(self._pa.types, arrow):
                parsed.append(name)
        records: list[dict[str, Any]] = batch.to_pylist()
        for name in parsed:
            for record in records:
                record[name] = _json_or_text(record[name])
        for name in parsed_items:
            for record in records:
                if isinstance(record[name], list):
                    record[name] = [_json_or_text(v) for v in record[name]]
        return records

    def _without_invalid_text(self, first: int, batch: Any) -> ShapedChunk:
        """The batch shaped, but its rows whose text was not valid Unicode dead-lettered.

        ``etl_assets.frames`` marks them (Arrow cannot hold a lone surrogate, so the
        frame arrives with the text escaped and the reason in a column of its own): the
        escaped text must never be stored as if the source had said it.
        """
        reasons = batch.column(INVALID_TEXT_COLUMN)
        batch = batch.drop_columns([INVALID_TEXT_COLUMN])
        marked = {
            first + i: str(reasons[i].as_py()) for i in self._indices(self._pc.is_valid(reasons))
        }
        shaped = self.shape(first, batch)
        keep = [i for i, no in enumerate(shaped.record_nos) if no not in marked]
        rows = shaped.rows
        kept = rows.take(keep) if isinstance(rows, ArrowRows) else [rows[i] for i in keep]
        letters = [
            DeadLetter(
                no, payload_json(batch.slice(no - first, 1).to_pylist()[0]), "InvalidText", why
            )
            for no, why in marked.items()
        ]
        others = [d for d in shaped.rejected if d.record_no not in marked]
        return ShapedChunk(
            kept, [shaped.record_nos[i] for i in keep], sorted_letters([*others, *letters])
        )

    def _shape(self, first: int, batch: Any) -> ShapedChunk:
        pa = self._pa
        n = int(batch.num_rows)
        self._check_columns(batch)
        cast, bad = self._cast_columns(batch)
        wrong_day = self._wrong_partition(batch)
        letters = [self._letter(first, batch, i, bad[i]) for i in sorted(bad)]
        letters += [self._wrong_day_letter(first, batch, i) for i in sorted(wrong_day - bad.keys())]
        if bad or wrong_day:  # only a batch with rejects is cast twice (its good rows)
            keep = [i for i in range(n) if i not in bad and i not in wrong_day]
            batch = batch.take(pa.array(keep, pa.int64()))
            cast, _ = self._cast_columns(batch)
            record_nos = [first + i for i in keep]
        else:
            record_nos = list(range(first, first + n))
        arrays = [cast[name] for name in self._columns]
        arrays.append(self._partition_days(len(record_nos)))
        out = pa.RecordBatch.from_arrays(arrays, names=[*self._columns, self._partition_column])
        return ShapedChunk(ArrowRows(out), record_nos, sorted_letters(letters))

    def _cast_columns(self, batch: Any) -> tuple[dict[str, Any], dict[int, str]]:
        """Each model column cast to its target type, and the rows that cannot be (why)."""
        pa, pc = self._pa, self._pc
        cast: dict[str, Any] = {}
        bad: dict[int, str] = {}
        for name in self._columns:
            if name not in batch.schema.names:
                cast[name] = self._default_column(name, batch.num_rows)
                continue
            column = batch.column(name)
            try:
                cast[name] = pc.cast(column, self._types[name], safe=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                for i in self._uncastable(column, self._types[name]):
                    bad.setdefault(i, f"{name}: {self._cast_error(column, i, name)}")
            if name in self._required and column.null_count:
                for i in self._indices(pc.is_null(column)):
                    bad.setdefault(i, f"{name}: null in a column that does not allow None")
            if name in self._lists_without_none and name in cast:
                for i in self._null_items(cast[name]):
                    bad.setdefault(i, f"{name}: null item in a list whose items are not None")
            if name in cast:
                for i, why in self._constraint_violations(name, cast[name]):
                    bad.setdefault(i, f"{name}: {why}")
                for i, why in self._lossy(name, cast[name]):
                    bad.setdefault(i, why)
        return cast, bad

    def _null_items(self, column: Any) -> list[int]:
        """Rows of a list column holding a null item (a model's ``list[int]`` has none)."""
        pc = self._pc
        items = pc.list_flatten(column)
        if not items.null_count:
            return []
        parents = pc.filter(pc.list_parent_indices(column), pc.is_null(items))
        return sorted(set(parents.to_pylist()))

    def _lossy(self, name: str, column: Any) -> list[tuple[int, str]]:
        """Rows whose value the column would store changed (the plan's check, column-wise)."""
        check = self._plan.for_column(name)
        mask = check.arrow_mask(self._pc, column) if check is not None else None
        if check is None or mask is None:
            return []
        found: list[tuple[int, str]] = []
        for i in self._indices(mask):
            why = check.reason(column[i].as_py())
            if why is not None:
                found.append((i, _LossyReason(why)))
        return found

    def _constraint_violations(self, name: str, column: Any) -> list[tuple[int, str]]:
        """Rows breaking the field's bounds, lengths or Literal values (nulls are not)."""
        if self._model is None:
            return []
        pc, field = self._pc, self._model.model_fields[name]
        found: list[tuple[int, str]] = []
        literal = _literal_values(field.annotation)
        if literal is not None:
            outside = pc.invert(pc.is_in(column, value_set=self._pa.array(literal)))
            found += [(i, f"not one of {literal}") for i in self._indices(outside)]
        for constraint in field.metadata:
            if type(constraint) in _BOUNDS:
                compare, attr, words = _BOUNDS[type(constraint)]
                values = column
            else:
                compare, attr, words = _LENGTHS[type(constraint)]
                values = (
                    pc.utf8_length(column)
                    if self._pa.types.is_string(column.type)
                    else (pc.binary_length(column))
                )
            limit = getattr(constraint, attr)
            broken = getattr(pc, compare)(values, limit)
            found += [(i, f"must be {words} {limit}") for i in self._indices(broken)]
        return found

    def _check_columns(self, batch: Any) -> None:
        names = set(batch.schema.names)
        missing = [
            c
            for c in self._columns
            if c not in names and (self._model is None or self._model.model_fields[c].is_required())
        ]
        if missing:
            raise ConfigurationError(
                f"the DataFrame has no column {', '.join(map(repr, missing))}, which the model "
                f"requires (it has {sorted(names)}); rename or add the column"
            )
        for name in self._columns:
            if name in names:
                self._refuse_lossy(name, batch.schema.field(name).type)
            if name in names and not _accepts(
                self._pa, self._types[name], batch.schema.field(name).type
            ):
                raise ConfigurationError(
                    f"column {name!r} of the DataFrame is {batch.schema.field(name).type}, which "
                    f"cannot hold the model's type for it (target {self._types[name]}); convert "
                    "the column (e.g. pandas astype / polars cast) before returning it"
                )

    def _refuse_lossy(self, name: str, source: Any) -> None:
        """A frame column whose Arrow type the table's column would change (a naive
        timestamp column into ``timestamptz``, float64 into ``real``): every value of it
        would, so it is refused before the batch is written, like a model field."""
        col = self._column_types[name]
        kind = columnar_kind(self._kinds[name], arrow_kind(self._pa, source), col)
        rule = verdict(kind, col)
        if rule.verdict is Verdict.REFUSED:
            raise ConfigurationError(
                refusal(
                    name,
                    f"the DataFrame's column {name!r} is {source} ({kind})",
                    col,
                    rule,
                    self._table_sql,
                    "convert the column before returning it (pandas tz_localize / "
                    "tz_convert(None), astype; polars dt.replace_time_zone, cast)",
                )
            )

    def _default_column(self, name: str, n: int) -> Any:
        """An optional field the frame does not carry: its model default, as pydantic fills it."""
        assert self._model is not None  # without a model every column is required
        default = self._model.model_fields[name].get_default(call_default_factory=True)
        return self._pa.array([default] * n, self._types[name])

    def _uncastable(self, column: Any, target: Any) -> list[int]:
        """Row indices the safe cast refuses: one cast when all pass, bisection otherwise."""
        try:
            self._pc.cast(column, target, safe=True)
        except (self._pa.ArrowInvalid, self._pa.ArrowNotImplementedError):
            if len(column) == 1:
                return [0]
            mid = len(column) // 2
            left = self._uncastable(self._part(column, 0, mid), target)
            right = self._uncastable(self._part(column, mid, len(column) - mid), target)
            return left + [mid + i for i in right]
        return []

    def _part(self, column: Any, start: int, length: int) -> Any:
        """Rows ``start`` to ``start + length``: a slice, but compacted for a list column,
        whose cast would otherwise judge the items of the rows outside the slice too."""
        part = column.slice(start, length)
        if self._pa.types.is_list(column.type) or self._pa.types.is_large_list(column.type):
            return self._pc.take(part, self._pa.array(range(length), self._pa.int64()))
        return part

    def _cast_error(self, column: Any, i: int, name: str) -> str:
        try:
            self._pc.cast(self._part(column, i, 1), self._types[name], safe=True)
        except (self._pa.ArrowInvalid, self._pa.ArrowNotImplementedError) as exc:
            return str(exc).splitlines()[0]
        return "rejected"  # pragma: no cover  (only called for rows the cast refused)

    def _wrong_partition(self, batch: Any) -> set[int]:
        name = self._partition_column
        if name not in batch.schema.names:
            return set()
        try:
            days = self._pc.cast(batch.column(name), self._pa.date32(), safe=True)
        except (self._pa.ArrowInvalid, self._pa.ArrowNotImplementedError) as exc:
            raise ConfigurationError(
                f"the DataFrame's partition column {name!r} is not a date column ({exc})"
            ) from None
        same = self._pc.equal(days, self._pa.scalar(self._day, self._pa.date32()))
        return set(self._indices(self._pc.invert(self._pc.fill_null(same, False))))

    def _indices(self, mask: Any) -> list[int]:
        """Positions where a boolean array is true (nulls count as false)."""
        return list(self._pc.indices_nonzero(self._pc.fill_null(mask, False)).to_pylist())

    def _partition_days(self, n: int) -> Any:
        if len(self._days) < n:
            self._days = self._pa.array([self._day] * n, self._pa.date32())
        return self._days.slice(0, n)

    def _letter(self, first: int, batch: Any, i: int, reason: str) -> DeadLetter:
        record = batch.slice(i, 1).to_pylist()[0]
        if isinstance(reason, _LossyReason):  # pydantic accepts it: the column would change it
            return DeadLetter(first + i, payload_json(record), "LossyConversion", str(reason))
        if self._adapter is not None:
            try:
                self._adapter.validate_python(record)
            except pydantic.ValidationError as exc:
                return self._records.letter_from_validation(first + i, record, exc)
        return DeadLetter(first + i, payload_json(record), "ArrowCastError", reason)

    def _wrong_day_letter(self, first: int, batch: Any, i: int) -> DeadLetter:
        record = batch.slice(i, 1).to_pylist()[0]
        return self._records.wrong_partition(first + i, record, record.get(self._partition_column))
