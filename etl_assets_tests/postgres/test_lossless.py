"""Lossless or refused, against the real server: every row of the conversion table, on the
record path and the DataFrame path, and text that is not valid Unicode.

Each test loads a value the column would store changed: it must be a dead letter (checked
pairs) or the load must be refused before a row moves (refused pairs), never stored changed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import json
from typing import Any

import pandas as pd
import pydantic
import pytest

from etl_assets.errors import ConfigurationError
from etl_assets.postgres.conversions import RULES, FieldKind, Verdict, column_type
from etl_assets.postgres.sql import qualified, quote_ident
from etl_assets.postgres.target import Column, TableTarget
from etl_assets.spec import PostgresTable
from etl_assets_tests.postgres.helpers import dead_letters, execute, fetch, load
from etl_assets_tests.postgres.test_conversions import CHECKED

D = decimal.Decimal
NAIVE = dt.datetime(2024, 3, 1, 12, 0)
AWARE = dt.datetime(2024, 3, 1, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
ANNOTATIONS: dict[FieldKind, Any] = {
    FieldKind.INT: int,
    FieldKind.FLOAT: float,
    FieldKind.DECIMAL: D,
    FieldKind.STR: str,
    FieldKind.DATETIME: dt.datetime,
    FieldKind.AWARE_DATETIME: pydantic.AwareDatetime,
    FieldKind.NAIVE_DATETIME: pydantic.NaiveDatetime,
}


def one_column(schema: str, pg_type: str) -> TableTarget:
    return TableTarget(
        schema=schema,
        table="t",
        columns=(Column("id", "bigint", nullable=False), Column("v", pg_type)),
    )


def model_of(kind: FieldKind) -> type[pydantic.BaseModel] | None:
    if kind is FieldKind.ANY:
        return None
    return pydantic.create_model("Row", id=(int, ...), v=(ANNOTATIONS[kind], ...))


async def stored(dsn: str, target: TableTarget) -> list[Any]:
    return [r["v"] for r in await fetch(dsn, f"SELECT v FROM {target.sql_name} ORDER BY id")]


def same(value: Any, fits: Any) -> bool:
    """Stored as the source meant it (read back in the column's Python type)."""
    if isinstance(fits, dt.datetime) and not isinstance(value, dt.datetime):
        return bool(value == fits.date())
    if isinstance(fits, dt.datetime | str):
        return bool(value == fits)
    if isinstance(fits, D) and isinstance(value, float):
        return D(repr(value)) == fits
    return bool(value == fits or float(value) == float(fits))


@pytest.mark.parametrize(("kind", "pg_type", "fits", "changes"), CHECKED)
def test_checked_pairs_dead_letter_the_value_that_would_change(
    pg_dsn: str, schema: str, kind: FieldKind, pg_type: str, fits: Any, changes: Any
) -> None:
    """Records path: the value the column would change is one LossyConversion letter; the
    others are stored exactly."""
    target = one_column(schema, pg_type)
    rows = [{"id": 0, "v": fits}, {"id": 1, "v": changes}, {"id": 2, "v": fits}]

    async def scenario() -> None:
        report = await load(pg_dsn, target, rows, model=model_of(kind))
        assert (report.written, report.dead_lettered) == (2, 1)
        letters = await dead_letters(pg_dsn, schema)
        assert [(r["record_no"], r["error_class"]) for r in letters] == [(1, "LossyConversion")]
        assert letters[0]["error_message"].startswith("v: ")
        values = await stored(pg_dsn, target)
        assert len(values) == 2
        assert all(same(v, fits) for v in values), values

    asyncio.run(scenario())


REFUSED = [
    (FieldKind.FLOAT, "smallint", 5.25),
    (FieldKind.FLOAT, "integer", 5.25),
    (FieldKind.FLOAT, "bigint", 5.25),
    (FieldKind.FLOAT, "real", 0.1),
    (FieldKind.DECIMAL, "smallint", D("5.7")),
    (FieldKind.DECIMAL, "integer", D("5.7")),
    (FieldKind.DECIMAL, "bigint", D("5.7")),
    (FieldKind.DECIMAL, "real", D("1.23456789012345678901")),
    (FieldKind.DECIMAL, "double precision", D("1.23456789012345678901")),
    (FieldKind.NAIVE_DATETIME, "timestamptz", NAIVE),
    (FieldKind.AWARE_DATETIME, "timestamp", AWARE),
    (FieldKind.DATETIME, "date", NAIVE),
    (FieldKind.AWARE_DATETIME, "date", AWARE),
    (FieldKind.NAIVE_DATETIME, "date", NAIVE),
]


def test_every_refused_row_of_the_table_is_exercised() -> None:
    """The list above covers each refused pair of RULES (the README's table)."""
    covered = {(k, column_type(s).family) for k, s, _ in REFUSED}
    assert covered == {pair for pair, rule in RULES.items() if rule.verdict is Verdict.REFUSED}


@pytest.mark.parametrize(("kind", "pg_type", "value"), REFUSED)
def test_refused_pairs_stop_the_load_before_a_row_moves(
    pg_dsn: str, schema: str, kind: FieldKind, pg_type: str, value: Any
) -> None:
    """Records path: a refused pair fails at prepare naming the column and the ALTER; the
    table is untouched and no load is recorded."""
    target = one_column(schema, pg_type)

    async def scenario() -> None:
        await execute(pg_dsn, f"CREATE SCHEMA {quote_ident(schema)}; {target.create_table_sql()}")
        with pytest.raises(ConfigurationError) as caught:
            await load(pg_dsn, target, [{"id": 1, "v": value}], model=model_of(kind))
        assert "Column 'v' is " in str(caught.value)
        assert 'ALTER COLUMN "v" TYPE ' in str(caught.value)
        assert await stored(pg_dsn, target) == []
        loads = await fetch(pg_dsn, f"SELECT count(*) FROM {qualified(schema, 'partition_loads')}")
        assert loads[0][0] == 0

    asyncio.run(scenario())


class QtyV1(pydantic.BaseModel):
    sku: str
    qty: int


class QtyV2(pydantic.BaseModel):
    sku: str
    qty: float


def _qty_target(schema: str, model: type[pydantic.BaseModel]) -> TableTarget:
    return PostgresTable(table="stock", model=model, schema=schema).target()


@pytest.mark.parametrize("as_frame", [False, True], ids=["records", "pandas"])
def test_qty_int_changed_to_float_is_refused_not_stored_as_5(
    pg_dsn: str, schema: str, as_frame: bool
) -> None:
    """Issue 18: qty changed from int to float while the column stays bigint; 5.25 and 5.75
    were stored as 5. Now the load is refused with the column and the ALTER to run."""
    rows = [{"sku": "a", "qty": 5.25}, {"sku": "b", "qty": 5.75}]

    async def scenario() -> None:
        await load(pg_dsn, _qty_target(schema, QtyV1), [{"sku": "a", "qty": 4}], model=QtyV1)
        source: Any = pd.DataFrame(rows) if as_frame else rows
        with pytest.raises(ConfigurationError) as caught:
            await load(pg_dsn, _qty_target(schema, QtyV2), source, model=QtyV2, load_id="run-2")
        assert "Column 'qty' is bigint but the model's field 'qty' is float" in str(caught.value)
        assert (
            f'ALTER TABLE {qualified(schema, "stock")} ALTER COLUMN "qty" TYPE double precision'
            in str(caught.value)
        )
        table = qualified(schema, "stock")
        assert [tuple(r) for r in await fetch(pg_dsn, f"SELECT sku, qty FROM {table}")] == [
            ("a", 4)
        ]

    asyncio.run(scenario())


class Coded(pydantic.BaseModel):
    id: int
    v: str


class Stamped(pydantic.BaseModel):
    id: int
    v: dt.datetime


class Priced(pydantic.BaseModel):
    id: int
    v: D


@pytest.mark.parametrize(
    ("model", "pg_type", "column", "changed_at"),
    [
        (Coded, "character varying(3)", ["abc", "abc  ", "ab"], 1),
        (Coded, "character(3)", ["abc", "ab", "xyz"], 1),
        (Priced, "numeric(10,2)", [D("1.50"), D("1.005"), D("2")], 1),
    ],
)
def test_frames_dead_letter_the_value_that_would_change(
    pg_dsn: str,
    schema: str,
    model: type[pydantic.BaseModel],
    pg_type: str,
    column: list[Any],
    changed_at: int,
) -> None:
    """pandas path: varchar/char lengths column-wise, numeric(p,s) through pydantic rows."""
    target = one_column(schema, pg_type)
    frame = pd.DataFrame({"id": range(len(column)), "v": column})

    async def scenario() -> None:
        report = await load(pg_dsn, target, frame, model=model)
        assert (report.written, report.dead_lettered) == (len(column) - 1, 1)
        letters = await dead_letters(pg_dsn, schema)
        assert [(r["record_no"], r["error_class"]) for r in letters] == [
            (changed_at, "LossyConversion")
        ]
        kept = [v for i, v in enumerate(column) if i != changed_at]
        assert await stored(pg_dsn, target) == kept

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("pg_type", "stamps", "fix"),
    [
        ("timestamptz", pd.to_datetime(["2024-03-01 12:00"]), "tz_localize"),
        ("timestamp", pd.to_datetime(["2024-03-01 12:00"]).tz_localize("Europe/Paris"), "tz_"),
    ],
    ids=["naive-into-timestamptz", "aware-into-timestamp"],
)
def test_frames_whose_timestamps_would_shift_are_refused(
    pg_dsn: str, schema: str, pg_type: str, stamps: Any, fix: str
) -> None:
    """A naive column into timestamptz (or aware into timestamp) would shift every value:
    refused naming the column and the conversion to make, nothing written."""
    target = one_column(schema, pg_type)
    frame = pd.DataFrame({"id": [1], "v": stamps})

    async def scenario() -> None:
        with pytest.raises(ConfigurationError) as caught:
            await load(pg_dsn, target, frame, model=Stamped)
        assert "Column 'v' is timestamp" in str(caught.value)
        assert "the DataFrame's column 'v' is timestamp[" in str(caught.value)
        assert fix in str(caught.value)
        assert await stored(pg_dsn, target) == []

    asyncio.run(scenario())


class Named(pydantic.BaseModel):
    id: int
    name: str


def _named(n: int, bad: str) -> list[dict[str, Any]]:
    rows = [{"id": i, "name": f"n{i}"} for i in range(n)]
    rows[4321]["name"] = bad
    return rows


def _named_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Text as Python objects (pandas 3's Arrow-backed strings cannot even hold a surrogate)."""
    names = pd.Series([r["name"] for r in rows], dtype=object)
    return pd.DataFrame({"id": [r["id"] for r in rows], "name": names})


@pytest.mark.parametrize("as_frame", [False, True], ids=["records", "pandas"])
@pytest.mark.parametrize(
    ("bad", "error_class", "shown"),
    [
        ("a\udc80b", "UnicodeEncodeError", "a\\udc80b"),
        ("a\x00b", "CharacterNotInRepertoireError", "a\u2400b"),
    ],
    ids=["lone-surrogate", "nul"],
)
def test_one_unstorable_string_among_10000_is_one_dead_letter(
    pg_dsn: str, schema: str, as_frame: bool, bad: str, error_class: str, shown: str
) -> None:
    """A lone surrogate (surrogateescape) or a NUL: 1 dead letter, 9,999 rows, payload readable."""
    target = PostgresTable(table="named", model=Named, schema=schema).target()
    rows = _named(10_000, bad)

    async def scenario() -> None:
        source: Any = _named_frame(rows) if as_frame else rows
        report = await load(pg_dsn, target, source, model=Named)
        assert (report.written, report.dead_lettered) == (9_999, 1)
        letters = await dead_letters(pg_dsn, schema)
        assert [r["record_no"] for r in letters] == [4321]
        expected_class = (
            "InvalidText" if as_frame and error_class == "UnicodeEncodeError" else (error_class)
        )
        assert letters[0]["error_class"] == expected_class
        assert json.loads(letters[0]["payload"])["name"] == shown
        if error_class == "UnicodeEncodeError":
            assert letters[0]["error_message"].startswith(
                "name: text is not valid Unicode (\\udc80 at position 1"
            )
        count = await fetch(pg_dsn, f"SELECT count(*) FROM {target.sql_name}")
        assert count[0][0] == 9_999

    asyncio.run(scenario())


def test_undecodable_bytes_are_dead_letters_with_or_without_a_model(
    pg_dsn: str, schema: str
) -> None:
    """Bytes that are not UTF-8 for a text column: a ValidationError (model) or an encode
    error (no model), one letter each, never a crashed partition."""
    target = PostgresTable(table="named", model=Named, schema=schema).target()
    rows: list[dict[str, Any]] = [{"id": i, "name": f"n{i}"} for i in range(50)]
    rows[7]["name"] = b"caf\xff"

    async def scenario() -> None:
        report = await load(pg_dsn, target, rows, model=Named)
        assert (report.written, report.dead_lettered) == (49, 1)
        report = await load(pg_dsn, target, rows, load_id="run-2")
        assert (report.written, report.dead_lettered) == (49, 1)
        letters = await dead_letters(pg_dsn, schema)
        assert [(r["record_no"], r["error_class"]) for r in letters] == [
            (7, "ValidationError"),
            (7, "TypeError"),
        ]
        assert json.loads(letters[1]["payload"])["name"] == "b'caf\\xff'"

    asyncio.run(scenario())


def test_an_int_out_of_bigint_range_is_a_dead_letter(pg_dsn: str, schema: str) -> None:
    """int -> bigint costs no check; the driver's OverflowError still isolates the one row."""
    target = one_column(schema, "bigint")
    rows = [{"id": 0, "v": 1}, {"id": 1, "v": 2**70}, {"id": 2, "v": 3}]

    async def scenario() -> None:
        report = await load(pg_dsn, target, rows, model=model_of(FieldKind.INT))
        assert (report.written, report.dead_lettered) == (2, 1)
        letters = await dead_letters(pg_dsn, schema)
        assert [(r["record_no"], r["error_class"]) for r in letters] == [(1, "OverflowError")]
        assert await stored(pg_dsn, target) == [1, 3]

    asyncio.run(scenario())


def test_a_str_in_a_date_column_without_a_model_is_a_dead_letter(pg_dsn: str, schema: str) -> None:
    """asyncpg's date encoder calls ``toordinal``: its AttributeError was a crashed load."""
    target = one_column(schema, "date")
    day = dt.date(2024, 2, 29)
    rows = [{"id": 0, "v": day}, {"id": 1, "v": "2024-01-01"}, {"id": 2, "v": None}]

    async def scenario() -> None:
        report = await load(pg_dsn, target, rows)
        assert (report.written, report.dead_lettered) == (2, 1)
        letters = await dead_letters(pg_dsn, schema)
        assert [(r["record_no"], r["error_class"]) for r in letters] == [(1, "AttributeError")]
        assert json.loads(letters[0]["payload"])["v"] == "2024-01-01"
        assert await stored(pg_dsn, target) == [day, None]

    asyncio.run(scenario())


def test_a_column_asyncpg_cannot_send_is_refused_at_prepare(pg_dsn: str, schema: str) -> None:
    """A tsvector column (no binary COPY encoder in asyncpg) is named at prepare, with the
    fix, instead of every batch being retried as a broken connection; no batch written."""
    target = TableTarget(
        schema=schema,
        table="docs",
        columns=(Column("id", "bigint", nullable=False), Column("words", "tsvector")),
        primary_key=("data_date", "id"),
    )
    rows = [{"id": i, "words": "a b"} for i in range(10)]
    with pytest.raises(ConfigurationError) as refused:
        asyncio.run(load(pg_dsn, target, rows))
    assert str(refused.value).startswith(
        f'target {target.name}: column(s) "words" (tsvector) cannot be loaded: asyncpg has '
        "no binary COPY encoder for the type, so no row could be written."
    )
    ledger = asyncio.run(fetch(pg_dsn, f"SELECT count(*) FROM {qualified(schema, 'load_ledger')}"))
    assert ledger[0][0] == 0
