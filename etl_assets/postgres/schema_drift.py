"""Schema drift, named at prepare: the table as it is against the columns a load fills.

A table that drifted from its model fails every row the same way: a ``NOT NULL`` column
no field fills, a column of another kind than its field, a column the model has and the
table lost. Left to the batches, that is a breaker tripping on "looks systemic" (the
column named only in the server log) or, on a small partition, every record
dead-lettered. Compared here instead, from the catalog, in the prepare transaction:
every drift is named with its column and the statement (or model change) that fixes
it, before a batch is written.

``on_schema_change="add_columns"`` (dlt's ``evolve``) turns one drift into a change: a
model field the table has no column for is added as a NULLABLE column (older partitions
read NULL), in the same transaction. Every other drift is still refused.

Types are compared by KIND only (number, text, date and time, ...): a text field into
an integer column is drift; whether a pair of one kind can lose information (a float
into bigint, text into varchar(n)) is for the per-value conversion to decide.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import asyncpg

from etl_assets.errors import ConfigurationError
from etl_assets.postgres.sql import quote_ident
from etl_assets.postgres.target import SchemaChange, TableTarget

__all__ = [
    "TableColumn",
    "add_missing_columns",
    "drift_problems",
    "refuse_drift",
    "table_columns",
    "type_kind",
]

_TYPES_OF_KIND: dict[str, tuple[str, ...]] = {
    "number": (
        "smallint", "integer", "bigint", "int", "int2", "int4", "int8", "numeric", "decimal",
        "real", "float4", "float8", "double precision",
    ),
    "text": (
        "text", "character varying", "varchar", "character", "char", "bpchar", '"char"', "name",
        "citext",
    ),
    "boolean": ("boolean", "bool"),
    "binary": ("bytea",),
    "date and time": (
        "date", "timestamp", "timestamptz", "timestamp with time zone",
        "timestamp without time zone",
    ),
    "time of day": ("time", "timetz", "time with time zone", "time without time zone"),
    "duration": ("interval",),
    "uuid": ("uuid",),
    "JSON": ("json", "jsonb"),
}  # fmt: skip
_KINDS = {name: kind for kind, names in _TYPES_OF_KIND.items() for name in names}
_MODIFIER = re.compile(r"\([^)]*\)")


def type_kind(pg_type: str) -> str | None:
    """The kind of a Postgres type name (``format_type`` or DDL spelling); None: unknown.

    ``numeric(12,2)``, ``timestamp(3) with time zone`` and ``character varying(20)`` lose
    their modifiers; an array is its element's kind, as an array. Types this table does
    not know (enums, domains, extensions) have no kind: they are never called drift.
    """
    base = " ".join(_MODIFIER.sub("", pg_type).split())
    array = base.endswith("[]")
    kind = _KINDS.get(base.removesuffix("[]").strip())
    if kind is None:
        return None
    return f"{kind} array" if array else kind


@dataclass(frozen=True, slots=True)
class TableColumn:
    """One column of the table as the catalog has it."""

    name: str
    pg_type: str  # format_type(): what the table really holds
    not_null: bool
    has_default: bool  # a DEFAULT, an identity or a generated expression fills it
    generated: bool  # GENERATED ALWAYS AS (...) STORED: nothing may write it


async def table_columns(conn: asyncpg.Connection, target: TableTarget) -> dict[str, TableColumn]:
    """The target's columns, by name (the table must exist)."""
    rows = await conn.fetch(
        "SELECT attname, format_type(atttypid, atttypmod) AS pg_type, attnotnull, "
        "atthasdef OR attidentity <> '' AS has_default, attgenerated <> '' AS generated "
        "FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped "
        "ORDER BY attnum",
        target.sql_name,
    )
    return {
        row["attname"]: TableColumn(
            row["attname"],
            row["pg_type"],
            not_null=row["attnotnull"],
            has_default=row["has_default"],
            generated=row["generated"],
        )
        for row in rows
    }


def drift_problems(target: TableTarget, columns: Mapping[str, TableColumn]) -> list[str]:
    """Every way the table differs from what the load fills, each with its fix (pure)."""
    table = target.sql_name
    filled = {c.name: c.pg_type for c in target.columns}
    filled[target.partition_column] = "date"
    problems = []
    for name, pg_type in filled.items():
        column = columns.get(name)
        col = quote_ident(name)
        if column is None:
            problems.append(
                f"the model has a field {name!r} the table has no column for: "
                f"ALTER TABLE {table} ADD COLUMN {col} {pg_type} (or drop the field from the "
                "model, or let loads add it: on_schema_change='add_columns')"
            )
        elif column.generated:
            problems.append(
                f"column {name!r} is generated by the table, the model fills it: drop the "
                f"field from the model (or ALTER TABLE {table} ALTER COLUMN {col} "
                "DROP EXPRESSION)"
            )
        elif _kinds_differ(pg_type, column.pg_type):
            problems.append(
                f"column {name!r} is {column.pg_type} ({type_kind(column.pg_type)}), the model "
                f"fills it with {pg_type} ({type_kind(pg_type)}): change the field's type, or "
                f"ALTER TABLE {table} ALTER COLUMN {col} TYPE {pg_type} USING {col}::{pg_type}"
            )
    for name, column in columns.items():
        if name not in filled and column.not_null and not column.has_default:
            col = quote_ident(name)
            problems.append(
                f"column {name!r} ({column.pg_type}) is NOT NULL without a default and no "
                f"field of the model fills it: add the field to the model, or ALTER TABLE "
                f"{table} ALTER COLUMN {col} DROP NOT NULL (or SET DEFAULT ...)"
            )
    return problems


def _kinds_differ(filled: str, held: str) -> bool:
    ours, theirs = type_kind(filled), type_kind(held)
    return ours is not None and theirs is not None and ours != theirs


async def refuse_drift(conn: asyncpg.Connection, target: TableTarget) -> None:
    """Raise one ``ConfigurationError`` naming every drift, or return: the table fits."""
    problems = drift_problems(target, await table_columns(conn, target))
    if problems:
        raise ConfigurationError(
            f"target {target.name} does not match the model; nothing was written: "
            + "; ".join(problems)
        )


async def add_missing_columns(conn: asyncpg.Connection, target: TableTarget) -> tuple[str, ...]:
    """With ``add_columns``: add the model's fields the table lacks, NULLABLE (older rows
    read NULL), in the caller's transaction; the names added, in model order.

    A field the model requires is still added nullable: the rows already there have no
    value for it. ``refuse`` adds nothing (the drift is named by :func:`refuse_drift`).
    """
    if target.on_schema_change is not SchemaChange.ADD_COLUMNS:
        return ()
    present = await table_columns(conn, target)
    missing = [c for c in target.columns if c.name not in present]
    for column in missing:
        await conn.execute(
            f"ALTER TABLE {target.sql_name} ADD COLUMN {quote_ident(column.name)} {column.pg_type}"
        )
    return tuple(c.name for c in missing)
