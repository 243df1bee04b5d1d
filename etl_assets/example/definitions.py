"""The Definitions that ``dagster dev``, workspace.yaml and ``dg`` load.

Python assets and the loads declared in YAML under ``etl_assets/example/defs`` (one
``PostgresLoadComponent`` per folder) in one code location: the YAML loads join the
replay job and share the Python assets' resources.

(No ``from __future__ import annotations`` here: Dagster reads config types from the
annotations at decoration time.)
"""

import importlib.util
import warnings
from pathlib import Path
from typing import Any

import dagster as dg

from etl_assets.checks import partition_checks
from etl_assets.dead_letter_queue import dead_letter_queue
from etl_assets.example import defs as yaml_defs_module
from etl_assets.example.logs import daily_metrics, raw_logs
from etl_assets.example.partitions import daily
from etl_assets.example.sample_events import sample_events_table
from etl_assets.example.schedules import daily_logs_job, daily_logs_schedule
from etl_assets.io_manager import ResilientPostgresIOManager
from etl_assets.jobs import build_cleanup_job, build_replay_job
from etl_assets.postgres.resource import PostgresResource
from etl_assets.resources import DSN_ENV, default_resources, postgres_from_env
from etl_assets.sensors import automation_sensor, dead_letter_sensor, run_failure_alert

__all__ = [
    "DSN_ENV",
    "YAML_ASSETS",
    "YAML_CHECKS",
    "daily",
    "defs",
    "postgres_resource",
    "resources",
    "yaml_loads",
]


def yaml_loads() -> dg.Definitions:
    """The loads declared in YAML (``etl_assets/example/defs``), built as dg builds them.

    The project root is this package (not a pyproject.toml above it), so an installed
    etl_assets loads its YAML as a checkout does. A function, not a module attribute:
    Dagster refuses a module with two ``Definitions`` at its top level.
    """
    # Dagster's component loading is beta/preview in 1.13 and says so for every folder;
    # this example relies on it knowingly (as postgres_asset does on backfill_policy).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        warnings.simplefilter("ignore", dg.PreviewWarning)
        tree = dg.ComponentTree.from_module(yaml_defs_module, project_root=Path(__file__).parent)
        return tree.build_defs()


_YAML = yaml_loads()
YAML_ASSETS = [a for a in _YAML.assets or [] if isinstance(a, dg.AssetsDefinition)]
YAML_CHECKS = list(_YAML.asset_checks or [])
del _YAML
LOADED_ASSETS = [raw_logs, daily_metrics, sample_events_table]
if importlib.util.find_spec("pandas") is not None:  # the DataFrame example: etl_assets[pandas]
    from etl_assets.example.log_frames import module_hourly

    LOADED_ASSETS.append(module_hourly)


def postgres_resource() -> PostgresResource:
    """The DSN from the environment (as an EnvVar, never a literal); unset: embedded server."""
    return postgres_from_env()


def resources(postgres: PostgresResource | None = None) -> dict[str, Any]:
    """``postgres`` and the IO manager on top of it (one server for both); by default the
    process's shared pair, the one the YAML loads bind too."""
    if postgres is None:
        return default_resources()
    return {
        "postgres": postgres,
        "postgres_io_manager": ResilientPostgresIOManager(postgres=postgres),
    }


defs = dg.Definitions(
    assets=[*LOADED_ASSETS, *YAML_ASSETS, dead_letter_queue],
    asset_checks=[
        *(check for asset in LOADED_ASSETS for check in partition_checks(asset)),
        *YAML_CHECKS,
    ],
    jobs=[
        daily_logs_job,
        build_replay_job([*LOADED_ASSETS, *YAML_ASSETS]),
        build_cleanup_job(),
    ],
    schedules=[daily_logs_schedule],
    sensors=[dead_letter_sensor, run_failure_alert, automation_sensor],
    resources=resources(),
    # Steps of a run execute one after another in the run's process: on a few cores the
    # parallelism is the concurrent runs (dagster.yaml); a process per step would pay
    # Python + Dagster + code start-up (~2 s) for every check of every chunk.
    executor=dg.in_process_executor,
)
