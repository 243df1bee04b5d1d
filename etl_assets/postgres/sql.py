"""Pure SQL builders. No I/O here, so every statement is unit-tested as a string.

Identifiers are always quoted with :func:`quote_ident`; values always travel as ``$n``
parameters. The one exception is a partition bound in DDL (``CHECK`` / ``FOR VALUES``),
which Postgres does not accept as a parameter: it is rendered from a ``datetime.date``
object only, never from a string.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence

__all__ = [
    "MAX_IDENTIFIER_BYTES",
    "partition_bounds",
    "qualified",
    "quote_ident",
    "short_name",
]

MAX_IDENTIFIER_BYTES = 63  # NAMEDATALEN - 1


def quote_ident(name: str) -> str:
    """Quote one identifier the way Postgres' ``quote_ident`` does, always."""
    if not name:
        raise ValueError("an SQL identifier cannot be empty")
    if "\x00" in name:
        raise ValueError(f"an SQL identifier cannot contain a NUL byte: {name!r}")
    if len(name.encode()) > MAX_IDENTIFIER_BYTES:
        raise ValueError(
            f"identifier {name!r} is longer than {MAX_IDENTIFIER_BYTES} bytes; "
            "Postgres would silently truncate it"
        )
    return '"' + name.replace('"', '""') + '"'


def qualified(schema: str, name: str) -> str:
    """``"schema"."name"``."""
    return f"{quote_ident(schema)}.{quote_ident(name)}"


def column_list(columns: Sequence[str]) -> str:
    """``"a", "b", "c"``."""
    return ", ".join(quote_ident(c) for c in columns)


def short_name(prefix: str, *parts: str) -> str:
    """A deterministic identifier under 63 bytes: ``prefix`` + a digest of ``parts``.

    Used for per-load staging tables, so a resumed load finds the same table again.
    """
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).hexdigest()
    return f"{prefix[:40]}_{digest}"


def partition_table_name(table: str, day: dt.date) -> str:
    """The name of the Postgres partition that holds ``day`` of ``table``."""
    name = f"{table}_p{day:%Y%m%d}"
    if len(name.encode()) <= MAX_IDENTIFIER_BYTES:
        return name
    return short_name(f"p{day:%Y%m%d}", table)


def date_literal(day: dt.date) -> str:
    """A typed DATE literal, from a ``date`` object only (DDL cannot take parameters)."""
    if not isinstance(day, dt.date) or isinstance(day, dt.datetime):
        raise TypeError(f"expected a datetime.date, got {type(day).__name__}")
    return f"DATE '{day.isoformat()}'"


def partition_bounds(day: dt.date) -> tuple[str, str]:
    """``[day, day + 1)`` as DATE literals."""
    return date_literal(day), date_literal(day + dt.timedelta(days=1))


def day_check_constraint(column: str, day: dt.date) -> str:
    """A CHECK that proves every row belongs to ``day``: ATTACH PARTITION then skips its scan."""
    low, high = partition_bounds(day)
    col = quote_ident(column)
    return f"CHECK ({col} IS NOT NULL AND {col} >= {low} AND {col} < {high})"


def upsert_statement(
    target: str, source: str, columns: Sequence[str], primary_key: Sequence[str]
) -> str:
    """``INSERT ... SELECT ... ON CONFLICT (pk) DO UPDATE`` from a staging table."""
    updates = [c for c in columns if c not in primary_key]
    if updates:
        action = "DO UPDATE SET " + ", ".join(
            f"{quote_ident(c)} = EXCLUDED.{quote_ident(c)}" for c in updates
        )
    else:
        action = "DO NOTHING"
    cols = column_list(columns)
    return (
        f"INSERT INTO {target} ({cols}) SELECT {cols} FROM {source} "
        f"ON CONFLICT ({column_list(primary_key)}) {action}"
    )
