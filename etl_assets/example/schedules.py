"""The daily schedule: yesterday's partition of the log pipeline, shortly after midnight."""

import dagster as dg

from etl_assets.example.logs import daily_metrics, raw_logs

__all__ = ["daily_logs_job", "daily_logs_schedule"]

daily_logs_job = dg.define_asset_job(
    "daily_logs",
    selection=dg.AssetSelection.assets(raw_logs, daily_metrics),  # their checks come along
    description="Load one data date of logs, check it, then compute its metrics.",
)

# Stopped until someone turns it on: a fresh checkout must not start loading on its own.
daily_logs_schedule = dg.build_schedule_from_partitioned_job(
    daily_logs_job,
    hour_of_day=0,
    minute_of_hour=30,
    default_status=dg.DefaultScheduleStatus.STOPPED,
)
