"""The checks' cost through Dagster: check steps against the asset step (issue 20).

Materializes one 1,000,000-row partition of a columnar asset (``run.arrow_events``,
built before the run) with its three partition checks, in process on a fresh embedded
PostgreSQL and an ephemeral instance, ``--rounds`` times; reads each step's duration
from the run's event log (STEP_START to STEP_SUCCESS) and reports the check steps'
total against the asset step's, median of the rounds.

    .venv/bin/python bench/dagster_checks.py --rows 1000000
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

import dagster as dg
import run  # bench/run.py: the same Arrow source and model

from etl_assets import partition_checks
from etl_assets.example.definitions import resources
from etl_assets.io_manager import postgres_asset
from etl_assets.postgres.embedded import EmbeddedPostgres
from etl_assets.postgres.resource import PostgresResource
from etl_assets.spec import PostgresTable

DAY = "2024-06-01"
EVENTS = PostgresTable(table="bench_events", model=run.Event, primary_key=("data_date", "event_id"))
TABLE: dict[str, Any] = {}
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


@postgres_asset(EVENTS, partitions_def=dg.DailyPartitionsDefinition(start_date="2024-01-01"))
def bench_events() -> Any:
    return TABLE["frame"]


def durations(instance: dg.DagsterInstance, run_id: str) -> dict[str, float]:
    """Each step's STEP_START -> STEP_SUCCESS, from the run's event log."""
    started: dict[str, float] = {}
    took: dict[str, float] = {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or event.step_key is None:
            continue
        if event.event_type == dg.DagsterEventType.STEP_START:
            started[event.step_key] = entry.timestamp
        elif event.event_type == dg.DagsterEventType.STEP_SUCCESS:
            took[event.step_key] = entry.timestamp - started[event.step_key]
    return took


def main(rows: int, rounds: int, dsn: str) -> None:
    TABLE["frame"] = run.arrow_events(rows)
    assets = [bench_events, *partition_checks(bench_events)]
    shares, asset_s, checks_s = [], [], []
    with dg.instance_for_test() as instance:
        for _ in range(rounds):
            result = dg.materialize(
                assets, partition_key=DAY, instance=instance,
                resources=resources(PostgresResource(dsn=dsn)), run_config=QUIET,
            )  # fmt: skip
            took = durations(instance, result.run_id)
            asset = took.pop("bench_events")
            checks = sum(took.values())
            asset_s.append(asset)
            checks_s.append(checks)
            shares.append(checks / asset)
            print(f"asset step {asset:.3f} s; check steps {checks:.3f} s ({sorted(took)})")
    print(f"rows {rows:,}; load average {os.getloadavg()[0]:.2f}; median of {rounds}")
    print(
        f"| asset step s | check steps s | checks / asset |\n|---:|---:|---:|\n"
        f"| {statistics.median(asset_s):.3f} | {statistics.median(checks_s):.3f} | "
        f"{statistics.median(shares):.3f} |"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp,
        EmbeddedPostgres(Path(tmp) / "pgdata").leased() as embedded,
    ):
        main(args.rows, args.rounds, embedded)
