"""What the dead-letter queue holds: the summary the dead-letter asset and sensor show."""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg

from etl_assets.postgres.ledger import LedgerTables

__all__ = ["DeadLetterGroup", "DeadLetterSummary", "NewestDeadLetter", "summarize_dead_letters"]

EXCERPT = 160  # characters of an error message or payload shown in the UI


@dataclass(frozen=True, slots=True)
class DeadLetterGroup:
    target: str
    partition_key: str
    error_class: str
    open: int
    replayed: int


@dataclass(frozen=True, slots=True)
class NewestDeadLetter:
    id: int
    target: str
    partition_key: str
    record_no: int
    error_class: str
    error_message: str
    payload_excerpt: str


@dataclass(frozen=True, slots=True)
class DeadLetterSummary:
    open: int = 0
    replayed: int = 0
    max_id: int = 0
    groups: list[DeadLetterGroup] = field(default_factory=list)
    newest: list[NewestDeadLetter] = field(default_factory=list)


async def summarize_dead_letters(
    conn: asyncpg.Connection,
    ledger: LedgerTables,
    *,
    after_id: int = 0,
    newest: int = 10,
    max_groups: int = 100,
) -> DeadLetterSummary:
    """Counts per (target, partition, error class) and the newest open letters.

    ``after_id`` limits it to letters added since a cursor (the sensor's view).
    """
    if await conn.fetchval("SELECT to_regclass($1) IS NULL", ledger.dead_letters):
        return DeadLetterSummary()
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        totals = await conn.fetchrow(
            f"SELECT count(*) FILTER (WHERE NOT replayed) AS open, "
            f"count(*) FILTER (WHERE replayed) AS replayed, coalesce(max(id), 0) AS max_id "
            f"FROM {ledger.dead_letters} WHERE id > $1",
            after_id,
        )
        groups = await conn.fetch(
            f"SELECT target, partition_key, error_class, "
            f"count(*) FILTER (WHERE NOT replayed) AS open, "
            f"count(*) FILTER (WHERE replayed) AS replayed "
            f"FROM {ledger.dead_letters} WHERE id > $1 "
            f"GROUP BY 1, 2, 3 ORDER BY 2 DESC, 1, 3 LIMIT $2",
            after_id,
            max_groups,
        )
        latest = await conn.fetch(
            f"SELECT id, target, partition_key, record_no, error_class, "
            f"left(error_message, {EXCERPT}) AS error_message, "
            f"left(payload::text, {EXCERPT}) AS payload_excerpt "
            f"FROM {ledger.dead_letters} WHERE id > $1 AND NOT replayed "
            f"ORDER BY id DESC LIMIT $2",
            after_id,
            newest,
        )
    return DeadLetterSummary(
        open=totals["open"],
        replayed=totals["replayed"],
        max_id=totals["max_id"],
        groups=[DeadLetterGroup(**dict(row)) for row in groups],
        newest=[NewestDeadLetter(**dict(row)) for row in latest],
    )
