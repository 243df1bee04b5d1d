"""Housekeeping: a running load holds a lock; a load whose lock is free is dead.

A load killed with SIGKILL (or the OOM killer, or a lost machine) cannot record its own
end: its ``partition_loads`` row stays ``loading`` and its staging table stays on disk.
While it runs, a load holds a session-level advisory lock on a connection of its own,
so "lock free" means "its process is gone": the next load of the partition, and the
``etl_cleanup`` job, abandon such loads (staging table dropped, status ``abandoned``,
pending dead letters superseded) and never touch one whose lock is held.

One gap, by design loud rather than silent: if the server restarts, every lock goes
with it. A cleanup that runs in the seconds before a live load reconnects can abandon
it; that load's next batch or its publish then fails (its staging table is gone) and
the partition keeps its last published state. Nothing is lost or half-published.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import asyncpg

from etl_assets.errors import ConfigurationError, FatalError
from etl_assets.postgres.ledger import DeadLoad, Ledger, LoadKey
from etl_assets.postgres.retry import (
    DRIVER_ERRORS,
    RetryPolicy,
    call_with_retries,
    classified,
    discard,
    with_retries,
)
from etl_assets.postgres.sql import qualified

__all__ = ["CleanupReport", "abandon_dead_loads", "cleanup", "load_lock"]


@contextlib.asynccontextmanager
async def load_lock(
    pool: asyncpg.Pool, ledger: Ledger, key: LoadKey, policy: RetryPolicy
) -> AsyncIterator[None]:
    """Hold "this load runs" for the load's lifetime, on a pooled connection of its own."""
    if pool.get_max_size() < 2:
        raise ConfigurationError(
            f"{key}: a load needs a pool of at least 2 connections (its lock and a writer); "
            "raise PostgresResource(max_pool_size=...)"
        )

    async def take(_attempt: int) -> asyncpg.Connection:
        with classified():
            conn = await pool.acquire()
            try:
                taken = await ledger.hold_load_lock(conn, key)
            except DRIVER_ERRORS:
                discard(conn)
                await pool.release(conn)
                raise
        if taken:
            return conn
        await pool.release(conn)
        raise FatalError(
            f"{key}: load {key.load_id!r} is already running in another process; "
            "wait for it to end (or terminate it) before running it again"
        )

    conn = await call_with_retries(policy, take)
    try:
        yield
    finally:
        await _release(pool, conn)


async def _release(pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
    """Unlock and hand back; a connection that died took its lock with it."""
    try:
        await conn.execute("SELECT pg_advisory_unlock_all()")
    except DRIVER_ERRORS:
        discard(conn)
    await pool.release(conn)


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
        async with conn.transaction():
            dead = await abandon_dead_loads(conn, ledger)
            deleted = 0
            if keep_resolved_letters_days is not None:
                deleted = await ledger.apply_retention(conn, keep_resolved_letters_days)
            return CleanupReport(dead, deleted)

    return await with_retries(pool, policy, run)
