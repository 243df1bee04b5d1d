"""The load engine against a real PostgreSQL: counts, contents, idempotency, isolation."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import pydantic
import pytest

from etl_assets.errors import CircuitBreakerOpenError, FatalError
from etl_assets.postgres.sql import qualified
from etl_assets.postgres.target import Column, TableTarget, WriteMode
from etl_assets_tests.postgres.helpers import (
    DAY,
    dead_letters,
    events_target,
    expected,
    failing_after,
    fetch,
    ledger_sums,
    load,
    records,
    table_rows,
)


@pytest.mark.slow
def test_100k_records_land_exactly_once_with_their_contents(pg_dsn: str, schema: str) -> None:
    """Every one of 100k records is in the partition once, with its values; the ledger agrees."""
    target = events_target(schema)

    async def scenario() -> None:
        report = await load(pg_dsn, target, records(100_000), batch_size=7_000)
        assert (report.enqueued, report.written, report.dead_lettered) == (100_000, 100_000, 0)
        assert report.batches == 15
        assert report.published is True
        assert await table_rows(pg_dsn, target) == expected(100_000)
        assert await ledger_sums(pg_dsn, schema, "run-1") == (15, 100_000, 100_000, 0)

    asyncio.run(scenario())


@pytest.mark.parametrize("mode", [WriteMode.REPLACE, WriteMode.UPSERT])
def test_rerunning_a_partition_three_times_never_duplicates(
    pg_dsn: str, schema: str, mode: WriteMode
) -> None:
    """Three loads of the same partition leave one copy of each record and a ledger per load."""
    target = events_target(schema, mode)

    async def scenario() -> None:
        for run in range(3):
            report = await load(pg_dsn, target, records(5_000, tag=f"r{run}"), load_id=f"run-{run}")
            assert (report.written, report.dead_lettered) == (5_000, 0)
            assert await table_rows(pg_dsn, target) == expected(5_000, tag=f"r{run}")
            assert await ledger_sums(pg_dsn, schema, f"run-{run}") == (5, 5_000, 5_000, 0)
        other_day = await fetch(
            pg_dsn, f'SELECT count(*) FROM {target.sql_name} WHERE "data date" <> $1', DAY
        )
        assert other_day[0][0] == 0

    asyncio.run(scenario())


def test_partitions_are_independent(pg_dsn: str, schema: str) -> None:
    """Replacing one day leaves another day's partition exactly as it was."""
    target = events_target(schema)
    day2 = DAY + dt.timedelta(days=1)

    async def scenario() -> None:
        await load(pg_dsn, target, records(300, tag="a"), day=DAY)
        await load(pg_dsn, target, records(200, tag="b"), day=day2)
        await load(pg_dsn, target, records(100, tag="c"), day=DAY, load_id="run-2")
        assert await table_rows(pg_dsn, target, DAY) == expected(100, tag="c")
        assert await table_rows(pg_dsn, target, day2) == expected(200, tag="b")

    asyncio.run(scenario())


def test_resumed_load_writes_only_the_batches_after_the_failure(pg_dsn: str, schema: str) -> None:
    """Re-executing a failed load (same load id) skips committed batches; the result is exact."""
    target = events_target(schema)

    ledger_rows = (
        f"SELECT batch_no, committed_at FROM {qualified(schema, 'load_ledger')} ORDER BY 1"
    )

    async def scenario() -> None:
        with pytest.raises(OSError, match="vanished"):
            await load(
                pg_dsn,
                target,
                failing_after(4_000, "x"),
                load_id="root",
                writers=1,
                queue_depth=0,  # a queue of one: batch k+2 is cut only once batch k committed
            )
        before = {r["batch_no"]: r["committed_at"] for r in await fetch(pg_dsn, ledger_rows)}
        assert sorted(before) == [0, 1]  # b2 was in flight, b3 queued, when the source failed
        report = await load(pg_dsn, target, records(10_000, tag="x"), load_id="root", writers=1)
        assert (report.batches, report.batches_resumed) == (10, len(before))
        assert (report.enqueued, report.written) == (10_000, 10_000)
        assert await table_rows(pg_dsn, target) == expected(10_000, tag="x")
        after = {r["batch_no"]: r["committed_at"] for r in await fetch(pg_dsn, ledger_rows)}
        assert sorted(after) == list(range(10))
        assert {k: after[k] for k in before} == before  # resumed batches were not rewritten

    asyncio.run(scenario())


def test_resume_refuses_batches_that_changed(pg_dsn: str, schema: str) -> None:
    """A resumed load whose source changed fails loudly instead of mixing two versions."""
    target = events_target(schema)

    async def scenario() -> None:
        with pytest.raises(OSError, match="vanished"):
            await load(
                pg_dsn,
                target,
                failing_after(4_000, "old"),
                load_id="root",
                writers=1,
                queue_depth=0,
            )
        with pytest.raises(FatalError, match="committed with different records"):
            await load(pg_dsn, target, records(3_000, tag="new"), load_id="root", writers=1)

    asyncio.run(scenario())


def test_finished_load_id_cannot_be_loaded_again(pg_dsn: str, schema: str) -> None:
    """Reusing the load id of a published load is refused with the fix in the message."""
    target = events_target(schema)

    async def scenario() -> None:
        await load(pg_dsn, target, records(10))
        with pytest.raises(FatalError, match="already ended"):
            await load(pg_dsn, target, records(10))

    asyncio.run(scenario())


def _poisoned(n: int, nul_at: set[int], negative_at: set[int]) -> Iterator[dict[str, Any]]:
    for r in records(n):
        i = r["event_id"]
        if i in nul_at:
            r["user name"] = f"bad\x00{i}"
        if i in negative_at:
            r["amount"] = -1.0
        yield r


@pytest.mark.parametrize("mode", [WriteMode.REPLACE, WriteMode.UPSERT])
def test_poison_rows_are_isolated_and_dead_lettered(
    pg_dsn: str, schema: str, mode: WriteMode
) -> None:
    """Exactly the 7 poison rows of 50k are dead-lettered, with SQLSTATE; all others land."""
    target = events_target(schema, mode)
    nul_at, negative_at = {11, 20_001, 49_999, 30_000}, {0, 12_345, 40_000}
    poison = nul_at | negative_at

    async def scenario() -> None:
        conn_sql = target.create_table_sql()
        await fetch(pg_dsn, f"CREATE SCHEMA IF NOT EXISTS {qualified(schema, 'x').split('.')[0]}")
        await fetch(pg_dsn, conn_sql)
        await fetch(
            pg_dsn,
            f"ALTER TABLE {target.sql_name} ADD CONSTRAINT amount_not_negative CHECK (amount >= 0)",
        )
        report = await load(
            pg_dsn, target, _poisoned(50_000, nul_at, negative_at), batch_size=5_000
        )
        assert (report.enqueued, report.written, report.dead_lettered) == (50_000, 49_993, 7)
        letters = await dead_letters(pg_dsn, schema)
        assert [r["record_no"] for r in letters] == sorted(poison)
        by_no = {r["record_no"]: r for r in letters}
        for i in nul_at:
            assert by_no[i]["sqlstate"] == "22021"
            assert json.loads(by_no[i]["payload"])["user name"] == f"bad\u2400{i}"
        for i in negative_at:
            assert by_no[i]["sqlstate"] == "23514"
            assert by_no[i]["error_class"] == "CheckViolationError"
            assert json.loads(by_no[i]["payload"])["amount"] == -1.0
        # COPY leaves the day to the staging table's DEFAULT; a dead letter still holds it
        assert {json.loads(r["payload"])["data date"] for r in letters} == {DAY.isoformat()}
        good = [row for row in expected(50_000) if row[0] not in poison]
        assert await table_rows(pg_dsn, target) == good

    asyncio.run(scenario())


class Reading(pydantic.BaseModel):
    sensor: str
    value: float
    taken_at: dt.datetime


def test_invalid_records_are_dead_lettered_with_field_errors(pg_dsn: str, schema: str) -> None:
    """Records failing pydantic validation are quarantined with their field errors; others land."""
    target = TableTarget(
        schema=schema,
        table="readings",
        columns=(
            Column("sensor", "text"),
            Column("value", "double precision"),
            Column("taken_at", "timestamptz"),
        ),
    )
    when = dt.datetime(2024, 3, 1, 12, tzinfo=dt.UTC)
    rows: list[Any] = [{"sensor": f"s{i}", "value": i, "taken_at": when} for i in range(100)]
    rows[17] = {"sensor": "s17", "value": "not a number", "taken_at": when}
    rows[42] = {"sensor": "s42", "taken_at": "yesterday-ish"}

    async def scenario() -> None:
        report = await load(pg_dsn, target, rows, model=Reading, batch_size=30)
        assert (report.written, report.dead_lettered) == (98, 2)
        letters = await dead_letters(pg_dsn, schema)
        assert [r["record_no"] for r in letters] == [17, 42]
        assert {r["error_class"] for r in letters} == {"ValidationError"}
        assert json.loads(letters[0]["error_detail"])[0]["loc"] == ["value"]
        assert {tuple(e["loc"]) for e in json.loads(letters[1]["error_detail"])} == {
            ("value",),
            ("taken_at",),
        }
        assert json.loads(letters[1]["payload"]) == {"sensor": "s42", "taken_at": "yesterday-ish"}
        count = await fetch(pg_dsn, f"SELECT count(*) FROM {target.sql_name}")
        assert count[0][0] == 98

    asyncio.run(scenario())


def test_circuit_breaker_trips_at_30_percent_bad_records(pg_dsn: str, schema: str) -> None:
    """A 30% failure rate fails the load with a message that says why; nothing is published."""
    target = events_target(schema)

    def mostly_fine() -> Iterator[dict[str, Any]]:
        for r in records(20_000):
            if r["event_id"] % 10 < 3:
                del r["amount"]
            yield r

    async def scenario() -> None:
        with pytest.raises(CircuitBreakerOpenError, match=r"30\.0%.*above the 5\.0% limit"):
            await load(pg_dsn, target, mostly_fine(), batch_size=1_000)
        assert await table_rows(pg_dsn, target) == []

    asyncio.run(scenario())


def test_duplicate_keys_in_an_upsert_batch_keep_the_first(pg_dsn: str, schema: str) -> None:
    """Within a batch the first record of a key is written; the later one is dead-lettered."""
    target = events_target(schema, WriteMode.UPSERT)
    rows = [*records(10), {"event_id": 3, "user name": "again", "amount": 9.0}]

    async def scenario() -> None:
        report = await load(pg_dsn, target, rows)
        assert (report.enqueued, report.written, report.dead_lettered) == (11, 10, 1)
        assert (await table_rows(pg_dsn, target))[3] == (3, "u3", 1.5)
        letters = await dead_letters(pg_dsn, schema)
        assert [(r["record_no"], r["error_class"]) for r in letters] == [(10, "DuplicateKey")]

    asyncio.run(scenario())


def test_keys_repeated_across_upsert_batches_are_written_and_counted_once(
    pg_dsn: str, schema: str
) -> None:
    """The staging key catches a key repeated across batches: written once, the other copy
    dead-lettered (which copy depends on which batch commits first)."""
    target = events_target(schema, WriteMode.UPSERT)
    rows = [*records(1_000), *records(10, tag="again"), *records(990, start=1_000)]

    async def scenario() -> None:
        report = await load(pg_dsn, target, rows, batch_size=1_000)
        assert (report.enqueued, report.written, report.dead_lettered) == (2_000, 1_990, 10)
        table = await table_rows(pg_dsn, target)
        assert len(table) == 1_990
        letters = await dead_letters(pg_dsn, schema)
        # The writers commit concurrently: whichever batch commits second holds "the
        # repeat". Either way one version of each key is written and the other is a letter.
        record_nos = sorted(r["record_no"] for r in letters)
        assert {r["sqlstate"] for r in letters} == {"23505"}
        first_won = record_nos == [1_000 + i for i in range(10)]
        assert first_won or record_nos == list(range(10)), record_nos
        tag = "u" if first_won else "again"
        assert table[:10] == [(i, f"{tag}{i}", i * 0.5) for i in range(10)]
        assert await ledger_sums(pg_dsn, schema, "run-1") == (2, 2_000, 1_990, 10)

    asyncio.run(scenario())


def test_record_for_another_day_is_not_written_into_this_partition(
    pg_dsn: str, schema: str
) -> None:
    """A record whose date column disagrees with the partition key is dead-lettered."""
    target = events_target(schema)
    rows = [
        *records(3),
        {"event_id": 9, "user name": "x", "amount": 1.0, "data date": DAY + dt.timedelta(days=1)},
    ]

    async def scenario() -> None:
        report = await load(pg_dsn, target, rows)
        assert (report.written, report.dead_lettered) == (3, 1)
        letters = await dead_letters(pg_dsn, schema)
        assert letters[0]["error_class"] == "WrongPartition"

    asyncio.run(scenario())
