"""The Definitions load, validate, and materialize a partition against the real server."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from etl_assets.example import definitions
from etl_assets.example.sample_events import SampleEventsConfig
from etl_assets.postgres.resource import PostgresResource
from etl_assets_tests.postgres.helpers import fetch


def test_defs_can_load() -> None:
    """The code location loads its Python and YAML assets with daily partitions and checks."""
    repo = definitions.defs.get_repository_def()
    for name in ("raw_logs", "daily_metrics", "sample_events_table", "shop_orders"):
        asset = repo.assets_defs_by_key[dg.AssetKey(name)]
        assert asset.partitions_def == definitions.daily
        checks = {key.name for key in repo.asset_graph.get_check_keys_for_assets({asset.key})}
        assert checks == {"written_equals_enqueued", "no_duplicate_keys", "dead_letter_rate"}
    assert dg.AssetKey("dead_letter_queue") in repo.assets_defs_by_key
    assert {j.name for j in repo.get_all_jobs()} >= {"daily_logs", "replay_dead_letters"}


def test_dagster_definitions_validate_passes(tmp_path: Path) -> None:
    """`dagster definitions validate` exits 0 (run outside the project: no instance needed)."""
    dagster = Path(sys.executable).with_name("dagster")
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    result = subprocess.run(
        [str(dagster), "definitions", "validate", "-m", "etl_assets.example.definitions"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_materialize_one_partition_twice_leaves_one_copy(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runs of one partition: exact row count once, metadata reported, ledger per run."""
    monkeypatch.setenv("ETL_ASSETS_PG_DSN", pg_dsn)
    config = dg.RunConfig(ops={"sample_events_table": SampleEventsConfig(records_per_day=2_500)})
    with dg.instance_for_test() as instance:
        for _ in range(2):
            result = dg.materialize(
                [definitions.sample_events_table],
                partition_key="2024-02-29",
                resources=definitions.resources(
                    PostgresResource(dsn=dg.EnvVar("ETL_ASSETS_PG_DSN"))
                ),
                run_config=config,
                instance=instance,
            )
            assert result.success
            [mat] = result.asset_materializations_for_node("sample_events_table")
            assert mat.metadata["written"].value == 2_500
            assert mat.metadata["enqueued"].value == 2_500
    rows = asyncio.run(
        fetch(pg_dsn, "SELECT count(*) FROM public.sample_events WHERE data_date = '2024-02-29'")
    )
    assert rows[0][0] == 2_500
    asyncio.run(fetch(pg_dsn, "DROP TABLE public.sample_events CASCADE"))
