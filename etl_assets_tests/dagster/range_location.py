"""Code for range runs outside pytest's process (the CLI) or re-executed (reconstructable).

``dagster job execute`` runs a range when given the range tags (``dagster asset
materialize --partition-range`` requires single-run backfill policies). ``flaky_job``
loads ``flaky_visits``, whose source fails for the day named by ``$FLAKY_DAY``.

(No ``from __future__ import annotations``: the asset below is decorated here.)
"""

import datetime as dt
import os
from collections.abc import Iterator
from typing import Any

import dagster as dg
import pydantic

from etl_assets.checks import partition_checks
from etl_assets.example import definitions
from etl_assets.example.partitions import daily
from etl_assets.example.sample_events import sample_events_table
from etl_assets.io_manager import PartitionRecords, data_date, postgres_asset
from etl_assets.postgres.resource import PostgresResource
from etl_assets.spec import PostgresTable

FLAKY_DAY_ENV = "FLAKY_DAY"


class Visit(pydantic.BaseModel):
    visit_id: int


FLAKY_VISITS = PostgresTable(
    table="flaky_visits", model=Visit, primary_key=("data_date", "visit_id")
)


def _visits(day: dt.date) -> Iterator[dict[str, Any]]:
    if os.environ.get(FLAKY_DAY_ENV) == day.isoformat():
        raise ConnectionResetError(f"the source hung up on {day}")
    yield from ({"visit_id": n} for n in range(day.day * 10))


@postgres_asset(FLAKY_VISITS, partitions_def=daily)
def flaky_visits(context: dg.AssetExecutionContext) -> PartitionRecords:
    return {key: _visits(data_date(key)) for key in context.partition_keys}


sample_events_range = dg.define_asset_job("sample_events_range", selection=[sample_events_table])
flaky_range = dg.define_asset_job("flaky_range", selection=[flaky_visits])

defs = dg.Definitions(
    assets=[sample_events_table, flaky_visits],
    asset_checks=[*partition_checks(sample_events_table), *partition_checks(flaky_visits)],
    jobs=[sample_events_range, flaky_range],
    resources=definitions.resources(PostgresResource(dsn=dg.EnvVar(definitions.DSN_ENV))),
    executor=dg.in_process_executor,
)


def flaky_job() -> dg.JobDefinition:
    """For ``dg.reconstructable``: re-execution rebuilds the job by this function."""
    return defs.resolve_job_def("flaky_range")
