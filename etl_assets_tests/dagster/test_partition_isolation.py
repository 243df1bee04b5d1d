"""One bad day in a backfill chunk fails alone; Dagster's records equal the table's."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill
from dagster._core.workspace.context import WorkspaceProcessContext

from etl_assets.example.landing import write_sample_day
from etl_assets_tests.dagster.test_backfill import (
    ASSETS,
    CHECK_NAMES,
    Status,
    check_statuses,
    daemon_workspace,
    drive_backfill,
    run_asset_backfill,
)
from etl_assets_tests.dagster.test_one_truth import dagster_written, table_counts
from etl_assets_tests.postgres.helpers import fetch

FIRST = dt.date(2024, 5, 1)
TEN_DAYS = [FIRST + dt.timedelta(days=i) for i in range(10)]
BAD = TEN_DAYS[4]  # day 5: its landing file is missing
LINES = 300  # 3 malformed: 1.0%, within dead_letter_rate's limit


@pytest.fixture
def ten_day_landing(tmp_path: Path) -> Path:
    """Ten days of sample logs but the fifth: its delivery never arrived."""
    for day in TEN_DAYS:
        if day != BAD:
            write_sample_day(tmp_path, day, LINES)
    return tmp_path


@pytest.fixture
def workspace(
    db_dsn: str, ten_day_landing: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[WorkspaceProcessContext]:
    with daemon_workspace(db_dsn, ten_day_landing, monkeypatch) as context:
        yield context


def retry_failed(context: WorkspaceProcessContext, failed: PartitionBackfill) -> PartitionBackfill:
    """The backfill page's "Re-execute" > "From failure": what did not materialize, again."""
    data = failed.get_asset_backfill_data(context.create_request_context().asset_graph)
    again = PartitionBackfill.from_asset_graph_subset(
        backfill_id="ui-style-retry",
        asset_graph_subset=data.target_subset - data.materialized_subset,
        dynamic_partitions_store=context.instance,
        tags={"dagster/parent_backfill_id": failed.backfill_id},
        backfill_timestamp=time.time(),
        title=None,
        description=None,
        run_config=None,
    )
    return drive_backfill(context, again)


def test_backfill_chunk_with_one_bad_day_materializes_and_checks_the_nine_others(
    db_dsn: str, workspace: WorkspaceProcessContext, ten_day_landing: Path
) -> None:
    """Day 5 fails alone: 9 days materialized, checked and built downstream; a retry loads day 5."""
    keys = [d.isoformat() for d in TEN_DAYS]
    good = [k for k in keys if k != BAD.isoformat()]
    instance = workspace.instance

    backfill = run_asset_backfill(workspace, keys)

    assert backfill.status == BulkActionStatus.COMPLETED_FAILED
    raw_runs = instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": "ui-style"}))
    chunk = [
        r
        for r in raw_runs
        if (
            r.tags.get("dagster/asset_partition_range_start"),
            r.tags.get("dagster/asset_partition_range_end"),
        )
        == (keys[0], keys[-1])
    ]
    assert [r.status for r in chunk] == [dg.DagsterRunStatus.FAILURE]  # one chunk, failed
    # Dagster's records equal the table's, partition by partition
    assert instance.get_materialized_partitions(ASSETS[0]) == set(good)
    assert dagster_written(instance, ASSETS[0]) == table_counts(db_dsn, "logs")
    assert table_counts(db_dsn, "logs") == dict.fromkeys(good, LINES - 3)
    statuses = check_statuses(instance, ASSETS[0])
    assert {k: v for k, v in statuses.items() if k[1] != BAD.isoformat()} == {
        (name, key): (Status.SUCCEEDED, True) for name in CHECK_NAMES for key in good
    }
    assert all(statuses[(name, BAD.isoformat())][0] != Status.SUCCEEDED for name in CHECK_NAMES)
    # downstream: built for the nine, not for day 5
    assert instance.get_materialized_partitions(ASSETS[1]) == set(good)
    metric_days = asyncio.run(fetch(db_dsn, "SELECT DISTINCT date FROM public.daily_metrics"))
    assert sorted(d.isoformat() for (d,) in metric_days) == good
    # the failed step named the day and why
    failure = next(
        e for e in instance.all_logs(chunk[0].run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
    )
    assert failure.dagster_event is not None
    message = str(failure.dagster_event.step_failure_data.error)
    assert f"{BAD.isoformat()}: FileNotFoundError: no landing data for {BAD}" in message

    # the delivery arrives; re-executing the backfill's failure loads day 5 only
    write_sample_day(ten_day_landing, BAD, LINES)
    retried = retry_failed(workspace, backfill)

    assert retried.status == BulkActionStatus.COMPLETED_SUCCESS
    loads = asyncio.run(
        fetch(
            db_dsn,
            "SELECT partition_key, array_agg(status) FROM etl.partition_loads "
            "WHERE target = 'public.logs' GROUP BY 1",
        )
    )  # day 5's first attempt failed at its first record, before a load began
    assert dict(loads) == {k: ["published"] for k in keys}
    assert instance.get_materialized_partitions(ASSETS[0]) == set(keys)
    assert instance.get_materialized_partitions(ASSETS[1]) == set(keys)
    assert dagster_written(instance, ASSETS[0]) == table_counts(db_dsn, "logs")
    assert check_statuses(instance, ASSETS[0])[("written_equals_enqueued", BAD.isoformat())] == (
        Status.SUCCEEDED,
        True,
    )
