"""One truth: after any failure mid-run, Dagster's records per partition equal the table's.

(No ``from __future__ import annotations``: the asset below is decorated here.)
"""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import dagster as dg
import pydantic
import pytest
from dagster._core.errors import DagsterExecutionInterruptedError

from etl_assets import partition_checks
from etl_assets.example.partitions import daily
from etl_assets.io_manager import PartitionRecords, postgres_asset
from etl_assets.postgres import loader
from etl_assets.postgres.ledger import LoadKey
from etl_assets.sensors import failure_alert
from etl_assets.spec import PostgresTable
from etl_assets_tests.postgres.helpers import fetch

DAYS = [f"2024-08-0{d}" for d in range(1, 6)]
RANGE = {
    "dagster/asset_partition_range_start": DAYS[0],
    "dagster/asset_partition_range_end": DAYS[-1],
}


class Visit(pydantic.BaseModel):
    visit_id: int
    page: str


VISITS = PostgresTable(table="visits", model=Visit, primary_key=("data_date", "visit_id"))
SOURCE: dict[str, Any] = {}


@postgres_asset(VISITS, partitions_def=daily)
def visits(context: dg.AssetExecutionContext) -> PartitionRecords:
    def records(key: str) -> Any:  # a generator: a source error belongs to its day
        found = SOURCE[key]
        if isinstance(found, Exception):
            raise found
        yield from found

    return {key: records(key) for key in context.partition_keys}


def good(n: int) -> list[dict[str, Any]]:
    return [{"visit_id": i, "page": f"/p/{i}"} for i in range(n)]


FAILURES = {
    "source error": ConnectionResetError("the export API hung up"),
    "breaker trip": [{"visit_id": "not a number", "page": "/"}] * 40,
}


def dagster_written(instance: dg.DagsterInstance, asset: dg.AssetKey) -> dict[str, int]:
    """partition -> ``written`` of its latest materialization, from Dagster's records."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset), limit=1_000, ascending=True
    ).records
    written = {}
    for record in records:  # ascending: the latest wins
        materialization = record.asset_materialization
        assert materialization is not None
        assert record.partition_key is not None
        written[record.partition_key] = int(materialization.metadata["written"].value)  # type: ignore[arg-type]
    return written


def table_counts(dsn: str, table: str) -> dict[str, int]:
    rows = asyncio.run(fetch(dsn, f"SELECT data_date, count(*) FROM public.{table} GROUP BY 1"))
    return {day.isoformat(): n for day, n in rows}


def run_range(resources: dict[str, Any], instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [visits, *partition_checks(visits)], resources=resources, instance=instance,
        tags=RANGE, raise_on_error=False,
    )  # fmt: skip


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_a_failed_day_mid_range_leaves_dagster_equal_to_the_table_then_a_reload(
    failure: str, db_dsn: str, resources: dict[str, Any], instance: dg.DagsterInstance
) -> None:
    """Day 3 fails (source error / breaker): days 1-2 and 4-5 are loaded, recorded and
    checked; after a reload of every day Dagster's latest numbers still equal the table's."""
    SOURCE.update({day: good(100 + n) for n, day in enumerate(DAYS)})
    SOURCE[DAYS[2]] = FAILURES[failure]

    result = run_range(resources, instance)

    assert not result.success
    others = [d for d in DAYS if d != DAYS[2]]
    assert dagster_written(instance, visits.key) == table_counts(db_dsn, "visits")
    assert table_counts(db_dsn, "visits") == {d: 100 + DAYS.index(d) for d in others}
    verdicts = {(e.check_name, e.partition, e.passed) for e in result.get_asset_check_evaluations()}
    assert verdicts == {
        (name, day, True)
        for name in ("written_equals_enqueued", "no_duplicate_keys", "dead_letter_rate")
        for day in others
    }
    [failed] = [e for e in result.all_events if e.is_step_failure]
    assert "1 of 5 partition(s) failed" in str(failed.step_failure_data.error)
    assert f"{DAYS[2]}: " in str(failed.step_failure_data.error)
    alert = failure_alert(
        dg.build_run_status_sensor_context(
            sensor_name="run_failure_alert", dagster_event=result.get_run_failure_event(),
            dagster_instance=instance, dagster_run=result.dagster_run,
        ).for_run_failure()
    )  # fmt: skip
    [step] = alert["failed_steps"]
    assert list(step["failed_partitions"]) == [DAYS[2]]  # the alert says which day, and
    assert step["published_partitions"] == others  # that the others published

    # the source is fixed and every day reloads with new numbers: still one truth
    SOURCE.update({day: good(200 + n) for n, day in enumerate(DAYS)})
    assert run_range(resources, instance).success
    assert dagster_written(instance, visits.key) == {d: 200 + n for n, d in enumerate(DAYS)}
    assert table_counts(db_dsn, "visits") == {d: 200 + n for n, d in enumerate(DAYS)}


def test_sigterm_mid_chunk_leaves_dagster_equal_to_the_table(
    db_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`kill PID` of a CLI run over 5 days, after 2 published: those 2 are materialized in
    Dagster's records with their numbers, the rest neither published nor materialized."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    config = tmp_path / "run.yaml"
    config.write_text("ops:\n  sample_events_table:\n    config:\n      records_per_day: 400000\n")
    dagster = Path(sys.executable).with_name("dagster")
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    cli = subprocess.Popen(
        [str(dagster), "job", "execute", "-m", "etl_assets_tests.dagster.range_location",
         "-d", str(Path(__file__).parents[2]),
         "-j", "sample_events_range", "-c", str(config), "--tags", json.dumps(RANGE)],
        cwd=tmp_path, env={**env, "ETL_ASSETS_PG_DSN": db_dsn, "DAGSTER_HOME": str(home)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 180
    while len(published(db_dsn)) < 2:
        assert cli.poll() is None, cli.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "2 days not published within 3 minutes"
        time.sleep(0.1)
    cli.send_signal(signal.SIGTERM)

    output, _ = cli.communicate(timeout=120)
    assert cli.returncode != 0, output[-3000:]
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        recorded = dagster_written(instance, dg.AssetKey("sample_events_table"))
        assert [r.status for r in instance.get_runs()] == [dg.DagsterRunStatus.FAILURE]
    in_table = table_counts(db_dsn, "sample_events")
    assert recorded == in_table
    assert set(in_table) == set(published(db_dsn))
    assert 2 <= len(in_table) < len(DAYS)
    assert set(in_table.values()) == {400_000}


def test_a_stop_right_after_a_publish_still_records_that_partition(
    db_dsn: str,
    resources: dict[str, Any],
    instance: dg.DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The narrowest window of a stop: day 2's publish has committed, its report is not
    yet back. Dagster still records days 1 and 2 with their numbers (from the ledger)."""
    SOURCE.update({day: good(100 + n) for n, day in enumerate(DAYS)})
    report = loader.LoadReport.published_load

    def stopped_after_day_2(key: LoadKey, *args: Any, **kwargs: Any) -> loader.LoadReport:
        if key.partition_key == DAYS[1] and kwargs.get("elapsed_s") is not None:
            raise DagsterExecutionInterruptedError("the run was terminated")
        return report(key, *args, **kwargs)

    monkeypatch.setattr(loader.LoadReport, "published_load", stopped_after_day_2)
    result = run_range(resources, instance)

    assert not result.success
    assert table_counts(db_dsn, "visits") == {DAYS[0]: 100, DAYS[1]: 101}
    assert dagster_written(instance, visits.key) == {DAYS[0]: 100, DAYS[1]: 101}


def published(dsn: str) -> list[str]:
    try:
        rows = asyncio.run(
            fetch(dsn, "SELECT partition_key FROM etl.partition_loads WHERE status = 'published'")
        )
    except Exception:  # noqa: BLE001  # the ledger does not exist before the first load
        return []
    return [r[0] for r in rows]


def test_reexecuting_a_failed_range_run_loads_only_the_failed_day(
    db_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Re-execute from failure: the days the failed run published are kept, not reloaded."""
    from etl_assets_tests.dagster.range_location import FLAKY_DAY_ENV, flaky_job

    monkeypatch.setenv("ETL_ASSETS_PG_DSN", db_dsn)
    monkeypatch.setenv(FLAKY_DAY_ENV, DAYS[2])
    job = dg.reconstructable(flaky_job)
    with dg.instance_for_test() as instance:
        with dg.execute_job(job, instance, tags=RANGE) as first:
            assert not first.success
        monkeypatch.delenv(FLAKY_DAY_ENV)  # the source is fixed
        options = dg.ReexecutionOptions.from_failure(first.run_id, instance)
        # the UI's re-execution copies the run's tags, its partition range among them
        with dg.execute_job(job, instance, tags=RANGE, reexecution_options=options) as second:
            assert second.success
        written = dagster_written(instance, dg.AssetKey("flaky_visits"))

    loads = asyncio.run(
        fetch(
            db_dsn,
            "SELECT partition_key, array_agg(status) FROM etl.partition_loads "
            "WHERE target = 'public.flaky_visits' GROUP BY 1",
        )
    )
    assert dict(loads) == {d: ["published"] for d in DAYS}  # one load each: none twice
    expected = {d: int(d[-2:]) * 10 for d in DAYS}
    assert table_counts(db_dsn, "flaky_visits") == expected
    assert written == expected
