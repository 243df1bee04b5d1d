"""The Definitions that ``dagster dev`` and workspace.yaml load.

(No ``from __future__ import annotations`` here: Dagster reads config types from the
annotations at decoration time.)

A first daily-partitioned asset on the core engine; the IO manager, the log-ingestion
pipeline, the dead-letter asset and the blocking checks build on it (issue 3).
"""

import asyncio
import datetime as dt
import os
import random
from collections.abc import Iterator
from typing import Any

import dagster as dg
import pydantic

from etl_assets.postgres.loader import LoadSettings, load_partition, resolve_load_id
from etl_assets.postgres.resource import PostgresResource
from etl_assets.postgres.target import TableTarget, WriteMode, columns_from_model

DSN_ENV = "ETL_ASSETS_PG_DSN"
daily = dg.DailyPartitionsDefinition(start_date="2024-01-01", end_offset=0)


class SampleEvent(pydantic.BaseModel):
    """One synthetic event of a data date."""

    event_id: int
    kind: str
    amount: float


SAMPLE_EVENTS = TableTarget(
    schema="public",
    table="sample_events",
    columns=columns_from_model(SampleEvent),
    partition_column="data_date",
    mode=WriteMode.REPLACE,
    primary_key=("data_date", "event_id"),
)


def sample_events(day: dt.date, count: int) -> Iterator[dict[str, Any]]:
    """Deterministic per data date (seeded by it), never by the clock."""
    rng = random.Random(day.toordinal())
    for i in range(count):
        yield {"event_id": i, "kind": rng.choice(["view", "click", "buy"]), "amount": rng.random()}


class SampleEventsConfig(dg.Config):
    records_per_day: int = pydantic.Field(default=50_000, ge=0, le=20_000_000)


@dg.asset(partitions_def=daily, pool="postgres", group_name="examples", kinds={"postgres"})
def sample_events_table(
    context: dg.AssetExecutionContext, config: SampleEventsConfig, postgres: PostgresResource
) -> dg.MaterializeResult[Any]:
    """Synthetic events for the partition's data date, loaded with replace semantics."""
    day = dt.date.fromisoformat(context.partition_key)

    async def run() -> Any:
        async with postgres.pool() as pool:
            load_id = await resolve_load_id(
                pool,
                SAMPLE_EVENTS,
                day,
                context.run.root_run_id or context.run.run_id,
                context.run.run_id,
            )
            return await load_partition(
                pool,
                SAMPLE_EVENTS,
                day,
                sample_events(day, config.records_per_day),
                load_id=load_id,
                model=SampleEvent,
                settings=LoadSettings(),
                log=context.log,
            )

    report = asyncio.run(run())
    return dg.MaterializeResult(
        metadata={
            "enqueued": report.enqueued,
            "written": report.written,
            "dead_lettered": report.dead_lettered,
            "batches": report.batches,
            "batches_resumed": report.batches_resumed,
            "retries": report.retries,
            "rows_per_s": round(report.rows_per_s, 1),
            "elapsed_s": round(report.elapsed_s, 3),
            "load_id": report.load_id,
        }
    )


def postgres_resource() -> PostgresResource:
    """The DSN from the environment (as an EnvVar, never a literal); unset: embedded server."""
    return PostgresResource(dsn=dg.EnvVar(DSN_ENV) if os.environ.get(DSN_ENV) else None)


defs = dg.Definitions(
    assets=[sample_events_table],
    resources={"postgres": postgres_resource()},
)
