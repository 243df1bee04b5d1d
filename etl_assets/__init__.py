"""etl_assets: load date-partitioned data into PostgreSQL without losing or duplicating a row."""

from etl_assets.checks import partition_checks
from etl_assets.component import PostgresLoadComponent
from etl_assets.errors import (
    CircuitBreakerOpenError,
    ConfigurationError,
    EtlError,
    FatalError,
    LeaseLostError,
    LoadIntegrityError,
    LoginRefusedError,
    PermissionDeniedError,
    PoolExhaustedError,
    RecordError,
    RetryableError,
    classify,
)
from etl_assets.input_gate import READ_UNVERIFIED, UnverifiedPartitionError
from etl_assets.io_manager import (
    PartitionRecords,
    ResilientPostgresIOManager,
    data_date,
    postgres_asset,
)
from etl_assets.postgres.housekeeping import CleanupReport, cleanup
from etl_assets.postgres.ledger import LetterStatus, LoadKey, LoadStatus
from etl_assets.postgres.loader import LoadReport, LoadSettings, load_partition, resolve_load_id
from etl_assets.postgres.reader import PartitionStream
from etl_assets.postgres.replay import ReplayFilter, ReplayReport, replay_dead_letters
from etl_assets.postgres.resource import ConnectionFailedError, PostgresResource
from etl_assets.postgres.retry import RetryPolicy
from etl_assets.postgres.target import (
    Column,
    SchemaChange,
    TableTarget,
    WriteMode,
    columns_from_model,
)
from etl_assets.resources import default_resources
from etl_assets.spec import PostgresTable

__all__ = [
    # dagster
    "PostgresTable",
    "ResilientPostgresIOManager",
    "PartitionRecords",
    "PartitionStream",
    "partition_checks",
    "postgres_asset",
    "data_date",
    "READ_UNVERIFIED",
    # components (dg)
    "PostgresLoadComponent",
    "default_resources",
    # loading
    "load_partition",
    "resolve_load_id",
    "LoadReport",
    "LoadSettings",
    "RetryPolicy",
    "replay_dead_letters",
    "ReplayFilter",
    "LetterStatus",
    "LoadKey",
    "LoadStatus",
    "CleanupReport",
    "cleanup",
    "ReplayReport",
    # targets
    "SchemaChange",
    "TableTarget",
    "Column",
    "WriteMode",
    "columns_from_model",
    # resources
    "PostgresResource",
    # errors
    "EtlError",
    "LeaseLostError",
    "LoginRefusedError",
    "PermissionDeniedError",
    "PoolExhaustedError",
    "RetryableError",
    "RecordError",
    "FatalError",
    "ConfigurationError",
    "CircuitBreakerOpenError",
    "LoadIntegrityError",
    "UnverifiedPartitionError",
    "ConnectionFailedError",
    "classify",
]
