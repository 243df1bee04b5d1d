"""Dagster's own storage (runs, event log, schedules) in PostgreSQL, with two repairs.

``dagster.yaml`` selects this subclass of ``dagster_postgres``' storage as a ``custom``
storage. It changes two things and nothing else:

- a storage that cannot be reached raises an error naming ``DAGSTER_PG_URL``, the server
  it points to (password redacted) and how to get one, instead of "too many retries for
  DB connection" after a traceback that never says which setting points there;
- a pool's default limit is written by one upsert. Dagster 1.13 inserts the pool's row
  and, on a duplicate, updates it in the same transaction; on PostgreSQL the failed
  insert aborts that transaction, so the update raises ``InFailedSqlTransaction`` and
  the run fails (dagster-io/dagster#33552). It happens to two runs taking a new pool's
  first slot at once (a backfill's first runs) and to every run after
  ``concurrency.pools.default_limit`` was changed.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
import sqlalchemy.exc
from dagster._core.storage.event_log.schema import ConcurrencyLimitsTable
from dagster._serdes import ConfigurableClassData
from dagster_postgres import DagsterPostgresStorage, PostgresEventLogStorage
from dagster_postgres.utils import (
    DagsterPostgresException,
    get_token_provider_from_config,
    pg_url_from_config,
)
from sqlalchemy.dialects.postgresql import insert

from etl_assets.errors import ConfigurationError
from etl_assets.postgres.resource import redact_dsn

__all__ = [
    "STORAGE_ENV",
    "ExplainedPostgresStorage",
    "PoolSafeEventLogStorage",
    "storage_unreachable",
]

STORAGE_ENV = "DAGSTER_PG_URL"


class PoolSafeEventLogStorage(PostgresEventLogStorage):
    """dagster-postgres' event log whose pool default limit survives a concurrent writer."""

    def initialize_concurrency_limit_to_default(self, concurrency_key: str) -> bool:
        default_limit = (
            self._instance.global_op_concurrency_default_limit if self.has_instance else None
        )
        if (
            default_limit is None  # Dagster's path deletes the row: no insert to collide
            or not self.has_concurrency_limits_table
            or not self.has_default_pool_limit_col  # a pre-1.9 schema: left to Dagster
        ):
            return super().initialize_concurrency_limit_to_default(concurrency_key)
        self._reconcile_concurrency_limits_from_slots()
        with self.index_transaction() as conn:
            conn.execute(upsert_default_limit(concurrency_key, default_limit))
            limit = conn.execute(
                sa.select(ConcurrencyLimitsTable.c.limit).where(
                    ConcurrencyLimitsTable.c.concurrency_key == concurrency_key
                )
            ).scalar_one()
            self._allocate_concurrency_slots(conn, concurrency_key, limit)
        return True


def upsert_default_limit(concurrency_key: str, default_limit: int) -> sa.Insert:
    """The pool's row at the default limit, unless someone set its limit by hand.

    ``ON CONFLICT DO UPDATE`` waits for a concurrent insert of the same key instead of
    failing, and locks the row even where its ``WHERE`` leaves it alone, so the slots
    allocated after it match the row's limit. A limit set with ``dagster instance
    concurrency set`` (``using_default_limit`` false) is kept.
    """
    table = ConcurrencyLimitsTable
    statement = insert(table).values(
        concurrency_key=concurrency_key, limit=default_limit, using_default_limit=True
    )
    return statement.on_conflict_do_update(
        index_elements=[table.c.concurrency_key],
        set_={"limit": statement.excluded.limit},
        where=table.c.using_default_limit.is_(True) & (table.c.limit != statement.excluded.limit),
    )


class ExplainedPostgresStorage(DagsterPostgresStorage):
    """``DagsterPostgresStorage`` that names the variable to fix and sets pool limits safely."""

    def __init__(
        self,
        postgres_url: str,
        should_autocreate_tables: bool = True,
        inst_data: ConfigurableClassData | None = None,
        token_provider: Any = None,
    ) -> None:
        super().__init__(postgres_url, should_autocreate_tables, inst_data, token_provider)
        # The parent built (and, if asked, created the tables of) its own event log; the
        # same engine settings on the same tables, with the repaired pool initialisation.
        self._event_log_storage = PoolSafeEventLogStorage(
            postgres_url, should_autocreate_tables=False, token_provider=token_provider
        )

    @classmethod
    def from_config_value(  # type: ignore[override]
        cls, inst_data: ConfigurableClassData | None, config_value: Any
    ) -> DagsterPostgresStorage:
        url = pg_url_from_config(config_value)
        try:
            return cls(
                url,
                should_autocreate_tables=config_value.get("should_autocreate_tables", True),
                inst_data=inst_data,
                token_provider=get_token_provider_from_config(config_value),
            )
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
