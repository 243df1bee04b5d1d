"""Records written as Arrow batches (pgpq) are stored exactly as tuples (asyncpg) would be.

The columnar form of plain records (``etl_assets.columnar_records``) is only a faster way
to the same rows. Each awkward value below is loaded as a batch of its own, once with the
columnar form switched off and once with it on, into the same table; the stored rows (as
the server prints them) and the dead letters (class, message, SQLSTATE, payload) must be
identical, and the values the columnar form takes must really have gone that way.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import zoneinfo
from collections.abc import Iterator
from typing import Any

import pydantic
import pytest

from etl_assets import columnar_records
from etl_assets.columnar_records import ColumnarRecords
from etl_assets.postgres.sql import qualified
from etl_assets.postgres.target import Column, TableTarget
from etl_assets_tests.postgres.helpers import fetch, load

UTC = dt.UTC
PLUS_0530 = dt.timezone(dt.timedelta(hours=5, minutes=30))
MINUS_1S = dt.timezone(-dt.timedelta(seconds=1))
PARIS = zoneinfo.ZoneInfo("Europe/Paris")

COLUMNS = (
    Column("id", "bigint", nullable=False),
    Column("i", "integer"),
    Column("s", "smallint"),
    Column("d", "double precision"),
    Column("t", "text"),
    Column("v", "character varying"),
    Column("b", "boolean"),
    Column("day", "date"),
    Column("ts", "timestamp with time zone"),
)

# (column, value, takes the columnar form)
VALUES: list[tuple[str, Any, bool]] = [
    ("i", 0, True),
    ("i", 2**31 - 1, True),
    ("i", -(2**31), True),
    ("i", 2**31, False),
    ("i", True, False),
    ("i", 1.0, False),
    ("i", 1.5, False),
    ("i", "7", False),
    ("i", decimal.Decimal(3), False),
    ("s", 2**15 - 1, True),
    ("s", 2**15, False),
    ("d", 0.1, True),
    ("d", -0.0, True),
    ("d", float("nan"), True),
    ("d", float("inf"), True),
    ("d", float("-inf"), True),
    ("d", 1e308, True),
    ("d", 5, False),
    ("d", 2**53 + 1, False),
    ("d", True, False),
    ("d", decimal.Decimal("0.1"), False),
    ("t", "", True),
    ("t", "héllo ✓ 😀", True),
    ("t", "a\x00b", True),
    ("t", "bad \udc80 bytes", False),
    ("t", "x" * 20_000, True),
    ("t", 5, False),
    ("v", "abc", True),
    ("v", 7, False),
    ("b", True, True),
    ("b", False, True),
    ("b", 1, False),
    ("b", "true", False),
    ("day", dt.date(2024, 2, 29), True),
    ("day", dt.date.max, False),
    ("day", dt.date.min, False),
    ("day", dt.datetime(2024, 1, 1, 12), False),
    ("day", "2024-01-01", False),
    ("ts", dt.datetime(2024, 3, 1, 12, 30, 15, 123456, tzinfo=UTC), True),
    ("ts", dt.datetime(2024, 3, 1, 12, 0, tzinfo=PLUS_0530), True),
    ("ts", dt.datetime(2024, 3, 1, 0, 0, 0, 1, tzinfo=MINUS_1S), True),
    ("ts", dt.datetime(1, 1, 1, 0, 0, 0, 1, tzinfo=UTC), True),
    ("ts", dt.datetime(9999, 12, 31, 23, 59, 59, 999998, tzinfo=UTC), True),
    ("ts", dt.datetime(2024, 3, 31, 2, 30, tzinfo=PARIS), True),  # in the DST gap
    ("ts", dt.datetime(2024, 10, 27, 2, 30, fold=1, tzinfo=PARIS), True),  # the repeated hour
    ("ts", dt.datetime(2024, 3, 1, 12, 0), False),
    ("ts", dt.datetime.max.replace(tzinfo=UTC), False),
    ("ts", dt.datetime.min.replace(tzinfo=UTC), False),
    ("ts", dt.datetime(1, 1, 1, 0, 30, tzinfo=dt.timezone(dt.timedelta(hours=1))), False),
    ("ts", dt.datetime(9999, 12, 31, 23, 0, tzinfo=dt.timezone(-dt.timedelta(hours=5))), False),
    ("ts", dt.date(2024, 3, 1), False),
]


def target(schema: str, table: str) -> TableTarget:
    return TableTarget(schema=schema, table=table, columns=COLUMNS, primary_key=("data_date", "id"))


def awkward_records() -> Iterator[dict[str, Any]]:
    for n, (column, value, _) in enumerate(VALUES):
        record: dict[str, Any] = {c.name: None for c in COLUMNS}
        record.update(id=n, **{column: value})
        yield record


async def stored(dsn: str, table: TableTarget) -> list[tuple[Any, ...]]:
    texts = ", ".join(f'"{c.name}"::text' for c in COLUMNS)
    return [tuple(r) for r in await fetch(dsn, f"SELECT {texts} FROM {table.sql_name} ORDER BY 1")]


async def letters(dsn: str, schema: str, table: TableTarget) -> list[tuple[Any, ...]]:
    rows = await fetch(
        dsn,
        "SELECT record_no, error_class, error_message, sqlstate, payload::text "
        f"FROM {qualified(schema, 'dead_letters')} WHERE target = $1 ORDER BY record_no",
        table.name,
    )
    return [tuple(r) for r in rows]


@pytest.fixture
def columnar_batches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every batch that took the columnar form (the spy leaves it unchanged)."""
    taken: list[int] = []
    rows = ColumnarRecords.rows

    def spy(self: ColumnarRecords, records: Any) -> Any:
        result = rows(self, records)
        if result is not None:
            taken.append(len(result))
        return result

    monkeypatch.setattr(ColumnarRecords, "rows", spy)
    return taken


def test_each_awkward_value_is_stored_or_refused_alike_both_ways(
    pg_dsn: str, schema: str, columnar_batches: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    tuples, arrow = target(schema, "as tuples"), target(schema, "as arrow")

    async def scenario() -> None:
        with monkeypatch.context() as off:
            off.setattr(columnar_records.ColumnarRecords, "for_load", lambda *a, **k: None)
            await load(pg_dsn, tuples, awkward_records(), batch_size=1, max_dead_letter_ratio=1)
        assert columnar_batches == []
        await load(pg_dsn, arrow, awkward_records(), batch_size=1, max_dead_letter_ratio=1)
        assert await stored(pg_dsn, arrow) == await stored(pg_dsn, tuples)
        assert await letters(pg_dsn, schema, arrow) == await letters(pg_dsn, schema, tuples)
        assert len(columnar_batches) == sum(1 for *_, columnar in VALUES if columnar)

    asyncio.run(scenario())


def test_the_stored_rows_are_the_values_themselves(pg_dsn: str, schema: str) -> None:
    """Not only alike: the columnar form's rows read back as the values sent."""
    table = target(schema, "exact")
    exact = [(n, c, v) for n, (c, v, columnar) in enumerate(VALUES) if columnar and c != "t"]

    async def scenario() -> None:
        records = [{**{c.name: None for c in COLUMNS}, "id": n, column: value}
                   for n, column, value in exact]  # fmt: skip
        await load(pg_dsn, table, records, batch_size=100)
        rows = await fetch(pg_dsn, f"SELECT * FROM {table.sql_name} ORDER BY id")
        for (n, column, value), row in zip(exact, rows, strict=True):
            got = row[column]
            assert row["id"] == n
            if isinstance(value, float) and value != value:
                assert got != got, column
            elif isinstance(value, dt.datetime):  # the instant (== is False across a DST gap)
                assert got == value.astimezone(UTC), column
            else:
                assert (got, type(got)) == (value, type(value)), column

    asyncio.run(scenario())


class Typed(pydantic.BaseModel):
    id: int
    i: int | None = None
    d: float | None = None
    t: str | None = None
    day: dt.date | None = None
    ts: pydantic.AwareDatetime | None = None


def test_a_model_validated_batch_takes_the_columnar_form_with_the_same_result(
    pg_dsn: str, schema: str, columnar_batches: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """pydantic's coercions ("7" to 7, an ISO string to a datetime) happen before either way."""
    columns = tuple(c for c in COLUMNS if c.name in Typed.model_fields)
    raw = [
        {"id": 1, "i": "7", "d": 2, "t": "x", "day": "2024-02-29", "ts": "2024-03-01T12:00+02:00"},
        {"id": 2, "i": 8, "d": 0.5, "t": None, "day": None, "ts": None},
    ]

    def table(name: str) -> TableTarget:
        return TableTarget(
            schema=schema, table=name, columns=columns, primary_key=("data_date", "id")
        )

    async def rows_of(name: str) -> list[tuple[Any, ...]]:
        texts = ", ".join(f'"{c.name}"::text' for c in columns)
        found = await fetch(pg_dsn, f"SELECT {texts} FROM {table(name).sql_name} ORDER BY 1")
        return [tuple(r) for r in found]

    async def scenario() -> None:
        with monkeypatch.context() as off:
            off.setattr(columnar_records.ColumnarRecords, "for_load", lambda *a, **k: None)
            await load(pg_dsn, table("m tuples"), raw, model=Typed)
        await load(pg_dsn, table("m arrow"), raw, model=Typed)
        assert columnar_batches == [2]
        assert await rows_of("m arrow") == await rows_of("m tuples")
        assert (await rows_of("m arrow"))[0] == (
            "1", "7", "2", "x", "2024-02-29", "2024-03-01 10:00:00+00",
        )  # fmt: skip

    asyncio.run(scenario())
