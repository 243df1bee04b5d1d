"""The code location the Celery workers run: one loading asset, its checks, a range job.

Workers import this module by name (the run ships a reconstructable job), so everything
comes from the environment they were started with: the database (``ETL_ASSETS_PG_DSN``),
the broker (``ETL_ASSETS_CELERY_BROKER``) and a folder the test and the source share
(``ETL_ASSETS_CELERY_DIR``): a file ``hold-<day>`` there makes that day's source stop
mid-load and wait to be killed, after writing its process id to ``hold-<day>.pid``.

(No ``from __future__ import annotations``: the asset below is decorated here.)
"""

import datetime as dt
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pydantic
from dagster_celery import celery_executor

from etl_assets.checks import partition_checks
from etl_assets.example import definitions
from etl_assets.io_manager import (
    PartitionRecords,
    ResilientPostgresIOManager,
    data_date,
    postgres_asset,
)
from etl_assets.postgres.resource import PostgresResource
from etl_assets.spec import PostgresTable

BROKER_ENV = "ETL_ASSETS_CELERY_BROKER"
DIR_ENV = "ETL_ASSETS_CELERY_DIR"
ROWS_PER_DAY = 400
CHUNK = 3
BATCH_SIZE = 50  # several transactions per partition, so a kill lands between batches
PACE_S = 0.1  # per batch of the source: a partition takes ~1 s, so a 20 ms sampler sees it


class Visit(pydantic.BaseModel):
    visit_id: int
    page: str


VISITS = PostgresTable(table="celery_visits", model=Visit, primary_key=("data_date", "visit_id"))


def visits_of(day: dt.date) -> Iterator[dict[str, Any]]:
    """ROWS_PER_DAY visits, ids unique per day; a held day stops half-way, for good."""
    hold = Path(os.environ[DIR_ENV]) / f"hold-{day.isoformat()}"
    for n in range(ROWS_PER_DAY):
        if n == ROWS_PER_DAY // 2 and hold.exists():
            hold.with_suffix(".pid").write_text(str(os.getpid()))
            time.sleep(600)  # the test SIGKILLs this process long before
        if n % BATCH_SIZE == 0:
            time.sleep(PACE_S)  # a source that takes its time: loads overlap, connections show
        yield {"visit_id": visit_id(day, n), "page": f"/p/{n % 7}"}


def visit_id(day: dt.date, n: int) -> int:
    """The n-th visit's id: unique per day and across days."""
    return day.toordinal() * 1_000 + n


@postgres_asset(
    VISITS,
    partitions_def=dg.DailyPartitionsDefinition(start_date="2024-05-01"),
    backfill_policy=dg.BackfillPolicy.multi_run(CHUNK),
)
def celery_visits(context: dg.AssetExecutionContext) -> PartitionRecords:
    return {key: visits_of(data_date(key)) for key in context.partition_keys}


# Celery on the broker the workers listen to (broker and result backend alike), read
# from the environment when a run starts, not when this module is imported.
CELERY = celery_executor.configured({"broker": {"env": BROKER_ENV}, "backend": {"env": BROKER_ENV}})


postgres = PostgresResource(dsn=dg.EnvVar(definitions.DSN_ENV))
defs = dg.Definitions(
    assets=[celery_visits],
    asset_checks=partition_checks(celery_visits),
    jobs=[dg.define_asset_job("visits_range", selection=[celery_visits])],
    resources={
        "postgres": postgres,
        "postgres_io_manager": ResilientPostgresIOManager(postgres=postgres, batch_size=BATCH_SIZE),
    },
    executor=CELERY,
)


def visits_range() -> dg.JobDefinition:
    """For ``dg.reconstructable``: the run process and every worker rebuild the job so."""
    return defs.resolve_job_def("visits_range")
