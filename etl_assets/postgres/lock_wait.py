"""Locks asked for under a short ``lock_timeout``, retried behind readers, waits named.

A lock request that waits queues every later request for the table behind it: a
publish's ACCESS EXCLUSIVE waiting on a BI reader's open transaction would take the table
offline for as long as that reader stays. So every lock a publish (or a load's DDL) asks
for is asked for under ``lock_timeout_s``; on a timeout (55P03) the transaction rolls
back, the sessions holding the lock are read (:func:`lock_holders`) and logged, and the
work is tried again after a pause in which readers run (:func:`behind_readers`), until
``lock_wait_budget_s`` is spent: then it fails with ``PublishBlockedError``, naming them.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import asyncpg
import stamina

from etl_assets.errors import PublishBlockedError
from etl_assets.postgres.target import TableTarget

__all__ = [
    "DEFAULT_LOCK_TIMEOUT_S",
    "DEFAULT_LOCK_WAIT_BUDGET_S",
    "Blocker",
    "LockWait",
    "behind_readers",
    "lock_holders",
    "set_lock_timeout",
]

T = TypeVar("T")


class Log(Protocol):
    """Where the waits are logged (``logging.Logger``, Dagster's ``context.log``)."""

    def warning(self, msg: str, *args: Any) -> Any: ...


# How long a publish goes on asking for its lock behind readers before it fails, naming
# them: long enough for a report query or a pg_dump of the table to end.
DEFAULT_LOCK_WAIT_BUDGET_S = 300.0
DEFAULT_LOCK_TIMEOUT_S = 2.0  # a reader queued behind a publish's lock waits at most this

# Which table lock modes a granted mode conflicts with (PostgreSQL's table, "Conflicting
# Lock Modes"): who blocks the lock a publish asks for.
_CONFLICTS = {
    "AccessShareLock": {"AccessExclusiveLock"},
    "RowShareLock": {"ExclusiveLock", "AccessExclusiveLock"},
    "RowExclusiveLock": {
        "ShareLock", "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock",
    },
    "ShareUpdateExclusiveLock": {
        "ShareUpdateExclusiveLock", "ShareLock", "ShareRowExclusiveLock", "ExclusiveLock",
        "AccessExclusiveLock",
    },
    "ShareLock": {
        "RowExclusiveLock", "ShareUpdateExclusiveLock", "ShareRowExclusiveLock",
        "ExclusiveLock", "AccessExclusiveLock",
    },
    "ShareRowExclusiveLock": {
        "RowExclusiveLock", "ShareUpdateExclusiveLock", "ShareLock", "ShareRowExclusiveLock",
        "ExclusiveLock", "AccessExclusiveLock",
    },
    "ExclusiveLock": {
        "RowShareLock", "RowExclusiveLock", "ShareUpdateExclusiveLock", "ShareLock",
        "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock",
    },
    "AccessExclusiveLock": {
        "AccessShareLock", "RowShareLock", "RowExclusiveLock", "ShareUpdateExclusiveLock",
        "ShareLock", "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock",
    },
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Blocker:
    """A session holding a lock that a publish waited for (from ``pg_stat_activity``)."""

    pid: int
    application_name: str
    state: str | None  # None: hidden from this role (pg_read_all_stats shows it)
    transaction_age_s: float | None
    query_start: dt.datetime | None

    def __str__(self) -> str:
        age = "?" if self.transaction_age_s is None else f"{self.transaction_age_s:.0f} s"
        started = "?" if self.query_start is None else self.query_start.isoformat()
        return (
            f"pid {self.pid} (application_name {self.application_name!r}, state "
            f"{self.state or '?'}, transaction open {age}, query started {started})"
        )


async def lock_holders(
    conn: asyncpg.Connection,
    target: TableTarget,
    wanted: str,
    advisory: tuple[int, str] | None = None,
) -> list[Blocker]:
    """The sessions whose locks on the target (or its partitions) conflict with the mode
    ``wanted``, and those holding the ``advisory`` lock (class, hashed name: another
    publish of the partition), oldest transaction first. Asked right after a lock
    timeout, outside any transaction, they are the sessions ``pg_blocking_pids`` named
    while it waited.
    """
    lock_class, lock_name = advisory if advisory is not None else (None, None)
    rows = await conn.fetch(
        """SELECT DISTINCT a.pid, coalesce(a.application_name, '') AS application_name,
                  a.state, extract(epoch FROM clock_timestamp() - a.xact_start)::float8
                  AS age, a.query_start, a.xact_start
           FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
           WHERE l.granted AND l.pid <> pg_backend_pid()
             AND ((l.mode = ANY($2::text[])
                   AND l.relation IN (SELECT $1::regclass UNION ALL
                                      SELECT inhrelid FROM pg_inherits
                                      WHERE inhparent = $1::regclass))
                  OR (l.locktype = 'advisory' AND l.objsubid = 2
                      AND l.classid::bigint = $3::bigint
                      AND l.objid::bigint = (hashtext($4::text)::bigint & 4294967295)))
           ORDER BY a.xact_start NULLS LAST, a.pid""",
        target.sql_name,
        sorted(_CONFLICTS[wanted]),
        lock_class,
        lock_name,
    )
    return [
        Blocker(r["pid"], r["application_name"], r["state"], r["age"], r["query_start"])
        for r in rows
    ]


async def set_lock_timeout(conn: asyncpg.Connection, lock_timeout_s: float) -> None:
    """For the rest of the transaction: a lock request gives up after ``lock_timeout_s``."""
    await conn.execute(
        "SELECT set_config('lock_timeout', $1, true)", f"{round(lock_timeout_s * 1000)}ms"
    )


class LockWait(Exception):
    """A publish attempt gave up on a lock after ``lock_timeout_s``; who held it."""

    def __init__(self, blockers: list[Blocker]) -> None:
        super().__init__(blockers)
        self.blockers = blockers

    def named(self) -> str:
        held = "; ".join(map(str, self.blockers))
        return held or "no session now (it ended meanwhile)"


async def behind_readers(
    key: object,
    table: str,
    attempt: Callable[[], Awaitable[T]],
    *,
    doing: str,
    lock_timeout_s: float,
    budget_s: float,
    log: Log,
) -> T:
    """``attempt()`` (``doing``: its name) again after each lock timeout, with backoff
    and jitter (readers run meanwhile), until ``lock_wait_budget_s`` is spent; each wait
    logged with the sessions holding the lock.

    stamina bounds it by time alone: the budget is what a user reasons about.
    """
    started = time.monotonic()
    try:
        async for retry in stamina.retry_context(
            on=LockWait, attempts=None, timeout=budget_s,
            wait_initial=0.5, wait_max=5.0, wait_jitter=0.5,
        ):  # fmt: skip
            with retry:
                try:
                    return await attempt()
                except LockWait as wait:
                    log.warning(
                        "%s: %s waited %.1f s for its lock on %s (lock_timeout_s), held by "
                        "%s; asking again after a pause (%.0f s of lock_wait_budget_s=%g "
                        "spent)",
                        key, doing, lock_timeout_s, table, wait.named(),
                        time.monotonic() - started, budget_s,
                    )  # fmt: skip
                    raise
    except LockWait as exhausted:  # the budget is spent: the load fails, naming them
        kept = (
            "this load's staged rows are kept (re-executing the failed run publishes them "
            "without loading again)"
            if doing == "publish"
            else "no row of this load was written yet"
        )
        raise PublishBlockedError(
            f"{key}: could not {doing}: for {time.monotonic() - started:.0f} s "
            f"(lock_wait_budget_s={budget_s:g}) every request for the "
            f"lock on {table} timed out after lock_timeout_s={lock_timeout_s:g} "
            f"behind {exhausted.named()}. Nothing was published: the partition keeps its "
            f"last published rows, and {kept}. End or wait out those sessions (a long "
            "transaction that read the table: SELECT pg_terminate_backend(pid) if it is "
            "stuck), or raise lock_wait_budget_s",
            sqlstate="55P03",
        ) from exhausted
    raise AssertionError("unreachable: stamina re-raises the last error")  # pragma: no cover
