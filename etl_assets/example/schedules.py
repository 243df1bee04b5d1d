"""The daily schedule: yesterday's partition of the log pipeline, shortly after midnight."""

import dagster as dg

from etl_assets.example.logs import raw_logs

__all__ = ["daily_logs_job", "daily_logs_schedule"]

# raw_logs only (its checks come along): daily_metrics follows by its automation condition
# once the day's blocking checks passed. One job for both would mix their backfill
# policies (daily_metrics has its own, see logs.py), which Dagster warns about.
daily_logs_job = dg.define_asset_job(
    "daily_logs",
    selection=dg.AssetSelection.assets(raw_logs),
    description="Load one data date of logs and check it; daily_metrics follows on its own.",
)

# Stopped until someone turns it on: a fresh checkout must not start loading on its own.
daily_logs_schedule = dg.build_schedule_from_partitioned_job(
    daily_logs_job,
    hour_of_day=0,
    minute_of_hour=30,
    default_status=dg.DefaultScheduleStatus.STOPPED,
)
