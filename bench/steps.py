"""Client CPU per row of each step of the record path, before and after issue 12 (us/row).

    .venv/bin/python bench/steps.py --dsn postgresql://...      # or an embedded server

The one Python thread is what bounds a load (docs/PERFORMANCE.md), so each step's
cost is its CPU time in this process (``time.process_time``) on batches of the
package's default size. "Before" is the same code configured the old way (rows carry
the date; validation through model instances), so both run in one process, and the
rounds interleave them: a shared machine slows both alike (CPU time too moves when
another process shares the core). The server's side is not in it: that part shows
only in bench/run.py's end-to-end ratios.
"""

from __future__ import annotations

import argparse
import asyncio
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


def cpu_seconds(step: Callable[[], Any]) -> float:
    started = time.process_time()
    step()
    return time.process_time() - started


def shapers(model: Any) -> tuple[RecordShaper, RecordShaper]:
    """The loader's shaper before (the day in every row; models) and after issue 12."""
    before = RecordShaper(DATA, "data_date", run.DAY, model)
    before._as_dicts = None  # validation through model instances, as before
    after = RecordShaper(DATA, "data_date", run.DAY, model, partition_from_table=True)
    return before, after


async def copy_seconds(conn: asyncpg.Connection, rows: Sequence[tuple[Any, ...]]) -> float:
    """asyncpg's encode + send of one batch into a table shaped like staging."""
    await conn.execute("TRUNCATE public.bench_steps")
    started = time.process_time()
    await conn.copy_records_to_table(
        "bench_steps", records=rows, columns=list(run.COLUMNS[: len(rows[0])])
    )
    return time.process_time() - started


async def measure(dsn: str, rounds: int) -> dict[str, list[list[float]]]:
    """Seconds per step and variant (before, after), rounds interleaved."""
    records = list(run.records(BATCH))
    plain, validating = shapers(None), shapers(run.Event)
    rows = [plain[0].shape(0, records).rows, plain[1].shape(0, records).rows]
    steps: dict[str, list[Callable[[], Any]]] = {
        "source: make the records (dicts)": [lambda: list(run.records(BATCH))] * 2,
        "cut a batch (list of islice)": [lambda: list(itertools.islice(iter(records), BATCH))] * 2,
        "shape plain dicts into rows": [lambda s=s: s.shape(0, records) for s in plain],
        "validate (pydantic) + shape": [lambda s=s: s.shape(0, records) for s in validating],
        "batch digest": [lambda r=r: batch_digest(r, []) for r in rows],
    }
    out: dict[str, list[list[float]]] = {name: [[], []] for name in [*steps, COPY]}
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "DROP TABLE IF EXISTS public.bench_steps; CREATE TABLE public.bench_steps "
            "(event_id bigint NOT NULL, kind text, amount double precision, "
            f"created_at timestamptz, data_date date NOT NULL DEFAULT DATE '{run.DAY}', "
            "PRIMARY KEY (data_date, event_id))"
        )
        for _ in range(rounds):
            for name, variants in steps.items():
                for i, step in enumerate(variants):
                    out[name][i].append(cpu_seconds(step))
            for i in (0, 1):
                out[COPY][i].append(await copy_seconds(conn, rows[i]))
        await conn.execute("DROP TABLE public.bench_steps")
    finally:
        await conn.close()
    return out


COPY = "COPY encode + send (asyncpg; 5 columns before, 4 after)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", help="default: an embedded server in a temporary folder")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)
    import etl_assets  # Dagster loaded, as in a step

    dsn, server = (args.dsn, None) if args.dsn else run.start_embedded()
    try:
        results = asyncio.run(measure(dsn, args.rounds))
    finally:
        if server is not None:
            server.release()
    print(f"etl_assets from {Path(etl_assets.__file__).parent}, {args.rounds} rounds")
    print("| step | before us/row | after us/row |")
    print("|---|---:|---:|")
    for name, (before, after) in results.items():
        us = [statistics.median(v) * 1e6 / BATCH for v in (before, after)]
        print(f"| {name} | {us[0]:.3f} | {us[1]:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
