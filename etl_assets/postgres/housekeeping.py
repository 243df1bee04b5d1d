"""Housekeeping: a running load holds a lease; a load whose lease lapsed is dead.

A load killed with SIGKILL (or the OOM killer, or a lost machine) cannot record its own
end: its ``partition_loads`` row stays ``loading`` and its staging table stays on disk.
While it runs, a load holds a lease (``etl_assets.postgres.lease``): a row renewed in
transactions, so it holds behind any pooler. The next load of the partition, and the
``etl_cleanup`` job, abandon loads whose holder is gone (staging table dropped, status
``abandoned``, pending dead letters superseded) and never touch one whose lease is alive
(``Ledger.dead_loads`` says how that is judged).

One gap, by design loud rather than silent: on a direct connection a killed process is
recognised at once by its free advisory lock, and a server restart frees every lock
too. A cleanup that runs in the seconds before a live load renews can abandon it; that
load then fails with ``LeaseLostError`` (its publish refuses a load no longer
``loading``) and the partition keeps its last published state. Nothing is lost or
half-published.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass, field

import asyncpg

from etl_assets.postgres.ledger import DeadLoad, Ledger
from etl_assets.postgres.privileges import Missing, explained, ledger_needs
from etl_assets.postgres.retry import (
    RetryPolicy,
    with_retries,
)
from etl_assets.postgres.sql import qualified

__all__ = ["CleanupReport", "abandon_dead_loads", "cleanup"]


async def abandon_dead_loads(
    conn: asyncpg.Connection,
    ledger: Ledger,
    *,
    target: str | None = None,
    partition_key: str | None = None,
    exclude_load_id: str | None = None,
) -> list[DeadLoad]:
    """In the caller's transaction: drop dead loads' staging tables, mark them abandoned."""
    dead = await ledger.dead_loads(
        conn, target=target, partition_key=partition_key, exclude_load_id=exclude_load_id
    )
    for load in dead:
        if load.staging_table:
            await _drop_staging(conn, load.staging_table)
        await ledger.abandon(
            conn, load, f"load {load.key.load_id} was abandoned: its process is gone"
        )
    return dead


async def _drop_staging(conn: asyncpg.Connection, name: str) -> None:
    """Found by name (it is unique: a digest of target, partition and load), any schema."""
    for row in await conn.fetch(
        "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relname = $1 AND c.relkind = 'r'",
        name,
    ):
        await conn.execute(f"DROP TABLE {qualified(row['nspname'], name)}")


@dataclass(frozen=True, slots=True)
class CleanupReport:
    abandoned: list[DeadLoad] = field(default_factory=list)
    letters_deleted: int = 0


async def cleanup(
    pool: asyncpg.Pool,
    ledger: Ledger,
    policy: RetryPolicy,
    *,
    keep_resolved_letters_days: int | None = None,
) -> CleanupReport:
    """Abandon every dead load; with a retention, delete resolved letters older than it."""

    async def run(conn: asyncpg.Connection) -> CleanupReport:
        await ledger.ensure(conn)
        async with explained(conn, "clean up dead loads", needs), conn.transaction():
            dead = await abandon_dead_loads(conn, ledger)
            deleted = 0
            if keep_resolved_letters_days is not None:
                deleted = await ledger.apply_retention(conn, keep_resolved_letters_days)
            return CleanupReport(dead, deleted)

    def needs(conn: asyncpg.Connection) -> Awaitable[list[Missing]]:
        return ledger_needs(conn, ledger.schema)

    return await with_retries(pool, policy, run)
