"""The partitions of this code location: one per data date."""

import dagster as dg

__all__ = ["daily"]

daily = dg.DailyPartitionsDefinition(start_date="2024-01-01", end_offset=0)
