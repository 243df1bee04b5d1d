"""Schema drift is named at prepare, before a batch; ``add_columns`` evolves a table."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from typing import Any

import asyncpg
import pydantic
import pytest

from etl_assets.errors import ConfigurationError
from etl_assets.postgres.key_audit import verify_keys
from etl_assets.postgres.ledger import Ledger
from etl_assets.postgres.loader import LoadSettings
from etl_assets.postgres.replay import replay_dead_letters
from etl_assets.postgres.resource import PostgresResource
from etl_assets.postgres.schema_drift import TableColumn, drift_problems, type_kind
from etl_assets.postgres.sql import qualified
from etl_assets.postgres.target import SchemaChange, TableTarget, columns_from_model
from etl_assets.postgres.verify import duplicate_keys
from etl_assets_tests.postgres.helpers import DAY, execute, fetch, load, partition_audit

NEXT_DAY = DAY + dt.timedelta(days=1)


class Sale(pydantic.BaseModel):
    sale_id: int
    item: str
    qty: int


class SaleWithoutQty(pydantic.BaseModel):
    sale_id: int
    item: str


class SaleWithNote(pydantic.BaseModel):
    sale_id: int
    item: str
    qty: int
    note: str
    shipped: dt.date | None = None


class SaleWithTextQty(pydantic.BaseModel):
    sale_id: int
    item: str
    qty: str


def sales(schema: str, model: type[pydantic.BaseModel], **kw: Any) -> TableTarget:
    return TableTarget(
        schema=schema,
        table="sales",
        columns=columns_from_model(model),
        primary_key=("data_date", "sale_id"),
        **kw,
    )


class Counted:
    """Records of a model, counting how many were read (a refusal at prepare cuts no batch)."""

    def __init__(self, n: int, **fields: Any) -> None:
        self.n, self.fields, self.read = n, fields, 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(self.n):
            self.read += 1
            yield {"sale_id": i, "item": f"i{i}", **self.fields}


async def ledger_state(dsn: str, schema: str) -> tuple[list[tuple[Any, ...]], int, int]:
    """(loads as (load_id, status), batches, dead letters) of the test's ledger."""
    loads = await fetch(
        dsn,
        f"SELECT load_id, status FROM {qualified(schema, 'partition_loads')} ORDER BY started_at",
    )
    [batches] = await fetch(dsn, f"SELECT count(*) FROM {qualified(schema, 'load_ledger')}")
    [letters] = await fetch(dsn, f"SELECT count(*) FROM {qualified(schema, 'dead_letters')}")
    return [tuple(r) for r in loads], batches[0], letters[0]


@pytest.mark.parametrize("size", [100, 100_000])
def test_a_removed_field_whose_column_is_not_null_is_refused_before_a_batch(
    pg_dsn: str, schema: str, size: int
) -> None:
    """The NOT NULL column left unfilled is named with its ALTER; no record is read."""

    async def scenario() -> None:
        await load(pg_dsn, sales(schema, Sale), Counted(10, qty=1), model=Sale)
        rows = Counted(size)
        with pytest.raises(ConfigurationError) as refused:
            await load(
                pg_dsn, sales(schema, SaleWithoutQty), rows, load_id="run-2", model=SaleWithoutQty
            )
        assert str(refused.value) == (
            f"target {schema}.sales does not match the model; nothing was written: column "
            f"'qty' (bigint) is NOT NULL without a default and no field of the model fills it: "
            f"add the field to the model, or ALTER TABLE {qualified(schema, 'sales')} ALTER "
            f'COLUMN "qty" DROP NOT NULL (or SET DEFAULT ...)'
        )
        assert rows.read <= 1  # the output's shape is peeked at; no batch is cut
        assert await ledger_state(pg_dsn, schema) == ([("run-1", "published")], 1, 0)
        audit = await partition_audit(pg_dsn, sales(schema, Sale), ledger_schema=schema)
        assert (audit.problems, audit.in_table) == ((), 10)

    asyncio.run(scenario())


def test_a_not_null_column_a_dba_added_is_refused_naming_it(pg_dsn: str, schema: str) -> None:
    """A NOT NULL column without default added behind the model's back is named."""

    async def scenario() -> None:
        target = sales(schema, Sale)
        await load(pg_dsn, target, Counted(10, qty=1), model=Sale)
        await execute(
            pg_dsn,
            f"ALTER TABLE {target.sql_name} ADD COLUMN region text NOT NULL DEFAULT 'eu'; "
            f"ALTER TABLE {target.sql_name} ALTER COLUMN region DROP DEFAULT",
        )
        rows = Counted(100, qty=1)
        with pytest.raises(ConfigurationError, match="column 'region' \\(text\\) is NOT NULL"):
            await load(pg_dsn, target, rows, load_id="run-2", model=Sale)
        assert rows.read <= 1  # the output's shape is peeked at; no batch is cut
        assert await ledger_state(pg_dsn, schema) == ([("run-1", "published")], 1, 0)
        await execute(pg_dsn, f"ALTER TABLE {target.sql_name} ALTER COLUMN region SET DEFAULT 'eu'")
        report = await load(pg_dsn, target, rows, load_id="run-3", model=Sale)
        assert (report.written, report.dead_lettered) == (100, 0)  # the fix it named works

    asyncio.run(scenario())


def test_a_text_field_into_an_integer_column_is_refused_naming_both_types(
    pg_dsn: str, schema: str
) -> None:
    """A field of another kind than its column (text into bigint) is refused at prepare."""

    async def scenario() -> None:
        await load(pg_dsn, sales(schema, Sale), Counted(10, qty=1), model=Sale)
        rows = Counted(100, qty="7")
        with pytest.raises(ConfigurationError) as refused:
            await load(
                pg_dsn, sales(schema, SaleWithTextQty), rows, load_id="run-2",
                model=SaleWithTextQty,
            )  # fmt: skip
        assert str(refused.value).endswith(
            "column 'qty' is bigint (number), the model fills it with text (text): change the "
            f'field\'s type, or ALTER TABLE {qualified(schema, "sales")} ALTER COLUMN "qty" '
            'TYPE text USING "qty"::text'
        )
        assert rows.read <= 1  # the output's shape is peeked at; no batch is cut

    asyncio.run(scenario())


def test_a_new_field_is_refused_with_the_alter_to_run(pg_dsn: str, schema: str) -> None:
    """By default a field the table has no column for is refused, naming the ALTER."""

    async def scenario() -> None:
        await load(pg_dsn, sales(schema, Sale), Counted(10, qty=1), model=Sale)
        with pytest.raises(ConfigurationError) as refused:
            await load(
                pg_dsn, sales(schema, SaleWithNote), Counted(10, qty=1, note="n"),
                load_id="run-2", model=SaleWithNote,
            )  # fmt: skip
        table = qualified(schema, "sales")
        assert str(refused.value) == (
            f"target {schema}.sales does not match the model; nothing was written: "
            f"the model has a field 'note' the table has no column for: ALTER TABLE {table} "
            'ADD COLUMN "note" text (or drop the field from the model, or let loads add it: '
            "on_schema_change='add_columns'); the model has a field 'shipped' the table has no "
            f'column for: ALTER TABLE {table} ADD COLUMN "shipped" date (or drop the field '
            "from the model, or let loads add it: on_schema_change='add_columns')"
        )

    asyncio.run(scenario())


def test_add_columns_evolves_the_table_and_old_partitions_stay_accounted(
    pg_dsn: str, schema: str
) -> None:
    """New fields become nullable columns at prepare; the old day reads NULL and its
    three checks' database truths (accounting, keys, duplicates) still pass."""

    async def scenario() -> None:
        await load(pg_dsn, sales(schema, Sale), Counted(10, qty=1), model=Sale)
        evolving = sales(schema, SaleWithNote, on_schema_change="add_columns")
        assert evolving.on_schema_change is SchemaChange.ADD_COLUMNS
        report = await load(
            pg_dsn, evolving, Counted(20, qty=2, note="n", shipped=NEXT_DAY),
            load_id="run-2", day=NEXT_DAY, model=SaleWithNote,
        )  # fmt: skip
        assert (report.written, report.columns_added) == (20, ("note", "shipped"))
        again = await load(
            pg_dsn, evolving, Counted(5, qty=3, note="m"), load_id="run-3", day=NEXT_DAY,
            model=SaleWithNote,
        )  # fmt: skip
        assert (again.written, again.columns_added) == (5, ())
        rows = await fetch(
            pg_dsn,
            f"SELECT data_date, count(*), count(note), count(shipped), bool_and(note IS NULL) "
            f"FROM {evolving.sql_name} GROUP BY 1 ORDER BY 1",
        )
        assert [tuple(r) for r in rows] == [(DAY, 10, 0, 0, True), (NEXT_DAY, 5, 5, 0, False)]
        types = await fetch(
            pg_dsn,
            "SELECT attname, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute "
            "WHERE attrelid = $1::regclass AND attname IN ('note', 'shipped') ORDER BY attnum",
            evolving.sql_name,
        )
        assert [tuple(r) for r in types] == [("note", "text", False), ("shipped", "date", False)]
        for day, written in ((DAY, 10), (NEXT_DAY, 5)):
            assert await truths(pg_dsn, evolving, day, schema) == ((), written, 0, ())

    asyncio.run(scenario())


async def truths(
    dsn: str, target: TableTarget, day: dt.date, ledger_schema: str
) -> tuple[tuple[str, ...], int, int, tuple[str, ...]]:
    """What the three checks read: the audit's problems and rows, duplicates, key problems."""
    audit = await partition_audit(dsn, target, day, ledger_schema)
    conn = await asyncpg.connect(dsn)
    try:
        repeated = await duplicate_keys(conn, target, day)
        keys = await verify_keys(conn, Ledger(ledger_schema), target, day)
    finally:
        await conn.close()
    return audit.problems, audit.in_table, repeated, tuple(keys.problems)


def test_an_unknown_on_schema_change_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="'evolve' is not one of refuse, add_columns"):
        sales("s", Sale, on_schema_change="evolve")


@pytest.mark.parametrize(
    ("pg_type", "kind"),
    [
        ("bigint", "number"),
        ("numeric(12,2)", "number"),
        ("character varying(20)", "text"),
        ('"char"', "text"),
        ("timestamp(3) with time zone", "date and time"),
        ("time without time zone", "time of day"),
        ("integer[]", "number array"),
        ("jsonb", "JSON"),
        ("mood", None),
    ],
)
def test_type_kinds(pg_type: str, kind: str | None) -> None:
    """Modifiers and spellings fold into one kind; an unknown type has none."""
    assert type_kind(pg_type) == kind


def test_types_of_one_kind_or_of_an_unknown_kind_are_not_drift() -> None:
    """Same-kind pairs (lossy or not) are the value conversion's business, not drift."""
    target = sales("s", Sale)
    columns = {
        "sale_id": TableColumn("sale_id", "integer", True, False, False),
        "item": TableColumn("item", "mood", False, False, False),
        "qty": TableColumn("qty", "double precision", False, False, False),
        "data_date": TableColumn("data_date", "date", True, False, False),
        "id": TableColumn("id", "bigint", True, True, False),  # identity: the server fills it
        "extra": TableColumn("extra", "text", False, False, False),
    }
    assert drift_problems(target, columns) == []


def test_a_generated_column_the_model_fills_is_drift() -> None:
    columns = {
        "sale_id": TableColumn("sale_id", "bigint", True, False, False),
        "item": TableColumn("item", "text", True, False, False),
        "qty": TableColumn("qty", "bigint", False, True, True),
        "data_date": TableColumn("data_date", "date", True, False, False),
    }
    [problem] = drift_problems(sales("s", Sale), columns)
    assert problem.startswith("column 'qty' is generated by the table, the model fills it")


def test_a_replay_into_a_drifted_table_is_refused_and_its_letters_stay_open(
    pg_dsn: str, schema: str
) -> None:
    """Drift is named before a replay re-drives a letter, not as each letter failing again."""
    target = sales(schema, Sale)

    def source() -> Iterator[dict[str, Any]]:
        for i in range(10):
            yield {"sale_id": i, "item": f"i{i}", "qty": "x" if i < 2 else i}

    async def scenario() -> None:
        await load(pg_dsn, target, source(), model=Sale, max_dead_letter_ratio=0.5)
        await execute(
            pg_dsn,
            f"ALTER TABLE {target.sql_name} ADD COLUMN region text NOT NULL DEFAULT 'eu'; "
            f"ALTER TABLE {target.sql_name} ALTER COLUMN region DROP DEFAULT",
        )
        async with PostgresResource(dsn=pg_dsn).pool() as pool:
            with pytest.raises(ConfigurationError, match="column 'region' \\(text\\) is NOT NULL"):
                await replay_dead_letters(
                    pool, target, DAY, load_id="replay-1", model=Sale,
                    settings=LoadSettings(ledger_schema=schema),
                )  # fmt: skip
        letters = await fetch(
            pg_dsn,
            f"SELECT status, replay_attempts FROM {qualified(schema, 'dead_letters')} ORDER BY id",
        )
        assert [tuple(r) for r in letters] == [("open", 0), ("open", 0)]
        assert await ledger_state(pg_dsn, schema) == ([("run-1", "published")], 1, 2)

    asyncio.run(scenario())
