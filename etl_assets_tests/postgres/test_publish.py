"""Publish: a partition becomes visible whole, audited, or not at all (real PostgreSQL)."""

from __future__ import annotations

import asyncio

import pytest

from etl_assets.errors import LoadIntegrityError
from etl_assets.postgres.ledger import Ledger
from etl_assets.postgres.publish import StagedPublisher
from etl_assets.postgres.sql import qualified, quote_ident
from etl_assets_tests.postgres.helpers import (
    DAY,
    events_target,
    execute,
    expected,
    failing_after,
    fetch,
    ledger_sums,
    load,
    records,
    table_rows,
)


def test_failed_replace_run_leaves_published_partition_untouched(pg_dsn: str, schema: str) -> None:
    """A run dying after half its batches publishes nothing; readers only ever see whole days."""
    target = events_target(schema)

    async def reader(stop: asyncio.Event, seen: set[int]) -> None:
        while not stop.is_set():
            rows = await fetch(
                pg_dsn, f'SELECT count(*) FROM {target.sql_name} WHERE "data date" = $1', DAY
            )
            seen.add(rows[0][0])
            await asyncio.sleep(0.005)

    async def scenario() -> None:
        await load(pg_dsn, target, records(10_000, tag="good"))
        stop, seen = asyncio.Event(), set[int]()
        watcher = asyncio.create_task(reader(stop, seen))
        with pytest.raises(OSError, match="vanished"):
            await load(pg_dsn, target, failing_after(5_000, "bad"), load_id="run-2")
        assert await table_rows(pg_dsn, target) == expected(10_000, tag="good")
        await load(pg_dsn, target, records(12_000, tag="new"), load_id="run-3")
        stop.set()
        await watcher
        assert seen <= {10_000, 12_000}, f"a reader saw a partial partition: {sorted(seen)}"
        assert await table_rows(pg_dsn, target) == expected(12_000, tag="new")
        status = await fetch(
            pg_dsn,
            f"SELECT load_id, status FROM {qualified(schema, 'partition_loads')} ORDER BY load_id",
        )
        assert [tuple(r) for r in status] == [
            ("run-1", "published"),
            ("run-2", "abandoned"),  # run-3 found it dead and dropped its staging table
            ("run-3", "published"),
        ]
        staging = await fetch(
            pg_dsn,
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = $1 AND c.relkind = 'r' AND c.relname LIKE '\\_etl\\_stage%'",
            schema,
        )
        assert staging[0][0] == 0

    asyncio.run(scenario())


def test_a_plain_table_publish_is_audited_before_it_is_visible(pg_dsn: str, schema: str) -> None:
    """A trigger that drops rows during DELETE + INSERT fails the publish; the old day stays."""
    target = events_target(schema)
    plain = target.create_table_sql().split(" PARTITION BY", 1)[0]

    async def scenario() -> None:
        await execute(pg_dsn, f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}; {plain}")
        await load(pg_dsn, target, records(100), load_id="good")
        await execute(
            pg_dsn,
            f"""CREATE FUNCTION {quote_ident(schema)}.lose_ten() RETURNS trigger
                LANGUAGE plpgsql AS $$ BEGIN
                  DELETE FROM {target.sql_name} WHERE event_id < 10; RETURN NULL; END $$;
                CREATE TRIGGER lose_ten AFTER INSERT ON {target.sql_name}
                  FOR EACH STATEMENT EXECUTE FUNCTION {quote_ident(schema)}.lose_ten();""",
        )
        with pytest.raises(LoadIntegrityError, match="the table holds 90 for the day"):
            await load(pg_dsn, target, records(100, tag="new"), load_id="bad")
        assert await table_rows(pg_dsn, target) == expected(100)

    asyncio.run(scenario())


def test_a_row_a_staging_trigger_suppresses_stops_the_publish(pg_dsn: str, schema: str) -> None:
    """A BEFORE ROW trigger on staging that drops a row fails the load; nothing is published.

    The batch ledgers what COPY's command tag says the server stored, so the row is
    missed inside the batch's transaction (rolled back), not after it is published.
    """
    target = events_target(schema)
    staging = StagedPublisher(target, Ledger(schema), DAY, "bad").staging_table
    staging_sql = qualified(schema, staging)

    async def scenario() -> None:
        await load(pg_dsn, target, records(100, tag="good"), load_id="good")
        await execute(
            pg_dsn,
            f"""CREATE TABLE {staging_sql} (LIKE {target.sql_name} INCLUDING ALL);
                CREATE FUNCTION {quote_ident(schema)}.drop_seven() RETURNS trigger
                LANGUAGE plpgsql AS $$ BEGIN
                  IF NEW.event_id = 7 THEN RETURN NULL; END IF; RETURN NEW; END $$;
                CREATE TRIGGER drop_seven BEFORE INSERT ON {staging_sql}
                  FOR EACH ROW EXECUTE FUNCTION {quote_ident(schema)}.drop_seven();""",
        )
        with pytest.raises(LoadIntegrityError, match="the server stored 99 rows"):
            await load(pg_dsn, target, records(100, tag="new"), load_id="bad")
        assert await table_rows(pg_dsn, target) == expected(100, tag="good")
        assert await ledger_sums(pg_dsn, schema, "bad") == (0, 0, 0, 0)
        staged = await fetch(pg_dsn, f"SELECT count(*) FROM {staging_sql}")
        assert staged[0][0] == 0
        status = await fetch(
            pg_dsn,
            f"SELECT load_id, status FROM {qualified(schema, 'partition_loads')} ORDER BY load_id",
        )
        assert [tuple(r) for r in status] == [("bad", "failed"), ("good", "published")]

    asyncio.run(scenario())


def test_the_published_partition_keeps_no_default_on_its_date_column(
    pg_dsn: str, schema: str
) -> None:
    """Staging fills the date by a DEFAULT; the partition it becomes has none, rows exact."""
    target = events_target(schema)

    async def scenario() -> None:
        await load(pg_dsn, target, records(2_500), batch_size=1_000)
        assert await table_rows(pg_dsn, target) == expected(2_500)
        defaults = await fetch(
            pg_dsn,
            """SELECT c.relname, pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d
               JOIN pg_class c ON c.oid = d.adrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = $1 AND c.relispartition""",
            schema,
        )
        assert [tuple(r) for r in defaults] == []

    asyncio.run(scenario())
