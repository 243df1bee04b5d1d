"""Lossless or refused: the one rule for what a field's values may become in a column.

Postgres and asyncpg convert quietly: a float given to a ``bigint`` column is stored
truncated (5.25 becomes 5), ``numeric(10,2)`` rounds 1.005 to 1.01, ``varchar(3)`` cuts
``'abc  '`` to ``'abc'``, ``character(3)`` pads ``'ab'``, a ``date`` column drops a
datetime's time of day, and a naive datetime given to ``timestamptz`` is read in the
loading process's local time zone. Each pair (the kind of a model field, the type the
column really has) therefore gets one verdict here:

* ``exact``: every value of the field is stored as it is; nothing is checked, nothing
  costs (int -> bigint, str -> text, float -> double precision, ...).
* ``checked``: most values fit, some would change; each value is checked and one that
  would change is dead-lettered with the reason (int -> integer, str -> varchar(n),
  Decimal -> numeric(p,s), a plain ``datetime`` -> timestamptz, ...).
* ``refused``: the field's kind itself cannot be held (float -> bigint, Decimal ->
  double precision, NaiveDatetime -> timestamptz, ...); the load is refused at prepare,
  before a row moves, with the column, both types, and the ALTER or the model change.

A pair the table does not list is not a conversion it judges (a column of another kind
altogether is schema drift); the driver or the server refuses what it cannot take.
Both paths use the table: the record path calls :meth:`ValueCheck.problem` per value,
the columnar path computes :meth:`ValueCheck.arrow_mask` per column (or relies on
Arrow's safe cast, which refuses the same integer and float values) and asks
``problem`` only for the rows it flags, so the reason is worded in one place.

A few pairs need the value put in the form the driver takes before it is sent
(:class:`ValueEncoding`, the plan's ``encodings``): a dict, list or nested model into
``json``/``jsonb`` becomes its JSON text (the driver takes only text there, and a raw
``TypeError`` was all a dict got), an ``Enum`` member becomes its value. A value that
has no such form (a set, NaN, bytes into JSON) raises :class:`UnencodableValueError`
with the reason, and the record is a dead letter.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import json
import operator
import re
import struct
import types
import typing
import uuid
import zoneinfo
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import annotated_types
import pydantic

from etl_assets.errors import ConfigurationError, UnencodableValueError
from etl_assets.postgres.sql import quote_ident

__all__ = [
    "RULES",
    "ColumnType",
    "ConversionPlan",
    "Family",
    "FieldKind",
    "Rule",
    "ValueCheck",
    "ValueEncoding",
    "Verdict",
    "array_item_type",
    "arrow_kind",
    "column_type",
    "columnar_kind",
    "conversion_plan",
    "field_kind",
    "invalid_text",
    "refusal",
    "value_check",
    "value_encoding",
    "verdict",
]


class Verdict(enum.StrEnum):
    EXACT = "exact"
    CHECKED = "checked per value"
    REFUSED = "refused at prepare"


class FieldKind(enum.StrEnum):
    """What a model field holds, as far as storing it goes."""

    ANY = "any (no model)"
    BOOL = "bool"
    INT = "int"
    FLOAT = "float"
    DECIMAL = "Decimal"
    STR = "str"
    DATETIME = "datetime"  # naive or aware, decided per value
    AWARE_DATETIME = "AwareDatetime"
    NAIVE_DATETIME = "NaiveDatetime"
    DATE = "date"
    MAPPING = "dict"  # dict, Mapping, a nested model: a JSON object
    SEQUENCE = "list"  # list, tuple: an array, or a JSON array
    ENUM = "Enum"  # a plain Enum (not a str or int one): stored as its value
    OTHER = "other"


class Family(enum.StrEnum):
    """A column type, as far as what it does to a value goes."""

    SMALLINT = "smallint"
    INTEGER = "integer"
    BIGINT = "bigint"
    REAL = "real"
    DOUBLE = "double precision"
    NUMERIC = "numeric"
    NUMERIC_PS = "numeric(p,s)"
    TEXT = "text"
    VARCHAR = "character varying"
    VARCHAR_N = "character varying(n)"
    CHAR_N = "character(n)"
    TIMESTAMPTZ = "timestamp with time zone"
    TIMESTAMP = "timestamp without time zone"
    DATE = "date"
    JSON = "json/jsonb"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class ColumnType:
    """A column's type as ``format_type`` spells it, and what matters of it."""

    spelling: str
    family: Family
    length: int | None = None  # varchar(n), character(n)
    precision: int | None = None  # numeric(p,s)
    scale: int | None = None


_INT_SPELLINGS = {
    "smallint": Family.SMALLINT,
    "int2": Family.SMALLINT,
    "integer": Family.INTEGER,
    "int": Family.INTEGER,
    "int4": Family.INTEGER,
    "bigint": Family.BIGINT,
    "int8": Family.BIGINT,
    "real": Family.REAL,
    "float4": Family.REAL,
    "double precision": Family.DOUBLE,
    "float8": Family.DOUBLE,
    "text": Family.TEXT,
    "timestamp with time zone": Family.TIMESTAMPTZ,
    "timestamptz": Family.TIMESTAMPTZ,
    "timestamp without time zone": Family.TIMESTAMP,
    "timestamp": Family.TIMESTAMP,
    "date": Family.DATE,
    "json": Family.JSON,
    "jsonb": Family.JSON,
}
_NUMERIC = re.compile(r"^(?:numeric|decimal)(?:\((\d+)(?:,\s*(\d+))?\))?$")
_VARCHAR = re.compile(r"^(?:character varying|varchar)(?:\((\d+)\))?$")
_CHAR = re.compile(r"^(?:character|char|bpchar)(?:\((\d+)\))?$")


def column_type(spelling: str) -> ColumnType:
    """Parse a ``format_type`` spelling (or the usual alias) into a :class:`ColumnType`."""
    text = " ".join(spelling.lower().split())
    if text in _INT_SPELLINGS:
        return ColumnType(spelling, _INT_SPELLINGS[text])
    if found := _NUMERIC.match(text):
        if found.group(1) is None:
            return ColumnType(spelling, Family.NUMERIC)
        precision, scale = int(found.group(1)), int(found.group(2) or 0)
        return ColumnType(spelling, Family.NUMERIC_PS, precision=precision, scale=scale)
    if found := _VARCHAR.match(text):
        if found.group(1) is None:
            return ColumnType(spelling, Family.VARCHAR)
        return ColumnType(spelling, Family.VARCHAR_N, length=int(found.group(1)))
    if found := _CHAR.match(text):
        return ColumnType(spelling, Family.CHAR_N, length=int(found.group(1) or 1))
    return ColumnType(spelling, Family.OTHER)


_KINDS: dict[Any, FieldKind] = {
    pydantic.AwareDatetime: FieldKind.AWARE_DATETIME,
    pydantic.NaiveDatetime: FieldKind.NAIVE_DATETIME,
    pydantic.PastDatetime: FieldKind.DATETIME,
    pydantic.FutureDatetime: FieldKind.DATETIME,
    pydantic.PastDate: FieldKind.DATE,
    pydantic.FutureDate: FieldKind.DATE,
}
# Most specific first: bool is an int, datetime is a date.
_CLASSES: tuple[tuple[type, FieldKind], ...] = (
    (bool, FieldKind.BOOL),
    (int, FieldKind.INT),
    (float, FieldKind.FLOAT),
    (decimal.Decimal, FieldKind.DECIMAL),
    (str, FieldKind.STR),
    (dt.datetime, FieldKind.DATETIME),
    (dt.date, FieldKind.DATE),
)


def field_kind(annotation: Any) -> FieldKind:
    """The kind of a field's annotation (``Optional`` unwrapped; a ``Literal`` by its values)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return field_kind(args[0]) if len(args) == 1 else FieldKind.OTHER
    if typing.get_origin(annotation) is typing.Literal:
        kinds = {field_kind(type(v)) for v in typing.get_args(annotation)}
        return kinds.pop() if len(kinds) == 1 else FieldKind.OTHER
    if typing.get_origin(annotation) is typing.Annotated:
        return field_kind(typing.get_args(annotation)[0])
    if annotation in _KINDS:
        return _KINDS[annotation]
    origin = typing.get_origin(annotation) or annotation
    if isinstance(origin, type):
        for cls, kind in _CLASSES:
            if issubclass(origin, cls):
                return kind
        if issubclass(origin, Mapping | pydantic.BaseModel):
            return FieldKind.MAPPING
        if issubclass(origin, list | tuple):
            return FieldKind.SEQUENCE
        if issubclass(origin, enum.Enum):
            return FieldKind.ENUM
    return FieldKind.OTHER


def arrow_kind(pa: Any, arrow_type: Any) -> FieldKind:
    """The kind of an Arrow column's type (``pa``: the pyarrow module, passed in)."""
    t = pa.types
    if t.is_timestamp(arrow_type):
        return FieldKind.NAIVE_DATETIME if arrow_type.tz is None else FieldKind.AWARE_DATETIME
    if t.is_floating(arrow_type):
        return FieldKind.FLOAT
    if t.is_decimal(arrow_type):
        return FieldKind.DECIMAL
    return FieldKind.OTHER


@dataclass(frozen=True, slots=True)
class Rule:
    """One row of the table: the verdict, and for a refusal what would be lost and the fixes."""

    verdict: Verdict
    loses: str = ""
    widen_to: str = ""  # a column type that holds every value of the field
    model_fix: str = ""


_EXACT = Rule(Verdict.EXACT)
_CHECKED = Rule(Verdict.CHECKED)
_F, _K = Family, FieldKind
_WHOLE = (_F.SMALLINT, _F.INTEGER, _F.BIGINT)
_BINARY_FLOATS = (_F.REAL, _F.DOUBLE)
_CHECKABLE = (
    *_WHOLE, _F.REAL, _F.DOUBLE, _F.NUMERIC_PS, _F.VARCHAR_N, _F.CHAR_N,
    _F.TIMESTAMPTZ, _F.TIMESTAMP, _F.DATE,
)  # fmt: skip


def _refused(loses: str, widen_to: str, model_fix: str) -> Rule:
    return Rule(Verdict.REFUSED, loses, widen_to, model_fix)


RULES: dict[tuple[FieldKind, Family], Rule] = {
    (_K.INT, _F.SMALLINT): _CHECKED,
    (_K.INT, _F.INTEGER): _CHECKED,
    (_K.INT, _F.BIGINT): _EXACT,
    (_K.INT, _F.REAL): _CHECKED,
    (_K.INT, _F.DOUBLE): _CHECKED,
    (_K.INT, _F.NUMERIC): _EXACT,
    (_K.INT, _F.NUMERIC_PS): _CHECKED,
    **{
        (_K.FLOAT, f): _refused(
            "its fraction (5.25 would be stored as 5)",
            "double precision",
            "declare the field int (pydantic then refuses 5.25 record by record)",
        )
        for f in _WHOLE
    },
    (_K.FLOAT, _F.REAL): _refused(
        "digits (0.1 would be stored as 0.100000001)",
        "double precision",
        "round the values to float32 in the source",
    ),
    (_K.FLOAT, _F.DOUBLE): _EXACT,
    (_K.FLOAT, _F.NUMERIC): _EXACT,  # the float's exact binary value
    (_K.FLOAT, _F.NUMERIC_PS): _CHECKED,
    **{
        (_K.DECIMAL, f): _refused(
            "its fraction (5.7 would be stored as 5)",
            "numeric",
            "declare the field int (pydantic then refuses 5.7 record by record)",
        )
        for f in _WHOLE
    },
    **{
        (_K.DECIMAL, f): _refused(
            "digits (1.23456789012345678901 would be stored as 1.2345678901234567)",
            "numeric",
            "declare the field float",
        )
        for f in (_F.REAL, _F.DOUBLE)
    },
    (_K.DECIMAL, _F.NUMERIC): _EXACT,
    (_K.DECIMAL, _F.NUMERIC_PS): _CHECKED,
    (_K.STR, _F.TEXT): _EXACT,
    (_K.STR, _F.VARCHAR): _EXACT,
    (_K.STR, _F.VARCHAR_N): _CHECKED,
    (_K.STR, _F.CHAR_N): _CHECKED,
    (_K.DATETIME, _F.TIMESTAMPTZ): _CHECKED,
    (_K.AWARE_DATETIME, _F.TIMESTAMPTZ): _EXACT,
    (_K.NAIVE_DATETIME, _F.TIMESTAMPTZ): _refused(
        "which instant it is (a naive value would be read in the loading process's time zone)",
        "timestamp without time zone",
        "declare the field AwareDatetime and give the values their time zone",
    ),
    (_K.DATETIME, _F.TIMESTAMP): _CHECKED,
    (_K.NAIVE_DATETIME, _F.TIMESTAMP): _EXACT,
    (_K.AWARE_DATETIME, _F.TIMESTAMP): _refused(
        "its UTC offset",
        "timestamp with time zone",
        "declare the field NaiveDatetime and convert the values to naive UTC in the source",
    ),
    **{
        (k, _F.DATE): _refused(
            "its time of day", "timestamp with time zone", "declare the field date"
        )
        for k in (_K.DATETIME, _K.AWARE_DATETIME, _K.NAIVE_DATETIME)
    },
    (_K.DATE, _F.DATE): _EXACT,
    **{(_K.ANY, f): _CHECKED for f in _CHECKABLE},
}
"""The table. A pair it does not list is not judged here (see the module docstring)."""


def verdict(kind: FieldKind, column: ColumnType) -> Rule:
    """The table's rule for a pair; an unlisted pair is exact as far as this table goes."""
    return RULES.get((kind, column.family), _EXACT)


Problem = Callable[[Any], str | None]


@dataclass(frozen=True, slots=True)
class ValueCheck:
    """The per-value check of one column: why a value would be stored changed, or None."""

    column: str
    column_type: ColumnType
    problem: Problem

    def reason(self, value: Any) -> str | None:
        """``column: why``, or None if ``value`` is stored as it is."""
        why = self.problem(value)
        return None if why is None else f"{self.column}: {why}"

    def all_exact(self, values: Sequence[Any]) -> bool:
        """True when a whole column is stored as it is, judged with C-level passes only.

        The common case (every value already of the column's own kind: ints in range for
        an integer column, floats for double precision, datetimes with a fixed zone for
        timestamptz) then costs a few tens of nanoseconds a value instead of a Python
        call; anything else is left to ``problem``, value by value.
        """
        kinds = set(map(type, values))
        family = self.column_type.family
        if family in _WHOLE_BITS:
            if kinds != {int}:  # None or another type: value by value
                return False
            bits = _WHOLE_BITS[family]
            return bool(-(1 << (bits - 1)) <= min(values) and max(values) < 1 << (bits - 1))
        if family is Family.DOUBLE:
            return kinds <= {float, type(None)}
        if family is Family.TIMESTAMPTZ and kinds == {dt.datetime}:
            return set(map(type, map(_TZINFO, values))) <= _FIXED_ZONES
        return False

    def arrow_mask(self, pc: Any, array: Any) -> Any | None:
        """True where a value of ``array`` (already cast to the column's Arrow type) would change.

        None when Arrow's safe cast already refused every such value (integer ranges,
        fractions, integers a float cannot hold) or nothing can be flagged column-wise.
        """
        family, length = self.column_type.family, self.column_type.length
        if family is Family.VARCHAR_N:
            return pc.greater(pc.utf8_length(array), length)
        if family is Family.CHAR_N:
            return pc.not_equal(pc.utf8_length(array), length)
        return None


def value_check(kind: FieldKind, column: str, col: ColumnType) -> ValueCheck | None:
    """The check a ``checked`` pair needs (None for the others)."""
    if verdict(kind, col).verdict is not Verdict.CHECKED:
        return None
    return ValueCheck(column, col, _PROBLEMS[col.family](col))


Encode = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class ValueEncoding:
    """The form one column's values take before the driver sees them (see the docstring
    at the top); ``encode`` raises :class:`UnencodableValueError` with the reason."""

    column: str
    encode: Encode

    def reason(self, exc: UnencodableValueError) -> str:
        return f"{self.column}: {exc}"


def value_encoding(kind: FieldKind, column: str, col: ColumnType) -> ValueEncoding | None:
    """The encoding a pair needs, or None: the driver takes the field's values as they are.

    Into ``json``/``jsonb``: a ``str`` field's value is JSON text already (the server
    refuses one that is not JSON: a dead letter); without a model, a ``str`` value is
    taken as JSON text and any other value is encoded; any other field's value is
    encoded (a ``dict | str`` field's ``"a"`` becomes the JSON string ``"a"``).
    """
    if col.family is Family.JSON and kind is not FieldKind.STR:
        return ValueEncoding(column, _json_text_unless_str if kind is FieldKind.ANY else _json_text)
    if kind is FieldKind.ENUM:
        return ValueEncoding(column, _enum_value)
    return None


def array_item_type(col: ColumnType) -> ColumnType | None:
    """The item type of a one-dimensional array column (``jsonb[]`` -> ``jsonb``), or None."""
    text = col.spelling.strip()
    if not text.endswith("[]") or text[:-2].rstrip().endswith("]"):
        return None
    return column_type(text[:-2])


def _items_encoding(field: Any, column: str, col: ColumnType) -> ValueEncoding | None:
    """An array whose items need an encoding (``jsonb[]`` of dicts, an enum type's array
    of ``Enum`` members): each item encoded as a value of the item type would be."""
    item_col = array_item_type(col)
    if item_col is None:
        return None
    if field is None:  # no model: items by their own type
        item_kind = FieldKind.ANY
    else:
        annotation = field.annotation
        if typing.get_origin(annotation) in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            annotation = args[0] if len(args) == 1 else annotation
        items = typing.get_args(annotation) if typing.get_origin(annotation) is list else ()
        item_kind = field_kind(items[0]) if len(items) == 1 else FieldKind.OTHER
    if item_kind is FieldKind.ANY and item_col.family is not Family.JSON:
        return None
    item = value_encoding(item_kind, column, item_col)
    if item is None:
        return None
    encode = item.encode

    def each(value: Any) -> Any:
        return value if not isinstance(value, list | tuple) else [encode(v) for v in value]

    return ValueEncoding(column, each)


def _json_text(value: Any) -> Any:
    if value is None:
        return None
    try:
        return json.dumps(
            value, allow_nan=False, ensure_ascii=False, separators=(",", ":"), default=_as_json
        )
    except ValueError:  # NaN, infinities: JSON (and jsonb) have no such number
        raise UnencodableValueError("a NaN or infinite float has no JSON form") from None
    except (TypeError, RecursionError) as exc:
        raise UnencodableValueError(f"no JSON form: {exc}") from None


def _json_text_unless_str(value: Any) -> Any:
    return value if isinstance(value, str) else _json_text(value)


def _as_json(value: Any) -> Any:
    """``json.dumps``'s fallback, as pydantic's JSON mode spells these: a nested model as
    its fields, dates and times in ISO 8601, a uuid and a Decimal as text (every digit
    kept). Anything else (a set: no order; bytes: no text) has no JSON form."""
    if isinstance(value, pydantic.BaseModel):
        return value.model_dump()
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID | decimal.Decimal):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    raise TypeError(f"a {type(value).__name__} value ({_short(value)}) has no JSON form")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _enum_value(value: Any) -> Any:
    return value.value if isinstance(value, enum.Enum) else value


@dataclass(frozen=True, slots=True)
class ConversionPlan:
    """The per-value checks and encodings of a load's columns; empty when every pair is exact."""

    checks: tuple[ValueCheck, ...] = ()
    encodings: tuple[ValueEncoding, ...] = ()

    def for_column(self, column: str) -> ValueCheck | None:
        return next((c for c in self.checks if c.column == column), None)


def conversion_plan(
    model: type[pydantic.BaseModel] | None,
    column_types: Mapping[str, str],
    columns: Sequence[str],
    table_sql: str,
) -> ConversionPlan:
    """The checks of ``columns`` (model fields into the table's real types), or a refusal.

    Without a model every value is checked where its column could change it. A refused
    pair raises :class:`ConfigurationError` naming every such column, both types, and
    the two fixes (ALTER the column, or change the model), before any row moves.
    """
    checks: list[ValueCheck] = []
    encodings: list[ValueEncoding] = []
    refusals: list[str] = []
    fields = model.model_fields if model is not None else {}
    for name in columns:
        if name not in column_types:
            continue  # a missing column is schema drift, named elsewhere
        col = column_type(column_types[name])
        field = fields.get(name)
        kind = FieldKind.ANY if model is None else _kind_of(field)
        encoding = value_encoding(kind, name, col) or _items_encoding(field, name, col)
        if encoding is not None:
            encodings.append(encoding)
        rule = verdict(kind, col)
        if rule.verdict is Verdict.REFUSED:
            what = f"the model's field {name!r} is {kind}"
            refusals.append(refusal(name, what, col, rule, table_sql, rule.model_fix))
            continue
        if field is not None and _constrained_to_fit(field, col):
            continue
        check = value_check(kind, name, col)
        if check is not None:
            checks.append(check)
    if refusals:
        raise ConfigurationError(
            "the model and the table disagree on what a value is; nothing was loaded. "
            + " ".join(refusals)
        )
    return ConversionPlan(tuple(checks), tuple(encodings))


def _kind_of(field: Any) -> FieldKind:
    return FieldKind.OTHER if field is None else field_kind(field.annotation)


def refusal(name: str, what: str, col: ColumnType, rule: Rule, table_sql: str, fix: str) -> str:
    """The message of a refused pair: the column, both types, what would be lost, both fixes."""
    return (
        f"Column {name!r} is {col.spelling} but {what}: storing it would lose "
        f"{rule.loses}. Widen the column (ALTER TABLE {table_sql} ALTER COLUMN "
        f"{quote_ident(name)} TYPE {rule.widen_to}) or {fix}."
    )


def columnar_kind(model_kind: FieldKind, source_kind: FieldKind, col: ColumnType) -> FieldKind:
    """The kind that decides a frame column's pair: the model's, unless the Arrow type says more.

    A plain ``datetime`` field (or no model) is naive or aware per column in Arrow, so
    the column's own type decides; without a model, a float or decimal column into a
    binary float column is judged by its Arrow type. Otherwise the model decides (an
    ``int`` field arriving as float64, pandas' nullable ints, stays an int field: Arrow's
    safe cast refuses a fractional value row by row).
    """
    stamps = (FieldKind.AWARE_DATETIME, FieldKind.NAIVE_DATETIME)
    if model_kind in (FieldKind.DATETIME, FieldKind.ANY) and source_kind in stamps:
        return source_kind
    floats = (FieldKind.FLOAT, FieldKind.DECIMAL)
    if model_kind is FieldKind.ANY and source_kind in floats and col.family in _BINARY_FLOATS:
        return source_kind
    return model_kind


def _constrained_to_fit(field: Any, col: ColumnType) -> bool:
    """A field whose own constraints keep every value in the column (``max_length`` <= n,
    ``max_digits``/``decimal_places`` within numeric(p,s)) needs no per-value check."""
    if col.family is Family.VARCHAR_N and col.length is not None:
        return any(
            isinstance(m, annotated_types.MaxLen) and m.max_length <= col.length
            for m in field.metadata
        )
    if col.family is Family.NUMERIC_PS and col.precision is not None and col.scale is not None:
        digits = _metadata_value(field, "max_digits")
        places = _metadata_value(field, "decimal_places")
        return (
            digits is not None
            and places is not None
            and places <= col.scale
            and digits - places <= col.precision - col.scale
        )
    return False


def _metadata_value(field: Any, name: str) -> int | None:
    for item in field.metadata:
        value = getattr(item, name, None)
        if isinstance(value, int):
            return value
    return None


# ---- the per-value checks, one per column family ------------------------------------


def _whole(col: ColumnType) -> Problem:
    bits = {Family.SMALLINT: 16, Family.INTEGER: 32, Family.BIGINT: 64}[col.family]
    low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1

    def problem(value: Any) -> str | None:
        if type(value) is int:  # the common case first: one comparison
            return None if low <= value <= high else f"{value} is out of {col.spelling} range"
        if value is None or isinstance(value, bool):
            return None
        if isinstance(value, float | decimal.Decimal):
            if not _finite(value):
                return f"{value} has no {col.spelling} value"
            whole = int(value)
            if whole != value:
                return f"{value} would be stored as {whole} in {col.spelling}"
            value = whole
        if isinstance(value, int) and not low <= value <= high:
            return f"{value} is out of {col.spelling} range"
        return None

    return problem


def _binary_float(col: ColumnType) -> Problem:
    single = col.family is Family.REAL

    def stored(value: float) -> float:
        if not single:
            return value
        return float(struct.unpack("f", struct.pack("f", value))[0])

    def problem(value: Any) -> str | None:
        if type(value) is float:
            if not single or value != value:  # NaN is NaN in both widths
                return None
        elif isinstance(value, bool) or not isinstance(value, int | float | decimal.Decimal):
            return None  # None, bool and other types are not this check's business
        try:
            as_float = stored(float(value))
        except OverflowError:
            return f"{value} is out of {col.spelling} range"
        if isinstance(value, decimal.Decimal):
            if not value.is_finite() or decimal.Decimal(repr(as_float)) == value:
                return None
        elif as_float == value:
            return None
        return f"{value} would be stored as {as_float!r} in {col.spelling}"

    return problem


def _numeric(col: ColumnType) -> Problem:
    assert col.precision is not None
    assert col.scale is not None
    quantum = decimal.Decimal(1).scaleb(-col.scale)
    integer_digits = col.precision - col.scale
    context = decimal.Context(prec=1000, rounding=decimal.ROUND_HALF_UP)

    limit, scale = 10**integer_digits, col.scale

    def problem(value: Any) -> str | None:
        if type(value) is int:  # scale only adds zeros: the digits are all that matter
            return (
                None
                if -limit < value < limit
                else f"{value} has too many digits for {col.spelling}"
            )
        if type(value) is decimal.Decimal and value.is_finite():
            exponent = value.as_tuple().exponent
            if (
                isinstance(exponent, int)
                and exponent >= -scale
                and value.adjusted() < integer_digits
            ):
                return None  # no digit beyond the scale, none too many: stored as it is
        if value is None or isinstance(value, bool):
            return None
        if not isinstance(value, int | float | decimal.Decimal) or not _finite(value):
            return None  # NaN fits numeric(p,s); infinity is refused by the server
        exact = decimal.Decimal(value)
        rounded = exact.quantize(quantum, context=context)
        if rounded and rounded.adjusted() >= integer_digits:
            return f"{value} has too many digits for {col.spelling}"
        kept = float(rounded) == value if isinstance(value, float) else rounded == exact
        return None if kept else f"{value} would be stored as {rounded} in {col.spelling}"

    return problem


def _varchar(col: ColumnType) -> Problem:
    length = col.length or 0

    def problem(value: Any) -> str | None:
        if not isinstance(value, str) or len(value) <= length:
            return None
        cut = " (the server would cut its trailing spaces)" if not value[length:].strip(" ") else ""
        return f"{len(value)} characters do not fit {col.spelling}{cut}"

    return problem


def _char(col: ColumnType) -> Problem:
    length = col.length or 1

    def problem(value: Any) -> str | None:
        if not isinstance(value, str) or len(value) == length:
            return None
        if len(value) < length:
            return f"{value!r} would be stored padded with spaces to {col.spelling}"
        return f"{len(value)} characters do not fit {col.spelling}"

    return problem


_WHOLE_BITS = {Family.SMALLINT: 16, Family.INTEGER: 32, Family.BIGINT: 64}
_TZINFO = operator.attrgetter("tzinfo")
_FIXED_ZONES: frozenset[type] = frozenset({dt.timezone, zoneinfo.ZoneInfo})
"""Zones whose ``utcoffset`` is never None for a datetime: such a datetime is aware."""


def _naive(value: dt.datetime) -> bool:
    zone = value.tzinfo
    return zone is None or (type(zone) is not dt.timezone and value.utcoffset() is None)


def _aware_only(col: ColumnType) -> Problem:
    def problem(value: Any) -> str | None:
        if isinstance(value, dt.datetime) and _naive(value):
            return (
                f"naive datetime {value.isoformat()} into {col.spelling}: its time zone is "
                "unknown (it would be read in the loading process's time zone); give it a "
                "tzinfo, or store it in a timestamp without time zone column"
            )
        return None

    return problem


def _naive_only(col: ColumnType) -> Problem:
    def problem(value: Any) -> str | None:
        if isinstance(value, dt.datetime) and not _naive(value):
            return (
                f"aware datetime {value.isoformat()} into {col.spelling} would lose its UTC "
                "offset; convert it to naive UTC in the source, or store it in a "
                "timestamp with time zone column"
            )
        return None

    return problem


def _date_only(col: ColumnType) -> Problem:
    def problem(value: Any) -> str | None:
        if isinstance(value, dt.datetime) and (
            value.time() != dt.time() or value.utcoffset() is not None
        ):
            return f"{value.isoformat()} into {col.spelling} would lose its time of day"
        return None

    return problem


def _finite(value: float | decimal.Decimal) -> bool:
    return value.is_finite() if isinstance(value, decimal.Decimal) else value - value == 0


_PROBLEMS: dict[Family, Callable[[ColumnType], Problem]] = {
    Family.SMALLINT: _whole,
    Family.INTEGER: _whole,
    Family.BIGINT: _whole,
    Family.REAL: _binary_float,
    Family.DOUBLE: _binary_float,
    Family.NUMERIC_PS: _numeric,
    Family.VARCHAR_N: _varchar,
    Family.CHAR_N: _char,
    Family.TIMESTAMPTZ: _aware_only,
    Family.TIMESTAMP: _naive_only,
    Family.DATE: _date_only,
}


def invalid_text(columns: Sequence[str], row: Sequence[Any]) -> str | None:
    """``column: why`` for the first text of ``row`` that is not valid Unicode, or None.

    A lone surrogate (what ``surrogateescape`` makes of undecodable bytes) cannot be
    encoded as UTF-8; only called for a row the driver already failed to encode.
    """
    for name, value in zip(columns, row, strict=False):
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                bad = value[exc.start : exc.end].encode("utf-8", "backslashreplace").decode()
                return (
                    f"{name}: text is not valid Unicode ({bad} at position {exc.start}, "
                    "e.g. undecodable bytes read with surrogateescape); fix the source's "
                    "encoding or decode it with errors='replace'"
                )
    return None
