"""etl_assets: load date-partitioned data into PostgreSQL without losing or duplicating a row."""

from etl_assets.errors import (
    CircuitBreakerOpenError,
    ConfigurationError,
    EtlError,
    FatalError,
    LoadIntegrityError,
    RecordError,
    RetryableError,
    classify,
)
from etl_assets.postgres.loader import LoadReport, LoadSettings, load_partition, resolve_load_id
from etl_assets.postgres.resource import ConnectionFailedError, PostgresResource
from etl_assets.postgres.retry import RetryPolicy
from etl_assets.postgres.target import Column, TableTarget, WriteMode, columns_from_model

__all__ = [
    # loading
    "load_partition",
    "resolve_load_id",
    "LoadReport",
    "LoadSettings",
    "RetryPolicy",
    # targets
    "TableTarget",
    "Column",
    "WriteMode",
    "columns_from_model",
    # resources
    "PostgresResource",
    # errors
    "EtlError",
    "RetryableError",
    "RecordError",
    "FatalError",
    "ConfigurationError",
    "CircuitBreakerOpenError",
    "LoadIntegrityError",
    "ConnectionFailedError",
    "classify",
]
