"""A code location for daemon-driven tests: the log pipeline, its server from the environment.

The daemon loads code by module name, so the DSN and landing folder arrive as
environment variables (``ETL_ASSETS_PG_DSN``, ``ETL_ASSETS_LANDING``) read at run time.
"""

import dagster as dg

from etl_assets.checks import partition_checks
from etl_assets.example import definitions
from etl_assets.example.logs import daily_metrics, raw_logs
from etl_assets.postgres.resource import PostgresResource

defs = dg.Definitions(
    assets=[raw_logs, daily_metrics],
    asset_checks=[*partition_checks(raw_logs), *partition_checks(daily_metrics)],
    resources=definitions.resources(PostgresResource(dsn=dg.EnvVar(definitions.DSN_ENV))),
    executor=dg.in_process_executor,
)
