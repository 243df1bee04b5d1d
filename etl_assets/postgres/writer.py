"""Write one batch: its rows, its dead letters and its ledger row in ONE transaction.

The transaction first looks for the batch's ledger row. Finding it means an earlier
attempt committed (the connection died while COMMIT was in flight, or this is a resumed
load), so the batch is counted once and not written again: the ledger key is unique and
shares the transaction with the data, so a batch can never commit twice.

A record-level error (bad value, constraint violation) rolls back to a savepoint and
bisects the rows until the offending ones are isolated; they become dead letters with
the server's SQLSTATE and message, and every other row is written, all still inside the
batch's single transaction. Transient errors retry the whole transaction, bounded by
attempts and total time (stamina: exponential backoff with jitter).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import pickle
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg
from asyncpg.exceptions import _base as pgbase

from etl_assets.errors import (
    ENCODE_ERRORS,
    CircuitBreakerOpenError,
    ConfigurationError,
    FatalError,
    LoadIntegrityError,
    RecordError,
    RetryableError,
    classify,
)
from etl_assets.postgres.arrow_copy import ArrowRows, copy_arrow
from etl_assets.postgres.conversions import invalid_text
from etl_assets.postgres.key_digest import KeyCells, KeyDigester, refused_rows
from etl_assets.postgres.ledger import BatchLedgerRow, Ledger, LoadKey
from etl_assets.postgres.retry import DRIVER_ERRORS, RetryPolicy, call_with_retries, connection
from etl_assets.postgres.sql import qualified, quote_ident, upsert_statement
from etl_assets.postgres.target import TableTarget
from etl_assets.records import DeadLetter, no_nul, payload_json

__all__ = [
    "BatchResult",
    "BatchWriter",
    "LetterSink",
    "Log",
    "PreparedBatch",
    "batch_digest",
    "refuse_unencodable_columns",
]

Row = tuple[Any, ...]

_UPSERT_STAGE = "_etl_upsert_stage"


class LetterSink(Protocol):
    """Where a batch's dead letters go, inside the batch's transaction.

    A load records new letters; a replay claims the letters it re-drives first, and
    afterwards marks them replayed, or failed again with the new error.
    """

    async def claim(self, conn: asyncpg.Connection, batch: PreparedBatch) -> None: ...

    async def settle(
        self,
        conn: asyncpg.Connection,
        batch: PreparedBatch,
        attempt_no: int,
        letters: Sequence[DeadLetter],
    ) -> None: ...


class NewLetters:
    """A load's sink: every letter is a new row of the dead-letter table (``pending``)."""

    def __init__(self, ledger: Ledger, key: LoadKey) -> None:
        self._ledger, self._key = ledger, key

    async def claim(self, conn: asyncpg.Connection, batch: PreparedBatch) -> None:
        return None

    async def settle(
        self,
        conn: asyncpg.Connection,
        batch: PreparedBatch,
        attempt_no: int,
        letters: Sequence[DeadLetter],
    ) -> None:
        if letters:
            await self._ledger.record_dead_letters(
                conn, self._key, batch.batch_no, attempt_no, letters
            )


class Log(Protocol):
    """What the engine needs of a logger (``logging.Logger`` and Dagster's ``context.log``)."""

    def info(self, msg: str, *args: Any) -> Any: ...
    def warning(self, msg: str, *args: Any) -> Any: ...


@dataclass(frozen=True, slots=True)
class PreparedBatch:
    """A batch as it enters the writer: rows to write and records already rejected."""

    batch_no: int
    enqueued: int
    rows: Sequence[Row]  # a list of tuples, or ArrowRows (a columnar batch)
    record_nos: list[int]
    rejected: list[DeadLetter]
    digest: str


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What one batch committed."""

    batch_no: int
    enqueued: int
    written: int
    dead_lettered: int
    attempts: int
    already_committed: bool = False
    dead_letters: tuple[DeadLetter, ...] = field(default=(), repr=False)


DIGEST_STRIDE = 97


def batch_digest(rows: Sequence[Row], rejected: Sequence[DeadLetter]) -> str:
    """A fingerprint of a batch's boundaries: a resumed load must cut the same batches.

    It covers the row count, every 97th row, the last row and the rejected records. What
    resume must catch is a source that shifted (records inserted or removed before or in
    a committed batch), which changes nearly every sampled row; an in-place edit of one
    record moves no boundary, so it can neither lose nor duplicate a row. Sampling keeps
    the fingerprint off the hot path (pickling every row cost ~12% of a load).
    """
    h = hashlib.blake2b(digest_size=16)
    h.update(len(rows).to_bytes(8, "little"))
    if isinstance(rows, ArrowRows):  # the sampled rows' Arrow bytes: no Python objects
        h.update(rows.sample_bytes(DIGEST_STRIDE))
    else:
        h.update(pickle.dumps([*rows[::DIGEST_STRIDE], *rows[-1:]], protocol=5))
    h.update(pickle.dumps([(d.record_no, d.payload) for d in rejected], protocol=5))
    return h.hexdigest()


class BatchWriter:
    """Writes batches of one (target, partition, load) into ``destination``.

    Loads COPY into their staging table. ``upsert=True`` (replays into an upsert target)
    goes through a temporary table and ``INSERT ... ON CONFLICT DO UPDATE`` instead.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        target: TableTarget,
        ledger: Ledger,
        *,
        key: LoadKey,
        destination: tuple[str, str],
        retry: RetryPolicy,
        max_dead_letters_per_batch: int | None = None,
        log: Log | None = None,
        letters: LetterSink | None = None,
        upsert: bool = False,
        partition_default: dt.date | None = None,
        keys: KeyDigester | None = None,
    ) -> None:
        """``partition_default``: row tuples (not Arrow rows) come without the partition
        column, which ``destination`` fills with this day by a column ``DEFAULT``."""
        self._pool = pool
        self._target = target
        self._ledger = ledger
        self._key = key
        self._destination = destination
        self._retry = retry
        self._max_dead = max_dead_letters_per_batch
        self._log: Log = log or logging.getLogger(__name__)
        self._columns = list(target.row_columns)
        self._letters: LetterSink = letters or NewLetters(ledger, key)
        self._partition_default = partition_default
        self._tuple_columns = self._columns[:-1] if partition_default else self._columns
        self._upsert = upsert
        self._keys = keys
        if upsert:
            self._upsert_sql = upsert_statement(
                target.sql_name,
                f"pg_temp.{quote_ident(_UPSERT_STAGE)}",
                self._columns,
                target.primary_key,
            )

    async def write(self, batch: PreparedBatch) -> BatchResult:
        """Commit ``batch`` exactly once, retrying transient failures within the policy."""

        def on_retry(attempt_no: int, error: RetryableError) -> None:
            self._log.warning(
                "%s batch %d: attempt %d after %s", self._key, batch.batch_no, attempt_no, error
            )

        cells = self._keys.cells(batch.rows) if self._keys is not None else None
        return await call_with_retries(
            self._retry, lambda attempt_no: self._attempt(batch, attempt_no, cells), on_retry
        )

    async def _attempt(
        self, batch: PreparedBatch, attempt_no: int, cells: KeyCells | None
    ) -> BatchResult:
        try:
            async with connection(self._pool) as conn, conn.transaction():
                done = await self._ledger.committed_batch(conn, self._key, batch.batch_no)
                if done is not None:
                    return self._committed_before(batch, done)
                await self._letters.claim(conn, batch)
                if self._upsert:
                    await conn.execute(
                        f"CREATE TEMP TABLE {quote_ident(_UPSERT_STAGE)} "
                        f"(LIKE {self._target.sql_name} INCLUDING DEFAULTS) ON COMMIT DROP"
                    )
                budget = _PoisonBudget(self._max_dead, self._key)
                written, poison = await self._isolate(conn, batch.rows, batch.record_nos, budget)
                letters = [*batch.rejected, *poison]
                self._check_accounted(batch, written, len(letters))
                await self._letters.settle(conn, batch, attempt_no, letters)
                await self._ledger.record_batch(
                    conn,
                    self._key,
                    BatchLedgerRow(
                        batch.batch_no,
                        batch.enqueued,
                        written,
                        len(letters),
                        attempt_no,
                        batch.digest,
                        self._written_cells(batch, cells, poison),
                    ),
                )
        except asyncpg.UniqueViolationError as exc:
            # Only the ledger key can collide here (dead letters upsert): another attempt of
            # this very batch committed first. The next attempt finds it and counts it once.
            raise RetryableError(f"batch {batch.batch_no} committed concurrently") from exc
        except DRIVER_ERRORS as exc:
            error = classify(exc)
            if isinstance(error, RecordError):  # outside the isolated COPY: not a record's fault
                raise FatalError(f"ledger write failed: {error}", sqlstate=error.sqlstate) from exc
            raise error from exc
        return BatchResult(
            batch.batch_no,
            batch.enqueued,
            written,
            len(letters),
            attempt_no,
            dead_letters=tuple(letters),
        )

    def _check_accounted(self, batch: PreparedBatch, written: int, dead_lettered: int) -> None:
        """Before the ledger row, inside the batch's transaction: the rows COPY reports
        (its command tag, the server's count) plus the dead letters are the batch.

        ``written`` is what the server says it stored, not how many rows were sent: a
        row suppressed below the loader (a trigger on the staging table returning NULL)
        makes it smaller, and the batch rolls back instead of ledgering rows that are
        not there. This is what lets the publish trust the ledger's sum without counting
        the staged table again (docs/PERFORMANCE.md).
        """
        if written + dead_lettered != batch.enqueued:
            raise LoadIntegrityError(
                f"{self._key} batch {batch.batch_no}: the server "
                f"stored {written} rows + {dead_lettered} dead-lettered != {batch.enqueued} "
                "enqueued (a trigger on the table written to dropped rows); rolled back"
            )

    def _written_cells(
        self, batch: PreparedBatch, cells: KeyCells | None, poison: Sequence[DeadLetter]
    ) -> list[int] | None:
        """The key digest of the rows written: the batch's, minus the rows the server refused."""
        if self._keys is None or cells is None:
            return None
        refused = refused_rows(batch.rows, batch.record_nos, poison)
        return self._keys.without(cells, refused).to_db()

    def _committed_before(self, batch: PreparedBatch, done: asyncpg.Record) -> BatchResult:
        if done["batch_digest"] != batch.digest:
            raise FatalError(
                f"{self._key} load {self._key.load_id}: batch "
                f"{batch.batch_no} was committed with different records. The source changed "
                "since the failed attempt; start a new run instead of re-executing this one."
            )
        self._log.info(
            "%s batch %d was already committed (attempt %d); counted once",
            self._key,
            batch.batch_no,
            done["attempts"],
        )
        return BatchResult(
            batch.batch_no,
            done["enqueued"],
            done["written"],
            done["dead_lettered"],
            done["attempts"],
            already_committed=True,
        )

    async def _isolate(
        self,
        conn: asyncpg.Connection,
        rows: Sequence[Row],
        record_nos: list[int],
        budget: _PoisonBudget,
    ) -> tuple[int, list[DeadLetter]]:
        """Write ``rows`` under savepoints, setting aside the ones Postgres rejects.

        A failed COPY names its row ("COPY t, line 17"): the rows before it went in fine
        and are written again, the named one is dead-lettered, and the rest is split in
        two and written the same way. Few bad rows cost a few statements each; many
        cost about n*log2(bad) rows sent, as bisection would. Without a line number (an
        encode error on the client, an upsert's INSERT) the rows are bisected. The soak
        run showed why it matters: poisoned batches that took hundreds of milliseconds
        outlived the time between backend kills.
        """
        if not rows:
            return 0, []
        failure = await self._attempt_rows(conn, rows)
        if isinstance(failure, int):  # the rows the server stored
            return failure, []
        error, cause, line = failure
        if line is None or not 1 <= line <= len(rows):
            return await self._bisect(conn, rows, record_nos, budget, failure)
        bad = line - 1
        budget.spend()
        letter = self._poison(record_nos[bad], self._full_row(rows, bad), error, cause)
        before = await self._isolate(conn, rows[:bad], record_nos[:bad], budget)
        rest, rest_nos = rows[bad + 1 :], record_nos[bad + 1 :]
        mid = len(rest) // 2
        left = await self._isolate(conn, rest[:mid], rest_nos[:mid], budget)
        right = await self._isolate(conn, rest[mid:], rest_nos[mid:], budget)
        written = before[0] + left[0] + right[0]
        return written, [*before[1], letter, *left[1], *right[1]]

    async def _attempt_rows(
        self, conn: asyncpg.Connection, rows: Sequence[Row]
    ) -> int | tuple[RecordError, str, int | None]:
        """The rows stored if ``rows`` went in; else the record error, its class and line."""
        try:
            async with conn.transaction():
                return await self._write_rows(conn, rows)
        except ENCODE_ERRORS as exc:  # a value the driver could not encode: no line number
            message = f"value cannot be encoded: {type(exc).__name__}: {exc}"
            readable = message.encode("utf-8", "backslashreplace").decode("utf-8")
            return RecordError(no_nul(readable)), type(exc).__name__, None
        except DRIVER_ERRORS as exc:
            error = classify(exc)
            if not isinstance(error, RecordError):
                raise
            return error, type(exc).__name__, None if self._upsert else _copy_line(exc)

    async def _bisect(
        self,
        conn: asyncpg.Connection,
        rows: Sequence[Row],
        record_nos: list[int],
        budget: _PoisonBudget,
        failure: tuple[RecordError, str, int | None],
    ) -> tuple[int, list[DeadLetter]]:
        if len(rows) == 1:
            budget.spend()
            row = self._full_row(rows, 0)
            return 0, [self._poison(record_nos[0], row, failure[0], failure[1])]
        mid = len(rows) // 2
        left = await self._isolate(conn, rows[:mid], record_nos[:mid], budget)
        right = await self._isolate(conn, rows[mid:], record_nos[mid:], budget)
        return left[0] + right[0], left[1] + right[1]

    async def _write_rows(self, conn: asyncpg.Connection, rows: Sequence[Row]) -> int:
        """Write ``rows``; the count is the server's (COPY's or INSERT's command tag)."""
        if isinstance(rows, ArrowRows) and not self._upsert:
            return await copy_arrow(conn, rows, *self._destination, self._columns)
        if not self._upsert:
            schema, table = self._destination
            status = await conn.copy_records_to_table(
                table, schema_name=schema, records=rows, columns=self._tuple_columns
            )
            return _tag_count(status)
        await conn.copy_records_to_table(
            _UPSERT_STAGE, schema_name="pg_temp", records=rows, columns=self._columns
        )
        status = await conn.execute(self._upsert_sql)
        await conn.execute(f"TRUNCATE {quote_ident(_UPSERT_STAGE)}")
        return _tag_count(status)

    def _full_row(self, rows: Sequence[Row], index: int) -> Row:
        """Row ``index`` with every column, the partition column too (for a dead letter)."""
        if self._partition_default is None or isinstance(rows, ArrowRows):
            return rows[index]
        return (*rows[index], self._partition_default)

    def _poison(self, record_no: int, row: Row, error: RecordError, cause: str) -> DeadLetter:
        # The server names the table it wrote: the staging table, which the user never
        # made. Name the target instead ("insert or update on table "orders" violates
        # foreign key constraint ...").
        message = str(error).replace(f'"{self._destination[1]}"', f'"{self._target.table}"')
        if cause == "UnicodeEncodeError":  # name the column, keep the text readable
            message = invalid_text(self._columns, row) or message
        return DeadLetter(
            record_no=record_no,
            payload=payload_json(dict(zip(self._columns, row, strict=True))),
            error_class=cause,
            error_message=no_nul(message),
            sqlstate=error.sqlstate,
            detail=no_nul(error.detail) if error.detail else None,
        )


def _tag_count(status: str) -> int:
    """The row count of a command tag: ``COPY 25000``, ``INSERT 0 25000``."""
    return int(status.rsplit(" ", 1)[-1])


_COPY_LINE = re.compile(r"^COPY .*?, line (\d+)(?:, column .*)?(?::.*)?$")


def _copy_line(exc: BaseException) -> int | None:
    """The 1-based row of a COPY that the server rejected, from the error's CONTEXT."""
    context = getattr(exc, "context", None) or ""
    found = _COPY_LINE.match(context.splitlines()[-1] if context else "")
    return int(found.group(1)) if found else None


class _PoisonBudget:
    """How many rows of one batch Postgres may reject before that looks systemic."""

    __slots__ = ("_key", "_left", "limit")

    def __init__(self, limit: int | None, key: LoadKey) -> None:
        self.limit, self._left, self._key = limit, limit, key

    def spend(self) -> None:
        if self._left is None:
            return
        self._left -= 1
        if self._left < 0:
            raise CircuitBreakerOpenError(
                f"{self._key}: more than {self.limit} records of "
                "one batch were rejected by Postgres; that looks systemic (schema or server), "
                "not a few bad records. Nothing of this batch was committed."
            )


async def refuse_unencodable_columns(
    conn: asyncpg.Connection, destination: tuple[str, str], columns: Sequence[str], table: str
) -> None:
    """Refuse at prepare a column asyncpg cannot send in binary COPY (``tsvector``).

    A COPY of no rows makes asyncpg look up every column's binary encoder; without one it
    raises ``InternalClientError``, which mid-load reads as a broken connection and is
    retried for nothing. Found here, each such column is named, with the fix.
    """
    schema, name = destination

    async def copies(cols: Sequence[str]) -> bool:
        try:
            async with conn.transaction():  # a savepoint: a failed probe aborts only itself
                await conn.copy_records_to_table(name, schema_name=schema, records=[], columns=cols)
        except pgbase.InternalClientError:
            return False
        return True

    if not columns or await copies(columns):
        return
    unsendable = [column for column in columns if not await copies([column])]
    if not unsendable:  # not a column's encoder: the connection itself (classified later)
        return
    types = await conn.fetch(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = $1::regclass AND attname = ANY($2::text[]) ORDER BY attnum",
        qualified(schema, name),
        unsendable,
    )
    named = ", ".join(f"{quote_ident(r[0])} ({r[1]})" for r in types)
    raise ConfigurationError(
        f"target {table}: column(s) {named} cannot be loaded: asyncpg has no binary COPY "
        "encoder for the type, so no row could be written. Load the value into a text "
        "column instead (and derive the typed one in the table, e.g. GENERATED ALWAYS AS "
        "(to_tsvector('simple', body)) STORED)"
    )
