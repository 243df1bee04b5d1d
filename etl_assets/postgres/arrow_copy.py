"""Arrow batches into PostgreSQL by binary COPY, encoded by pgpq (Rust, no Python per row).

Why pgpq: it encodes a whole ``pyarrow.RecordBatch`` into PostgreSQL's binary COPY
format in one call, and asyncpg sends the bytes with ``copy_to_table``. The
alternatives either turn every value into a Python object first (asyncpg's
``copy_records_to_table`` wants tuples; ``to_pylist`` costs ~1 us per value) or bring a
second driver and connection that would sit outside the batch's transaction
(adbc-driver-postgresql's ingest), and the ledger row must commit in the SAME
transaction as the data.

:class:`ArrowRows` is the columnar stand-in for the writer's ``list`` of row tuples:
the same ``len`` / index / slice surface, so poison isolation (bisection, COPY line
numbers) works unchanged, and a row becomes a Python tuple only when it is
dead-lettered.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, overload

import asyncpg

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["ArrowRows", "arrow_type", "column_types", "copy_arrow"]

Row = tuple[Any, ...]


def arrow_type(pa: Any, pg_type: str) -> pa.DataType | None:
    """The Arrow type pgpq encodes as ``pg_type`` (``format_type`` spelling), or None.

    None means the columnar path cannot write that column (numeric, uuid, jsonb,
    interval, ...): the loader then validates and writes those batches record by record.
    A one-dimensional array of a type pgpq encodes is an Arrow list of that type
    (``bigint[]`` is ``list<int64>``: pgpq's element type must be the column's own).
    ``interval`` stays on the record path: pgpq would send a ``timedelta`` of a day as
    24 hours, asyncpg as 1 day (equal, but spelled differently by the server).
    """
    base = re.sub(r"\(.*?\)", "", pg_type).strip()
    if base.endswith("[]"):
        element = base.removesuffix("[]").strip()
        inner = None if element.endswith("]") else arrow_type(pa, element)
        return None if inner is None else pa.list_(inner)
    simple: dict[str, Any] = {
        "bigint": pa.int64(),
        "integer": pa.int32(),
        "smallint": pa.int16(),
        "double precision": pa.float64(),
        "real": pa.float32(),
        "text": pa.string(),
        "character varying": pa.string(),
        "boolean": pa.bool_(),
        "bytea": pa.binary(),
        "date": pa.date32(),
        "timestamp with time zone": pa.timestamp("us", tz="UTC"),
        "timestamp without time zone": pa.timestamp("us"),
        "time without time zone": pa.time64("us"),
    }
    return simple.get(base)


async def column_types(conn: asyncpg.Connection, schema: str, table: str) -> dict[str, str]:
    """``{column: format_type}`` of a table as it exists (it may predate the model)."""
    rows = await conn.fetch(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
        "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
        schema,
        table,
    )
    return {name: pg_type for name, pg_type in rows}


class ArrowRows(Sequence[Row]):
    """Rows of one Arrow batch, in the target's column order; zero-copy slices."""

    __slots__ = ("batch",)

    def __init__(self, batch: pa.RecordBatch) -> None:
        self.batch = batch

    def __len__(self) -> int:
        return int(self.batch.num_rows)

    @overload
    def __getitem__(self, index: int) -> Row: ...
    @overload
    def __getitem__(self, index: slice) -> ArrowRows: ...
    def __getitem__(self, index: int | slice) -> Row | ArrowRows:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step == 1:
                return ArrowRows(self.batch.slice(start, max(stop - start, 0)))
            return self.take(range(start, stop, step))
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return tuple(column[index].as_py() for column in self.batch.columns)

    def __iter__(self) -> Iterator[Row]:
        return zip(*(column.to_pylist() for column in self.batch.columns), strict=True)

    def take(self, indices: Sequence[int]) -> ArrowRows:
        return ArrowRows(self.batch.take(list(indices)))

    def sample_bytes(self, stride: int) -> bytes:
        """Every ``stride``-th row and the last, as Arrow IPC bytes (for the batch digest)."""
        n = len(self)
        sample = self.batch.take([*range(0, n, stride), *([n - 1] if n else [])])
        return bytes(sample.serialize())

    def column_values(self, position: int) -> list[Any]:
        values: list[Any] = self.batch.column(position).to_pylist()
        return values


async def copy_arrow(
    conn: asyncpg.Connection, rows: ArrowRows, schema: str, table: str, columns: Sequence[str]
) -> int:
    """One binary COPY of ``rows``: the server reports a rejected row by its line number.

    Returns the rows the server stored (COPY's command tag), which the batch ledgers.
    """
    from pgpq import ArrowToPostgresBinaryEncoder

    encoder = ArrowToPostgresBinaryEncoder(rows.batch.schema)
    data = encoder.write_header() + encoder.write_batch(rows.batch) + encoder.finish()
    # A memoryview, not bytes: asyncpg takes bytes as a file path (os.fspath accepts it).
    status = await conn.copy_to_table(
        table, schema_name=schema, source=memoryview(data), columns=list(columns), format="binary"
    )
    return int(status.rsplit(" ", 1)[-1])
