"""Backfills launched the way the UI launches them: an asset backfill run by the daemon."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from dagster._core.test_utils import create_test_daemon_workspace_context
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import ModuleTarget
from dagster._daemon.backfill import execute_backfill_iteration

from etl_assets.io_manager import BACKFILL_CHUNK
from etl_assets.postgres.ledger import Ledger
from etl_assets_tests.dagster.conftest import DAYS, LINES_PER_DAY, drop_rows_after_publish
from etl_assets_tests.dagster.test_pipeline import Landing
from etl_assets_tests.postgres.helpers import fetch

CHECK_NAMES = ("written_equals_enqueued", "no_duplicate_keys", "dead_letter_rate")
ASSETS = (dg.AssetKey("raw_logs"), dg.AssetKey("daily_metrics"))
Status = AssetCheckExecutionRecordStatus


@pytest.fixture
def workspace(
    db_dsn: str, landing: Landing, monkeypatch: pytest.MonkeyPatch
) -> Iterator[WorkspaceProcessContext]:
    with daemon_workspace(db_dsn, landing[0], monkeypatch) as context:
        yield context


@contextlib.contextmanager
def daemon_workspace(
    db_dsn: str, landing: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[WorkspaceProcessContext]:
    """An instance whose runs execute in-process, and the daemon's view of the code."""
    monkeypatch.setenv("ETL_ASSETS_PG_DSN", db_dsn)
    monkeypatch.setenv("ETL_ASSETS_LANDING", str(landing))
    target = ModuleTarget(
        module_name="etl_assets_tests.dagster.backfill_location",
        attribute=None,
        working_directory=None,
        location_name="etl_assets",
    )
    with (
        dg.instance_for_test(
            synchronous_run_coordinator=True, synchronous_run_launcher=True
        ) as instance,
        create_test_daemon_workspace_context(target, instance) as context,
    ):
        yield context


def run_asset_backfill(
    context: WorkspaceProcessContext,
    partitions: list[str],
    *,
    assets: tuple[dg.AssetKey, ...] = ASSETS,
    timeout_s: float = 150,
) -> PartitionBackfill:
    """What the Materialize dialog's "Launch backfill" does, then the daemon until it is done."""
    backfill = PartitionBackfill.from_asset_partitions(
        backfill_id="ui-style",
        asset_graph=context.create_request_context().asset_graph,
        partition_names=partitions,
        asset_selection=list(assets),
        backfill_timestamp=time.time(),
        tags={},
        dynamic_partitions_store=context.instance,
        all_partitions=False,
        title=None,
        description=None,
        run_config=None,
    )
    return drive_backfill(context, backfill, timeout_s=timeout_s)


def drive_backfill(
    context: WorkspaceProcessContext, backfill: PartitionBackfill, *, timeout_s: float = 150
) -> PartitionBackfill:
    """Add the backfill, then iterate the daemon until it ends."""
    instance = context.instance
    instance.add_backfill(backfill)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        list(execute_backfill_iteration(context, logging.getLogger("backfill-test")))
        done = instance.get_backfill(backfill.backfill_id)
        assert done is not None
        if done.status != BulkActionStatus.REQUESTED:
            return done
    raise AssertionError(f"backfill not finished after {timeout_s}s")


def check_statuses(
    instance: dg.DagsterInstance, asset: dg.AssetKey
) -> dict[tuple[str, str | None], tuple[Status, bool]]:
    """(check, partition) -> (latest status, is current) from Dagster's own records."""
    keys = [dg.AssetCheckKey(asset, name) for name in CHECK_NAMES]
    return {
        (info.check_key.name, info.partition_key): (info.latest_execution_status, info.is_current)
        for info in instance.event_log_storage.get_asset_check_partition_info(keys)
    }


def test_ui_asset_backfill_records_every_partition_check_and_blocks_the_failed_one(
    db_dsn: str, workspace: WorkspaceProcessContext, landing: Landing
) -> None:
    """A UI-style backfill records each partition's checks; only the damaged day fails, and
    only its metrics are held back."""
    assert len(DAYS) <= BACKFILL_CHUNK  # so the whole backfill is one run (one chunk)
    bad = DAYS[3].isoformat()
    asyncio.run(_prepare_sabotage(db_dsn, bad))
    keys = [d.isoformat() for d in DAYS]

    backfill = run_asset_backfill(workspace, keys)

    instance = workspace.instance
    assert backfill.status == BulkActionStatus.COMPLETED_FAILED
    raw = check_statuses(instance, ASSETS[0])
    assert raw == {
        (name, key): (
            Status.FAILED if (name, key) == ("written_equals_enqueued", bad) else Status.SUCCEEDED,
            True,
        )
        for name in CHECK_NAMES
        for key in keys
    }
    # raw_logs: one chunk (BACKFILL_CHUNK >= 7 partitions) = one run, failed by the check
    runs = instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": "ui-style"}))
    chunk = [r for r in runs if r.tags.get("dagster/asset_partition_range_start") != r.tags.get(
        "dagster/asset_partition_range_end")]  # fmt: skip
    assert [r.status for r in chunk] == [dg.DagsterRunStatus.FAILURE]
    # daily_metrics has its own policy: a run per day once raw_logs materialized; the day
    # whose blocking check failed is refused at its input, the six others are built
    assert instance.get_materialized_partitions(ASSETS[1]) == {k for k in keys if k != bad}
    metrics = asyncio.run(fetch(db_dsn, "SELECT DISTINCT date FROM public.daily_metrics"))
    assert sorted(d.isoformat() for (d,) in metrics) == [k for k in keys if k != bad]
    assert {k: v for k, v in check_statuses(instance, ASSETS[1]).items() if k[1] != bad} == {
        (name, key): (Status.SUCCEEDED, True) for name in CHECK_NAMES for key in keys if key != bad
    }
    logs = asyncio.run(
        fetch(db_dsn, "SELECT data_date, count(*) FROM public.logs GROUP BY 1 ORDER BY 1")
    )
    assert [(d.isoformat(), n) for d, n in logs] == [
        (key, LINES_PER_DAY - 3 - (5 if key == bad else 0)) for key in keys
    ]


def test_ui_asset_backfill_of_healthy_days_passes_every_check_of_every_partition(
    db_dsn: str, workspace: WorkspaceProcessContext
) -> None:
    """With nothing wrong, each check reads N Passed for N partitions, for both assets."""
    keys = [d.isoformat() for d in DAYS]

    backfill = run_asset_backfill(workspace, keys)

    assert backfill.status == BulkActionStatus.COMPLETED_SUCCESS
    for asset in ASSETS:
        assert check_statuses(workspace.instance, asset) == {
            (name, key): (Status.SUCCEEDED, True) for name in CHECK_NAMES for key in keys
        }
        assert workspace.instance.get_materialized_partitions(asset) == set(keys)


async def _prepare_sabotage(dsn: str, day: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await Ledger().ensure(conn)
        await conn.execute(drop_rows_after_publish(day))
    finally:
        await conn.close()
