"""What the blocking checks cost next to the load they check (issue 20).

Loads N rows into one partition of the bench table of bench/run.py (``event_id bigint,
kind text, amount double precision, created_at timestamptz`` plus the date, primary key
``(data_date, event_id)``) the columnar way: ``run.arrow_events(N)`` is built before the
clock, then handed to ``load_partition`` with the package's defaults (the yardstick:
every figure is a share of it). Then times, each in a fresh connection, median of
``--rounds``, interleaved so drift hits every path alike:

* the three partition checks as the package runs them (``checks.check_plans``):
  ``written_equals_enqueued`` (count audit and key digest in one snapshot, one scan),
  ``no_duplicate_keys`` (the primary key's unique index proves it), ``dead_letter_rate``
  (the ledger only);
* for scale: ``count_scan``, a bare ``count(*)`` of the partition.

Run on a quiet machine: ``.venv/bin/python bench/checks.py --rows 1000000``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import run  # bench/run.py: the same table, model and Arrow source

from etl_assets.checks import check_plans
from etl_assets.frames import classify_output
from etl_assets.postgres.embedded import EmbeddedPostgres
from etl_assets.postgres.ledger import Ledger
from etl_assets.postgres.loader import load_partition
from etl_assets.postgres.resource import PostgresResource
from etl_assets.postgres.target import TableTarget, columns_from_model

DAY = dt.date(2024, 1, 2)
TARGET = TableTarget(
    schema="public",
    table="bench_checks",
    columns=columns_from_model(run.Event),
    primary_key=("data_date", "event_id"),
)


async def timed(dsn: str, work: Callable[[asyncpg.Connection], Awaitable[Any]]) -> float:
    conn = await asyncpg.connect(dsn)
    try:
        started = time.perf_counter()
        await work(conn)
        return time.perf_counter() - started
    finally:
        await conn.close()


async def load_once(dsn: str, rows: int, round_no: int) -> float:
    table = run.arrow_events(rows)  # built before the clock: a columnar user's data
    async with PostgresResource(dsn=dsn).pool() as pool:
        started = time.perf_counter()
        await load_partition(
            pool, TARGET, DAY, classify_output(table, "bench"), load_id=f"bench-{round_no}",
            model=run.Event,
        )  # fmt: skip
        return time.perf_counter() - started


async def main(rows: int, rounds: int, dsn: str) -> None:
    ledger = Ledger()
    load_s = [await load_once(dsn, rows, n) for n in range(rounds)]
    checks: dict[str, Callable[[asyncpg.Connection], Awaitable[Any]]] = {
        plan.name: (lambda c, inspect=plan.inspect: inspect(c, ledger, TARGET, DAY))
        for plan in check_plans()
    }
    checks["count_scan"] = lambda c: c.fetchval(
        f"SELECT count(*) FROM {TARGET.sql_name} WHERE data_date = $1", DAY
    )
    times: dict[str, list[float]] = {name: [] for name in checks}
    for _ in range(rounds):
        for name, work in checks.items():
            times[name].append(await timed(dsn, work))
    load = statistics.median(load_s)
    medians = {name: statistics.median(values) for name, values in times.items()}
    three = sum(medians[plan.name] for plan in check_plans())
    print(f"rows {rows:,}; load average {os.getloadavg()[0]:.2f}; median of {rounds}")
    print("| step | s | share of the columnar load |\n|---|---:|---:|")
    print(f"| load (columnar, Arrow table) | {load:.3f} | 1.00 |")
    for name, median in medians.items():
        print(f"| {name} | {median:.3f} | {median / load:.3f} |")
    print(f"| the three checks | {three:.3f} | {three / load:.3f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    dsn = os.environ.get("ETL_ASSETS_PG_DSN")
    if dsn:
        asyncio.run(main(args.rows, args.rounds, dsn))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            server = EmbeddedPostgres(Path(tmp) / "pgdata")
            with server.leased() as embedded:
                asyncio.run(main(args.rows, args.rounds, embedded))
