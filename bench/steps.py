"""Client CPU per row of each step of the record path, timed alone (us/row).

    .venv/bin/python bench/steps.py --dsn postgresql://...      # or an embedded server
    PYTHONPATH=/path/to/older/checkout .venv/bin/python bench/steps.py ...  # before/after

The one Python thread is what bounds a load (docs/PERFORMANCE.md), so each step's
cost is its CPU time in this process (``time.process_time``) over batches of the
package's default size, the median of ``--rounds``. CPU time barely moves when other
processes share the machine, unlike wall time; the server's side (index upkeep, WAL,
commits) is not in it: that part shows only in bench/run.py's end-to-end ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import itertools
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import asyncpg
import run  # bench/run.py: the same records, model and table

from etl_assets.postgres.loader import LoadSettings
from etl_assets.postgres.writer import batch_digest
from etl_assets.records import RecordShaper

BATCH = LoadSettings().batch_size
DATA = run.COLUMNS[:4]


def cpu_us_per_row(step: Callable[[], Any], rows: int, rounds: int) -> float:
    """Median CPU microseconds per row of ``step`` over ``rounds`` calls."""
    times = []
    for _ in range(rounds):
        started = time.process_time()
        step()
        times.append(time.process_time() - started)
    return statistics.median(times) * 1e6 / rows


def shaper(model: Any) -> tuple[RecordShaper, bool]:
    """The loader's shaper; whether its rows leave the date to the table (newer code)."""
    if "partition_from_table" in inspect.signature(RecordShaper).parameters:
        return RecordShaper(DATA, "data_date", run.DAY, model, partition_from_table=True), True
    return RecordShaper(DATA, "data_date", run.DAY, model), False


async def copy_cpu(dsn: str, rows: Sequence[tuple[Any, ...]], rounds: int) -> float:
    """asyncpg's encode + send of one batch into a table shaped like staging."""
    columns = list(run.COLUMNS[: len(rows[0])])
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "DROP TABLE IF EXISTS public.bench_steps; CREATE TABLE public.bench_steps "
            "(event_id bigint NOT NULL, kind text, amount double precision, "
            f"created_at timestamptz, data_date date NOT NULL DEFAULT DATE '{run.DAY}', "
            "PRIMARY KEY (data_date, event_id))"
        )
        times = []
        for _ in range(rounds):
            await conn.execute("TRUNCATE public.bench_steps")
            started = time.process_time()
            await conn.copy_records_to_table("bench_steps", records=rows, columns=columns)
            times.append(time.process_time() - started)
        await conn.execute("DROP TABLE public.bench_steps")
        return statistics.median(times) * 1e6 / len(rows)
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", help="default: an embedded server in a temporary folder")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)
    import etl_assets  # Dagster loaded, as in a step; its path is printed

    records = list(run.records(BATCH))
    plain, date_from_table = shaper(None)
    validating, _ = shaper(run.Event)
    rows = plain.shape(0, records).rows
    steps: dict[str, Callable[[], Any]] = {
        "source: make the records (dicts)": lambda: list(run.records(BATCH)),
        "cut a batch (list of islice)": lambda: list(itertools.islice(iter(records), BATCH)),
        "shape plain dicts into rows": lambda: plain.shape(0, records),
        "validate (pydantic) + shape": lambda: validating.shape(0, records),
        "batch digest": lambda: batch_digest(rows, []),
    }
    results = {name: cpu_us_per_row(step, BATCH, args.rounds) for name, step in steps.items()}
    dsn, server = (args.dsn, None) if args.dsn else run.start_embedded()
    try:
        label = f"COPY encode + send ({len(rows[0])} columns)"
        results[label] = asyncio.run(copy_cpu(dsn, rows, args.rounds))
    finally:
        if server is not None:
            server.release()
    print(f"etl_assets from {Path(etl_assets.__file__).parent}; date from table: {date_from_table}")
    print("| step | us/row (CPU) |")
    print("|---|---:|")
    for name, us in results.items():
        print(f"| {name} | {us:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
