"""Validation at the edge: records in, row tuples and dead letters out.

A record that fails validation is quarantined with pydantic's structured errors; it is
never allowed to crash the load, and never silently dropped.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import math
import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pydantic
import pydantic_core

from etl_assets import collector
from etl_assets.errors import UnencodableValueError
from etl_assets.postgres.conversions import ValueCheck, ValueEncoding

if TYPE_CHECKING:
    from etl_assets.columnar_records import ColumnarRecords

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

    rows: Sequence[Row]  # a list of tuples, or ArrowRows for a columnar batch
    record_nos: list[int]
    rejected: list[DeadLetter]


def payload_json(value: Any) -> str:
    """JSON for the dead-letter payload; never raises (a record we cannot encode is still kept).

    ``jsonb`` refuses three things Python values carry all the time, and a dead letter
    must never fail to be stored (the bad record would take its partition down):
    NaN and infinities (pandas' missing value) become the strings ``"NaN"``,
    ``"Infinity"``, ``"-Infinity"``; NUL becomes U+2400 (SYMBOL FOR NULL); text that is
    not valid Unicode (lone surrogates, e.g. from ``surrogateescape``) keeps its bad
    code points as ``\\udcxx`` escapes. Anything else JSON cannot express is kept as
    its ``str``, and a value that cannot even be walked as ``{"repr": ...}``. A payload
    over ``MAX_PAYLOAD_CHARS`` of JSON (64 MiB) is kept as its labelled head
    (``_oversized``): whatever its size, a letter can be stored.
    """
    if isinstance(value, pydantic.BaseModel):
        try:
            value = value.model_dump(mode="json")
        except pydantic_core.PydanticSerializationError:  # e.g. bytes that are not UTF-8
            value = value.model_dump(mode="python")
    try:
        text = json.dumps(_storable(value), default=_fallback, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):  # circular or exotic: keep its repr
        text = json.dumps({"repr": _storable(_safe_repr(value))}, ensure_ascii=False)
    return text if len(text) <= MAX_PAYLOAD_CHARS else _oversized(text)


# jsonb holds at most 256 MB, and a batch's letters travel in one statement (1 GB at
# most): a payload above this is kept as a labelled head, its size and digest.
MAX_PAYLOAD_CHARS = 64 << 20
OVERSIZED_HEAD_CHARS = 1 << 20


def _oversized(text: str) -> str:
    """A payload too large to store whole: labelled, with its first MiB, size and sha256."""
    encoded = text.encode("utf-8", "surrogatepass")
    return json.dumps(
        {
            "oversized_payload": True,
            "json_chars": len(text),
            "sha256": hashlib.sha256(encoded).hexdigest(),
            "head": text[:OVERSIZED_HEAD_CHARS],
        },
        ensure_ascii=False,
    )


NUL_SYMBOL = "\u2400"
_NON_FINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}


def no_nul(text: str) -> str:
    """Text columns cannot hold NUL either: show it as U+2400."""
    return text.replace("\x00", NUL_SYMBOL)


def _storable(value: Any) -> Any:
    """``value`` with every float, string and key made acceptable to ``jsonb``."""
    if isinstance(value, str):
        return _valid_text(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else _NON_FINITE[value]
    if isinstance(value, list | tuple):
        return [_storable(v) for v in value]
    if isinstance(value, dict):
        return {_valid_text(str(k)): _storable(v) for k, v in value.items()}
    return value


def _valid_text(text: str) -> str:
    text = no_nul(text)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _fallback(value: Any) -> Any:
    """For ``json.dumps``: what it cannot encode is kept as text (bytes, Decimal, dates...)."""
    if isinstance(value, set | frozenset):
        return _storable(sorted(value, key=repr))
    return _storable(_safe_text(value, str))


def _safe_repr(value: Any) -> str:
    return _safe_text(value, repr)


def _safe_text(value: Any, render: Callable[[Any], str]) -> str:
    try:
        return render(value)
    except Exception as exc:  # noqa: BLE001  a user's __str__ may raise anything; keep a label
        return f"<unrepresentable {type(value).__name__}: {type(exc).__name__}>"


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
        *,
        partition_from_table: bool = False,
        checks: Sequence[ValueCheck] = (),
        encodings: Sequence[ValueEncoding] = (),
        columnar: ColumnarRecords | None = None,
    ) -> None:
        """``partition_from_table``: rows hold the data columns only, because the table
        they are copied into fills the partition column itself (a ``DEFAULT`` of the
        day): no tuple is rebuilt per row and COPY encodes one value less per row.

        ``checks``: the per-value checks of the load's conversion plan
        (:mod:`etl_assets.postgres.conversions`); a value its column would store changed
        is dead-lettered as ``LossyConversion``. Only the columns that need one are
        looked at: an exact pair costs nothing.

        ``encodings``: the plan's encodings (a dict into ``jsonb`` as its JSON text, an
        ``Enum`` as its value), applied before the checks; a value without such a form
        is dead-lettered as ``UnencodableValue`` with the reason, never a ``TypeError``
        from the driver.

        ``columnar``: a batch of plain (or model-validated) dicts whose every value its
        column takes as it is becomes one Arrow batch instead of tuples
        (:mod:`etl_assets.columnar_records`); any other batch is shaped as described here.
        """
        if partition_column in data_columns:
            raise ValueError(f"{partition_column!r} is the partition column, not a data column")
        self.columns = (*data_columns, partition_column)
        self.partition_column = partition_column
        self.day = day
        self._day_suffix: Row = () if partition_from_table else (day,)
        self._adapter = pydantic.TypeAdapter(list[model]) if model is not None else None  # type: ignore[valid-type]
        self._model_has_partition_column = (
            model is not None and partition_column in model.model_fields
        )
        self._as_dicts = (
            fields_validator(model)
            if model is not None and not self._model_has_partition_column
            else None
        )
        self._by_attr = _tuple_getter(operator.attrgetter, tuple(data_columns))
        self._checks = [
            (operator.itemgetter(data_columns.index(c.column)), c)
            for c in checks
            if c.column in data_columns
        ]
        self._by_item = _tuple_getter(operator.itemgetter, tuple(data_columns))
        self._encodings = [
            (data_columns.index(e.column), e) for e in encodings if e.column in data_columns
        ]
        self._columnar = columnar if not self._model_has_partition_column else None

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
            dicts = self._plain_dicts(records)
            if dicts is not None and self._columnar is not None:
                arrow_rows = self._columnar.rows(dicts)
                if arrow_rows is not None:  # every value exact: no per-value check left
                    numbers = list(range(first_record_no, first_record_no + len(records)))
                    return ShapedChunk(arrow_rows, numbers, [])
            chunk = self._shape(first_record_no, records, dicts)
            if self._encodings:
                chunk = self._encoded(chunk, first_record_no, records)
            return self._checked(chunk, first_record_no, records) if self._checks else chunk

    def _shape(
        self, first_record_no: int, records: Sequence[Any], dicts: Sequence[dict[str, Any]] | None
    ) -> ShapedChunk:
        items: Sequence[Any] = records
        record_nos: Sequence[int] = range(first_record_no, first_record_no + len(records))
        rejected: list[DeadLetter] = []
        rows = self._rows_of_dicts(dicts) if dicts is not None else None
        if rows is not None:
            return ShapedChunk(rows, list(record_nos), rejected)
        if self._adapter is not None:
            items, record_nos, rejected = self._validate(records, record_nos)
            rows = self._rows_of_models(items)
        if rows is not None:
            return ShapedChunk(rows, list(record_nos), rejected)
        slow = self._shape_one_by_one(items, record_nos)
        return ShapedChunk(slow.rows, slow.record_nos, sorted_letters([*rejected, *slow.rejected]))

    def _encoded(self, chunk: ShapedChunk, first: int, records: Sequence[Any]) -> ShapedChunk:
        """``chunk`` with the encoded columns in the driver's form, and without the rows
        holding a value that has none (dead letters naming the column and why)."""
        rows = [list(row) for row in chunk.rows]
        failed: dict[int, str] = {}
        for position, encoding in self._encodings:
            for i, row in enumerate(rows):
                try:
                    row[position] = encoding.encode(row[position])
                except UnencodableValueError as exc:
                    failed.setdefault(i, encoding.reason(exc))
        encoded = ShapedChunk(list(map(tuple, rows)), chunk.record_nos, chunk.rejected)
        return self._without(encoded, failed, first, records, "UnencodableValue")

    def _checked(self, chunk: ShapedChunk, first: int, records: Sequence[Any]) -> ShapedChunk:
        """``chunk`` without the rows holding a value its column would store changed."""
        lossy: dict[int, str] = {}
        for value_of, check in self._checks:
            values = list(map(value_of, chunk.rows))
            if check.all_exact(values):
                continue
            reasons = list(map(check.problem, values))
            if reasons.count(None) == len(reasons):
                continue
            for i, why in enumerate(reasons):
                if why is not None and i not in lossy:
                    lossy[i] = f"{check.column}: {why}"
        return self._without(chunk, lossy, first, records, "LossyConversion")

    @staticmethod
    def _without(
        chunk: ShapedChunk, bad: dict[int, str], first: int, records: Sequence[Any], label: str
    ) -> ShapedChunk:
        """``chunk`` without the rows ``bad`` names, each a dead letter ``label`` with why."""
        if not bad:
            return chunk
        letters = [
            DeadLetter(
                chunk.record_nos[i],
                payload_json(records[chunk.record_nos[i] - first]),
                label,
                why,
            )
            for i, why in bad.items()
        ]
        keep = [i for i in range(len(chunk.rows)) if i not in bad]
        return ShapedChunk(
            [chunk.rows[i] for i in keep],
            [chunk.record_nos[i] for i in keep],
            sorted_letters([*chunk.rejected, *letters]),
        )

    def _with_day(self, values: Iterable[Row]) -> list[Row]:
        if not self._day_suffix:  # the table fills the partition column
            return list(values)
        return list(map(operator.add, values, itertools.repeat(self._day_suffix)))

    def _plain_dicts(self, records: Sequence[Any]) -> Sequence[dict[str, Any]] | None:
        """The chunk as dicts holding the data columns, if it takes the fast paths; else None.

        Without a model: plain dicts with exactly as many keys as data columns (so they
        cannot carry another date; a wrong key surfaces when the columns are read). With
        a model: plain dicts that all pass it, validated by pydantic-core against the
        model's own field schemas into dicts (see :func:`fields_validator`), about a
        third of the cost of building model instances and reading their attributes back.
        Any validation error returns None: the chunk then takes the model path, which
        names each bad record. So this only ever accepts what the model accepts.
        """
        if set(map(type, records)) - {dict}:
            return None
        if self._adapter is None:
            return records if set(map(len, records)) <= {len(self.columns) - 1} else None
        if self._as_dicts is None:
            return None
        try:
            valid: list[dict[str, Any]] = self._as_dicts.validate_python(records)
        except pydantic.ValidationError:
            return None
        return valid

    def _rows_of_dicts(self, dicts: Sequence[dict[str, Any]]) -> list[Row] | None:
        try:
            return self._with_day(map(self._by_item, dicts))
        except KeyError:  # a wrong key, or a column that is no field: the slow path names it
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
                rejected.append(self.wrong_partition(record_no, record, record_day))
                continue
            rows.append((*values, *self._day_suffix))
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
            _invalid(record_nos[i], records[i], errors) for i, errors in sorted(bad.items())
        ]
        good = [i for i in range(len(records)) if i not in bad]
        models = self._adapter.validate_python([records[i] for i in good])
        return models, [record_nos[i] for i in good], rejected

    def wrong_partition(self, record_no: int, record: Any, record_day: Any) -> DeadLetter:
        """A record whose own partition column names another day (or none)."""
        return DeadLetter(
            record_no,
            payload_json(record),
            "WrongPartition",
            f"{self.partition_column}={record_day!s} does not belong to partition "
            f"{self.day.isoformat()}",
        )

    @staticmethod
    def letter_from_validation(
        record_no: int, record: Any, exc: pydantic.ValidationError
    ) -> DeadLetter:
        """The dead letter of one record that pydantic rejected on its own."""
        errors = [
            {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
            for e in exc.errors(include_url=False, include_context=False, include_input=False)
        ]
        return _invalid(record_no, record, errors)


def _invalid(record_no: int, record: Any, errors: list[dict[str, Any]]) -> DeadLetter:
    return DeadLetter(
        record_no,
        payload_json(record),
        "ValidationError",
        "; ".join(_describe(e) for e in errors),
        detail=json.dumps(errors, default=str),
    )


def sorted_letters(letters: Iterable[DeadLetter]) -> list[DeadLetter]:
    return sorted(letters, key=operator.attrgetter("record_no"))


def _tuple_getter(
    factory: Callable[..., Callable[[Any], Any]], columns: tuple[str, ...]
) -> Callable[[Any], Row]:
    getter = factory(*columns)
    if len(columns) == 1:
        return lambda record: (getter(record),)
    return getter


_MODEL_KEYS = {"type", "cls", "schema", "config", "ref", "metadata", "custom_init", "root_model"}
_FIELDS_KEYS = {"type", "fields", "model_name", "computed_fields"}
_FIELD_KEYS = {"type", "schema", "validation_alias", "serialization_alias", "metadata"}
_FIELD_KEYS |= {"serialization_exclude", "frozen"}


def fields_validator(model: type[pydantic.BaseModel]) -> pydantic_core.SchemaValidator | None:
    """A validator of a list of dicts into dicts, with the model's own field schemas.

    The same field schemas (types, constraints, field validators, defaults, aliases)
    and the same config as the model, assembled as a typed dict instead of a model: no
    instance per record. Only for models whose validation is nothing but their fields:
    a model validator, ``model_post_init``, a custom ``__init__``, a root model, extra
    fields with a schema or a schema pydantic-core cannot build alone (definitions
    shared with other models, as recursive models have) make it None, and the model
    validates as before. A nested model field stays a model (its own schema).
    """
    schema: Any = model.__pydantic_core_schema__
    if schema.get("type") != "model" or set(schema) - _MODEL_KEYS:
        return None
    if schema.get("custom_init") or schema.get("root_model"):
        return None
    fields_schema = schema["schema"]
    if fields_schema.get("type") != "model-fields" or set(fields_schema) - _FIELDS_KEYS:
        return None
    fields: dict[str, Any] = {}
    for name, field in fields_schema["fields"].items():
        if set(field) - _FIELD_KEYS:
            return None
        fields[name] = {
            "type": "typed-dict-field",
            "schema": field["schema"],
            "required": field["schema"]["type"] != "default",
        }
        if "validation_alias" in field:
            fields[name]["validation_alias"] = field["validation_alias"]
    typed_dict: Any = {"type": "typed-dict", "fields": fields}
    if "config" in schema:
        typed_dict["config"] = schema["config"]
    try:
        return pydantic_core.SchemaValidator({"type": "list", "items_schema": typed_dict})
    except pydantic_core.SchemaError:  # e.g. a reference to a definition elsewhere
        return None


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
