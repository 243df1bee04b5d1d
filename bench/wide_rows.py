"""Wide rows: peak RSS and rows/s of one 300-column partition, records and pandas paths.

Each path runs in a child process of its own, so ``ru_maxrss`` (peak resident set) is
that load's alone. The source is generated lazily (records one by one, frames
``--frame-rows`` rows at a time, as a chunked reader yields them); the ``*_source``
paths run the source alone (frames also converted to Arrow batches, as the loader
does), so a load's own share is its peak minus its source's. 100 bigint, 100 double
precision and 100 text columns, plus the key; no model (the engine API's dicts and
frames, as ``bench/run.py``'s ``etl_resilient`` path).

    .venv/bin/python bench/wide_rows.py --rows 200000 [--batch-bytes 33554432]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

COLUMNS = 300
DAY = dt.date(2024, 1, 1)


def names() -> list[str]:
    return [f"{kind}{k}" for kind in ("i", "f", "t") for k in range(COLUMNS // 3)]


def records(n: int) -> Iterator[dict[str, Any]]:
    third = COLUMNS // 3
    for r in range(n):
        row: dict[str, Any] = {"id": r}
        row.update({f"i{k}": r * k for k in range(third)})
        row.update({f"f{k}": r / (k + 1) for k in range(third)})
        row.update({f"t{k}": f"text {r} {k}" for k in range(third)})
        yield row


def frames(n: int, chunk: int) -> Iterator[Any]:
    import numpy as np
    import pandas as pd

    third = COLUMNS // 3
    for start in range(0, n, chunk):
        ids = np.arange(start, min(n, start + chunk), dtype=np.int64)
        data: dict[str, Any] = {"id": ids}
        data.update({f"i{k}": ids * k for k in range(third)})
        data.update({f"f{k}": ids / (k + 1) for k in range(third)})
        data.update({f"t{k}": [f"text {r} {k}" for r in ids] for k in range(third)})
        yield pd.DataFrame(data)


def target() -> Any:
    from etl_assets.postgres.target import Column, TableTarget

    third = COLUMNS // 3
    columns = [Column("id", "bigint", nullable=False)]
    columns += [Column(f"i{k}", "bigint") for k in range(third)]
    columns += [Column(f"f{k}", "double precision") for k in range(third)]
    columns += [Column(f"t{k}", "text") for k in range(third)]
    return TableTarget(
        schema="bench_wide", table="wide", columns=tuple(columns), primary_key=("data_date", "id")
    )


def source_only(path: str, n: int, frame_rows: int) -> dict[str, Any]:
    """The source alone: records counted, frames turned into Arrow batches and counted."""
    from etl_assets import frames as shapes
    from etl_assets.postgres.loader import LoadSettings

    started = time.perf_counter()
    if path == "records_source":
        rows = sum(1 for _ in records(n))
    else:
        source = shapes.classify_output(iter(frames(n, frame_rows)), "bench")
        batches = shapes.arrow_batches(source, LoadSettings().batch_size)
        rows = sum(b.num_rows for b in batches)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    elapsed = time.perf_counter() - started
    return {
        "path": path,
        "rows": rows,
        "rows_per_s": round(rows / elapsed),
        "peak_rss_mb": round(peak_mb),
    }


async def load(
    dsn: str, path: str, n: int, batch_bytes: int | None, frame_rows: int
) -> dict[str, Any]:
    from etl_assets.postgres.loader import LoadSettings, load_partition
    from etl_assets.postgres.resource import PostgresResource

    settings = LoadSettings(ledger_schema="bench_wide")
    if batch_bytes is not None:
        settings = LoadSettings(ledger_schema="bench_wide", batch_bytes=batch_bytes)
    source = records(n) if path == "records" else iter(frames(n, frame_rows))
    started = time.perf_counter()
    async with PostgresResource(dsn=dsn).pool() as pool:
        report = await load_partition(
            pool, target(), DAY, source, load_id=f"{path}-{time.time_ns()}", settings=settings
        )
    elapsed = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "path": path,
        "rows": report.written,
        "batches": report.batches,
        "rows_per_s": round(report.written / elapsed),
        "peak_rss_mb": round(peak_mb),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--paths", default="records_source,records,pandas_source,pandas")
    parser.add_argument("--frame-rows", type=int, default=2_000)
    parser.add_argument("--batch-bytes", type=int, default=None)
    parser.add_argument("--dsn", default=os.environ.get("ETL_ASSETS_BENCH_DSN"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        if args.child.endswith("_source"):
            result = source_only(args.child, args.rows, args.frame_rows)
        else:
            work = load(args.dsn, args.child, args.rows, args.batch_bytes, args.frame_rows)
            result = asyncio.run(work)
        print(json.dumps(result))
        return 0
    server = None
    if args.dsn is None:
        sys.path.insert(0, os.path.dirname(__file__))
        from run import start_embedded

        args.dsn, server = start_embedded()
    try:
        for path in args.paths.split(","):
            command = [sys.executable, __file__, "--child", path, "--rows", str(args.rows)]
            command += ["--dsn", args.dsn, "--frame-rows", str(args.frame_rows)]
            if args.batch_bytes is not None:
                command += ["--batch-bytes", str(args.batch_bytes)]
            load_before = os.getloadavg()
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            result = json.loads(out.strip().splitlines()[-1])
            result["loadavg_1m_before_after"] = [
                round(load_before[0], 2),
                round(os.getloadavg()[0], 2),
            ]
            print(json.dumps(result), flush=True)
    finally:
        if server is not None:
            server.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
