"""What the blocking checks' scans cost next to the load they check (issue 20).

Loads N rows into one partition with the package's defaults (the bench table of
bench/run.py: ``event_id bigint, kind text, amount double precision`` plus the date,
primary key ``(data_date, event_id)``), then times, each in its own fresh connection,
median of ``--rounds``:

* ``load``: the load itself (the yardstick: every figure is a share of it);
* ``count_scan``: the count audit's ``count(*)`` of the partition;
* ``key_digest``: the key audit (``verify_keys``: one SQL scan hashing every key);
* ``duplicate_keys``: ``no_duplicate_keys`` as it runs now (the primary key's unique
  index proves it: no scan) and ``duplicate_keys_scan``, the GROUP BY scan it replaced;
* ``dead_letter_rate``: the ledger-only audit it runs now.

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
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg

from etl_assets.postgres.embedded import EmbeddedPostgres
from etl_assets.postgres.key_audit import verify_keys
from etl_assets.postgres.ledger import Ledger
from etl_assets.postgres.loader import load_partition
from etl_assets.postgres.resource import PostgresResource
from etl_assets.postgres.sql import column_list, quote_ident
from etl_assets.postgres.target import Column, TableTarget
from etl_assets.postgres.verify import audit_partition, duplicate_keys

DAY = dt.date(2024, 1, 2)
TARGET = TableTarget(
    schema="public",
    table="bench_checks",
    columns=(
        Column("event_id", "bigint", nullable=False),
        Column("kind", "text"),
        Column("amount", "double precision"),
    ),
    primary_key=("data_date", "event_id"),
)


def records(n: int) -> Iterator[dict[str, Any]]:
    kinds = ("view", "click", "buy")
    for i in range(n):
        yield {"event_id": i, "kind": kinds[i % 3], "amount": i * 0.25}


async def timed(dsn: str, work: Callable[[asyncpg.Connection], Awaitable[Any]]) -> float:
    conn = await asyncpg.connect(dsn)
    try:
        started = time.perf_counter()
        await work(conn)
        return time.perf_counter() - started
    finally:
        await conn.close()


async def scan_duplicates(conn: asyncpg.Connection) -> int:
    """The GROUP BY scan no_duplicate_keys ran before the unique-index shortcut."""
    count: int = await conn.fetchval(
        f"SELECT count(*) FROM (SELECT 1 FROM {TARGET.sql_name} "
        f"WHERE {quote_ident(TARGET.partition_column)} = $1 "
        f"GROUP BY {column_list(TARGET.primary_key)} HAVING count(*) > 1) AS repeated",
        DAY,
    )
    return count


async def main(rows: int, rounds: int, dsn: str) -> None:
    ledger = Ledger()
    load_s = []
    for round_no in range(rounds):
        async with PostgresResource(dsn=dsn).pool() as pool:
            started = time.perf_counter()
            await load_partition(pool, TARGET, DAY, records(rows), load_id=f"bench-{round_no}")
            load_s.append(time.perf_counter() - started)
    checks: dict[str, Callable[[asyncpg.Connection], Awaitable[Any]]] = {
        "count_scan": lambda c: c.fetchval(
            f"SELECT count(*) FROM {TARGET.sql_name} WHERE data_date = $1", DAY
        ),
        "key_digest": lambda c: verify_keys(c, ledger, TARGET, DAY),
        "duplicate_keys": lambda c: duplicate_keys(c, TARGET, DAY),
        "duplicate_keys_scan": scan_duplicates,
        "dead_letter_rate": lambda c: audit_partition(c, ledger, TARGET, DAY, count_rows=False),
    }
    times: dict[str, list[float]] = {name: [] for name in checks}
    for _ in range(rounds):  # interleaved, so drift hits every path alike
        for name, work in checks.items():
            times[name].append(await timed(dsn, work))
    load = statistics.median(load_s)
    print(f"rows {rows:,}; load average {os.getloadavg()[0]:.2f}; median of {rounds}")
    print(f"| step | s | share of the load |\n|---|---:|---:|\n| load | {load:.3f} | 1.00 |")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.3f} | {median / load:.3f} |")


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
