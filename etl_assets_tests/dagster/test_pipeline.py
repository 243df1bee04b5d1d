"""The log pipeline through Dagster: real instance, real Postgres, exact contents."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import warnings
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from etl_assets.checks import partition_checks
from etl_assets.example import definitions
from etl_assets.example.landing import SampleDay
from etl_assets.example.logs import daily_metrics, raw_logs
from etl_assets_tests.dagster.conftest import DAYS, FIRST_DAY, LINES_PER_DAY, logs_config
from etl_assets_tests.postgres.helpers import fetch

CHECKS = [*partition_checks(raw_logs), *partition_checks(daily_metrics)]
Landing = tuple[Path, dict[dt.date, SampleDay]]


def materialize(
    resources: dict[str, Any],
    instance: dg.DagsterInstance,
    landing: Path,
    partition: str,
    *,
    raise_on_error: bool = True,
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [raw_logs, daily_metrics, *CHECKS],
        partition_key=partition,
        resources=resources,
        run_config=logs_config(landing),
        instance=instance,
        raise_on_error=raise_on_error,
    )


def check_results(result: dg.ExecuteInProcessResult) -> dict[tuple[str, str], bool]:
    return {
        (e.asset_key.to_user_string(), e.check_name): e.passed
        for e in result.get_asset_check_evaluations()
    }


def test_one_partition_rows_ledger_checks_and_metadata(
    db_dsn: str, resources: dict[str, Any], instance: dg.DagsterInstance, landing: Landing
) -> None:
    folder, samples = landing
    sample = samples[FIRST_DAY]
    result = materialize(resources, instance, folder, FIRST_DAY.isoformat())

    assert result.success
    valid = LINES_PER_DAY - sample.malformed
    [logs_mat] = result.asset_materializations_for_node("raw_logs")
    assert logs_mat.partition == FIRST_DAY.isoformat()
    assert logs_mat.metadata["enqueued"].value == LINES_PER_DAY
    assert logs_mat.metadata["written"].value == valid
    assert logs_mat.metadata["dead_lettered"].value == sample.malformed
    assert logs_mat.metadata["dagster/partition_row_count"].value == valid
    assert "dagster/row_count" not in logs_mat.metadata  # Dagster reads it as the table's
    assert check_results(result) == {
        ("raw_logs", "written_equals_enqueued"): True,
        ("raw_logs", "no_duplicate_keys"): True,
        ("raw_logs", "dead_letter_rate"): True,
        ("daily_metrics", "written_equals_enqueued"): True,
        ("daily_metrics", "no_duplicate_keys"): True,
        ("daily_metrics", "dead_letter_rate"): True,
    }

    rows = asyncio.run(
        fetch(db_dsn, "SELECT severity, count(*) FROM public.logs GROUP BY 1 ORDER BY 1")
    )
    assert dict(rows) == {k: v for k, v in sample.by_severity.items() if v}
    ledger = asyncio.run(
        fetch(
            db_dsn,
            "SELECT sum(enqueued), sum(written), sum(dead_lettered) FROM etl.load_ledger "
            "WHERE target = 'public.logs'",
        )
    )
    assert tuple(ledger[0]) == (LINES_PER_DAY, valid, sample.malformed)
    metrics = dict(
        asyncio.run(
            fetch(
                db_dsn,
                "SELECT metric_id, value FROM public.daily_metrics WHERE date = $1",
                FIRST_DAY,
            )
        )
    )
    assert metrics["lines_total"] == valid
    assert metrics["severity.ERROR"] == sample.by_severity["ERROR"]


def test_malformed_lines_reach_the_dead_letter_asset_with_line_and_error(
    db_dsn: str, resources: dict[str, Any], instance: dg.DagsterInstance, landing: Landing
) -> None:
    folder, _ = landing
    assert materialize(resources, instance, folder, FIRST_DAY.isoformat()).success
    letters = asyncio.run(
        fetch(
            db_dsn,
            "SELECT payload::text, error_class, error_message FROM etl.dead_letters "
            "WHERE target = 'public.logs' ORDER BY record_no",
        )
    )
    assert len(letters) == 3
    payloads = [json.loads(p) for p, _, _ in letters]
    assert all(p["source_file"].startswith(FIRST_DAY.isoformat()) for p in payloads)
    assert all(isinstance(p["line_no"], int) for p in payloads)
    assert {cls for _, cls, _ in letters} == {"ValidationError"}
    [truncated] = [p for p in payloads if "raw_line" in p]
    width = len(truncated["raw_line"])
    assert sorted(m for _, _, m in letters) == sorted(
        [
            "module: Field required",
            "severity: Input should be 'INFO', 'WARN' or 'ERROR'",
            f"Value error, line {truncated['line_no']} is malformed: invalid JSON: Expecting "
            f"property name enclosed in double quotes: line 1 column {width + 1} (char {width})",
        ]
    )

    dlq = dg.materialize([definitions.dead_letter_queue], resources=resources, instance=instance)
    [mat] = dlq.asset_materializations_for_node("dead_letter_queue")
    assert mat.metadata["open"].value == 3
    table = mat.metadata["newest_open"].value
    assert table.count("public.logs") == 3
    assert "invalid JSON" in table
    payloads = [row.rsplit("|", 2)[-2].strip() for row in table.splitlines()[2:]]
    assert all(p.startswith("`{") and p.endswith("`") for p in payloads)  # code spans:
    assert any('\\"' in p for p in payloads)  # the raw line's escaped quotes shown as sent


@pytest.mark.parametrize("days", [DAYS])
def test_seven_day_backfill_per_partition_then_rerun_two_days(
    db_dsn: str,
    resources: dict[str, Any],
    instance: dg.DagsterInstance,
    landing: Landing,
    days: list[dt.date],
) -> None:
    folder, samples = landing
    for day in [*days, *days[2:4]]:
        assert materialize(resources, instance, folder, day.isoformat()).success
    _assert_logs_exact(db_dsn, samples, days)


def _assert_logs_exact(db_dsn: str, samples: dict[dt.date, SampleDay], days: list[dt.date]) -> None:
    """Every valid line exactly once, per day; nothing else."""
    rows = asyncio.run(
        fetch(
            db_dsn,
            "SELECT data_date, count(*), count(DISTINCT (source_file, line_no)) "
            "FROM public.logs GROUP BY 1 ORDER BY 1",
        )
    )
    expected = [(d, LINES_PER_DAY - samples[d].malformed) for d in days]
    assert [(r[0], r[1]) for r in rows] == expected
    assert all(r[1] == r[2] for r in rows)
    metrics = asyncio.run(
        fetch(
            db_dsn,
            "SELECT date, value FROM public.daily_metrics WHERE metric_id = 'lines_total' "
            "ORDER BY 1",
        )
    )
    assert [(r[0], r[1]) for r in metrics] == expected


def logs_defs(resources: dict[str, Any]) -> dg.Definitions:
    """Both log assets in one job: a single run over a range covers the load and the metrics
    (their backfill policies differ; a job's own range tags decide its partitions)."""
    both = dg.define_asset_job("logs_and_metrics", selection=[raw_logs, daily_metrics])
    return dg.Definitions(
        assets=[raw_logs, daily_metrics], asset_checks=CHECKS, jobs=[both], resources=resources
    )


def run_range(
    resources: dict[str, Any], instance: dg.DagsterInstance, landing: Path, first: str, last: str
) -> dg.ExecuteInProcessResult:
    with warnings.catch_warnings():  # the mixed policies: known, see logs_defs
        warnings.simplefilter("ignore", UserWarning)
        job = logs_defs(resources).resolve_job_def("logs_and_metrics")
    return job.execute_in_process(
        run_config=logs_config(landing),
        instance=instance,
        tags={
            "dagster/asset_partition_range_start": first,
            "dagster/asset_partition_range_end": last,
        },
    )


def test_seven_day_single_run_backfill_then_rerun_two_days(
    db_dsn: str, resources: dict[str, Any], instance: dg.DagsterInstance, landing: Landing
) -> None:
    folder, samples = landing
    result = run_range(resources, instance, folder, DAYS[0].isoformat(), DAYS[-1].isoformat())
    assert result.success
    mats = result.asset_materializations_for_node("raw_logs")
    assert sorted(m.partition for m in mats) == [d.isoformat() for d in DAYS]
    assert {m.partition: m.metadata["written"].value for m in mats} == {
        d.isoformat(): LINES_PER_DAY - samples[d].malformed for d in DAYS
    }
    assert {m.partition: m.metadata["dead_lettered"].value for m in mats} == {
        d.isoformat(): samples[d].malformed for d in DAYS
    }
    evaluations = {
        (e.asset_key.to_user_string(), e.check_name, e.partition): e.passed
        for e in result.get_asset_check_evaluations()
    }
    assert evaluations == {
        (asset, check, d.isoformat()): True
        for asset in ("raw_logs", "daily_metrics")
        for check in ("written_equals_enqueued", "no_duplicate_keys", "dead_letter_rate")
        for d in DAYS
    }
    [check] = [
        e for e in result.get_asset_check_evaluations()
        if e.asset_key == raw_logs.key and e.check_name == "written_equals_enqueued"
        and e.partition == DAYS[0].isoformat()
    ]  # fmt: skip
    assert check.metadata["in_table"].value == LINES_PER_DAY - samples[DAYS[0]].malformed
    rerun = run_range(resources, instance, folder, DAYS[2].isoformat(), DAYS[3].isoformat())
    assert rerun.success
    _assert_logs_exact(db_dsn, samples, DAYS)
    loads = asyncio.run(
        fetch(
            db_dsn,
            "SELECT partition_key, count(*) FROM etl.partition_loads "
            "WHERE target = 'public.logs' AND status = 'published' GROUP BY 1 ORDER BY 1",
        )
    )
    assert [(k, n) for k, n in loads] == [(d.isoformat(), 2 if d in DAYS[2:4] else 1) for d in DAYS]


def test_the_dataframe_example_over_a_backfill_chunk_routes_rows_to_their_days(
    db_dsn: str, resources: dict[str, Any], instance: dg.DagsterInstance, landing: Landing
) -> None:
    """module_hourly over 3 days in one run (a backfill chunk): one frame, split by its
    data_date column; each day counts its valid lines and errors once, its checks pass."""
    from etl_assets.example.log_frames import module_hourly

    folder, samples = landing
    days = DAYS[:3]
    result = dg.materialize(
        [raw_logs, module_hourly, *partition_checks(module_hourly)],
        resources=resources,
        run_config=logs_config(folder),
        instance=instance,
        tags={
            "dagster/asset_partition_range_start": days[0].isoformat(),
            "dagster/asset_partition_range_end": days[-1].isoformat(),
        },
    )

    assert result.success
    totals = asyncio.run(
        fetch(
            db_dsn,
            "SELECT data_date, sum(lines), sum(errors) FROM public.module_hourly "
            "GROUP BY 1 ORDER BY 1",
        )
    )
    assert [tuple(r) for r in totals] == [
        (day, LINES_PER_DAY - samples[day].malformed, samples[day].by_severity["ERROR"])
        for day in days
    ]
    mats = result.asset_materializations_for_node("module_hourly")
    assert sorted(m.partition for m in mats) == [d.isoformat() for d in days]
    assert all(m.metadata["dead_lettered"].value == 0 for m in mats)
    evaluations = result.get_asset_check_evaluations()
    assert len(evaluations) == 9
    assert all(e.passed for e in evaluations)
