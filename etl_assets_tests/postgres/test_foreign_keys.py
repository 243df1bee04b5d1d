"""Dependent records: orphans dead-lettered per record, the rest published; a referenced
parent reloaded; a replay after the parent arrives writes the orphans once."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pydantic
import pytest

from etl_assets.errors import ConfigurationError, PublishRefusedError
from etl_assets.postgres.loader import LoadSettings, load_partition
from etl_assets.postgres.replay import replay_dead_letters
from etl_assets.postgres.resource import PostgresResource
from etl_assets.postgres.sql import qualified, quote_ident
from etl_assets.postgres.target import TableTarget, WriteMode, columns_from_model
from etl_assets_tests.postgres.helpers import DAY, execute, fetch, partition_audit


class Parent(pydantic.BaseModel):
    parent_id: int
    name: str


class Child(pydantic.BaseModel):
    child_id: int
    parent_id: int


def parent_target(schema: str, *, key: bool = True) -> TableTarget:
    return TableTarget(
        schema=schema,
        table="parent",
        columns=columns_from_model(Parent),
        primary_key=("data_date", "parent_id") if key else (),
    )


def child_target(schema: str) -> TableTarget:
    return TableTarget(
        schema=schema,
        table="child",
        columns=columns_from_model(Child),
        primary_key=("data_date", "child_id"),
    )


async def load(
    dsn: str, target: TableTarget, rows: Any, load_id: str, model: Any, day: dt.date = DAY
) -> Any:
    async with PostgresResource(dsn=dsn).pool() as pool:
        return await load_partition(
            pool, target, day, rows, load_id=load_id, model=model,
            settings=LoadSettings(ledger_schema=target.schema, batch_size=100),
        )  # fmt: skip


def parents(ids: range | list[int], tag: str = "p") -> list[dict[str, Any]]:
    return [{"parent_id": i, "name": f"{tag}{i}"} for i in ids]


ORPHANS = [1000 + 7 * k for k in range(9)]  # parents that have not arrived yet


def children() -> list[dict[str, Any]]:
    """300 children; every 33rd (9 of them) points at a parent that is not loaded."""
    return [
        {"child_id": i, "parent_id": ORPHANS[i // 33] if i % 33 == 32 else i % 100}
        for i in range(300)
    ]


async def child_table(dsn: str, schema: str, deferred: bool = False) -> None:
    """The child table as a DBA makes it: a FOREIGN KEY on (day, parent) to the parent."""
    when = " DEFERRABLE INITIALLY DEFERRED" if deferred else ""
    await execute(
        dsn,
        f"CREATE TABLE {qualified(schema, 'child')} (child_id bigint NOT NULL, "
        f"parent_id bigint NOT NULL, data_date date NOT NULL, "
        f"PRIMARY KEY (data_date, child_id), CONSTRAINT child_parent_fk FOREIGN KEY "
        f"(data_date, parent_id) REFERENCES {qualified(schema, 'parent')} (data_date, parent_id)"
        f"{when}) PARTITION BY RANGE (data_date)",
    )


@pytest.mark.parametrize("deferred", [False, True], ids=["immediate", "deferred"])
def test_orphans_are_dead_lettered_the_rest_published_and_replayed_once_the_parent_arrives(
    pg_dsn: str, schema: str, deferred: bool
) -> None:
    """9 orphans among 300 children: 291 published, 9 letters naming the constraint and the
    missing key (a deferred key too); the parents arrive (a reload of the referenced
    parent); the replay writes the 9 once, and the checks agree."""

    async def scenario() -> None:
        parent, child = parent_target(schema), child_target(schema)
        await load(pg_dsn, parent, parents(range(100)), "parents-1", Parent)
        await child_table(pg_dsn, schema, deferred)
        report = await load(pg_dsn, child, children(), "children-1", Child)
        assert (report.enqueued, report.written, report.dead_lettered) == (300, 291, 9)
        letters = await fetch(
            pg_dsn,
            f"SELECT record_no, sqlstate, error_message, error_detail "
            f"FROM {qualified(schema, 'dead_letters')} ORDER BY record_no",
        )
        assert [r["record_no"] for r in letters] == [33 * k + 32 for k in range(9)]
        assert {r["sqlstate"] for r in letters} == {"23503"}
        missing = [
            f'Key (data_date, parent_id)=({DAY.isoformat()}, {p}) is not present in table "parent".'
            for p in ORPHANS
        ]
        assert [r["error_message"] for r in letters] == [
            'ForeignKeyViolationError [23503]: insert or update on table "child" violates '
            f'foreign key constraint "child_parent_fk"\nDETAIL:  {why}'
            for why in missing
        ]
        assert [r["error_detail"] for r in letters] == missing
        child_sql = qualified(schema, "child")
        assert (await fetch(pg_dsn, f"SELECT count(*) FROM {child_sql}"))[0][0] == 291
        keys = await fetch(
            pg_dsn,
            "SELECT conname, condeferrable FROM pg_constraint c JOIN pg_inherits i "
            "ON i.inhrelid = c.conrelid WHERE i.inhparent = $1::regclass AND contype = 'f'",
            child_sql,
        )
        assert [tuple(k) for k in keys] == [("child_parent_fk", deferred)]  # the parent's own
        assert (await partition_audit(pg_dsn, child, ledger_schema=schema)).ok

        # The parent day reloaded with its late parents, while children reference it.
        again = await load(
            pg_dsn, parent, parents([*range(100), *ORPHANS], "q"), "parents-2", Parent
        )
        assert (again.written, again.dead_lettered) == (109, 0)
        names = await fetch(pg_dsn, f"SELECT DISTINCT left(name, 1) FROM {parent.sql_name}")
        assert [r[0] for r in names] == ["q"]
        assert (await partition_audit(pg_dsn, parent, ledger_schema=schema)).ok

        async with PostgresResource(dsn=pg_dsn).pool() as pool:
            replay = await replay_dead_letters(
                pool, child, DAY, load_id="replay-1", model=Child,
                settings=LoadSettings(ledger_schema=schema),
            )  # fmt: skip
        assert (replay.replayed, replay.written, replay.dead_lettered) == (9, 9, 0)
        rows = await fetch(pg_dsn, f"SELECT child_id, parent_id FROM {child_sql} ORDER BY 1")
        assert [tuple(r) for r in rows] == [(c["child_id"], c["parent_id"]) for c in children()]
        assert (await partition_audit(pg_dsn, child, ledger_schema=schema)).ok

    asyncio.run(scenario())


def test_a_reload_that_drops_a_referenced_parent_is_refused_and_the_day_kept(
    pg_dsn: str, schema: str
) -> None:
    """A parent day reloaded without a key its children hold: refused at publish naming the
    constraint, the published day untouched."""

    async def scenario() -> None:
        parent, child = parent_target(schema), child_target(schema)
        await load(pg_dsn, parent, parents(range(100)), "parents-1", Parent)
        await child_table(pg_dsn, schema)
        rows = [{"child_id": 1, "parent_id": 5}]
        await load(pg_dsn, child, rows, "children-1", Child)
        with pytest.raises(PublishRefusedError, match="child_parent_fk"):
            await load(pg_dsn, parent, parents(range(5)), "parents-2", Parent)
        count = await fetch(pg_dsn, f"SELECT count(*) FROM {parent.sql_name}")
        assert count[0][0] == 100

    asyncio.run(scenario())


def test_a_referenced_replace_target_without_a_key_is_refused_at_prepare(
    pg_dsn: str, schema: str
) -> None:
    """Children reference it and it has no primary key: refused before a row moves."""

    async def scenario() -> None:
        parent = parent_target(schema, key=False)
        table = qualified(schema, "parent")
        await execute(
            pg_dsn,
            f"CREATE SCHEMA {quote_ident(schema)};"
            f"CREATE TABLE {table} (parent_id bigint UNIQUE, name text, data_date date NOT NULL);"
            f"CREATE TABLE {qualified(schema, 'kid')} (parent_id bigint REFERENCES {table} "
            "(parent_id))",
        )
        with pytest.raises(ConfigurationError, match=r"referenced by foreign key.*primary_key"):
            await load(pg_dsn, parent, parents(range(3)), "parents-1", Parent)

    asyncio.run(scenario())


class Employee(pydantic.BaseModel):
    emp_id: int
    manager_id: int | None


def test_a_key_referencing_its_own_table_is_checked_at_publish_not_per_row(
    pg_dsn: str, schema: str
) -> None:
    """Managers loaded in the same day as their reports: nothing is an orphan, all written."""

    async def scenario() -> None:
        table = qualified(schema, "emp")
        await execute(
            pg_dsn,
            f"CREATE SCHEMA {quote_ident(schema)}; CREATE TABLE {table} (emp_id bigint NOT NULL, "
            "manager_id bigint, data_date date NOT NULL, PRIMARY KEY (data_date, emp_id), "
            "FOREIGN KEY (data_date, manager_id) REFERENCES "
            f"{table} (data_date, emp_id)) PARTITION BY RANGE (data_date)",
        )
        target = TableTarget(
            schema=schema, table="emp", columns=columns_from_model(Employee),
            primary_key=("data_date", "emp_id"),
        )  # fmt: skip
        rows = [{"emp_id": i, "manager_id": i + 1 if i < 49 else None} for i in range(50)]
        report = await load(pg_dsn, target, rows, "emp-1", Employee)
        assert (report.written, report.dead_lettered) == (50, 0)
        assert (await fetch(pg_dsn, f"SELECT count(*) FROM {table}"))[0][0] == 50

    asyncio.run(scenario())


def test_the_next_day_of_a_referenced_parent_is_swapped_in_and_its_children_load(
    pg_dsn: str, schema: str
) -> None:
    """Children reference day 1; day 2 of the parent (no partition yet) publishes, then
    day 2 of the children, each whole."""

    async def scenario() -> None:
        parent, child = parent_target(schema), child_target(schema)
        await load(pg_dsn, parent, parents(range(100)), "parents-1", Parent)
        await child_table(pg_dsn, schema)
        await load(pg_dsn, child, [{"child_id": 1, "parent_id": 5}], "children-1", Child)
        next_day = DAY + dt.timedelta(days=1)
        report = await load(pg_dsn, parent, parents(range(10)), "parents-2", Parent, next_day)
        assert (report.written, report.dead_lettered) == (10, 0)
        rows = [{"child_id": i, "parent_id": i} for i in range(10)]
        report = await load(pg_dsn, child, rows, "children-2", Child, next_day)
        assert (report.written, report.dead_lettered) == (10, 0)
        counts = await fetch(
            pg_dsn, f"SELECT data_date, count(*) FROM {child.sql_name} GROUP BY 1 ORDER BY 1"
        )
        assert [tuple(r) for r in counts] == [(DAY, 1), (next_day, 10)]

    asyncio.run(scenario())


def test_orphans_of_an_upsert_target_are_dead_lettered_and_the_rest_merged(
    pg_dsn: str, schema: str
) -> None:
    """An upsert child (a plain table) with a foreign key: the orphan is one dead letter."""

    async def scenario() -> None:
        parent = parent_target(schema)
        child = TableTarget(
            schema=schema, table="child", columns=columns_from_model(Child),
            primary_key=("data_date", "child_id"), mode=WriteMode.UPSERT,
        )  # fmt: skip
        await load(pg_dsn, parent, parents(range(10)), "parents-1", Parent)
        await execute(
            pg_dsn,
            f"CREATE TABLE {child.sql_name} (child_id bigint NOT NULL, parent_id bigint, "
            "data_date date NOT NULL, PRIMARY KEY (data_date, child_id), CONSTRAINT to_parent "
            f"FOREIGN KEY (data_date, parent_id) REFERENCES {parent.sql_name} "
            "(data_date, parent_id))",
        )
        rows = [{"child_id": i, "parent_id": 99 if i == 3 else i} for i in range(10)]
        report = await load(pg_dsn, child, rows, "children-1", Child)
        assert (report.written, report.dead_lettered) == (9, 1)
        letters = await fetch(
            pg_dsn, f"SELECT record_no, sqlstate FROM {qualified(schema, 'dead_letters')}"
        )
        assert [tuple(r) for r in letters] == [(3, "23503")]
        ids = await fetch(pg_dsn, f"SELECT child_id FROM {child.sql_name} ORDER BY 1")
        assert [r[0] for r in ids] == [0, 1, 2, 4, 5, 6, 7, 8, 9]

    asyncio.run(scenario())
