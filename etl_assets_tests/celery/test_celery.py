"""Every step on Celery workers fed by a real broker: loads, pools, checks, a killed worker.

Each run executes in a process of its own, as a run launcher starts one
(``etl_assets_tests/celery/launch.py``: ``execute_job`` of a reconstructable job on the
shared instance); ``celery_executor`` hands each step to the workers, which rebuild the
job from ``etl_assets_tests.celery.location``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import celery
import dagster as dg
import psycopg2
import pytest
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

from etl_assets.errors import ConfigurationError
from etl_assets.postgres.resource import APPLICATION_NAME, PostgresResource
from etl_assets_tests.celery import location
from etl_assets_tests.celery.conftest import POOL_SLOTS, ROOT, Deployment
from etl_assets_tests.postgres.helpers import fetch

CHECK_NAMES = ("written_equals_enqueued", "no_duplicate_keys", "dead_letter_rate")
ASSET = dg.AssetKey("celery_visits")
MAX_POOL_SIZE = PostgresResource().max_pool_size
Status = AssetCheckExecutionRecordStatus


def days(first: str, count: int) -> list[str]:
    start = dt.date.fromisoformat(first)
    return [(start + dt.timedelta(days=n)).isoformat() for n in range(count)]


@dataclass(frozen=True, slots=True)
class Finished:
    run_id: str
    success: bool


def launch(*args: str) -> subprocess.Popen[str]:
    """A run in its own process (etl_assets_tests/celery/launch.py), its steps on the workers."""
    return subprocess.Popen(
        [sys.executable, "-m", "etl_assets_tests.celery.launch", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finished(process: subprocess.Popen[str], timeout_s: float = 150) -> Finished:
    try:
        out, err = process.communicate(timeout=timeout_s)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err[-3000:]
    run_id, success = out.strip().splitlines()[-1].split()
    return Finished(run_id, success == "True")


def errors(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """The run's step and run failures, for an assertion's message."""
    kinds = {dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.RUN_FAILURE}
    return [
        str(entry.dagster_event.event_specific_data)
        for entry in instance.all_logs(run_id, of_type=kinds)
        if entry.dagster_event is not None
    ]


def run_range(partitions: list[str]) -> Finished:
    """One backfill chunk: a range run of the job."""
    return finished(launch(partitions[0], partitions[-1]))


def materialized(instance: dg.DagsterInstance, run_id: str) -> dict[str, int]:
    """partition -> the written count its materialization reported, from the run's events."""
    found = {}
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
        event = entry.asset_materialization
        assert event is not None
        assert event.partition is not None
        found[event.partition] = int(event.metadata["written"].value)  # type: ignore[arg-type]
    return found


def table_days(db_dsn: str) -> dict[str, tuple[int, int, int]]:
    """day -> (rows, distinct ids, sum of ids): the table's truth per partition."""
    rows = asyncio.run(
        fetch(
            db_dsn,
            "SELECT data_date, count(*), count(DISTINCT visit_id), sum(visit_id) "
            "FROM public.celery_visits GROUP BY 1",
        )
    )
    return {r[0].isoformat(): (r[1], r[2], int(r[3])) for r in rows}


def exact(day: str) -> tuple[int, int, int]:
    """What a day holds when every visit of its source is in, once."""
    date = dt.date.fromisoformat(day)
    ids = [location.visit_id(date, n) for n in range(location.ROWS_PER_DAY)]
    return (len(ids), len(set(ids)), sum(ids))


def loads(db_dsn: str, partitions: list[str]) -> dict[str, list[str]]:
    """day -> the statuses of its loads, oldest first (etl.partition_loads)."""
    rows = asyncio.run(
        fetch(
            db_dsn,
            "SELECT partition_key, status FROM etl.partition_loads "
            "WHERE target = 'public.celery_visits' AND partition_key = ANY($1) "
            "ORDER BY partition_key, started_at",
            partitions,
        )
    )
    found: dict[str, list[str]] = {day: [] for day in partitions}
    for row in rows:
        found[row[0]].append(row[1])
    return found


def check_statuses(instance: dg.DagsterInstance, partitions: list[str]) -> dict[str, set[Status]]:
    """check name -> the latest statuses over ``partitions``, from Dagster's records."""
    keys = [dg.AssetCheckKey(ASSET, name) for name in CHECK_NAMES]
    found: dict[str, set[Status]] = {name: set() for name in CHECK_NAMES}
    seen: dict[str, set[str]] = {name: set() for name in CHECK_NAMES}
    for info in instance.event_log_storage.get_asset_check_partition_info(keys):
        if info.partition_key in partitions:
            found[info.check_key.name].add(info.latest_execution_status)
            seen[info.check_key.name].add(info.partition_key)
    assert all(seen[name] == set(partitions) for name in CHECK_NAMES), seen
    return found


def step_workers(instance: dg.DagsterInstance, run_id: str) -> dict[str, str]:
    """step key -> the Celery worker that ran it (the executor's engine event)."""
    found = {}
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        event = record.dagster_event
        metadata = event.engine_event_data.metadata if event and event.engine_event_data else {}
        if "Celery worker" in metadata and event and event.step_key:
            found[event.step_key] = str(metadata["Celery worker"].value)
    return found


class ConnectionSampler:
    """Counts the package's connections to one database every 20 ms, in a thread."""

    def __init__(self, db_dsn: str) -> None:
        self.peak = 0
        self.samples = 0
        self._dsn = db_dsn
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        conn = psycopg2.connect(self._dsn)
        conn.autocommit = True  # a statement per transaction: a fresh pg_stat_activity each time
        try:
            with conn.cursor() as cursor:
                while not self._stop.is_set():
                    cursor.execute(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE application_name = %s AND datname = current_database()",
                        (APPLICATION_NAME,),
                    )
                    row = cursor.fetchone()
                    self.peak = max(self.peak, row[0] if row else 0)
                    self.samples += 1
                    time.sleep(0.02)
        finally:
            conn.close()

    def __enter__(self) -> ConnectionSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.fixture(scope="module")
def backfill(deployment: Deployment) -> dict[str, Any]:
    """Six partitions in two chunks of three, both runs at once, connections sampled."""
    chunks = [days("2024-05-01", 3), days("2024-05-04", 3)]
    started = time.monotonic()
    with ConnectionSampler(deployment.db_dsn) as sampler:
        runs = [launch(chunk[0], chunk[-1]) for chunk in chunks]
        results = [finished(run) for run in runs]
    wall_s = time.monotonic() - started
    bound = POOL_SLOTS * MAX_POOL_SIZE
    print(f"celery backfill: peak {sampler.peak} connections (bound {bound}), {wall_s:.1f} s")
    return {
        "chunks": chunks,
        "results": results,
        "peak": sampler.peak,
        "samples": sampler.samples,
        "wall_s": wall_s,
    }


def test_a_backfill_over_two_chunks_loads_every_partition_exactly(
    deployment: Deployment, backfill: dict[str, Any]
) -> None:
    """Two range runs (3 + 3 partitions) on the workers: each day in once, published, and
    materialized in Dagster with its own written count."""
    partitions = [day for chunk in backfill["chunks"] for day in chunk]
    assert [r.success for r in backfill["results"]] == [True, True], [
        errors(deployment.instance, r.run_id) for r in backfill["results"]
    ]
    assert table_days(deployment.db_dsn) == {day: exact(day) for day in partitions}
    assert loads(deployment.db_dsn, partitions) == {day: ["published"] for day in partitions}
    written = {
        day: count
        for result in backfill["results"]
        for day, count in materialized(deployment.instance, result.run_id).items()
    }
    assert written == {day: location.ROWS_PER_DAY for day in partitions}
    assert deployment.instance.get_materialized_partitions(ASSET) >= set(partitions)


def test_every_partition_has_its_own_check_results(
    deployment: Deployment, backfill: dict[str, Any]
) -> None:
    """Each of the three checks passed for each of the six partitions (Dagster's records)."""
    partitions = [day for chunk in backfill["chunks"] for day in chunk]
    assert check_statuses(deployment.instance, partitions) == {
        name: {Status.SUCCEEDED} for name in CHECK_NAMES
    }


def test_steps_ran_on_the_workers_and_the_two_runs_overlapped(
    deployment: Deployment, backfill: dict[str, Any]
) -> None:
    """Every step of both runs ran in a Celery worker; the two loads ran at the same time."""
    spans = []
    for result in backfill["results"]:
        workers = step_workers(deployment.instance, result.run_id)
        assert set(workers) == {"celery_visits", *(f"celery_visits_{c}" for c in CHECK_NAMES)}
        assert {w.split("@")[0] for w in workers.values()} <= set(deployment.workers)
        stats = {s.step_key: s for s in deployment.instance.get_run_step_stats(result.run_id)}
        load = stats["celery_visits"]
        spans.append((load.start_time, load.end_time))
    (start_a, end_a), (start_b, end_b) = spans
    assert None not in (start_a, start_b, end_a, end_b), spans
    assert max(start_a, start_b) < min(end_a, end_b), spans  # type: ignore[type-var]


def test_the_pool_bounds_the_connections_the_workers_open(backfill: dict[str, Any]) -> None:
    """At no sample did the workers hold more than pool slots x max_pool_size connections."""
    assert backfill["samples"] > 20
    assert 1 <= backfill["peak"] <= POOL_SLOTS * MAX_POOL_SIZE, backfill["peak"]


def test_a_worker_killed_mid_load_leaves_the_day_unpublished_and_a_rerun_exact(
    deployment: Deployment,
) -> None:
    """SIGKILL of the worker process mid-load: the run fails, that day is not published
    (its load stays dead), the day before stays published; a new run abandons the dead
    load and loads the day exactly, and re-executing the failed run finishes the chunk."""
    chunk = days("2024-05-10", 3)
    held = chunk[1]
    hold = deployment.folder / f"hold-{held}"
    pid_file = hold.with_suffix(".pid")
    hold.touch()
    running = launch(chunk[0], chunk[-1])
    deadline = time.monotonic() + 120
    while not pid_file.exists():
        if time.monotonic() > deadline or running.poll() is not None:
            running.kill()
            pytest.fail(f"the held load never started: {running.communicate()[1][-3000:]}")
        time.sleep(0.1)
    assert loads(deployment.db_dsn, [held]) == {held: ["loading"]}
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    hold.unlink()
    failed = finished(running)

    assert not failed.success
    run = deployment.instance.get_run_by_id(failed.run_id)
    assert run is not None
    assert run.status == dg.DagsterRunStatus.FAILURE
    assert "WorkerLostError" in " ".join(errors(deployment.instance, failed.run_id))
    assert loads(deployment.db_dsn, chunk) == {
        chunk[0]: ["published"],
        held: ["loading"],  # dead: its process is gone, nothing published
        chunk[2]: [],  # never attempted: the step died with the worker process
    }
    assert table_days(deployment.db_dsn).keys() & set(chunk) == {chunk[0]}
    assert table_days(deployment.db_dsn)[chunk[0]] == exact(chunk[0])
    # A SIGKILLed step records nothing more: Dagster records a step's materializations when
    # its output is handled, so the day published before the kill is not in Dagster's
    # records yet (the README says so); re-executing the failed run reports it from the
    # ledger, without loading it again (below).
    assert deployment.instance.get_materialized_partitions(ASSET) & set(chunk) == set()

    again = run_range([held])  # what a backfill's retry of that day launches
    assert again.success, errors(deployment.instance, again.run_id)
    assert loads(deployment.db_dsn, [held]) == {held: ["abandoned", "published"]}
    assert table_days(deployment.db_dsn)[held] == exact(held)

    reexecuted = finished(launch("--from-failure", failed.run_id))
    assert reexecuted.success, errors(deployment.instance, reexecuted.run_id)
    assert materialized(deployment.instance, reexecuted.run_id) == {
        day: location.ROWS_PER_DAY for day in chunk
    }
    truth = table_days(deployment.db_dsn)
    assert {day: truth.get(day) for day in chunk} == {day: exact(day) for day in chunk}
    assert loads(deployment.db_dsn, chunk) == {
        chunk[0]: ["published"],  # kept: reported from the ledger, not loaded again
        held: ["abandoned", "published", "published"],  # the root load could not resume
        chunk[2]: ["published"],
    }
    assert deployment.instance.get_materialized_partitions(ASSET) >= set(chunk)


def test_without_a_dsn_a_step_in_a_celery_task_is_told_to_set_it(tmp_path: Any) -> None:
    """In a Celery task, the resource refuses the embedded server and names the fix."""
    app = celery.Celery("etl_assets_test", broker="memory://", backend="cache+memory://")
    app.conf.task_always_eager = True

    @app.task  # type: ignore[misc]
    def setup() -> str:
        resource = PostgresResource(embedded_data_dir=str(tmp_path / "pgdata"))
        try:
            resource.resolved_dsn()
        except ConfigurationError as exc:
            return str(exc)
        finally:
            resource.close()
        return "no error"

    message = setup.delay().get()
    assert "runs in a Celery task" in message
    assert "Set ETL_ASSETS_PG_DSN" in message
    assert not (tmp_path / "pgdata").exists()  # no server was started
    app.close()
