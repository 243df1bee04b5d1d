"""What the catalog is told about a table: name, columns, key; no database needed."""

from __future__ import annotations

import dagster as dg

from etl_assets.catalog import partition_row_count, table_metadata
from etl_assets.dead_letter_queue import dead_letter_queue
from etl_assets.example.logs import DAILY_METRICS, daily_metrics, raw_logs


def test_table_metadata_names_the_table_its_columns_and_key() -> None:
    """The upsert table: its partition column first, each field's type and nullability, the key."""
    metadata = table_metadata(DAILY_METRICS.target())
    assert metadata["dagster/table_name"] == "public.daily_metrics"
    schema = metadata["dagster/column_schema"]
    assert [(c.name, c.type, c.constraints.nullable) for c in schema.columns] == [
        ("date", "date", False),
        ("metric_id", "text", False),
        ("value", "double precision", False),
    ]
    assert schema.constraints.other == ["PRIMARY KEY (date, metric_id)"]


def test_postgres_assets_carry_the_catalog_metadata_and_the_postgres_kind() -> None:
    """Every postgres_asset of the example has its table name, column schema and kind."""
    for asset, table in ((raw_logs, "public.logs"), (daily_metrics, "public.daily_metrics")):
        metadata = asset.metadata_by_key[asset.key]
        assert metadata["dagster/table_name"] == table
        assert isinstance(metadata["dagster/column_schema"], dg.TableSchema)
        assert asset.specs_by_key[asset.key].kinds == {"postgres"}


def test_dead_letter_asset_names_its_table() -> None:
    """The dead-letter queue's definition names the ledger's dead-letter table."""
    key = dead_letter_queue.key
    assert dead_letter_queue.metadata_by_key[key]["dagster/table_name"] == "etl.dead_letters"


def test_partition_row_count_is_dagster_s_key() -> None:
    """A materialization's own partition's rows, under Dagster's key."""
    assert partition_row_count(7) == {"dagster/partition_row_count": 7}
