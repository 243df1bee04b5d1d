"""Dead loads are cleaned up; live ones never are (a real SIGKILL, a real concurrent load)."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import asyncpg

from etl_assets.postgres.housekeeping import cleanup
from etl_assets.postgres.key_audit import verify_keys
from etl_assets.postgres.lease import DEFAULT_LEASE_TTL_S
from etl_assets.postgres.ledger import Ledger
from etl_assets.postgres.loader import LoadSettings, load_partition
from etl_assets.postgres.replay import ReplayFilter, replay_dead_letters
from etl_assets.postgres.resource import PostgresResource
from etl_assets.postgres.retry import RetryPolicy
from etl_assets.postgres.sql import qualified, quote_ident
from etl_assets.postgres.target import TableTarget
from etl_assets.postgres.verify import duplicate_keys
from etl_assets_tests.postgres.helpers import (
    DAY,
    events_target,
    execute,
    fetch,
    partition_audit,
    records,
)

SLOW_LOAD = """
import asyncio, datetime as dt, sys, time
from etl_assets.postgres.loader import LoadSettings, load_partition
from etl_assets.postgres.resource import PostgresResource
from etl_assets_tests.postgres.helpers import events_target, records

dsn, schema, load_id, day, n, delay, ttl = sys.argv[1:]

def slow():
    for i, record in enumerate(records(int(n))):
        if i >= 200:
            time.sleep(float(delay))
        yield record

async def main():
    async with PostgresResource(dsn=dsn).pool() as pool:
        report = await load_partition(
            pool, events_target(schema), dt.date.fromisoformat(day), slow(), load_id=load_id,
            settings=LoadSettings(ledger_schema=schema, batch_size=100, lease_ttl_s=float(ttl)),
        )
    print(report.written)

asyncio.run(main())
"""


def start_load(
    dsn: str,
    schema: str,
    load_id: str,
    day: dt.date,
    n: int,
    delay: float,
    ttl_s: float = DEFAULT_LEASE_TTL_S,
) -> subprocess.Popen[str]:
    """A load in its own process whose source sleeps ``delay`` per record after 200."""
    args = [dsn, schema, load_id, day.isoformat(), f"{n}", f"{delay}", f"{ttl_s}"]
    return subprocess.Popen(
        [sys.executable, "-c", SLOW_LOAD, *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def wait_for_batches(dsn: str, schema: str, load_id: str, at_least: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rows = asyncio.run(
            fetch(
                dsn,
                "SELECT count(*) FROM pg_tables WHERE schemaname = $1 AND tablename = $2",
                schema,
                "load_ledger",
            )
        )
        if rows[0][0]:
            rows = asyncio.run(
                fetch(
                    dsn,
                    f"SELECT count(*) FROM {qualified(schema, 'load_ledger')} WHERE load_id = $1",
                    load_id,
                )
            )
            if rows[0][0] >= at_least:
                return
        time.sleep(0.2)
    raise AssertionError(f"load {load_id} committed fewer than {at_least} batches in 60 s")


def load_state(dsn: str, schema: str) -> dict[str, tuple[str, bool]]:
    """load id -> (status, does its staging table exist)."""
    rows = asyncio.run(
        fetch(
            dsn,
            "SELECT load_id, status, "
            "to_regclass(quote_ident($1) || '.' || quote_ident(staging_table)) IS NOT NULL "
            f"FROM {qualified(schema, 'partition_loads')} ORDER BY load_id",
            schema,
        )
    )
    return {r[0]: (r[1], r[2]) for r in rows}


def test_cleanup_abandons_a_killed_load_and_leaves_a_running_one_alone(
    pg_dsn: str, schema: str
) -> None:
    target = events_target(schema)
    other_day = DAY + dt.timedelta(days=1)
    killed = start_load(pg_dsn, schema, "killed", DAY, 2_000, 0.05)
    wait_for_batches(pg_dsn, schema, "killed", 2)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait(timeout=30)
    live = start_load(pg_dsn, schema, "live", other_day, 800, 0.01)
    try:
        wait_for_batches(pg_dsn, schema, "live", 1)
        assert load_state(pg_dsn, schema) == {
            "killed": ("loading", True),
            "live": ("loading", True),
        }

        async def clean() -> list[str]:
            async with PostgresResource(dsn=pg_dsn).pool() as pool:
                report = await cleanup(pool, Ledger(schema), RetryPolicy())
            return [load.key.load_id for load in report.abandoned]

        assert asyncio.run(clean()) == ["killed"]
        assert load_state(pg_dsn, schema) == {
            "killed": ("abandoned", False),
            "live": ("loading", True),
        }
        out, err = live.communicate(timeout=120)
    finally:
        live.kill()
    assert live.returncode == 0, err[-2000:]
    assert out.split() == ["800"]
    assert load_state(pg_dsn, schema)["live"] == ("published", False)  # renamed into place
    audit = asyncio.run(partition_audit(pg_dsn, target, other_day, schema))
    assert (audit.problems, audit.written, audit.in_table) == ((), 800, 800)
    assert asyncio.run(clean_again(pg_dsn, schema)) == 0


async def clean_again(dsn: str, schema: str) -> int:
    async with PostgresResource(dsn=dsn).pool() as pool:
        return len((await cleanup(pool, Ledger(schema), RetryPolicy())).abandoned)


def test_retention_deletes_only_resolved_letters(pg_dsn: str, schema: str) -> None:
    async def scenario() -> tuple[int, list[tuple[str, int]]]:
        async with PostgresResource(dsn=pg_dsn).pool() as pool:
            ledger = Ledger(schema)
            async with pool.acquire() as conn:
                await ledger.ensure(conn)
                await conn.execute(
                    f"INSERT INTO {ledger.dead_letters} (target, partition_key, load_id, batch_no, "
                    "record_no, payload, error_class, error_message, attempts, status, "
                    "resolved_at) "
                    "SELECT 't', 'd', 'l', 0, n, '{}', 'E', 'm', 1, s, now() - interval '40 days' "
                    "FROM unnest(ARRAY['open', 'replayed', 'superseded', 'discarded', 'pending']) "
                    "WITH ORDINALITY AS u(s, n)"
                )
            report = await cleanup(pool, ledger, RetryPolicy(), keep_resolved_letters_days=30)
            async with pool.acquire() as conn:
                left = await conn.fetch(
                    f"SELECT status, count(*) FROM {ledger.dead_letters} GROUP BY 1 ORDER BY 1"
                )
        return report.letters_deleted, [tuple(r) for r in left]

    assert asyncio.run(scenario()) == (3, [("open", 1), ("pending", 1)])


def _negative_at(n: int, bad: set[int]) -> Iterator[dict[str, Any]]:
    for row in records(n):
        yield {**row, "amount": -1.0} if row["event_id"] in bad else row


async def _verdicts(dsn: str, target: TableTarget, schema: str) -> tuple[Any, ...]:
    """Everything the three checks read for the day: the audit, the key audit, duplicates."""
    audit = await partition_audit(dsn, target, DAY, schema)
    conn = await asyncpg.connect(dsn)
    try:
        keys = await verify_keys(conn, Ledger(schema), target, DAY)
        repeated = await duplicate_keys(conn, target, DAY)
    finally:
        await conn.close()
    return audit, keys.metadata(), tuple(keys.problems), repeated


def test_retention_of_replayed_and_discarded_letters_keeps_every_verdict(
    pg_dsn: str, schema: str
) -> None:
    """Checks read the same before and after each of two retentions (0 days): the deleted
    letters are tallied per load and status, the second wave adding to the first."""
    target = events_target(schema)
    ledger = Ledger(schema)

    async def retain(pool: asyncpg.Pool) -> int:
        report = await cleanup(pool, ledger, RetryPolicy(), keep_resolved_letters_days=0)
        return report.letters_deleted

    async def scenario() -> None:
        await execute(pg_dsn, f"CREATE SCHEMA {quote_ident(schema)}; {target.create_table_sql()}")
        await execute(
            pg_dsn, f"ALTER TABLE {target.sql_name} ADD CONSTRAINT pos CHECK (amount >= 0)"
        )
        settings = LoadSettings(ledger_schema=schema, batch_size=20, max_dead_letter_ratio=0.5)
        async with PostgresResource(dsn=pg_dsn).pool() as pool:
            report = await load_partition(
                pool, target, DAY, _negative_at(50, {3, 11, 19, 27, 35}), load_id="load-1",
                settings=settings,
            )  # fmt: skip
            assert (report.written, report.dead_lettered) == (45, 5)
            await execute(pg_dsn, f"ALTER TABLE {target.sql_name} DROP CONSTRAINT pos")
            ids = [r["id"] for r in await fetch(pg_dsn, f"SELECT id FROM {ledger.dead_letters}")]
            await replay_dead_letters(
                pool, target, DAY, load_id="replay-1", model=None, settings=settings,
                only=ReplayFilter(ids=sorted(ids)[:2]),
            )  # fmt: skip
            first = await _verdicts(pg_dsn, target, schema)
            assert (first[0].problems, first[0].letters_replayed) == ((), 2)
            assert {type(v) for v in first[0].metadata().values()} == {int, str}  # no Decimal
            assert await retain(pool) == 2
            assert await _verdicts(pg_dsn, target, schema) == first

            await replay_dead_letters(
                pool, target, DAY, load_id="replay-2", model=None, settings=settings,
                only=ReplayFilter(ids=sorted(ids)[2:3]),
            )  # fmt: skip
            async with pool.acquire() as conn:
                discarded = await ledger.discard(
                    conn, target.name, DAY.isoformat(), sorted(ids)[3:], by="me", why="test"
                )
            assert len(discarded) == 2
            second = await _verdicts(pg_dsn, target, schema)
            assert (second[0].problems, second[0].in_table, second[0].replayed_in) == ((), 48, 3)
            assert await retain(pool) == 3
            assert await _verdicts(pg_dsn, target, schema) == second
            assert await retain(pool) == 0
        left = await fetch(pg_dsn, f"SELECT count(*) FROM {ledger.dead_letters}")
        tally = await fetch(
            pg_dsn,
            f"SELECT load_id, status, letters FROM {ledger.deleted_letters} ORDER BY status",
        )
        assert (left[0][0], [tuple(r) for r in tally]) == (
            0, [("load-1", "discarded", 2), ("load-1", "replayed", 3)],
        )  # fmt: skip

    asyncio.run(scenario())
