"""A dead letter's life, from database truth: open, superseded, replayed, fixed, discarded."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
from collections.abc import Iterator
from typing import Any, Literal

import asyncpg
import pydantic
import pytest

from etl_assets.dead_letter_file import read_corrections, write_letters
from etl_assets.errors import ConfigurationError, FatalError
from etl_assets.postgres.dead_letters import summarize_dead_letters
from etl_assets.postgres.ledger import Ledger, LoadKey
from etl_assets.postgres.loader import LoadSettings, load_partition
from etl_assets.postgres.replay import ReplayFilter, ReplayReport, replay_dead_letters
from etl_assets.postgres.resource import PostgresResource
from etl_assets.postgres.sql import qualified, quote_ident
from etl_assets.postgres.target import Column, TableTarget
from etl_assets_tests.postgres.helpers import (
    DAY,
    events_target,
    execute,
    fetch,
    partition_audit,
    records,
)

SOURCE = 100
KELVIN = (7, 50, 93)  # records with a unit the first model does not know


class Reading(pydantic.BaseModel):
    sensor: str
    value: float
    unit: Literal["C", "F"]


class FixedReading(pydantic.BaseModel):
    sensor: str
    value: float
    unit: Literal["C", "F", "K"]


def letters_table(schema: str) -> str:
    return qualified(schema, "dead_letters")


def readings_target(schema: str) -> TableTarget:
    return TableTarget(
        schema=schema,
        table="readings",
        columns=(
            Column("sensor", "text"),
            Column("value", "double precision"),
            Column("unit", "text"),
        ),
        primary_key=("data_date", "sensor"),
    )


def source() -> Iterator[dict[str, Any]]:
    for i in range(SOURCE):
        yield {"sensor": f"s{i:03}", "value": float(i), "unit": "K" if i in KELVIN else "C"}


async def load(dsn: str, target: TableTarget, load_id: str, **kw: Any) -> None:
    async with PostgresResource(dsn=dsn).pool() as pool:
        await load_partition(
            pool, target, DAY, source(), load_id=load_id, model=kw.pop("model", Reading),
            settings=LoadSettings(ledger_schema=target.schema, batch_size=30),
        )  # fmt: skip


async def replay(
    dsn: str, target: TableTarget, load_id: str, model: type[pydantic.BaseModel], **only: Any
) -> ReplayReport:
    async with PostgresResource(dsn=dsn).pool() as pool:
        return await replay_dead_letters(
            pool, target, DAY, load_id=load_id, model=model, only=ReplayFilter(**only),
            settings=LoadSettings(ledger_schema=target.schema, batch_size=2),
        )  # fmt: skip


async def open_count(dsn: str, schema: str) -> tuple[int, int, int, int]:
    """(open, superseded, replayed, discarded) as the dead-letter asset and sensor see them."""
    conn = await asyncpg.connect(dsn)
    try:
        s = await summarize_dead_letters(conn, Ledger(schema))
    finally:
        await conn.close()
    return s.open, s.superseded, s.replayed, s.discarded


async def rows_once(dsn: str, target: TableTarget) -> tuple[int, int]:
    [row] = await fetch(
        dsn, f"SELECT count(*), count(DISTINCT sensor) FROM {target.sql_name} WHERE data_date = $1",
        DAY,
    )  # fmt: skip
    return row[0], row[1]


def test_reloads_supersede_and_a_replay_after_the_fix_writes_each_record_once(
    pg_dsn: str, schema: str
) -> None:
    target = readings_target(schema)

    async def scenario() -> None:
        await load(pg_dsn, target, "load-1")
        assert await open_count(pg_dsn, schema) == (3, 0, 0, 0)
        await load(pg_dsn, target, "load-2")  # the same poison again: still 3 open, not 6
        assert await open_count(pg_dsn, schema) == (3, 3, 0, 0)
        await load(pg_dsn, target, "load-3")
        assert await open_count(pg_dsn, schema) == (3, 6, 0, 0)

        again = await replay(pg_dsn, target, "replay-1", Reading)  # no fix yet
        assert (again.replayed, again.written, again.dead_lettered) == (3, 0, 3)
        assert await open_count(pg_dsn, schema) == (3, 6, 0, 0)
        tries = await fetch(
            pg_dsn,
            f"SELECT replay_attempts, last_error_class FROM {letters_table(schema)} "
            "WHERE status = 'open' ORDER BY id",
        )
        assert [tuple(r) for r in tries] == [(1, "ValidationError")] * 3

        fixed = await replay(pg_dsn, target, "replay-2", FixedReading)  # the model fix
        assert (fixed.replayed, fixed.written, fixed.dead_lettered) == (3, 3, 0)
        assert await open_count(pg_dsn, schema) == (0, 6, 3, 0)
        assert await rows_once(pg_dsn, target) == (SOURCE, SOURCE)

        rerun = await replay(pg_dsn, target, "replay-3", FixedReading)  # idempotent
        assert (rerun.replayed, rerun.written) == (0, 0)
        assert await rows_once(pg_dsn, target) == (SOURCE, SOURCE)

        audit = await partition_audit(pg_dsn, target, DAY, schema)
        assert audit.problems == ()
        assert (audit.load_id, audit.written, audit.replayed_in, audit.in_table) == (
            "load-3", SOURCE - 3, 3, SOURCE,
        )  # fmt: skip
        assert (audit.letters_replayed, audit.letters_open) == (3, 0)

    asyncio.run(scenario())


def test_an_exported_letter_corrected_by_hand_is_replayed_with_the_correction(
    pg_dsn: str, schema: str, tmp_path: Any
) -> None:
    target = readings_target(schema)

    async def scenario() -> None:
        await load(pg_dsn, target, "load-1")
        conn = await asyncpg.connect(pg_dsn)
        try:
            ledger = Ledger(schema)
            letters = await ledger.open_letters(
                conn, LoadKey(target.name, DAY.isoformat(), "load-1"), after_id=0, limit=100
            )
        finally:
            await conn.close()
        out = io.StringIO()
        assert write_letters(letters, out) == 3
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        assert sorted(line["payload"]["sensor"] for line in lines) == ["s007", "s050", "s093"]
        [first] = [line for line in lines if line["payload"]["sensor"] == "s007"]
        first["payload"].update(unit="C", value=-266.15)  # fixed by hand: 7 K is -266.15 C
        path = tmp_path / "fixes.jsonl"
        path.write_text(json.dumps(first) + "\n")

        report = await replay(pg_dsn, target, "fix-1", Reading, corrected=read_corrections(path))
        assert (report.replayed, report.written, report.dead_lettered) == (1, 1, 0)
        [row] = await fetch(
            pg_dsn, f"SELECT value, unit FROM {target.sql_name} WHERE sensor = 's007'"
        )
        assert tuple(row) == (-266.15, "C")
        assert await open_count(pg_dsn, schema) == (2, 0, 1, 0)
        assert (await partition_audit(pg_dsn, target, DAY, schema)).problems == ()

    asyncio.run(scenario())


def test_discarded_letters_keep_who_and_why_and_are_not_replayed(pg_dsn: str, schema: str) -> None:
    target = readings_target(schema)

    async def scenario() -> None:
        await load(pg_dsn, target, "load-1")
        [first_id] = [
            r[0]
            for r in await fetch(
                pg_dsn, f"SELECT min(id) FROM {letters_table(schema)} WHERE status = $1", "open"
            )
        ]
        conn = await asyncpg.connect(pg_dsn)
        try:
            discarded = await Ledger(schema).discard(
                conn, target.name, DAY.isoformat(), [first_id, 999_999], by="ana", why="test probe"
            )
        finally:
            await conn.close()
        assert discarded == [first_id]
        report = await replay(pg_dsn, target, "replay-1", FixedReading)
        assert (report.replayed, report.written) == (2, 2)
        assert await open_count(pg_dsn, schema) == (0, 0, 2, 1)
        [who] = await fetch(
            pg_dsn, f'SELECT resolved_by, resolution FROM {letters_table(schema)} WHERE id = $1',
            first_id,
        )  # fmt: skip
        assert tuple(who) == ("ana", "test probe")
        assert await rows_once(pg_dsn, target) == (SOURCE - 1, SOURCE - 1)
        assert (await partition_audit(pg_dsn, target, DAY, schema)).problems == ()

    asyncio.run(scenario())


def test_a_replay_filtered_by_id_takes_only_those_letters(pg_dsn: str, schema: str) -> None:
    target = readings_target(schema)

    async def scenario() -> None:
        await load(pg_dsn, target, "load-1")
        ids = [
            r[0] for r in await fetch(pg_dsn, f"SELECT id FROM {letters_table(schema)} ORDER BY id")
        ]
        report = await replay(pg_dsn, target, "replay-1", FixedReading, ids=ids[1:2])
        assert (report.replayed, report.written) == (1, 1)
        report = await replay(pg_dsn, target, "replay-2", FixedReading, error_classes=["Nope"])
        assert report.replayed == 0
        assert await open_count(pg_dsn, schema) == (2, 0, 1, 0)

    asyncio.run(scenario())


@pytest.mark.parametrize("round_no", range(3))
def test_a_replay_and_a_reload_of_the_same_partition_serialize(
    pg_dsn: str, schema: str, round_no: int
) -> None:
    """Whichever commits first, the partition ends exact: each record once, checks pass.

    The reload (fixed model) supersedes the letters the replay re-drives, under the same
    row locks: a replay batch either committed before the swap (its rows leave with the
    old partition) or finds its letters superseded and writes nothing.
    """
    target = readings_target(schema)

    async def scenario() -> None:
        await load(pg_dsn, target, "load-1")
        outcomes = await asyncio.gather(
            replay(pg_dsn, target, "replay-1", FixedReading),
            load(pg_dsn, target, "load-2", model=FixedReading),
            return_exceptions=True,
        )
        replayed, loaded = outcomes
        assert loaded is None
        if isinstance(replayed, BaseException):  # lost the race: nothing half-done
            assert isinstance(replayed, FatalError), replayed
            assert "no longer open" in str(replayed)
        assert await rows_once(pg_dsn, target) == (SOURCE, SOURCE)
        audit = await partition_audit(pg_dsn, target, DAY, schema)
        assert audit.problems == ()
        assert (audit.load_id, audit.written, audit.replayed_in) == ("load-2", SOURCE, 0)
        open_, superseded, replayed_n, _ = await open_count(pg_dsn, schema)
        assert open_ == 0
        assert superseded + replayed_n == 3

    asyncio.run(scenario())


def test_an_unknown_day_has_nothing_to_replay_into(pg_dsn: str, schema: str) -> None:
    target = readings_target(schema)

    async def scenario() -> None:
        await load(pg_dsn, target, "load-1")
        async with PostgresResource(dsn=pg_dsn).pool() as pool:
            with pytest.raises(Exception, match="no finished load to replay into"):
                await replay_dead_letters(
                    pool, target, DAY + dt.timedelta(days=1), load_id="r", model=Reading,
                    settings=LoadSettings(ledger_schema=schema),
                )  # fmt: skip

    asyncio.run(scenario())


def test_a_row_postgres_refused_is_replayed_without_a_model_once_the_table_accepts_it(
    pg_dsn: str, schema: str
) -> None:
    """The letter's payload holds the date as JSON text; the replay reads it as a date."""
    target = events_target(schema)

    def source() -> Iterator[dict[str, Any]]:
        for row in records(50):
            yield {**row, "amount": -1.0} if row["event_id"] == 7 else row

    async def scenario() -> None:
        await execute(pg_dsn, f"CREATE SCHEMA {quote_ident(schema)}; {target.create_table_sql()}")
        await execute(
            pg_dsn, f"ALTER TABLE {target.sql_name} ADD CONSTRAINT pos CHECK (amount >= 0)"
        )
        async with PostgresResource(dsn=pg_dsn).pool() as pool:
            settings = LoadSettings(ledger_schema=schema, batch_size=20)
            report = await load_partition(
                pool, target, DAY, source(), load_id="load-1", settings=settings
            )
            assert (report.written, report.dead_lettered) == (49, 1)
            await execute(pg_dsn, f"ALTER TABLE {target.sql_name} DROP CONSTRAINT pos")
            replayed = await replay_dead_letters(
                pool, target, DAY, load_id="replay-1", model=None, settings=settings
            )
        assert (replayed.replayed, replayed.written, replayed.dead_lettered) == (1, 1, 0)
        audit = await partition_audit(pg_dsn, target, DAY, schema)
        assert (audit.problems, audit.in_table, audit.replayed_in) == ((), 50, 1)

    asyncio.run(scenario())


def _broken_fix(payload: dict[str, Any]) -> dict[str, Any]:
    raise KeyError("unit")


def test_a_transform_that_fails_names_the_letter_and_writes_nothing(
    pg_dsn: str, schema: str
) -> None:
    target = readings_target(schema)

    async def scenario() -> None:
        await load(pg_dsn, target, "load-1")
        with pytest.raises(
            ConfigurationError, match=r"transform failed on dead letter \d+: KeyError"
        ):
            await replay(pg_dsn, target, "replay-1", FixedReading, transform=_broken_fix)
        assert await open_count(pg_dsn, schema) == (3, 0, 0, 0)
        assert await rows_once(pg_dsn, target) == (SOURCE - 3, SOURCE - 3)

    asyncio.run(scenario())
