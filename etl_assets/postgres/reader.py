"""Reading partitions back: as dicts, as one Arrow table, or as a stream of Arrow batches.

* Whole partitions as Arrow (``pa.Table``, and from it pandas or polars): the server
  writes ``COPY (SELECT ...) TO STDOUT`` as CSV and pyarrow's multi-threaded C++ CSV
  reader parses it into the column types of the table. No Python object per value.
  CSV distinguishes NULL (unquoted empty) from the empty string (``""``), and the
  reader is told so.
* A stream (:class:`PartitionStream`): the same COPY, parsed by pyarrow's streaming CSV
  reader as it arrives, in batches of ``batch_size`` rows. Memory is bounded by a few
  chunks and one batch, whatever the partition's size. The stream owns its connection
  and event loop (Dagster calls ``load_input`` synchronously and the asset iterates
  after it returned), and closes both when iteration ends, fails, or the iterator is
  dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import io
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Sequence
from concurrent.futures import CancelledError, Future
from typing import Any, TypeVar

import asyncpg

from etl_assets.errors import (
    ConfigurationError,
    EtlError,
    FatalError,
    RetryableError,
    classify,
)
from etl_assets.frames import require_pyarrow
from etl_assets.postgres.arrow_copy import arrow_type, column_types
from etl_assets.postgres.copy_pipe import CopyPipe, PipeClosed
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
    return csv.read_csv(buffer, convert_options=_csv_options(pa, types))


def _csv_options(pa: Any, types: dict[str, Any | None]) -> Any:
    """How PostgreSQL's CSV reads back: its booleans, NULL unquoted-empty, ``""`` empty."""
    from pyarrow import csv

    return csv.ConvertOptions(
        column_types={name: t or pa.string() for name, t in types.items()},
        true_values=["t"],
        false_values=["f"],
        strings_can_be_null=True,
        quoted_strings_can_be_null=False,
        null_values=[""],
    )


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
    DataFrame per chunk). Batches hold ``batch_size`` rows (the last one fewer). It can be
    iterated more than once; each pass is a fresh query.

    The server's ``COPY ... TO STDOUT`` CSV is parsed by pyarrow's streaming CSV reader
    as it arrives (``copy_pipe``): no Python object per value, the column types of the
    whole-table read, and memory bounded by a few chunks and one batch.
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
        from pyarrow import csv

        with _LoopThread() as loop:
            conn = loop.run(self._connect())
            pipe = CopyPipe()
            copying: Future[None] | None = None
            rows = 0
            try:
                types = loop.run(_arrow_types(pa, conn, self._target))
                loop.run(conn.execute("SET TIME ZONE 'UTC'"))
                sql, args = select_partitions(self._target, self._days)
                copying = loop.submit(_copy_into(pipe, conn, sql, args))
                reader = csv.open_csv(
                    pipe,
                    read_options=csv.ReadOptions(block_size=STREAM_BLOCK_BYTES),
                    convert_options=_csv_options(pa, types),
                )
                for batch in _exact_batches(pa, reader, self.batch_size):
                    yield batch
                    rows += batch.num_rows
                copying.result()
            except asyncpg.UndefinedTableError:
                raise _missing_table(self._target, self._owner) from None
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                raise self._broken(exc, rows) from exc
            finally:
                pipe.close()  # a consumer that left early: the COPY stops at its next chunk
                if copying is not None and not _settled(copying):
                    loop.call(conn.terminate)  # stuck: abort the transport, on its thread
                loop.run(_close(conn))

    async def _connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(self._dsn, server_settings={"application_name": "etl_assets"})

    def _broken(self, exc: BaseException, rows: int) -> EtlError:
        """The error of a stream cut short, classified (a lost connection is retryable)."""
        error = classify(exc)
        advice = (
            ". A stream cannot resume: run the step again (a Dagster retry policy on the "
            "asset does it for you)"
            if isinstance(error, RetryableError)
            else ""
        )
        return type(error)(
            f"the stream of {self._target.name} (asset {self._owner}) broke after {rows:,} "
            f"row(s): {error}{advice}",
            sqlstate=error.sqlstate,
        )


STREAM_BLOCK_BYTES = 4 << 20
"""CSV bytes pyarrow parses at a time: ~60k narrow rows, re-cut into ``batch_size``."""


async def _copy_into(pipe: CopyPipe, conn: asyncpg.Connection, sql: str, args: list[Any]) -> None:
    """The COPY, into the pipe; its end (or its error) is the reader's end of file."""
    try:
        await conn.copy_from_query(sql, *args, output=pipe.put, format="csv", header=True)
    except PipeClosed:
        return
    except BaseException as exc:  # whatever ended the COPY ends the reader's file: it raises it
        with contextlib.suppress(PipeClosed):
            pipe.end(exc)
        raise
    with contextlib.suppress(PipeClosed):
        pipe.end()


def _settled(copying: Future[None]) -> bool:
    """Whether the COPY ended within 10 s (asyncpg cancels it when the pipe refuses a
    chunk); how it ended no longer matters to anyone: the stream is over."""
    try:
        copying.result(timeout=10)
    except TimeoutError:
        return False
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, CancelledError):
        return True
    return True


def _exact_batches(pa: Any, reader: Any, size: int) -> Iterator[Any]:
    """pyarrow's batches (cut by bytes) re-cut into ``size`` rows each, the last fewer."""
    pending: list[Any] = []
    held = 0
    for batch in reader:
        pending.append(batch)
        held += batch.num_rows
        while held >= size:
            table = pa.Table.from_batches(pending, schema=reader.schema)
            yield from table.slice(0, size).combine_chunks().to_batches()
            rest = table.slice(size)
            pending, held = rest.to_batches(), rest.num_rows
    if held:
        yield from (
            pa.Table.from_batches(pending, schema=reader.schema).combine_chunks().to_batches()
        )


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
        return self.submit(coro).result()

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def call(self, function: Callable[[], object]) -> None:
        self._loop.call_soon_threadsafe(function)

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


async def _close(conn: asyncpg.Connection) -> None:
    """Close gracefully; a connection that is already broken is terminated instead."""
    try:
        await asyncio.wait_for(conn.close(), timeout=10)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
        conn.terminate()
