"""Benchmark: a wide asset backfill launched the way the UI launches it, run by the daemon.

    .venv/bin/python bench/backfill.py                  # 365 days x 2,000 lines, all checks
    .venv/bin/python bench/backfill.py --days 30 --lines 500

What it does, end to end, on a fresh embedded PostgreSQL (or ``ETL_ASSETS_BENCH_DSN``):
writes ``--days`` days of sample logs, starts ``dagster-daemon run`` on the project's
``workspace.yaml`` and ``dagster.yaml`` (Postgres storage, queued runs, at most 4 at
once), adds the asset backfill the Materialize dialog's "Launch backfill" adds
(``raw_logs`` + ``daily_metrics``, every day), and times it until the daemon reports it
done. Then it verifies, from Dagster's records and the database: every partition has a
materialization of both assets and a current, passed result for each of the six
checks; ``public.logs`` holds every valid line once per day. Peak RSS is sampled from
every process under the daemon (the runs), every 0.5 s.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import psutil

PROJECT = Path(__file__).resolve().parents[1]
CHECKS = ("written_equals_enqueued", "no_duplicate_keys", "dead_letter_rate")
ASSETS = ("raw_logs", "daily_metrics")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--lines", type=int, default=2_000, help="log lines per day")
    parser.add_argument("--start", type=dt.date.fromisoformat, default=dt.date(2024, 1, 1))
    parser.add_argument("--timeout", type=float, default=1_800.0)
    args = parser.parse_args()

    from etl_assets.postgres.embedded import EmbeddedPostgres

    work = Path(tempfile.mkdtemp(prefix="etl-backfill-bench-"))
    server = None
    try:
        dsn = os.environ.get("ETL_ASSETS_BENCH_DSN")
        if not dsn:
            server = EmbeddedPostgres(work / "pgdata")
            dsn = server.acquire()
        return _bench(args, work, dsn)
    finally:
        if server is not None:
            server.release()
        shutil.rmtree(work, ignore_errors=True)


def _bench(args: argparse.Namespace, work: Path, base_dsn: str) -> int:
    from etl_assets.example.devserver import ensure_database, with_database
    from etl_assets.example.landing import write_sample_day

    data_db, dagster_db = f"bench_{uuid.uuid4().hex[:8]}", f"bench_dagster_{uuid.uuid4().hex[:8]}"
    asyncio.run(ensure_database(base_dsn, data_db))
    asyncio.run(ensure_database(base_dsn, dagster_db))
    dsn = with_database(base_dsn, data_db, driver=None)
    days = [args.start + dt.timedelta(days=i) for i in range(args.days)]
    landing = work / "landing"
    t = time.perf_counter()
    samples = {day: write_sample_day(landing, day, args.lines) for day in days}
    print(f"sample data: {len(days)} days x {args.lines} lines in {time.perf_counter() - t:.1f}s")

    home = work / "home"
    home.mkdir()
    shutil.copy(PROJECT / "dagster.yaml", home / "dagster.yaml")
    os.environ.update(
        DAGSTER_HOME=str(home),
        DAGSTER_PG_URL=with_database(base_dsn, dagster_db),
        ETL_ASSETS_PG_DSN=dsn,
        ETL_ASSETS_LANDING=str(landing),
        ETL_ASSETS_DAGSTER_DIR=str(work / "artifacts"),
        ETL_ASSETS_COMPUTE_LOGS_DIR=str(work / "logs"),
    )
    import dagster as dg
    from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill

    from etl_assets.example.definitions import defs

    bin_dir = Path(sys.executable).parent
    daemon = subprocess.Popen(
        [str(bin_dir / "dagster-daemon"), "run", "-w", str(PROJECT / "workspace.yaml")],
        cwd=PROJECT,
        stdout=(work / "daemon.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        with dg.DagsterInstance.get() as instance:
            keys = [d.isoformat() for d in days]
            backfill_id = f"bench{uuid.uuid4().hex[:6]}"
            load_before = os.getloadavg()
            start = time.perf_counter()
            instance.add_backfill(
                PartitionBackfill.from_asset_partitions(
                    backfill_id=backfill_id,
                    asset_graph=defs.resolve_asset_graph(),
                    partition_names=keys,
                    asset_selection=[dg.AssetKey(a) for a in ASSETS],
                    backfill_timestamp=time.time(),
                    tags={},
                    dynamic_partitions_store=instance,
                    all_partitions=False,
                    title="bench",
                    description=None,
                    run_config=None,
                )
            )
            peak_rss, load_max = _wait(instance, backfill_id, daemon, args.timeout)
            wall = time.perf_counter() - start
            backfill = instance.get_backfill(backfill_id)
            assert backfill is not None
            runs = instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
            report = _verify(instance, keys)
            rows = asyncio.run(_logs_per_day(dsn))
            expected = {d: args.lines - samples[d].malformed for d in days}
            report["logs_exact"] = rows == expected
            lines = _summary(
                args, wall, backfill.status, runs, report, peak_rss, load_before, load_max
            )
            print("\n".join(lines))
            ok = backfill.status == BulkActionStatus.COMPLETED_SUCCESS and all(
                v is True for k, v in report.items() if isinstance(v, bool)
            )
            return 0 if ok else 1
    finally:
        daemon.send_signal(signal.SIGINT)
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()


def _wait(
    instance: Any, backfill_id: str, daemon: subprocess.Popen[bytes], timeout_s: float
) -> tuple[dict[int, int], float]:
    """Poll until the backfill is no longer requested; sample the runs' RSS meanwhile."""
    from dagster._core.execution.backfill import BulkActionStatus

    peak: dict[int, int] = {}
    load_max = 0.0
    deadline = time.monotonic() + timeout_s
    parent = psutil.Process(daemon.pid)
    last_poll = 0.0
    while time.monotonic() < deadline:
        for child in parent.children(recursive=True):
            try:
                peak[child.pid] = max(peak.get(child.pid, 0), child.memory_info().rss)
            except psutil.Error:  # the run ended between listing and reading
                continue
        load_max = max(load_max, os.getloadavg()[0])
        if time.monotonic() - last_poll > 2:
            last_poll = time.monotonic()
            backfill = instance.get_backfill(backfill_id)
            if backfill.status != BulkActionStatus.REQUESTED:
                return peak, load_max
        if daemon.poll() is not None:
            raise RuntimeError("dagster-daemon exited; see daemon.log")
        time.sleep(0.5)
    raise TimeoutError(f"backfill {backfill_id} not done after {timeout_s}s")


def _verify(instance: Any, keys: list[str]) -> dict[str, Any]:
    """Dagster's own records: materializations and current check results per partition."""
    import dagster as dg
    from dagster._core.storage.asset_check_execution_record import (
        AssetCheckExecutionRecordStatus,
    )

    report: dict[str, Any] = {}
    for asset in ASSETS:
        key = dg.AssetKey(asset)
        report[f"{asset}_materialized_all"] = set(instance.get_materialized_partitions(key)) == set(
            keys
        )
        infos = instance.event_log_storage.get_asset_check_partition_info(
            [dg.AssetCheckKey(key, name) for name in CHECKS]
        )
        passed = Counter(
            info.check_key.name
            for info in infos
            if info.latest_execution_status == AssetCheckExecutionRecordStatus.SUCCEEDED
            and info.is_current
            and info.partition_key in keys
        )
        report[f"{asset}_checks_passed"] = dict(passed)
        report[f"{asset}_checks_all_passed"] = all(passed[n] == len(keys) for n in CHECKS)
    return report


async def _logs_per_day(dsn: str) -> dict[dt.date, int]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT data_date, count(*) FROM public.logs GROUP BY 1")
        return {r[0]: r[1] for r in rows}
    finally:
        await conn.close()


def _summary(
    args: argparse.Namespace,
    wall: float,
    status: Any,
    runs: list[Any],
    report: dict[str, Any],
    peak_rss: dict[int, int],
    load_before: tuple[float, float, float],
    load_max: float,
) -> list[str]:
    from etl_assets.io_manager import BACKFILL_CHUNK

    records = args.days * args.lines
    by_status = Counter(r.status.value for r in runs)
    top = sorted(peak_rss.values(), reverse=True)[:1]
    return [
        f"Measured {dt.date.today()} on {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; load average before "
        f"{load_before[0]:.2f} / {load_before[1]:.2f} / {load_before[2]:.2f} (1/5/15 min), "
        f"1-min peak during the run {load_max:.2f}.",
        "",
        "| days | lines/day | records | chunk | runs | wall s | s/partition | records/s |"
        " peak RSS of any process MB | backfill |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        f"| {args.days} | {args.lines:,} | {records:,} | {BACKFILL_CHUNK} | {len(runs)} "
        f"({', '.join(f'{n} {s}' for s, n in sorted(by_status.items()))}) | {wall:.1f} | "
        f"{wall / args.days:.3f} | {records / wall:,.0f} | "
        f"{(top[0] / 2**20 if top else 0):.0f} | {status.value} |",
        "",
        f"Verified: {report}",
    ]


if __name__ == "__main__":
    raise SystemExit(main())
