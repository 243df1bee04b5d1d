"""Reading partitions back: as dicts, as one Arrow table, or as a stream of Arrow batches.

* Whole partitions as Arrow (``pa.Table``, and from it pandas or polars): the server
  writes ``COPY (SELECT ...) TO STDOUT`` as CSV and pyarrow's multi-threaded C++ CSV
  reader parses it into the column types of the table. No Python object per value.
  CSV distinguishes NULL (unquoted empty) from the empty string (``""``), and the
  reader is told so.
* A stream (:class:`PartitionStream`): a server-side cursor fetched ``batch_size`` rows
  at a time, each chunk an Arrow batch. Memory is bounded by one chunk, whatever the
  partition's size. The stream owns its connection and event loop (Dagster calls
  ``load_input`` synchronously and the asset iterates after it returned), and closes
  both when iteration ends, fails, or the iterator is dropped.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import asyncpg

from etl_assets.errors import ConfigurationError, FatalError
from etl_assets.frames import require_pyarrow
from etl_assets.postgres.arrow_copy import arrow_type, column_types
from etl_assets.postgres.retry import RetryPolicy, with_retries
from etl_assets.postgres.sql import column_list, quote_ident
from etl_assets.postgres.target import TableTarget

__all__ = ["PartitionStream", "read_arrow", "read_dicts", "select_partitions"]

T = TypeVar("T")


def select_partitions(target: TableTarget, days: Sequence[dt.date] | None) -> tuple[str, list[Any]]:
    """``SELECT`` of the target's rows for ``days`` (all rows if None), by data date."""
    sql = f"SELECT {column_list(target.row_columns)} FROM {target.sql_name}"
    args: list[Any] = []
    if days is not None:
        sql += f" WHERE {quote_ident(target.partition_column)} = ANY($1::date[])"
        args.append(list(days))
    sql += f" ORDER BY {quote_ident(target.partition_column)}"
    return sql, args


def _missing_table(target: TableTarget, owner: str) -> ConfigurationError:
    return ConfigurationError(
        f"table {target.name} does not exist yet: materialize asset {owner} first"
    )


async def _read(
    pool: asyncpg.Pool,
    target: TableTarget,
    owner: str,
    work: Callable[[asyncpg.Connection], Awaitable[T]],
) -> T:
    """``work`` retried like a load; a table not created yet names the asset to run."""
    try:
        return await with_retries(pool, RetryPolicy(), work)
    except FatalError as exc:
        if isinstance(exc.__cause__, asyncpg.UndefinedTableError):
            raise _missing_table(target, owner) from None
        raise


async def read_dicts(
    pool: asyncpg.Pool, target: TableTarget, days: Sequence[dt.date] | None, owner: str
) -> list[dict[str, Any]]:
    """Rows of ``days`` (or of the whole table) as dicts, ordered by data date."""
    sql, args = select_partitions(target, days)

    async def fetch(conn: asyncpg.Connection) -> list[dict[str, Any]]:
        return [dict(row) for row in await conn.fetch(sql, *args)]

    return await _read(pool, target, owner, fetch)


async def read_arrow(
    pool: asyncpg.Pool, target: TableTarget, days: Sequence[dt.date] | None, owner: str
) -> Any:
    """Rows of ``days`` (or of the whole table) as one ``pyarrow.Table``."""
    pa = require_pyarrow("a DataFrame input")
    from pyarrow import csv

    sql, args = select_partitions(target, days)

    async def copy_out(conn: asyncpg.Connection) -> tuple[dict[str, Any | None], io.BytesIO]:
        buffer = io.BytesIO()  # a fresh one per attempt: a retry never appends to a torn read
        types = await _arrow_types(pa, conn, target)
        await conn.execute("SET TIME ZONE 'UTC'")
        await conn.copy_from_query(sql, *args, output=buffer, format="csv", header=True)
        return types, buffer

    types, buffer = await _read(pool, target, owner, copy_out)
    buffer.seek(0)
    options = csv.ConvertOptions(
        column_types={name: t or pa.string() for name, t in types.items()},
        true_values=["t"],
        false_values=["f"],
        strings_can_be_null=True,
        quoted_strings_can_be_null=False,
        null_values=[""],
    )
    return csv.read_csv(buffer, convert_options=options)


async def _arrow_types(
    pa: Any, conn: asyncpg.Connection, target: TableTarget
) -> dict[str, Any | None]:
    """Arrow types of the table's columns; None for those read as text (numeric, uuid...)."""
    found = await column_types(conn, target.schema, target.table)
    if not found:
        raise asyncpg.UndefinedTableError(target.name)
    types = {name: arrow_type(pa, found.get(name, "text")) for name in target.row_columns}
    return {name: None if t == pa.binary() else t for name, t in types.items()}


class PartitionStream(Iterable[Any]):
    """The rows of an asset's partition(s) as ``pyarrow.RecordBatch`` es, in flat memory.

    Annotate an input with it: ``def daily_totals(events: PartitionStream) -> ...``, then
    ``for batch in events:`` (``batch.to_pandas()`` or ``polars.from_arrow(batch)`` for a
    DataFrame per chunk). It can be iterated more than once; each pass is a fresh query.
    """

    def __init__(
        self,
        dsn: str,
        target: TableTarget,
        days: Sequence[dt.date] | None,
        owner: str,
        batch_size: int = 100_000,
    ) -> None:
        self._dsn, self._target, self._days, self._owner = dsn, target, days, owner
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[Any]:
        pa = require_pyarrow("a PartitionStream input")
        with _LoopThread() as loop:
            conn = loop.run(self._connect())
            try:
                types = loop.run(_arrow_types(pa, conn, self._target))
                cursor = loop.run(self._open_cursor(conn))
                names = list(self._target.row_columns)
                while rows := loop.run(cursor.fetch(self.batch_size)):
                    yield _batch(pa, rows, names, types)
            except asyncpg.UndefinedTableError:
                raise _missing_table(self._target, self._owner) from None
            finally:
                loop.run(_close(conn))

    async def _connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(self._dsn, server_settings={"application_name": "etl_assets"})

    async def _open_cursor(self, conn: asyncpg.Connection) -> Any:
        sql, args = select_partitions(self._target, self._days)
        await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        return await conn.cursor(sql, *args)


class _LoopThread:
    """An event loop on a thread of its own, for a stream consumed by synchronous code.

    The consumer may itself run inside an event loop (an ``async def`` asset), where a
    loop of our own in the same thread cannot run; a thread works either way.
    """

    def __enter__(self) -> _LoopThread:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="etl-assets-stream", daemon=True
        )
        self._thread.start()
        return self

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


def _batch(
    pa: Any, rows: list[asyncpg.Record], names: list[str], types: dict[str, Any | None]
) -> Any:
    columns = []
    for i, name in enumerate(names):
        values = [row[i] for row in rows]
        pa_type = types[name]
        if pa_type is None:  # as text, like the whole-table read
            values, pa_type = [None if v is None else str(v) for v in values], pa.string()
        columns.append(pa.array(values, pa_type))
    return pa.RecordBatch.from_arrays(columns, names=names)


async def _close(conn: asyncpg.Connection) -> None:
    """Close gracefully; a connection that is already broken is terminated instead."""
    try:
        await asyncio.wait_for(conn.close(), timeout=10)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
        conn.terminate()
