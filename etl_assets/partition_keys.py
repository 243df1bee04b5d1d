"""Partition keys as data dates: the one place a key becomes a date."""

from __future__ import annotations

import datetime as dt

from etl_assets.errors import ConfigurationError

__all__ = ["data_date"]


def data_date(partition_key: str) -> dt.date:
    """The data date a partition key names (daily partitions: ``YYYY-MM-DD``)."""
    try:
        return dt.date.fromisoformat(partition_key)
    except ValueError:
        raise ConfigurationError(
            f"partition key {partition_key!r} is not a date (YYYY-MM-DD); etl_assets writes "
            "one partition per data date: use a DailyPartitionsDefinition"
        ) from None
