"""No silent zeros downstream: an unpublished or check-failed partition is never read as empty.

(No ``from __future__ import annotations``: the assets below are decorated here.)
"""

import asyncio
from typing import Any

import asyncpg
import dagster as dg
import pydantic
import pytest

from etl_assets import READ_UNVERIFIED, partition_checks
from etl_assets.example.partitions import daily
from etl_assets.io_manager import PartitionRecords, postgres_asset
from etl_assets.postgres.ledger import Ledger
from etl_assets.spec import PostgresTable
from etl_assets_tests.dagster.conftest import drop_rows_after_publish
from etl_assets_tests.dagster.test_io_manager import chain_of

DAY = "2024-06-03"


class Sale(pydantic.BaseModel):
    sale_id: int
    amount: float


SALES = PostgresTable(table="sales", model=Sale, primary_key=("data_date", "sale_id"))
SOURCE: dict[str, Any] = {}  # partition -> what the source hands over (or raises)


@postgres_asset(SALES, partitions_def=daily)
def sales(context: dg.AssetExecutionContext) -> PartitionRecords:
    def source(key: str) -> Any:
        found = SOURCE[key]
        if isinstance(found, Exception):
            raise found
        return found

    return {key: source(key) for key in context.partition_keys}


@dg.asset(partitions_def=daily, io_manager_key="mem")
def sales_total(sales: list[dict[str, Any]]) -> float:
    return float(sum(row["amount"] for row in sales))


@dg.asset(
    partitions_def=daily,
    io_manager_key="mem",
    ins={"sales": dg.AssetIn(metadata=READ_UNVERIFIED)},
)
def sales_total_unverified(sales: list[dict[str, Any]]) -> float:
    return float(sum(row["amount"] for row in sales))


ALL = [sales, sales_total, sales_total_unverified, *partition_checks(sales)]


@pytest.fixture
def io(resources: dict[str, Any]) -> dict[str, Any]:
    return {**resources, "mem": dg.InMemoryIOManager()}


def load(io: dict[str, Any], instance: dg.DagsterInstance, records: Any) -> bool:
    SOURCE[DAY] = records
    selection = [sales, *partition_checks(sales)]
    result = dg.materialize(
        ALL, selection=selection, partition_key=DAY, resources=io, instance=instance,
        raise_on_error=False,
    )  # fmt: skip
    return result.success


def total(
    io: dict[str, Any], instance: dg.DagsterInstance, asset: dg.AssetsDefinition = sales_total
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        ALL, selection=[asset], partition_key=DAY, resources=io, instance=instance,
        raise_on_error=False,
    )  # fmt: skip


def test_a_partition_never_loaded_is_not_read_as_empty(
    io: dict[str, Any], instance: dg.DagsterInstance
) -> None:
    """Reading a day no load published fails naming the day, its state and the fix."""
    load(io, instance, [{"sale_id": 1, "amount": 2.5}])  # the table exists, for another day
    other = dg.materialize(
        ALL, selection=[sales_total], partition_key="2024-06-04", resources=io,
        instance=instance, raise_on_error=False,
    )  # fmt: skip

    assert not other.success
    message = chain_of(other)[-1]
    assert "input sales is not ready for 1 partition(s):\n  2024-06-04: never published" in message
    assert "(never loaded)" in message
    assert "Materialize sales for these partitions" in message
    assert "'etl_assets/read_unverified': True" in message


def test_a_partition_whose_load_failed_is_not_read_as_empty(
    io: dict[str, Any], instance: dg.DagsterInstance
) -> None:
    """A day whose load failed raises downstream; opting in reads what is there (nothing)."""
    assert not load(io, instance, ValueError("the export API answered 503"))
    assert not load(io, instance, [{"sale_id": "x", "amount": 1}] * 3)  # breaker: all rejected

    result = total(io, instance)

    assert not result.success
    assert f"{DAY}: never published (its load is failed)" in chain_of(result)[-1]
    opted_in = total(io, instance, sales_total_unverified)
    assert opted_in.success
    assert opted_in.output_for_node("sales_total_unverified") == 0.0


def test_a_partition_published_empty_is_read_as_empty(
    io: dict[str, Any], instance: dg.DagsterInstance
) -> None:
    """Zero records, loaded and published: the downstream total is a true zero."""
    assert load(io, instance, [])

    result = total(io, instance)

    assert result.success
    assert result.output_for_node("sales_total") == 0.0


def test_a_partition_whose_blocking_check_failed_is_not_read(
    db_dsn: str, io: dict[str, Any], instance: dg.DagsterInstance
) -> None:
    """A published day whose latest blocking check failed raises downstream, naming it."""
    asyncio.run(sabotage(db_dsn, drop_rows_after_publish(DAY, table="sales")))
    assert not load(io, instance, [{"sale_id": n, "amount": float(n)} for n in range(10)])
    assert instance.get_materialized_partitions(sales.key) == {DAY}  # published, then damaged

    result = total(io, instance)

    assert not result.success
    assert f"{DAY}: blocking check(s) written_equals_enqueued failed" in chain_of(result)[-1]


async def sabotage(dsn: str, trigger_sql: str) -> None:
    """The ledger, then a trigger on it that damages the table as a load publishes."""
    conn = await asyncpg.connect(dsn)
    try:
        await Ledger().ensure(conn)
        await conn.execute(trigger_sql)
    finally:
        await conn.close()


def test_a_range_run_downstream_refuses_a_never_loaded_day_of_its_range(
    io: dict[str, Any], instance: dg.DagsterInstance
) -> None:
    """A downstream range (a backfill chunk) over a loaded and a never-loaded day fails
    naming the missing one: a range run is partitioned, not a whole-table read."""
    assert load(io, instance, [{"sale_id": 1, "amount": 2.5}])
    result = dg.materialize(
        ALL, selection=[sales_total], resources=io, instance=instance, raise_on_error=False,
        tags={"dagster/asset_partition_range_start": DAY,
              "dagster/asset_partition_range_end": "2024-06-04"},
    )  # fmt: skip

    assert not result.success
    message = chain_of(result)[-1]
    assert "not ready for 1 partition(s):\n  2024-06-04: never published (never loaded)" in message
