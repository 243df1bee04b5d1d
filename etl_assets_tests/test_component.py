"""PostgresLoadComponent: scaffolded in a defs folder, loaded, materialized, its YAML checked."""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from dagster.components.testing import DefsFolderSandbox, create_defs_folder_sandbox

from etl_assets import PostgresLoadComponent
from etl_assets.errors import ConfigurationError
from etl_assets.example import definitions
from etl_assets.io_manager import ResilientPostgresIOManager
from etl_assets.postgres.resource import PostgresResource
from etl_assets.spec import PostgresTable
from etl_assets_tests.postgres.helpers import fetch

DAYS = ["2024-01-01", "2024-01-02", "2024-01-03"]
CHECKS = ("written_equals_enqueued", "no_duplicate_keys", "dead_letter_rate")


@pytest.fixture
def sandbox() -> Iterator[DefsFolderSandbox]:
    with create_defs_folder_sandbox() as sandbox:
        yield sandbox


def scaffold_orders(sandbox: DefsFolderSandbox) -> Path:
    return sandbox.scaffold_component(component_cls=PostgresLoadComponent, defs_path="orders")


def edit_yaml(defs_path: Path, field: str, value: Any) -> None:
    """Set ``attributes.<field>`` (dotted) of the folder's defs.yaml."""
    document = yaml.safe_load((defs_path / "defs.yaml").read_text())
    *parents, leaf = ["attributes", *field.split(".")]
    node = document
    for name in parents:
        node = node[name]
    node[leaf] = value
    (defs_path / "defs.yaml").write_text(yaml.safe_dump(document))


def run_range(defs: dg.Definitions, dsn: str, first: str, last: str) -> dg.ExecuteInProcessResult:
    """A backfill chunk of the YAML load and its checks, as one run, on the test database."""
    job = dg.define_asset_job("orders_job", selection=dg.AssetSelection.all())
    location = dg.Definitions(
        assets=list(defs.assets or []),
        asset_checks=list(defs.asset_checks or []),
        jobs=[job],
        resources=definitions.resources(PostgresResource(dsn=dsn)),
        executor=dg.in_process_executor,
    )
    return location.resolve_job_def("orders_job").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
        tags={
            "dagster/asset_partition_range_start": first,
            "dagster/asset_partition_range_end": last,
        },
    )


def check_results(result: dg.ExecuteInProcessResult) -> dict[tuple[str, str | None], bool]:
    return {(e.check_name, e.partition): e.passed for e in result.get_asset_check_evaluations()}


def test_scaffold_writes_defs_yaml_and_a_source_stub(sandbox: DefsFolderSandbox) -> None:
    """`dg scaffold defs` writes defs.yaml naming the folder's table, and source.py."""
    defs_path = scaffold_orders(sandbox)
    assert sorted(p.name for p in defs_path.iterdir()) == ["defs.yaml", "source.py"]
    document = yaml.safe_load((defs_path / "defs.yaml").read_text())
    assert document["type"] == "etl_assets.component.PostgresLoadComponent"
    assert document["attributes"]["table"]["name"] == "orders"
    assert document["attributes"]["record_model"] == ".source.Record"


def test_scaffolded_load_is_a_postgres_asset_with_its_checks_and_catalog(
    sandbox: DefsFolderSandbox,
) -> None:
    """As scaffolded: one asset with its table's catalog metadata and the three checks."""
    defs_path = scaffold_orders(sandbox)
    with sandbox.load_component_and_build_defs(defs_path=defs_path) as (component, defs):
        assert isinstance(component, PostgresLoadComponent)
        orders = defs.resolve_assets_def("orders")
        metadata = orders.metadata_by_key[orders.key]
        checks = {s.name: s.blocking for c in defs.asset_checks or [] for s in c.check_specs}
    assert checks == {
        "written_equals_enqueued": True,
        "no_duplicate_keys": True,
        "dead_letter_rate": False,
    }
    assert orders.specs_by_key[orders.key].kinds == {"postgres"}
    assert orders.backfill_policy == dg.BackfillPolicy.multi_run(31)
    assert metadata["dagster/table_name"] == "public.orders"
    schema = metadata["dagster/column_schema"]
    assert [(c.name, c.type, c.constraints.nullable) for c in schema.columns] == [
        ("data_date", "date", False),
        ("id", "bigint", False),
        ("amount", "double precision", False),
    ]
    assert schema.constraints.other == ["PRIMARY KEY (data_date, id)"]
    assert metadata["etl_assets/key_digest"] is True


def test_asset_attributes_and_translation_reach_the_asset(sandbox: DefsFolderSandbox) -> None:
    """Owners, tags, deps, automation condition from YAML; translation templated on the table."""
    defs_path = scaffold_orders(sandbox)
    edit_yaml(
        defs_path,
        "asset",
        {
            "key": "orders",
            "owners": ["team:data"],
            "tags": {"tier": "gold"},
            "deps": ["raw_orders"],
            "automation_condition": "{{ dg.AutomationCondition.eager() }}",
        },
    )
    edit_yaml(defs_path, "translation", {"group_name": "{{ data.table.schema }}_loads"})
    edit_yaml(defs_path, "load_settings", {"key_digest": False})
    with sandbox.load_component_and_build_defs(defs_path=defs_path) as (_, defs):
        orders = defs.resolve_assets_def("orders")
    spec = orders.specs_by_key[orders.key]
    assert spec.group_name == "public_loads"
    assert spec.owners == ["team:data"]
    assert spec.tags["tier"] == "gold"
    assert [d.asset_key for d in spec.deps] == [dg.AssetKey("raw_orders")]
    assert spec.automation_condition == dg.AutomationCondition.eager()
    assert spec.kinds == {"postgres"}
    assert orders.metadata_by_key[orders.key]["etl_assets/key_digest"] is False


def test_load_settings_of_the_lease_and_the_publish_lock_reach_the_io_manager(
    sandbox: DefsFolderSandbox,
) -> None:
    """lease_ttl_s, lock_timeout_s and lock_wait_budget_s in YAML: the asset's own settings."""
    defs_path = scaffold_orders(sandbox)
    edit_yaml(
        defs_path,
        "load_settings",
        {"lease_ttl_s": 300, "lock_timeout_s": 5, "lock_wait_budget_s": 60},
    )
    with sandbox.load_component_and_build_defs(defs_path=defs_path) as (_, defs):
        orders = defs.resolve_assets_def("orders")
    metadata = orders.metadata_by_key[orders.key]
    io_manager = ResilientPostgresIOManager(postgres=PostgresResource(), lock_timeout_s=3)
    settings = io_manager.settings(PostgresTable.from_metadata(metadata, "orders"), metadata)
    assert (settings.lease_ttl_s, settings.lock_timeout_s, settings.lock_wait_budget_s) == (
        300.0, 5.0, 60.0,
    )  # fmt: skip
    plain = io_manager.settings(PostgresTable.from_metadata(metadata, "orders"))
    assert (plain.lease_ttl_s, plain.lock_timeout_s, plain.lock_wait_budget_s) == (
        120.0, 3.0, 300.0,
    )  # fmt: skip


def test_scaffolded_load_materializes_three_partitions(
    sandbox: DefsFolderSandbox, db_dsn: str
) -> None:
    """Three days in one run: exact rows per day, a materialization and three checks each."""
    defs_path = scaffold_orders(sandbox)
    with sandbox.build_all_defs() as defs:
        result = run_range(defs, db_dsn, DAYS[0], DAYS[-1])
    assert result.success
    mats = {m.partition: m.metadata for m in result.asset_materializations_for_node("orders")}
    assert sorted(mats) == DAYS
    assert {k: m["written"].value for k, m in mats.items()} == dict.fromkeys(DAYS, 3)
    assert {k: m["dagster/partition_row_count"].value for k, m in mats.items()} == dict.fromkeys(
        DAYS, 3
    )
    assert check_results(result) == {(c, d): True for c in CHECKS for d in DAYS}
    rows = asyncio.run(
        fetch(db_dsn, "SELECT data_date::text, id, amount FROM public.orders ORDER BY 1, 2")
    )
    assert [tuple(r) for r in rows] == [
        (day, n, n * int(day[-2:]) + 0.5) for day in DAYS for n in (1, 2, 3)
    ]
    assert defs_path.exists()


def test_a_failing_day_fails_alone(sandbox: DefsFolderSandbox, db_dsn: str) -> None:
    """The source is called per partition inside its generator: day 2 raises, days 1 and 3 load."""
    defs_path = scaffold_orders(sandbox)
    (defs_path / "source.py").write_text(
        textwrap.dedent(
            """
            import datetime as dt

            import pydantic


            class Record(pydantic.BaseModel):
                id: int
                amount: float


            def read(day: dt.date) -> list[dict[str, object]]:
                if day == dt.date(2024, 1, 2):
                    raise FileNotFoundError(f"no delivery for {day}")
                return [{"id": 1, "amount": 1.5}]
            """
        )
    )
    with sandbox.build_all_defs() as defs:
        result = run_range(defs, db_dsn, DAYS[0], DAYS[-1])
    assert not result.success
    mats = result.asset_materializations_for_node("orders")
    assert sorted(m.partition for m in mats) == [DAYS[0], DAYS[2]]
    assert check_results(result) == {(c, d): True for c in CHECKS for d in (DAYS[0], DAYS[2])}
    rows = asyncio.run(fetch(db_dsn, "SELECT data_date::text FROM public.orders ORDER BY 1"))
    assert [r[0] for r in rows] == [DAYS[0], DAYS[2]]


def test_a_source_returning_a_dataframe_loads_its_rows(
    sandbox: DefsFolderSandbox, db_dsn: str
) -> None:
    """A source may return one DataFrame per day: it takes the DataFrame path, row for row."""
    defs_path = scaffold_orders(sandbox)
    (defs_path / "source.py").write_text(
        textwrap.dedent(
            """
            import datetime as dt

            import pandas as pd
            import pydantic


            class Record(pydantic.BaseModel):
                id: int
                amount: float


            def read(day: dt.date) -> pd.DataFrame:
                return pd.DataFrame({"id": [1, 2], "amount": [float(day.day), 0.25]})
            """
        )
    )
    with sandbox.build_all_defs() as defs:
        result = run_range(defs, db_dsn, DAYS[0], DAYS[1])
    assert result.success
    assert check_results(result) == {(c, d): True for c in CHECKS for d in DAYS[:2]}
    rows = asyncio.run(
        fetch(db_dsn, "SELECT data_date::text, id, amount FROM public.orders ORDER BY 1, 2")
    )
    assert [tuple(r) for r in rows] == [
        (DAYS[0], 1, 1.0),
        (DAYS[0], 2, 0.25),
        (DAYS[1], 1, 2.0),
        (DAYS[1], 2, 0.25),
    ]


def test_execute_can_be_overridden_in_a_subclass(sandbox: DefsFolderSandbox, db_dsn: str) -> None:
    """A subclass's execute produces the records (here: only even ids), as with dagster-sling."""
    defs_path = scaffold_orders(sandbox)
    (defs_path / "custom.py").write_text(
        textwrap.dedent(
            """
            from etl_assets import PostgresLoadComponent
            from etl_assets.component import partition_source


            class EvenOrders(PostgresLoadComponent):
                def execute(self, context, source):
                    return {
                        key: (r for r in partition_source(source, key) if r["id"] % 2 == 0)
                        for key in context.partition_keys
                    }
            """
        )
    )
    document = yaml.safe_load((defs_path / "defs.yaml").read_text())
    document["type"] = ".custom.EvenOrders"
    (defs_path / "defs.yaml").write_text(yaml.safe_dump(document))
    with sandbox.build_all_defs() as defs:
        result = run_range(defs, db_dsn, DAYS[0], DAYS[0])
    assert result.success
    rows = asyncio.run(fetch(db_dsn, "SELECT id FROM public.orders ORDER BY 1"))
    assert [r[0] for r in rows] == [2]


MODEL_WITH_A_SET = """
import pydantic


class Record(pydantic.BaseModel):
    id: int
    labels: set[str]


def read(day):
    return []
"""


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        pytest.param(
            "table.mode",
            "merge",
            "attributes.table.mode: 'merge' is not a write mode; write one of replace, upsert",
            id="unknown-mode",
        ),
        pytest.param(
            "table.primary_key",
            ["id"],
            "attributes.table.primary_key: ['id'] lacks the partition column 'data_date'; "
            "write primary_key: ['data_date', 'id']",
            id="key-without-partition-column",
        ),
        pytest.param(
            "record_model",
            ".models.Record",
            "attributes.record_model: '.models.Record' does not import (ModuleNotFoundError",
            id="model-does-not-import",
        ),
        pytest.param(
            "source",
            ".source.reed",
            "attributes.source: module {module}.source has no 'reed'; define reed in",
            id="source-does-not-import",
        ),
        pytest.param(
            "load_settings",
            {"lease_ttl_s": 0.5},
            "attributes.load_settings.lease_ttl_s: 0.5 is below 1; e.g. 120",
            id="lease-too-short",
        ),
        pytest.param(
            "partitions.type",
            "weekly",
            "attributes.partitions.type: 'weekly' partitions are not supported: a load writes "
            "one PostgreSQL partition per data date; write type: daily",
            id="unsupported-partitions",
        ),
    ],
)
def test_yaml_mistake_names_file_field_and_fix(
    sandbox: DefsFolderSandbox, field: str, value: Any, message: str
) -> None:
    """Each YAML mistake fails the load of the definitions with the file, the field and the fix."""
    defs_path = scaffold_orders(sandbox)
    edit_yaml(defs_path, field, value)
    module = f"{sandbox.project_name}.defs.orders"
    with pytest.raises(Exception) as raised, sandbox.build_all_defs():  # noqa: PT011
        pass
    error = raised.value.__cause__
    assert isinstance(error, ConfigurationError)
    assert str(error).startswith(f"{defs_path / 'defs.yaml'}: ")
    assert message.format(module=module) in str(error)


def test_model_field_the_table_cannot_hold_is_named(sandbox: DefsFolderSandbox) -> None:
    """A field no Postgres column type holds is named with its type and the types that work."""
    defs_path = scaffold_orders(sandbox)
    (defs_path / "source.py").write_text(MODEL_WITH_A_SET)
    with pytest.raises(Exception) as raised, sandbox.build_all_defs():  # noqa: PT011
        pass
    error = raised.value.__cause__
    assert isinstance(error, ConfigurationError)
    assert str(error) == (
        f"{defs_path / 'defs.yaml'}: attributes.record_model: Record has fields the table "
        "cannot hold (labels: set[str]); declare each as int, float, Decimal, str, bool, "
        "bytes, date, datetime, time, timedelta, UUID, an Enum or a Literal (README, "
        "'Lossless or refused')"
    )
