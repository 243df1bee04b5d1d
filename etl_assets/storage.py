"""Dagster's own storage (runs, event log, schedules) in PostgreSQL, with a usable error.

``dagster_postgres`` retries a refused connection and ends with "too many retries for DB
connection" after a long traceback that never says which setting points there. This
subclass of its storage changes nothing but that: a storage that cannot be reached
raises an error naming ``DAGSTER_PG_URL``, the server it points to (password
redacted) and how to get one. ``dagster.yaml`` selects it as a ``custom`` storage.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy.exc
from dagster._serdes import ConfigurableClassData
from dagster_postgres import DagsterPostgresStorage
from dagster_postgres.utils import DagsterPostgresException, pg_url_from_config

from etl_assets.errors import ConfigurationError
from etl_assets.postgres.resource import redact_dsn

__all__ = ["STORAGE_ENV", "ExplainedPostgresStorage", "storage_unreachable"]

STORAGE_ENV = "DAGSTER_PG_URL"


class ExplainedPostgresStorage(DagsterPostgresStorage):
    """``DagsterPostgresStorage`` whose connection failure names the variable to fix."""

    @classmethod
    def from_config_value(  # type: ignore[override]
        cls, inst_data: ConfigurableClassData | None, config_value: Any
    ) -> DagsterPostgresStorage:
        url = pg_url_from_config(config_value)
        try:
            return super().from_config_value(inst_data, config_value)
        except (DagsterPostgresException, sqlalchemy.exc.OperationalError) as exc:
            raise storage_unreachable(url, exc) from exc


def storage_unreachable(url: str, exc: BaseException) -> ConfigurationError:
    """The error for a Dagster storage server that does not answer."""
    cause = exc.__cause__ or exc
    first_line = str(getattr(cause, "orig", None) or cause).strip().splitlines()[:1]
    return ConfigurationError(
        f"Dagster's own storage (runs, events, schedules) at {redact_dsn(url)} is unreachable "
        f"({type(cause).__name__}: {''.join(first_line) or 'no detail'}). It is set by "
        f"{STORAGE_ENV}: start `etl-assets-dev` (it serves that database) and, in another "
        "terminal, `. .etl_assets/env.sh`; or point DAGSTER_PG_URL at a running server "
        "(postgresql+psycopg2://user:password@host:5432/dagster)."
    )
