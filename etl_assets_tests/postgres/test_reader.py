"""Reading partitions back: Arrow tables with the table's types, and streams in flat memory."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import re

import pyarrow as pa
import pytest

from etl_assets.errors import ConfigurationError, RetryableError
from etl_assets.postgres.reader import PartitionStream, read_arrow, select_partitions
from etl_assets.postgres.resource import PostgresResource
from etl_assets.postgres.target import Column, TableTarget
from etl_assets_tests.faults.harness import our_connections
from etl_assets_tests.postgres.helpers import DAY, events_target, execute, load, records


def typed_target(schema: str) -> TableTarget:
    return TableTarget(
        schema=schema,
        table="typed",
        columns=(
            Column("id", "bigint", nullable=False),
            Column("note", "text"),
            Column("ok", "boolean"),
            Column("at", "timestamptz"),
            Column("price", "numeric(10,2)"),
        ),
    )


def test_select_partitions_quotes_names_and_binds_the_days() -> None:
    """The days are a bound parameter; the names are quoted."""
    sql, args = select_partitions(events_target("s"), [DAY])
    assert sql == (
        'SELECT "event_id", "user name", "amount", "data date" FROM "s"."ev ""log"" x" '
        'WHERE "data date" = ANY($1::date[]) ORDER BY "data date"'
    )
    assert args == [[DAY]]


def test_an_arrow_read_keeps_types_nulls_and_empty_strings_apart(pg_dsn: str, schema: str) -> None:
    """NULL stays null and '' stays '', with the table's own column types."""
    target = typed_target(schema)
    at = dt.datetime(2024, 3, 1, 12, 30, tzinfo=dt.UTC)

    async def scenario() -> pa.Table:
        await execute(pg_dsn, f"CREATE SCHEMA IF NOT EXISTS {target.sql_name.split('.')[0]}")
        await load(
            pg_dsn,
            target,
            [
                {"id": 1, "note": "", "ok": True, "at": at, "price": decimal.Decimal("1.50")},
                {"id": 2, "note": None, "ok": None, "at": None, "price": None},
                {"id": 3, "note": 'a,"b"\nc', "ok": False, "at": at, "price": decimal.Decimal("2")},
            ],
        )
        async with PostgresResource(dsn=pg_dsn).pool() as pool:
            return await read_arrow(pool, target, [DAY], "typed")

    whole = asyncio.run(scenario())
    streamed = pa.Table.from_batches(list(PartitionStream(pg_dsn, target, [DAY], "typed")))
    for table in (whole.sort_by("id"), streamed.sort_by("id")):  # the stream reads alike
        assert [str(t) for t in table.schema.types] == [
            "int64", "string", "bool", "timestamp[us, tz=UTC]", "string", "date32[day]",
        ]  # fmt: skip
        assert table.to_pylist() == [
            {"id": 1, "note": "", "ok": True, "at": at, "price": "1.50", "data_date": DAY},
            {"id": 2, "note": None, "ok": None, "at": None, "price": None, "data_date": DAY},
            {"id": 3, "note": 'a,"b"\nc', "ok": False, "at": at, "price": "2.00", "data_date": DAY},
        ]


def test_a_stream_yields_bounded_batches_and_closes_its_connection(
    pg_dsn: str, schema: str
) -> None:
    """2,500 rows in batches of 1,000; leaving the loop early closes the connection too."""
    target = events_target(schema)
    asyncio.run(load(pg_dsn, target, records(2_500)))
    stream = PartitionStream(pg_dsn, target, [DAY], "events", batch_size=1_000)

    assert [b.num_rows for b in stream] == [1_000, 1_000, 500]
    assert sum(sum(b.column("event_id").to_pylist()) for b in stream) == sum(range(2_500))
    for _ in stream:
        break
    assert asyncio.run(our_connections(pg_dsn)) == 0


def test_a_stream_over_many_chunks_is_exact_and_a_killed_server_connection_says_so(
    pg_dsn: str, schema: str
) -> None:
    """300,000 rows re-cut from pyarrow's blocks into exact batches, every row once; a
    backend terminated mid-stream fails the iteration with the server's reason."""
    target = events_target(schema)
    asyncio.run(load(pg_dsn, target, records(300_000)))
    stream = PartitionStream(pg_dsn, target, [DAY], "events", batch_size=70_000)

    sizes, ids = [], []
    for batch in stream:
        sizes.append(batch.num_rows)
        ids.extend(batch.column("event_id").to_pylist())
    assert sizes == [70_000] * 4 + [20_000]
    assert sorted(ids) == list(range(300_000))

    kill = (
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = 'etl_assets' AND query LIKE 'COPY%'"
    )

    def read_killing_the_server_connection() -> None:
        for n, _ in enumerate(PartitionStream(pg_dsn, target, [DAY], "events", batch_size=1_000)):
            if n == 0:
                asyncio.run(execute(pg_dsn, kill))

    with pytest.raises(RetryableError) as broken:
        read_killing_the_server_connection()
    assert re.fullmatch(
        r"the stream of .*ev \"log\" x \(asset events\) broke after [\d,]+ row\(s\): "
        r"ConnectionDoesNotExistError \[08003\]: .*terminating connection due to "
        r"administrator command\. "
        r"A stream cannot resume: run the step again \(a Dagster retry policy on the asset "
        r"does it for you\)",
        str(broken.value),
    ), str(broken.value)
    assert asyncio.run(our_connections(pg_dsn)) == 0


def test_a_stream_of_a_table_not_yet_loaded_names_the_asset(pg_dsn: str, schema: str) -> None:
    """Reading before the first materialization says which asset to materialize."""
    stream = PartitionStream(pg_dsn, events_target(schema), [DAY], "events")
    with pytest.raises(ConfigurationError, match="materialize asset events first"):
        list(stream)
    assert asyncio.run(our_connections(pg_dsn)) == 0


def test_a_stream_can_be_read_from_inside_a_running_event_loop(pg_dsn: str, schema: str) -> None:
    """An async def asset iterating its stream: the stream's loop runs on its own thread."""
    target = events_target(schema)
    asyncio.run(load(pg_dsn, target, records(1_500)))

    async def consume() -> list[int]:
        return [b.num_rows for b in PartitionStream(pg_dsn, target, [DAY], "e", batch_size=1_000)]

    assert asyncio.run(consume()) == [1_000, 500]
    assert asyncio.run(our_connections(pg_dsn)) == 0
