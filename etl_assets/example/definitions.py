"""The Definitions that ``dagster dev`` and workspace.yaml load.

(No ``from __future__ import annotations`` here: Dagster reads config types from the
annotations at decoration time.)
"""

import importlib.util
import os
from typing import Any

import dagster as dg

from etl_assets.checks import partition_checks
from etl_assets.dead_letter_queue import dead_letter_queue
from etl_assets.example.logs import daily_metrics, raw_logs
from etl_assets.example.partitions import daily
from etl_assets.example.sample_events import sample_events_table
from etl_assets.example.schedules import daily_logs_job, daily_logs_schedule
from etl_assets.io_manager import ResilientPostgresIOManager
from etl_assets.jobs import build_cleanup_job, build_replay_job
from etl_assets.postgres.resource import PostgresResource
from etl_assets.sensors import automation_sensor, dead_letter_sensor, run_failure_alert

__all__ = ["DSN_ENV", "daily", "defs", "postgres_resource", "resources"]

DSN_ENV = "ETL_ASSETS_PG_DSN"
LOADED_ASSETS = [raw_logs, daily_metrics, sample_events_table]
if importlib.util.find_spec("pandas") is not None:  # the DataFrame example: etl_assets[pandas]
    from etl_assets.example.log_frames import module_hourly

    LOADED_ASSETS.append(module_hourly)


def postgres_resource() -> PostgresResource:
    """The DSN from the environment (as an EnvVar, never a literal); unset: embedded server."""
    return PostgresResource(dsn=dg.EnvVar(DSN_ENV) if os.environ.get(DSN_ENV) else None)


def resources(postgres: PostgresResource | None = None) -> dict[str, Any]:
    """``postgres`` and the IO manager on top of it (one server for both)."""
    postgres = postgres or postgres_resource()
    return {
        "postgres": postgres,
        "postgres_io_manager": ResilientPostgresIOManager(postgres=postgres),
    }


defs = dg.Definitions(
    assets=[*LOADED_ASSETS, dead_letter_queue],
    asset_checks=[check for asset in LOADED_ASSETS for check in partition_checks(asset)],
    jobs=[daily_logs_job, build_replay_job(LOADED_ASSETS), build_cleanup_job()],
    schedules=[daily_logs_schedule],
    sensors=[dead_letter_sensor, run_failure_alert, automation_sensor],
    resources=resources(),
    # Steps of a run execute one after another in the run's process: on a few cores the
    # parallelism is the concurrent runs (dagster.yaml); a process per step would pay
    # Python + Dagster + code start-up (~2 s) for every check of every chunk.
    executor=dg.in_process_executor,
)
