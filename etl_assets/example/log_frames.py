"""The DataFrame example: ``logs`` in as a pandas DataFrame, hourly module stats out as one.

(No ``from __future__ import annotations``: Dagster reads the input's annotation to hand
it a DataFrame.)

Both ends are columnar: the IO manager reads the partition with ``COPY ... TO`` into
Arrow, and writes the returned DataFrame with vectorised validation and a binary COPY,
with the same ledger, dead letters and checks as the record path. Needs
``etl_assets[pandas]``.
"""

import dagster as dg
import pandas as pd
import pydantic

from etl_assets.example.partitions import daily
from etl_assets.io_manager import postgres_asset
from etl_assets.spec import PostgresTable

__all__ = ["MODULE_HOURLY", "ModuleHour", "module_hourly", "module_hours"]


class ModuleHour(pydantic.BaseModel):
    """Lines and errors of one module in one hour (UTC) of the data date."""

    module: str
    hour: int
    lines: int
    errors: int


MODULE_HOURLY = PostgresTable(
    table="module_hourly", model=ModuleHour, primary_key=("data_date", "module", "hour")
)


@postgres_asset(
    MODULE_HOURLY,
    partitions_def=daily,
    group_name="logs",
    automation_condition=dg.AutomationCondition.eager()
    & dg.AutomationCondition.all_deps_blocking_checks_passed(),
)
def module_hourly(raw_logs: pd.DataFrame) -> pd.DataFrame:
    """Per module and hour: line and error counts, a DataFrame from end to end."""
    return module_hours(raw_logs)


def module_hours(logs: pd.DataFrame) -> pd.DataFrame:
    """The aggregation alone (a pure function of its input, for tests).

    Grouped by data date too: a backfill chunk hands over many days in one frame, and the
    IO manager routes each row to its partition by that column.
    """
    hours = logs["timestamp"].dt.tz_convert("UTC").dt.hour
    frame = logs.assign(hour=hours, is_error=logs["severity"] == "ERROR")
    grouped = frame.groupby(["data_date", "module", "hour"], as_index=False).agg(
        lines=("line_no", "size"), errors=("is_error", "sum")
    )
    return grouped.astype({"hour": "int64", "lines": "int64", "errors": "int64"})
