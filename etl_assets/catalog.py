"""What Dagster's catalog is told about a table: its name and its columns.

Dagster's asset page, search and column lineage read ``dagster/table_name`` and
``dagster/column_schema`` from an asset's definition metadata. They are derived here,
from the :class:`~etl_assets.postgres.target.TableTarget` the loads create the table
from, so the catalog shows the table before its first load and cannot disagree with
the DDL (``TableTarget.create_sql``: the partition column is ``date NOT NULL``).
"""

from __future__ import annotations

from typing import Any

import dagster as dg

# Not re-exported by ``dagster`` in 1.13; its keys are Dagster's own (``dagster/...``).
from dagster._core.definitions.metadata.metadata_set import TableMetadataSet

from etl_assets.postgres.target import TableTarget

__all__ = ["partition_row_count", "table_metadata"]


def table_metadata(target: TableTarget) -> dict[str, Any]:
    """``dagster/table_name`` (``schema.table``) and ``dagster/column_schema``.

    The database is left out of the name: it is known only at run time (the DSN may
    come from the environment of the run), while definition metadata is fixed when the
    code loads.
    """
    key = set(target.primary_key)
    columns = [
        dg.TableColumn(
            name=target.partition_column,
            type="date",
            description="the data date: the partition key",
            constraints=dg.TableColumnConstraints(nullable=False),
        ),
        *(
            dg.TableColumn(
                name=column.name,
                type=column.pg_type,
                constraints=dg.TableColumnConstraints(
                    nullable=column.nullable and column.name not in key
                ),
            )
            for column in target.columns
        ),
    ]
    other = [f"PRIMARY KEY ({', '.join(target.primary_key)})"] if target.primary_key else []
    schema = dg.TableSchema(columns=columns, constraints=dg.TableConstraints(other=other))
    return dict(
        TableMetadataSet(table_name=f"{target.schema}.{target.table}", column_schema=schema)
    )


def partition_row_count(rows: int) -> dict[str, Any]:
    """A materialization's rows in its own partition (``dagster/partition_row_count``)."""
    return dict(TableMetadataSet(partition_row_count=rows))
