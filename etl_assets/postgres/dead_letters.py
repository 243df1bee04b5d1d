"""What the dead-letter queue holds: the summary the dead-letter asset and sensor show."""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg

from etl_assets.postgres.ledger import Ledger, LetterStatus

__all__ = ["DeadLetterGroup", "DeadLetterSummary", "NewestDeadLetter", "summarize_dead_letters"]

EXCERPT = 160  # characters of an error message or payload shown in the UI


@dataclass(frozen=True, slots=True)
class DeadLetterGroup:
    target: str
    partition_key: str
    error_class: str
    open: int
    replayed: int
    superseded: int
    discarded: int


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
    superseded: int = 0
    discarded: int = 0
    pending: int = 0  # letters of loads still running (or failed, not yet cleaned up)
    max_id: int = 0  # the sensor's next cursor: every letter up to it has settled
    groups: list[DeadLetterGroup] = field(default_factory=list)
    newest: list[NewestDeadLetter] = field(default_factory=list)


async def summarize_dead_letters(
    conn: asyncpg.Connection,
    ledger: Ledger,
    *,
    after_id: int = 0,
    newest: int = 10,
    max_groups: int = 100,
) -> DeadLetterSummary:
    """Counts per (target, partition, error class) by status, and the newest open letters.

    ``open`` counts letters of each partition's current load not yet resolved: a
    reloaded partition's old letters are ``superseded``, not open twice. ``after_id``
    limits it to letters added since a cursor (the sensor's view); ``max_id`` stops
    below the first letter still pending, so it is reported once its load published.
    """
    if await conn.fetchval("SELECT to_regclass($1) IS NULL", ledger.dead_letters):
        return DeadLetterSummary()
    resolved = (LetterStatus.REPLAYED, LetterStatus.SUPERSEDED, LetterStatus.DISCARDED)
    counts = ", ".join(
        f"count(*) FILTER (WHERE status = '{s}') AS {s}" for s in (LetterStatus.OPEN, *resolved)
    )
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        totals = await conn.fetchrow(
            f"SELECT {counts}, count(*) FILTER (WHERE status = 'pending') AS pending, "
            f"coalesce(max(id), 0) AS max_id, "
            f"min(id) FILTER (WHERE status = 'pending') AS first_pending "
            f"FROM {ledger.dead_letters} WHERE id > $1",
            after_id,
        )
        groups = await conn.fetch(
            f"SELECT target, partition_key, error_class, {counts} "
            f"FROM {ledger.dead_letters} WHERE id > $1 AND status <> 'pending' "
            f"GROUP BY 1, 2, 3 ORDER BY 2 DESC, 1, 3 LIMIT $2",
            after_id,
            max_groups,
        )
        latest = await conn.fetch(
            f"SELECT id, target, partition_key, record_no, error_class, "
            f"left(error_message, {EXCERPT}) AS error_message, "
            f"left(payload::text, {EXCERPT}) AS payload_excerpt "
            f"FROM {ledger.dead_letters} WHERE id > $1 AND status = 'open' "
            f"ORDER BY id DESC LIMIT $2",
            after_id,
            newest,
        )
    first_pending = totals["first_pending"]
    settled = totals["max_id"] if first_pending is None else first_pending - 1
    return DeadLetterSummary(
        open=totals["open"],
        replayed=totals["replayed"],
        superseded=totals["superseded"],
        discarded=totals["discarded"],
        pending=totals["pending"],
        max_id=max(settled, after_id),
        groups=[DeadLetterGroup(**dict(row)) for row in groups],
        newest=[NewestDeadLetter(**dict(row)) for row in latest],
    )
