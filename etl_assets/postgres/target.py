"""What a load writes into: table, columns, partition column, write mode.

The spec is checked when it is built, so a mistake in it is a ``ConfigurationError``
that names the fix, before a single row moves.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import ipaddress
import re
import types
import typing
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pydantic

from etl_assets.errors import ConfigurationError
from etl_assets.postgres.sql import column_list, qualified, quote_ident

__all__ = ["Column", "SchemaChange", "TableTarget", "WriteMode", "columns_from_model"]

# A type name, optionally schema-qualified (a user's enum), with a modifier and array
# brackets: ``numeric(12,4)``, ``text[]``, ``integer[][]``, ``app.mood``. Never SQL.
_PG_TYPE = re.compile(r"^([a-z_][a-z0-9_]*\.)?[a-z][a-z0-9_ ]*(\(\d+(,\s*\d+)?\))?( ?\[\])*$")

_PYTHON_TO_PG: dict[type, str] = {
    bool: "boolean",
    int: "bigint",
    float: "double precision",
    str: "text",
    bytes: "bytea",
    decimal.Decimal: "numeric",
    dt.datetime: "timestamptz",
    dt.date: "date",
    dt.time: "time",
    dt.timedelta: "interval",
    uuid.UUID: "uuid",
    ipaddress.IPv4Network: "cidr",
    ipaddress.IPv6Network: "cidr",
    ipaddress.IPv4Address: "inet",  # IPv4Interface is an IPv4Address: inet keeps its mask
    ipaddress.IPv6Address: "inet",
    pydantic.BaseModel: "jsonb",  # a nested model: its JSON
}
_JSON = "jsonb"

# pydantic's constrained date types are marker classes, not datetime subclasses.
_PYDANTIC_TO_PG: dict[Any, str] = {
    pydantic.AwareDatetime: "timestamptz",
    pydantic.NaiveDatetime: "timestamp",
    pydantic.PastDatetime: "timestamptz",
    pydantic.FutureDatetime: "timestamptz",
    pydantic.PastDate: "date",
    pydantic.FutureDate: "date",
}


class WriteMode(enum.StrEnum):
    """How a partition is made idempotent."""

    REPLACE = "replace"  # stage, audit, then swap the whole partition in one transaction
    UPSERT = "upsert"  # stage, audit, then merge: INSERT ... ON CONFLICT (key) DO UPDATE


class SchemaChange(enum.StrEnum):
    """What a load does with a model field its existing table has no column for."""

    REFUSE = "refuse"  # refused at prepare, naming the column and the ALTER TABLE to run
    ADD_COLUMNS = "add_columns"  # added as a nullable column at prepare (older rows read NULL)


@dataclass(frozen=True, slots=True)
class Column:
    """A target column and its Postgres type (used only when the table is created)."""

    name: str
    pg_type: str
    nullable: bool = True

    def __post_init__(self) -> None:
        quote_ident(self.name)
        if not _PG_TYPE.match(self.pg_type):
            raise ConfigurationError(
                f"column {self.name!r}: {self.pg_type!r} is not a plain Postgres type name "
                "(e.g. 'text', 'bigint', 'numeric(12,2)', 'timestamptz')"
            )


@dataclass(frozen=True, slots=True)
class TableTarget:
    """A date-partitioned table written by this package.

    Attributes:
        schema: schema of the target table.
        table: target table name.
        columns: data columns (the partition column excluded), in record order.
        partition_column: the DATE column holding the data date (the partition key).
        mode: ``replace`` or ``upsert``.
        primary_key: required for ``upsert``; must include ``partition_column`` so a
            record can never move between partitions.
        on_schema_change: ``refuse`` (default) or ``add_columns``: a column the model has
            and the table lacks is added, nullable, before the load writes
            (``etl_assets.postgres.schema_drift``); every other drift is refused.
    """

    schema: str
    table: str
    columns: tuple[Column, ...]
    partition_column: str = "data_date"
    mode: WriteMode = WriteMode.REPLACE
    primary_key: tuple[str, ...] = ()
    on_schema_change: SchemaChange = SchemaChange.REFUSE

    def __post_init__(self) -> None:
        try:
            quote_ident(self.schema)
            quote_ident(self.table)
            quote_ident(self.partition_column)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from exc
        try:
            object.__setattr__(self, "on_schema_change", SchemaChange(self.on_schema_change))
        except ValueError:
            choices = ", ".join(c.value for c in SchemaChange)
            raise ConfigurationError(
                f"target {self.name}: on_schema_change {self.on_schema_change!r} is not one "
                f"of {choices}"
            ) from None
        names = [c.name for c in self.columns]
        if not names:
            raise ConfigurationError(f"target {self.name}: declare at least one data column")
        if len(set(names)) != len(names):
            raise ConfigurationError(f"target {self.name}: duplicate column names in {names}")
        if self.partition_column in names:
            raise ConfigurationError(
                f"target {self.name}: {self.partition_column!r} is the partition column; "
                "leave it out of columns (it is filled from the partition key)"
            )
        all_names = {*names, self.partition_column}
        unknown = [k for k in self.primary_key if k not in all_names]
        if unknown:
            raise ConfigurationError(f"target {self.name}: primary key columns {unknown} unknown")
        if self.mode is WriteMode.UPSERT:
            if not self.primary_key:
                raise ConfigurationError(
                    f"target {self.name}: mode 'upsert' needs a primary_key, "
                    f"e.g. primary_key=({self.partition_column!r}, 'id')"
                )
            if self.partition_column not in self.primary_key:
                raise ConfigurationError(
                    f"target {self.name}: the primary key must include the partition column "
                    f"{self.partition_column!r}, or an upsert could move a row between partitions"
                )

    @property
    def name(self) -> str:
        """``schema.table``, as it is keyed in the ledger."""
        return f"{self.schema}.{self.table}"

    @property
    def sql_name(self) -> str:
        return qualified(self.schema, self.table)

    @property
    def data_columns(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def row_columns(self) -> tuple[str, ...]:
        """Column order of the row tuples: data columns, then the partition column."""
        return (*self.data_columns, self.partition_column)

    def create_table_sql(self) -> str:
        """DDL for a new target. ``replace`` targets are RANGE-partitioned by day."""
        defs = [
            f"{quote_ident(c.name)} {c.pg_type}{'' if c.nullable else ' NOT NULL'}"
            for c in self.columns
        ]
        defs.append(f"{quote_ident(self.partition_column)} date NOT NULL")
        if self.primary_key:
            defs.append(f"PRIMARY KEY ({column_list(self.primary_key)})")
        ddl = f"CREATE TABLE IF NOT EXISTS {self.sql_name} ({', '.join(defs)})"
        if self.mode is WriteMode.REPLACE:
            ddl += f" PARTITION BY RANGE ({quote_ident(self.partition_column)})"
        return ddl


def columns_from_model(
    model: type[pydantic.BaseModel],
    *,
    exclude: Sequence[str] = (),
    columns: Sequence[Column] = (),
) -> tuple[Column, ...]:
    """Target columns from a pydantic model's fields (in declaration order).

    ``columns`` are declared explicitly and win over the type the field would derive
    (``Column("qty", "smallint")``, ``Column("tags", "jsonb")``, a user's enum type):
    each must name a field of the model, since only a field fills a column. A field
    whose type derives no column type needs one.
    """
    explicit = {c.name: c for c in columns}
    unknown = [name for name in explicit if name not in model.model_fields]
    if unknown:
        raise ConfigurationError(
            f"explicit column(s) {unknown} are not fields of {model.__qualname__}: only a field "
            "fills a column; add the field to the model (or drop the column)"
        )
    derived = []
    for name, field in model.model_fields.items():
        if name in exclude:
            continue
        if name in explicit:
            derived.append(explicit[name])
            continue
        try:
            pg_type, nullable = _pg_type(field.annotation)
        except ConfigurationError as exc:
            raise ConfigurationError(f"field {name!r} of {model.__qualname__}: {exc}") from None
        derived.append(Column(name, pg_type, nullable=nullable or not field.is_required()))
    return tuple(derived)


def _pg_type(annotation: Any) -> tuple[str, bool]:
    """Map a field annotation to (Postgres type, nullable)."""
    nullable = False
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        nullable = len(args) != len(typing.get_args(annotation))
        if len(args) == 1:
            return _pg_type(args[0])[0], nullable
        return _JSON, nullable
    if origin is typing.Literal:
        return "text", nullable
    if origin is typing.Annotated:
        return _pg_type(typing.get_args(annotation)[0])
    if annotation is typing.Any or annotation is dict or origin is dict or _is_mapping(origin):
        return _JSON, nullable
    if annotation in (list, tuple) or origin in (list, tuple):
        return _array_type(annotation), nullable
    if annotation in _PYDANTIC_TO_PG:
        return _PYDANTIC_TO_PG[annotation], nullable
    if isinstance(annotation, type):
        if issubclass(annotation, enum.Enum):
            return "text", nullable
        for py_type, pg_type in _PYTHON_TO_PG.items():
            if issubclass(annotation, py_type) and not (
                py_type is dt.date and issubclass(annotation, dt.datetime)
            ):
                return pg_type, nullable
    raise ConfigurationError(
        f"no Postgres type for {annotation!r}; declare the column explicitly, e.g. "
        "PostgresTable(columns=(Column(name, 'jsonb'),)) (or TableTarget(columns=...))"
    )


def _is_mapping(origin: Any) -> bool:
    return isinstance(origin, type) and issubclass(origin, Mapping)


def _array_type(annotation: Any) -> str:
    """``list[int]`` -> ``bigint[]``: an array of the element's type when the element is a
    scalar of one Postgres type; a list of anything else (dicts, unions, nested lists,
    ``tuple[int, str]``) is JSON."""
    args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
    if len(set(args)) != 1:
        return _JSON
    try:
        element, _ = _pg_type(args[0])
    except ConfigurationError:
        return _JSON
    if element == _JSON or element.endswith("]"):
        return _JSON
    return f"{element}[]"
