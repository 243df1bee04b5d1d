"""A code location with a job over sample_events_table, for range runs from the CLI.

``dagster job execute`` runs a range when given the range tags (``dagster asset
materialize --partition-range`` requires single-run backfill policies).
"""

import dagster as dg

from etl_assets.checks import partition_checks
from etl_assets.example import definitions
from etl_assets.example.sample_events import sample_events_table

sample_events_range = dg.define_asset_job("sample_events_range", selection=[sample_events_table])

defs = dg.Definitions(
    assets=[sample_events_table],
    asset_checks=partition_checks(sample_events_table),
    jobs=[sample_events_range],
    resources=definitions.resources(),
    executor=dg.in_process_executor,
)
