"""Synthetic events: a daily asset of any size, for load tests and benchmarks.

(No ``from __future__ import annotations``: Dagster reads the config type from it.)
"""

import datetime as dt
import random
from collections.abc import Iterator
from typing import Any

import dagster as dg
import pydantic

from etl_assets.example.partitions import daily
from etl_assets.io_manager import PartitionRecords, data_date, postgres_asset
from etl_assets.spec import PostgresTable

__all__ = ["SAMPLE_EVENTS", "SampleEvent", "SampleEventsConfig", "sample_events_table"]


class SampleEvent(pydantic.BaseModel):
    """One synthetic event of a data date."""

    event_id: int
    kind: str
    amount: float


SAMPLE_EVENTS = PostgresTable(
    table="sample_events", model=SampleEvent, primary_key=("data_date", "event_id")
)


def sample_events(day: dt.date, count: int) -> Iterator[dict[str, Any]]:
    """Deterministic per data date (seeded by it), never by the clock."""
    rng = random.Random(day.toordinal())
    for i in range(count):
        yield {"event_id": i, "kind": rng.choice(["view", "click", "buy"]), "amount": rng.random()}


class SampleEventsConfig(dg.Config):
    records_per_day: int = pydantic.Field(default=50_000, ge=0, le=20_000_000)


@postgres_asset(SAMPLE_EVENTS, partitions_def=daily, group_name="examples")
def sample_events_table(
    context: dg.AssetExecutionContext, config: SampleEventsConfig
) -> PartitionRecords:
    """Synthetic events for each data date of the run, streamed (replace semantics)."""
    return {
        key: sample_events(data_date(key), config.records_per_day) for key in context.partition_keys
    }
