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

import hashlib
import logging
import pickle
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg

from etl_assets.errors import (
    CircuitBreakerOpenError,
    FatalError,
    RecordError,
    RetryableError,
    classify,
)
from etl_assets.postgres.arrow_copy import ArrowRows, copy_arrow
from etl_assets.postgres.key_digest import KeyCells, KeyDigester, refused_rows
from etl_assets.postgres.ledger import LedgerTables, dead_letter_arrays
from etl_assets.postgres.retry import DRIVER_ERRORS, RetryPolicy, connection, retrying
from etl_assets.postgres.sql import quote_ident, upsert_statement
from etl_assets.postgres.target import TableTarget
from etl_assets.records import DeadLetter, no_nul, payload_json

__all__ = ["BatchResult", "BatchWriter", "Log", "PreparedBatch", "batch_digest"]

Row = tuple[Any, ...]

_UPSERT_STAGE = "_etl_upsert_stage"

Claim = Callable[[asyncpg.Connection, "PreparedBatch"], Awaitable[None]]
"""Runs first in a batch's transaction (replay: take the dead letters it re-drives)."""


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
        ledger: LedgerTables,
        *,
        partition_key: str,
        load_id: str,
        destination: tuple[str, str],
        retry: RetryPolicy,
        max_dead_letters_per_batch: int | None = None,
        log: Log | None = None,
        claim: Claim | None = None,
        upsert: bool = False,
        keys: KeyDigester | None = None,
    ) -> None:
        self._pool = pool
        self._target = target
        self._ledger = ledger
        self._key = (target.name, partition_key, load_id)
        self._destination = destination
        self._retry = retry
        self._max_dead = max_dead_letters_per_batch
        self._log: Log = log or logging.getLogger(__name__)
        self._columns = list(target.row_columns)
        self._claim = claim
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
        attempt_no = 0
        last_error: RetryableError | None = None
        cells = self._keys.cells(batch.rows) if self._keys is not None else None
        async for attempt in retrying(self._retry):
            with attempt:
                attempt_no = attempt.num
                if last_error is not None:
                    self._log.warning(
                        "%s partition %s batch %d: attempt %d after %s",
                        *self._key[:2],
                        batch.batch_no,
                        attempt_no,
                        last_error,
                    )
                try:
                    return await self._attempt(batch, attempt_no, cells)
                except RetryableError as exc:
                    last_error = exc
                    raise
        raise AssertionError("unreachable: stamina re-raises the last error")  # pragma: no cover

    async def _attempt(
        self, batch: PreparedBatch, attempt_no: int, cells: KeyCells | None
    ) -> BatchResult:
        try:
            async with connection(self._pool) as conn, conn.transaction():
                done = await conn.fetchrow(self._ledger.select_batch(), *self._key, batch.batch_no)
                if done is not None:
                    return self._committed_before(batch, done)
                if self._claim is not None:
                    await self._claim(conn, batch)
                if self._upsert:
                    await conn.execute(
                        f"CREATE TEMP TABLE {quote_ident(_UPSERT_STAGE)} "
                        f"(LIKE {self._target.sql_name} INCLUDING DEFAULTS) ON COMMIT DROP"
                    )
                budget = _PoisonBudget(self._max_dead, self._key)
                written, poison = await self._isolate(conn, batch.rows, batch.record_nos, budget)
                letters = [*batch.rejected, *poison]
                if letters:
                    await conn.execute(
                        self._ledger.insert_dead_letters(),
                        *self._key,
                        batch.batch_no,
                        attempt_no,
                        *dead_letter_arrays(letters),
                    )
                await conn.execute(
                    self._ledger.insert_batch(),
                    *self._key,
                    batch.batch_no,
                    batch.enqueued,
                    written,
                    len(letters),
                    attempt_no,
                    batch.digest,
                )
                if self._keys is not None and cells is not None:  # the rows written, not refused
                    refused = refused_rows(batch.rows, batch.record_nos, poison)
                    await self._keys.record(
                        conn, self._key, batch.batch_no, self._keys.without(cells, refused)
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
        if written + len(letters) != batch.enqueued:
            raise FatalError(
                f"batch {batch.batch_no}: {written} written + {len(letters)} dead-lettered "
                f"!= {batch.enqueued} enqueued"
            )
        return BatchResult(
            batch.batch_no,
            batch.enqueued,
            written,
            len(letters),
            attempt_no,
            dead_letters=tuple(letters),
        )

    def _committed_before(self, batch: PreparedBatch, done: asyncpg.Record) -> BatchResult:
        if done["batch_digest"] != batch.digest:
            raise FatalError(
                f"{self._key[0]} partition {self._key[1]} load {self._key[2]}: batch "
                f"{batch.batch_no} was committed with different records. The source changed "
                "since the failed attempt; start a new run instead of re-executing this one."
            )
        self._log.info(
            "%s partition %s batch %d was already committed (attempt %d); counted once",
            self._key[0],
            self._key[1],
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
        if failure is None:
            return len(rows), []
        error, cause, line = failure
        if line is None or not 1 <= line <= len(rows):
            return await self._bisect(conn, rows, record_nos, budget, failure)
        bad = line - 1
        budget.spend()
        letter = self._poison(record_nos[bad], rows[bad], error, cause)
        before = await self._isolate(conn, rows[:bad], record_nos[:bad], budget)
        rest, rest_nos = rows[bad + 1 :], record_nos[bad + 1 :]
        mid = len(rest) // 2
        left = await self._isolate(conn, rest[:mid], rest_nos[:mid], budget)
        right = await self._isolate(conn, rest[mid:], rest_nos[mid:], budget)
        written = before[0] + left[0] + right[0]
        return written, [*before[1], letter, *left[1], *right[1]]

    async def _attempt_rows(
        self, conn: asyncpg.Connection, rows: Sequence[Row]
    ) -> tuple[RecordError, str, int | None] | None:
        """None if ``rows`` went in; else the record error, its class and the COPY line."""
        try:
            async with conn.transaction():
                await self._write_rows(conn, rows)
        except DRIVER_ERRORS as exc:
            error = classify(exc)
            if not isinstance(error, RecordError):
                raise
            return error, type(exc).__name__, None if self._upsert else _copy_line(exc)
        return None

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
            return 0, [self._poison(record_nos[0], rows[0], failure[0], failure[1])]
        mid = len(rows) // 2
        left = await self._isolate(conn, rows[:mid], record_nos[:mid], budget)
        right = await self._isolate(conn, rows[mid:], record_nos[mid:], budget)
        return left[0] + right[0], left[1] + right[1]

    async def _write_rows(self, conn: asyncpg.Connection, rows: Sequence[Row]) -> int:
        if isinstance(rows, ArrowRows) and not self._upsert:
            await copy_arrow(conn, rows, *self._destination, self._columns)
            return len(rows)
        if not self._upsert:
            schema, table = self._destination
            await conn.copy_records_to_table(
                table, schema_name=schema, records=rows, columns=self._columns
            )
            return len(rows)
        await conn.copy_records_to_table(
            _UPSERT_STAGE, schema_name="pg_temp", records=rows, columns=self._columns
        )
        status = await conn.execute(self._upsert_sql)
        await conn.execute(f"TRUNCATE {quote_ident(_UPSERT_STAGE)}")
        return int(status.rsplit(" ", 1)[-1])

    def _poison(self, record_no: int, row: Row, error: RecordError, cause: str) -> DeadLetter:
        return DeadLetter(
            record_no=record_no,
            payload=payload_json(dict(zip(self._columns, row, strict=True))),
            error_class=cause,
            error_message=no_nul(str(error)),
            sqlstate=error.sqlstate,
            detail=no_nul(error.detail) if error.detail else None,
        )


_COPY_LINE = re.compile(r"^COPY .*?, line (\d+)(?:, column .*)?(?::.*)?$")


def _copy_line(exc: BaseException) -> int | None:
    """The 1-based row of a COPY that the server rejected, from the error's CONTEXT."""
    context = getattr(exc, "context", None) or ""
    found = _COPY_LINE.match(context.splitlines()[-1] if context else "")
    return int(found.group(1)) if found else None


class _PoisonBudget:
    """How many rows of one batch Postgres may reject before that looks systemic."""

    __slots__ = ("_key", "_left", "limit")

    def __init__(self, limit: int | None, key: tuple[str, str, str]) -> None:
        self.limit, self._left, self._key = limit, limit, key

    def spend(self) -> None:
        if self._left is None:
            return
        self._left -= 1
        if self._left < 0:
            raise CircuitBreakerOpenError(
                f"{self._key[0]} partition {self._key[1]}: more than {self.limit} records of "
                "one batch were rejected by Postgres; that looks systemic (schema or server), "
                "not a few bad records. Nothing of this batch was committed."
            )
