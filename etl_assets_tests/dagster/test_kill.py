"""SIGKILL of the process running a materialization, then a rerun: nothing lost or doubled."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import dagster as dg
import pytest

from etl_assets.example.sample_events import SAMPLE_EVENTS
from etl_assets_tests.faults.harness import our_connections, record
from etl_assets_tests.postgres.helpers import fetch, partition_audit

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]

DAY = "2024-07-01"
RECORDS = 400_000


def materialize_cli(
    dsn: str, cwd: Path, home: Path | None = None, records: int = RECORDS
) -> subprocess.Popen[str]:
    config = cwd / "run.yaml"
    config.write_text(
        f"ops:\n  sample_events_table:\n    config:\n      records_per_day: {records}\n"
    )
    dagster = Path(sys.executable).with_name("dagster")
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    if home is not None:  # a persistent instance, to read the run's status afterwards
        env["DAGSTER_HOME"] = str(home)
    return subprocess.Popen(
        [str(dagster), "asset", "materialize", "-m", "etl_assets.example.definitions",
         "--select", "sample_events_table", "--partition", DAY, "-c", str(config)],
        cwd=cwd, env={**env, "ETL_ASSETS_PG_DSN": dsn},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip


async def committed_batches(dsn: str) -> int:
    try:
        rows = await fetch(
            dsn, "SELECT count(*) FROM etl.load_ledger WHERE target = 'public.sample_events'"
        )
    except asyncpg.UndefinedTableError:
        return 0
    return int(rows[0][0])


def wait_for_batches(dsn: str, process: subprocess.Popen[str], n: int) -> None:
    deadline = time.monotonic() + 120
    while asyncio.run(committed_batches(dsn)) < n:
        assert process.poll() is None, f"the run ended before it could be killed: {process.stdout}"
        assert time.monotonic() < deadline, "no batch committed within 2 minutes"
        time.sleep(0.05)


def test_sigterm_of_the_cli_fails_the_run_and_marks_the_load_failed(
    db_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`kill PID` of the CLI (its steps run in its process): exit 1, run FAILURE, load failed."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    # Killed after 2 batches: a day far larger than that keeps the window open however
    # fast the load runs (with 400k records it once finished before SIGTERM landed).
    cli = materialize_cli(db_dsn, tmp_path, home, records=5_000_000)
    wait_for_batches(db_dsn, cli, 2)
    cli.send_signal(signal.SIGTERM)  # the CLI's PID only, as `kill PID` does

    output, _ = cli.communicate(timeout=60)
    assert cli.returncode == 1, output[-3000:]  # what the CLI said, if the stop was lost
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        assert [r.status for r in instance.get_runs()] == [dg.DagsterRunStatus.FAILURE]
    loads = asyncio.run(fetch(db_dsn, "SELECT status FROM etl.partition_loads"))
    assert [r[0] for r in loads] == ["failed"]
    assert asyncio.run(our_connections(db_dsn)) == 0


def test_sigkill_mid_materialization_then_rerun(db_dsn: str, tmp_path: Path) -> None:
    first = materialize_cli(db_dsn, tmp_path)
    wait_for_batches(db_dsn, first, 3)
    os.killpg(first.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    assert first.wait(timeout=30) == -signal.SIGKILL
    at_kill = asyncio.run(committed_batches(db_dsn))

    rerun = materialize_cli(db_dsn, tmp_path)
    output, _ = rerun.communicate(timeout=240)

    assert rerun.returncode == 0, output[-3000:]
    count, distinct, low, high = asyncio.run(
        fetch(
            db_dsn,
            "SELECT count(*), count(DISTINCT event_id), min(event_id), max(event_id) "
            "FROM public.sample_events WHERE data_date = $1",
            dt.date.fromisoformat(DAY),
        )
    )[0]
    assert (count, distinct, low, high) == (RECORDS, RECORDS, 0, RECORDS - 1)
    loads = asyncio.run(
        fetch(db_dsn, "SELECT status, count(*) FROM etl.partition_loads GROUP BY 1 ORDER BY 1")
    )
    # The rerun found the killed load's lock free: abandoned, its staging table dropped.
    assert [tuple(r) for r in loads] == [("abandoned", 1), ("published", 1)]
    staging = asyncio.run(
        fetch(
            db_dsn, "SELECT count(*) FROM pg_class WHERE relkind = 'r' AND relname ~ '^_etl_stage'"
        )
    )
    assert staging[0][0] == 0
    day = dt.date.fromisoformat(DAY)
    assert asyncio.run(partition_audit(db_dsn, SAMPLE_EVENTS.target(), day)).problems == ()
    assert asyncio.run(our_connections(db_dsn)) == 0
    record(
        "SIGKILL of `dagster asset materialize` mid-load, then a rerun",
        f"1 SIGKILL after {at_kill} committed batches",
        RECORDS, (0, 0, 0), None, killed_at, 0,
    )  # fmt: skip
