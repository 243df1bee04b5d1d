"""Database truth about a published partition: the ledger against the target's rows.

This is what the blocking asset checks run. Nothing here trusts an in-memory counter or
the run's own report: the latest finished load of the partition is looked up in the
ledger, its batches are summed again, its dead letters are counted, and the target's
rows for the data date are counted, all in one snapshot (REPEATABLE READ).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass

import asyncpg

from etl_assets.postgres.ledger import Ledger, LetterStatus, LoadKey
from etl_assets.postgres.privileges import Missing, explained, operation_needs
from etl_assets.postgres.sql import column_list, quote_ident
from etl_assets.postgres.target import TableTarget, WriteMode

__all__ = [
    "PartitionAudit",
    "audit_partition",
    "check_snapshot",
    "duplicate_keys",
    "missing_table",
]


@dataclass(frozen=True, slots=True)
class PartitionAudit:
    """One partition's accounting, and what does not add up."""

    partition_key: str
    load_id: str | None
    enqueued: int
    written: int
    dead_lettered: int
    replayed_in: int  # rows written into the partition by replays of that load's letters
    in_table: int
    dead_letter_rows: int
    problems: tuple[str, ...]
    letters_replayed: int = 0  # of that load's letters (and its replays'), marked replayed
    letters_open: int = 0
    letters_unfindable: int = 0  # of that load's own letters: pending or superseded

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def dead_letter_ratio(self) -> float:
        return self.dead_lettered / self.enqueued if self.enqueued else 0.0

    def metadata(self) -> dict[str, int | float | str]:
        return {
            "partition": self.partition_key,
            "load_id": self.load_id or "",
            "enqueued": self.enqueued,
            "written": self.written,
            "dead_lettered": self.dead_lettered,
            "replayed_in": self.replayed_in,
            "in_table": self.in_table,
            "dead_letter_rows": self.dead_letter_rows,
            "dead_letters_open": self.letters_open,
            "dead_letters_unfindable": self.letters_unfindable,
        }


async def audit_partition(
    conn: asyncpg.Connection,
    ledger: Ledger,
    target: TableTarget,
    day: dt.date,
    *,
    count_rows: bool = True,
    rows_in_table: int | None = None,
) -> PartitionAudit:
    """Compare the ledger of the partition's current load with the target's rows.

    ``count_rows=False`` reads the ledger only (no scan of the partition): for a caller
    that needs the load's own numbers, such as the dead-letter rate; ``in_table`` is then
    what the ledger accounts for, and no problem about the table's rows is reported.
    ``rows_in_table``: the partition's rows as the caller counted them in the same
    snapshot (:func:`check_snapshot`; the key scan counts them), so no second scan.
    """
    async with check_snapshot(conn, ledger, target):
        partition = day.isoformat()
        missing = await missing_table(conn, target, ledger)
        if missing is not None:
            return PartitionAudit(partition, None, 0, 0, 0, 0, 0, 0, (missing,))
        if rows_in_table is None and count_rows:
            rows_in_table = await _count_rows(conn, target, day)
        return await _audit_partition(conn, ledger, target, day, rows_in_table)


@contextlib.asynccontextmanager
async def check_snapshot(
    conn: asyncpg.Connection, ledger: Ledger, target: TableTarget
) -> AsyncIterator[None]:
    """One read-only REPEATABLE READ snapshot for a check's reads; a refusal explained.

    Nested, it is a savepoint of the outer snapshot: table and ledger agree in time.
    """

    def needs(conn: asyncpg.Connection) -> Awaitable[list[Missing]]:
        return operation_needs(conn, target, ledger.schema, "check")

    snapshot = conn.transaction(isolation="repeatable_read", readonly=True)
    async with explained(conn, f"check {target.sql_name}", needs), snapshot:
        yield


async def _audit_partition(
    conn: asyncpg.Connection,
    ledger: Ledger,
    target: TableTarget,
    day: dt.date,
    in_table: int | None,
) -> PartitionAudit:
    """The ledger's numbers against ``in_table`` (None: the ledger's own, rows unchecked)."""
    partition = day.isoformat()
    load = await ledger.current_load(conn, target.name, partition)
    if load is None:
        return PartitionAudit(
            partition, None, 0, 0, 0, 0, in_table or 0, 0,
            (f"partition {partition} of {target.name} has no finished load in "
             f"{ledger.loads}",),
        )  # fmt: skip
    key = LoadKey(target.name, partition, load["load_id"])
    totals = await ledger.totals(conn, key)
    dead_rows = await ledger.dead_letter_rows(conn, key)
    replayed_in = await ledger.replayed_in(conn, key)
    letters = await ledger.letter_counts(conn, key)
    own = await ledger.own_letter_statuses(conn, key)
    audit = PartitionAudit(
        partition, key.load_id, totals.enqueued, totals.written, totals.dead_lettered,
        replayed_in, totals.written + replayed_in if in_table is None else in_table, dead_rows,
        (),
        letters_replayed=letters.get(LetterStatus.REPLAYED, 0),
        letters_open=letters.get(LetterStatus.OPEN, 0),
        letters_unfindable=own.get(LetterStatus.PENDING, 0) + own.get(LetterStatus.SUPERSEDED, 0),
    )  # fmt: skip
    return _with_problems(audit, target)


def _with_problems(audit: PartitionAudit, target: TableTarget) -> PartitionAudit:
    problems = []
    if audit.enqueued != audit.written + audit.dead_lettered:
        problems.append(
            f"ledger: enqueued {audit.enqueued} != written {audit.written} + dead-lettered "
            f"{audit.dead_lettered}"
        )
    if audit.dead_letter_rows != audit.dead_lettered:
        problems.append(
            f"{audit.dead_letter_rows} dead-letter rows, the ledger counts {audit.dead_lettered}"
        )
    if audit.letters_unfindable:
        problems.append(
            f"{audit.letters_unfindable} dead letter(s) of load {audit.load_id} are pending or "
            "superseded although its rows are the table's: rejected records that neither the "
            "table nor the open queue holds (list, export and replay cannot see them)"
        )
    if audit.letters_replayed != audit.replayed_in:
        problems.append(
            f"{audit.letters_replayed} dead letter(s) marked replayed, the replays' ledger "
            f"wrote {audit.replayed_in} row(s)"
        )
    accounted = audit.written + audit.replayed_in
    if audit.in_table < accounted:
        problems.append(
            f"{accounted - audit.in_table} row(s) missing: the table holds {audit.in_table} "
            f"rows for {audit.partition_key}, the ledger accounts for {accounted}"
        )
    elif audit.in_table > accounted and target.mode is WriteMode.REPLACE:
        # Upsert targets may keep keys of earlier loads; a replaced partition may not.
        problems.append(
            f"{audit.in_table - accounted} row(s) unaccounted for: the table holds "
            f"{audit.in_table} rows for {audit.partition_key}, the ledger accounts for {accounted}"
        )
    return dataclasses.replace(audit, problems=tuple(problems))


async def missing_table(
    conn: asyncpg.Connection, target: TableTarget, ledger: Ledger | None = None
) -> str | None:
    """Why a partition cannot be checked at all: its table (or the ledger's) does not exist.

    Every check says it in the same words, so a partition of a table never loaded fails
    them alike instead of raising in one and passing another.
    """
    for table in (target.sql_name,) if ledger is None else (target.sql_name, ledger.loads):
        if await conn.fetchval("SELECT to_regclass($1) IS NULL", table):
            return f"table {table} does not exist (never loaded?)"
    return None


async def _count_rows(conn: asyncpg.Connection, target: TableTarget, day: dt.date) -> int:
    count: int = await conn.fetchval(
        f"SELECT count(*) FROM {target.sql_name} WHERE {quote_ident(target.partition_column)} = $1",
        day,
    )
    return count


async def duplicate_keys(conn: asyncpg.Connection, target: TableTarget, day: dt.date) -> int:
    """Keys that occur more than once in the partition (whole rows when there is no key).

    A valid unique index over (a subset of) the key, whole-column, not partial, whose
    columns cannot hold NULL (or that treats NULLs as equal) makes a duplicate
    impossible: the server proved it at every write, so no scan is needed.
    """
    if target.primary_key and await unique_index_covers(conn, target):
        return 0
    key = target.primary_key or target.row_columns
    count: int = await conn.fetchval(
        f"SELECT count(*) FROM (SELECT 1 FROM {target.sql_name} "
        f"WHERE {quote_ident(target.partition_column)} = $1 "
        f"GROUP BY {column_list(key)} HAVING count(*) > 1) AS repeated",
        day,
    )
    return count


async def unique_index_covers(conn: asyncpg.Connection, target: TableTarget) -> bool:
    """True when the target has a valid unique index that rules out a repeated key."""
    covered: bool = await conn.fetchval(
        """SELECT EXISTS (
               SELECT 1 FROM pg_index i
               CROSS JOIN LATERAL (
                   SELECT array_agg(a.attname::text) AS names, bool_and(a.attnotnull) AS not_null
                   FROM pg_attribute a
                   WHERE a.attrelid = i.indrelid
                     AND a.attnum = ANY ((i.indkey::int2[])[0:i.indnkeyatts - 1])
               ) AS k
               WHERE i.indrelid = to_regclass($1) AND i.indisunique AND i.indisvalid
                 AND i.indpred IS NULL AND i.indexprs IS NULL
                 AND k.names <@ $2::text[] AND (k.not_null OR i.indnullsnotdistinct))""",
        target.sql_name,
        list(target.primary_key),
    )
    return covered
