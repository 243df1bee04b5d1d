"""A table's schema over time, through Dagster: evolved on request, checked when absent.

(No ``from __future__ import annotations``: the assets below are decorated in the tests.)
"""

import asyncio
from typing import Any

import dagster as dg
import pydantic

from etl_assets.checks import partition_checks
from etl_assets.example.partitions import daily
from etl_assets.io_manager import PartitionRecords
from etl_assets.postgres.target import SchemaChange
from etl_assets.spec import PostgresTable
from etl_assets_tests.postgres.helpers import fetch

OLD_DAY, NEW_DAY = "2024-05-01", "2024-05-02"
CHECKS = ("written_equals_enqueued", "no_duplicate_keys", "dead_letter_rate")


class Order(pydantic.BaseModel):
    order_id: int
    item: str


class OrderWithQty(pydantic.BaseModel):
    order_id: int
    item: str
    qty: int


def orders_asset(spec: PostgresTable, n: int) -> dg.AssetsDefinition:
    @dg.asset(
        name="orders", partitions_def=daily, io_manager_key="postgres_io_manager",
        metadata=spec.metadata(),
    )  # fmt: skip
    def orders(context: dg.AssetExecutionContext) -> PartitionRecords:
        rows = [{"order_id": i, "item": f"i{i}", "qty": i} for i in range(n)]
        return {context.partition_key: rows}

    return orders


def verdicts(result: dg.ExecuteInProcessResult) -> dict[str, tuple[bool, str | None]]:
    return {e.check_name: (e.passed, e.description) for e in result.get_asset_check_evaluations()}


def materialize(
    asset: dg.AssetsDefinition,
    resources: dict[str, Any],
    instance: dg.DagsterInstance,
    day: str,
    *,
    checks_only: bool = False,
) -> dg.ExecuteInProcessResult:
    """The asset and its checks for one day, or only the checks (a job of them)."""
    if not checks_only:
        return dg.materialize(
            [asset, *partition_checks(asset)],
            resources=resources,
            instance=instance,
            partition_key=day,
            raise_on_error=False,
        )
    job = dg.define_asset_job("checks", selection=dg.AssetSelection.checks_for_assets(asset))
    defs = dg.Definitions(
        assets=[asset], asset_checks=partition_checks(asset), jobs=[job], resources=resources
    )
    return defs.resolve_job_def("checks").execute_in_process(
        instance=instance, tags={"dagster/partition": day}, raise_on_error=False
    )  # a job of checks alone has no partitions definition to validate a partition_key by


def test_add_columns_evolves_the_table_across_two_loads_and_old_days_stay_green(
    db_dsn: str, resources: dict[str, Any], instance: dg.DagsterInstance
) -> None:
    """The new field is refused by default, added with add_columns (reported in the
    materialization), and the old day reads NULL and passes all three checks."""
    old = orders_asset(PostgresTable(table="orders", model=Order), 10)
    assert materialize(old, resources, instance, OLD_DAY).success

    refusing = orders_asset(PostgresTable(table="orders", model=OrderWithQty), 20)
    refused = materialize(refusing, resources, instance, NEW_DAY)
    assert not refused.success
    assert 'ALTER TABLE "public"."orders" ADD COLUMN "qty" bigint' in str(
        [e.step_failure_data.error for e in refused.all_events if e.is_step_failure]
    )

    spec = PostgresTable(table="orders", model=OrderWithQty, on_schema_change="add_columns")  # type: ignore[arg-type]
    assert spec.on_schema_change is SchemaChange.ADD_COLUMNS
    assert PostgresTable.from_metadata(spec.metadata(), "orders") == spec
    evolving = orders_asset(spec, 20)
    result = materialize(evolving, resources, instance, NEW_DAY)
    assert result.success
    [mat] = result.asset_materializations_for_node("orders")
    assert (mat.metadata["written"].value, mat.metadata["columns_added"].value) == (20, "qty")
    assert verdicts(result) == {name: (True, None) for name in CHECKS}

    old_checked = materialize(evolving, resources, instance, OLD_DAY, checks_only=True)
    assert old_checked.success
    assert verdicts(old_checked) == {name: (True, None) for name in CHECKS}
    rows = asyncio.run(
        fetch(db_dsn, "SELECT data_date::text, count(*), count(qty) FROM public.orders GROUP BY 1")
    )
    assert sorted(tuple(r) for r in rows) == [(OLD_DAY, 10, 0), (NEW_DAY, 20, 20)]


def test_the_three_checks_fail_alike_on_a_table_never_loaded(
    resources: dict[str, Any], instance: dg.DagsterInstance
) -> None:
    """No table: each check fails with the same message, none raises, none passes."""
    never = orders_asset(PostgresTable(table="orders", model=Order), 1)
    result = materialize(never, resources, instance, OLD_DAY, checks_only=True)
    message = 'table "public"."orders" does not exist (never loaded?)'
    assert verdicts(result) == {name: (False, message) for name in CHECKS}
