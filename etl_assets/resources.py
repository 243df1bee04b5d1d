"""The resources a load needs, from the environment, one pair per process.

``postgres`` (the DSN in ``ETL_ASSETS_PG_DSN``, as an ``EnvVar``; unset: the embedded
server) and ``postgres_io_manager`` on top of it. The same objects every time: Dagster
merges definitions (each YAML load's, the Python ones) only when a resource key is bound
to the very same object, so every Component and the example share these.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import dagster as dg

from etl_assets.io_manager import IO_MANAGER_KEY, ResilientPostgresIOManager
from etl_assets.postgres.resource import PostgresResource

__all__ = ["DSN_ENV", "default_resources", "postgres_from_env"]

DSN_ENV = "ETL_ASSETS_PG_DSN"


def postgres_from_env() -> PostgresResource:
    """The DSN from the environment (as an EnvVar, never a literal); unset: embedded server."""
    return PostgresResource(dsn=dg.EnvVar(DSN_ENV) if os.environ.get(DSN_ENV) else None)


def default_resources() -> dict[str, Any]:
    """``postgres`` and the IO manager on it: the same objects for the whole process."""
    return dict(_shared())


@functools.cache
def _shared() -> dict[str, Any]:
    postgres = postgres_from_env()
    return {"postgres": postgres, IO_MANAGER_KEY: ResilientPostgresIOManager(postgres=postgres)}
