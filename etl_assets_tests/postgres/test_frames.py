"""DataFrames and Arrow through the load engine: every row accounted, poison isolated.

Real PostgreSQL, real binary COPY (pgpq). Each test asserts the exact table and the
exact dead letters.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Callable, Iterator
from typing import Any, Literal

import pandas as pd
import polars as pl
import pyarrow as pa
import pydantic
import pytest

from etl_assets.errors import CircuitBreakerOpenError, ConfigurationError
from etl_assets.frames import classify_output, split_by_partition
from etl_assets.postgres.sql import qualified
from etl_assets.postgres.target import TableTarget, WriteMode
from etl_assets.spec import PostgresTable
from etl_assets_tests.postgres.helpers import DAY, dead_letters, execute, fetch, ledger_sums, load


class Sale(pydantic.BaseModel):
    sale_id: int
    item: str
    amount: float | None
    sold_at: dt.datetime | None = None


class CheckedSale(pydantic.BaseModel):
    """Bounds, lengths and Literal values: checked column-wise, pydantic only for rejects."""

    sale_id: int = pydantic.Field(ge=1)
    item: Literal["a", "b", "c"]
    amount: float | None = pydantic.Field(default=None, ge=0)


class ValidatedSale(pydantic.BaseModel):
    """A validator only pydantic can run: the loader validates these record by record."""

    sale_id: int
    item: str
    amount: float | None = None

    @pydantic.field_validator("item")
    @classmethod
    def _lower(cls, value: str) -> str:
        if value != value.lower():
            raise ValueError("item must be lower case")
        return value


def sales_target(
    schema: str, model: type[pydantic.BaseModel] = Sale, mode: WriteMode = WriteMode.REPLACE
) -> TableTarget:
    return PostgresTable(
        table="sales", model=model, schema=schema, mode=mode, primary_key=("data_date", "sale_id")
    ).target()


def sales_frame(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "sale_id": range(n),
            "item": [f"item {i}" for i in range(n)],
            "amount": [i * 0.25 for i in range(n)],
            "sold_at": pd.to_datetime([1_700_000_000 + i for i in range(n)], unit="s", utc=True),
        }
    )


def expected_rows(n: int) -> list[tuple[Any, ...]]:
    return [
        (i, f"item {i}", i * 0.25, dt.datetime.fromtimestamp(1_700_000_000 + i, dt.UTC))
        for i in range(n)
    ]


async def sales_rows(dsn: str, schema: str) -> list[tuple[Any, ...]]:
    rows = await fetch(
        dsn,
        f"SELECT sale_id, item, amount, sold_at FROM {qualified(schema, 'sales')} "
        "WHERE data_date = $1 ORDER BY sale_id",
        DAY,
    )
    return [tuple(r) for r in rows]


async def create_table(dsn: str, ddl: str) -> None:
    """The target as a user made it before the first load (it may differ from the model)."""
    schema = ddl.split("CREATE TABLE IF NOT EXISTS ", 1)[1].rsplit(".", 1)[0]
    await execute(dsn, f"CREATE SCHEMA IF NOT EXISTS {schema}; {ddl}")


def as_pandas(df: pd.DataFrame) -> Any:
    return df


def as_polars(df: pd.DataFrame) -> Any:
    return pl.from_pandas(df)


def as_polars_lazy(df: pd.DataFrame) -> Any:
    return pl.from_pandas(df).lazy()


def as_arrow(df: pd.DataFrame) -> Any:
    return pa.Table.from_pandas(df, preserve_index=False)


def as_batch_iterator(df: pd.DataFrame) -> Any:
    return iter(pa.Table.from_pandas(df, preserve_index=False).to_batches(max_chunksize=700))


def as_pandas_chunks(df: pd.DataFrame) -> Any:
    return (df.iloc[i : i + 1_300] for i in range(0, len(df), 1_300))


@pytest.mark.parametrize(
    "shape",
    [as_pandas, as_polars, as_polars_lazy, as_arrow, as_batch_iterator, as_pandas_chunks],
    ids=lambda f: f.__name__,
)
def test_every_frame_kind_lands_row_for_row(
    pg_dsn: str, schema: str, shape: Callable[[pd.DataFrame], Any]
) -> None:
    """5,000 rows as pandas, polars, lazy polars, Arrow, or chunk iterators: all 5,000 land."""
    target = sales_target(schema)
    source = classify_output(shape(sales_frame(5_000)), "test")

    async def scenario() -> None:
        report = await load(pg_dsn, target, source, model=Sale, batch_size=2_000)
        assert (report.enqueued, report.written, report.dead_lettered) == (5_000, 5_000, 0)
        assert await sales_rows(pg_dsn, schema) == expected_rows(5_000)
        assert (await ledger_sums(pg_dsn, schema, "run-1"))[1:] == (5_000, 5_000, 0)

    asyncio.run(scenario())


def test_a_dataframe_is_never_iterated_as_its_column_names(pg_dsn: str, schema: str) -> None:
    """The silent-loss regression: 1,000 rows in a DataFrame are 1,000 rows written, not 3."""
    target = sales_target(schema)
    frame = sales_frame(1_000).drop(columns=["sold_at"])

    async def scenario() -> None:
        report = await load(pg_dsn, target, classify_output(frame, "test"), model=Sale)
        assert (report.enqueued, report.written, report.dead_lettered) == (1_000, 1_000, 0)
        assert len(await sales_rows(pg_dsn, schema)) == 1_000

    asyncio.run(scenario())


def test_column_names_as_records_trip_the_breaker_whatever_the_size(
    pg_dsn: str, schema: str
) -> None:
    """Had a frame been iterated (3 column names), 3 of 3 dead-lettered fails the load loudly."""
    target = sales_target(schema)

    async def scenario() -> None:
        with pytest.raises(CircuitBreakerOpenError, match="every record was dead-lettered"):
            await load(pg_dsn, target, ["sale_id", "item", "amount"], model=Sale)
        assert await sales_rows(pg_dsn, schema) == []

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "value", [pd.Series([1, 2]), pa.array([1, 2]), pl.Series([1, 2])], ids=type
)
def test_column_objects_are_refused_with_what_to_return(value: Any) -> None:
    """A Series or an Arrow array iterates as values: refused, naming what to return."""
    with pytest.raises(ConfigurationError, match="iterates as values, not records"):
        classify_output(value, "asset x partition 2024-03-01")


def test_poison_in_a_dataframe_is_dead_lettered_row_by_row(pg_dsn: str, schema: str) -> None:
    """NUL text, a CHECK violation, a fractional id, a NULL id and an overflow: exactly those go."""
    target = sales_target(schema)
    frame = sales_frame(3_000).drop(columns=["sold_at"])
    frame["sale_id"] = frame["sale_id"].astype("float64")
    frame.loc[10, "item"] = "bad\x00text"  # the server refuses NUL (22021)
    frame.loc[20, "amount"] = -1.0  # CHECK (amount >= 0) on the table (23514)
    frame.loc[30, "sale_id"] = 30.5  # not an integer: pydantic and Arrow's safe cast refuse
    frame.loc[40, "sale_id"] = None  # a required column's null
    frame.loc[50, "sale_id"] = 2.0**70  # does not fit bigint

    async def scenario() -> None:
        await create_table(pg_dsn, target.create_table_sql())
        await execute(
            pg_dsn, f"ALTER TABLE {target.sql_name} ADD CONSTRAINT positive CHECK (amount >= 0)"
        )
        report = await load(pg_dsn, target, classify_output(frame, "t"), model=Sale)
        assert (report.enqueued, report.written, report.dead_lettered) == (3_000, 2_995, 5)
        letters = await dead_letters(pg_dsn, schema)
        assert [(r["record_no"], r["error_class"], r["sqlstate"]) for r in letters] == [
            (10, "CharacterNotInRepertoireError", "22021"),
            (20, "CheckViolationError", "23514"),
            (30, "ValidationError", None),
            (40, "ValidationError", None),
            (50, "ValidationError", None),
        ]
        payloads = [json.loads(r["payload"]) for r in letters]
        assert payloads[0]["item"] == "bad\u2400text"
        assert payloads[1]["amount"] == -1.0
        assert payloads[2]["sale_id"] == 30.5
        assert payloads[3]["sale_id"] is None
        assert "sale_id" in letters[2]["error_message"]
        ids = [r[0] for r in await sales_rows(pg_dsn, schema)]
        assert ids == [i for i in range(3_000) if i not in (10, 20, 30, 40, 50)]

    asyncio.run(scenario())


def test_an_overflow_only_arrow_refuses_is_dead_lettered_with_arrows_reason(
    pg_dsn: str, schema: str
) -> None:
    """A value pydantic accepts but the existing int4 column cannot hold: ArrowCastError."""
    target = sales_target(schema)
    frame = pd.DataFrame({"sale_id": [1, 2**40, 3], "item": ["a", "b", "c"], "amount": 1.0})

    async def scenario() -> None:
        ddl = target.create_table_sql().replace('"sale_id" bigint', '"sale_id" integer')
        await create_table(pg_dsn, ddl)
        report = await load(pg_dsn, target, classify_output(frame, "t"), model=Sale)
        assert (report.written, report.dead_lettered) == (2, 1)
        [letter] = await dead_letters(pg_dsn, schema)
        assert (letter["record_no"], letter["error_class"]) == (1, "ArrowCastError")
        assert "sale_id" in letter["error_message"]
        assert json.loads(letter["payload"])["sale_id"] == 2**40

    asyncio.run(scenario())


def test_nan_is_null_in_an_optional_column_and_a_dead_letter_in_a_required_one(
    pg_dsn: str, schema: str
) -> None:
    """pandas' NaN is its missing value: NULL where None is allowed, refused where it is not."""
    target = sales_target(schema)
    frame = pd.DataFrame(
        {
            "sale_id": [1.0, float("nan"), 3.0],
            "item": ["a", "b", "c"],
            "amount": [float("nan"), 2, 3],
        }
    )

    async def scenario() -> None:
        report = await load(pg_dsn, target, classify_output(frame, "t"), model=Sale)
        assert (report.written, report.dead_lettered) == (2, 1)
        assert await sales_rows(pg_dsn, schema) == [(1, "a", None, None), (3, "c", 3.0, None)]
        [letter] = await dead_letters(pg_dsn, schema)
        assert (letter["record_no"], letter["error_class"]) == (1, "ValidationError")
        assert json.loads(letter["payload"]) == {"sale_id": None, "item": "b", "amount": 2.0}

    asyncio.run(scenario())


def test_rows_of_another_day_are_dead_lettered_not_moved(pg_dsn: str, schema: str) -> None:
    """A frame that carries the partition column may only hold the partition's date."""
    target = sales_target(schema)
    other = DAY + dt.timedelta(days=1)
    frame = pd.DataFrame(
        {"sale_id": [1, 2], "item": ["a", "b"], "amount": 1.0, "data_date": [DAY, other]}
    )

    async def scenario() -> None:
        report = await load(pg_dsn, target, classify_output(frame, "t"), model=Sale)
        assert (report.written, report.dead_lettered) == (1, 1)
        [letter] = await dead_letters(pg_dsn, schema)
        assert (letter["record_no"], letter["error_class"]) == (1, "WrongPartition")

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (pd.DataFrame({"sale_id": [1], "amount": [1.0]}), "no column 'item'"),
        (pd.DataFrame({"sale_id": ["x"], "item": [1], "amount": [1.0]}), "column 'item'"),
        (
            pd.DataFrame({"sale_id": [1, 2], "item": ["a", 3], "amount": [1.0, 2.0]}),
            "column 'item' holds values Arrow cannot put in one type",
        ),
    ],
    ids=["missing column", "wrong column kind", "mixed object column"],
)
def test_schema_mistakes_fail_the_load_naming_the_column(
    pg_dsn: str, schema: str, frame: pd.DataFrame, message: str
) -> None:
    """A missing required column or a column of the wrong kind is a ConfigurationError."""
    target = sales_target(schema)

    async def scenario() -> None:
        with pytest.raises(ConfigurationError, match=message):
            await load(pg_dsn, target, classify_output(frame, "t"), model=Sale)
        assert await sales_rows(pg_dsn, schema) == []

    asyncio.run(scenario())


def test_bounds_and_literals_are_checked_column_wise(pg_dsn: str, schema: str) -> None:
    """ge=0, ge=1 and a Literal: exactly the rows that break them go, with pydantic's message."""
    target = sales_target(schema, CheckedSale)
    frame = pd.DataFrame(
        {"sale_id": range(1, 101), "item": ["a", "b", "c", "a"] * 25, "amount": [1.0] * 100}
    )
    frame.loc[10, "amount"] = -2.0
    frame.loc[20, "sale_id"] = 0
    frame.loc[30, "item"] = "z"

    async def scenario() -> None:
        report = await load(pg_dsn, target, classify_output(frame, "t"), model=CheckedSale)
        assert (report.written, report.dead_lettered) == (97, 3)
        letters = await dead_letters(pg_dsn, schema)
        assert [(r["record_no"], r["error_class"]) for r in letters] == [
            (10, "ValidationError"),
            (20, "ValidationError"),
            (30, "ValidationError"),
        ]
        assert "greater than or equal to 0" in letters[0]["error_message"]
        assert "greater than or equal to 1" in letters[1]["error_message"]
        assert "'a', 'b' or 'c'" in letters[2]["error_message"]

    asyncio.run(scenario())


def test_a_model_with_a_validator_is_validated_by_pydantic(pg_dsn: str, schema: str) -> None:
    """A field_validator cannot be run column-wise: pydantic sees every row; the bad one goes."""
    target = sales_target(schema, ValidatedSale)
    frame = pd.DataFrame({"sale_id": [1, 2, 3], "item": ["a", "B", "c"], "amount": [1.0, 2, 3]})

    async def scenario() -> None:
        report = await load(pg_dsn, target, classify_output(frame, "t"), model=ValidatedSale)
        assert (report.written, report.dead_lettered) == (2, 1)
        [letter] = await dead_letters(pg_dsn, schema)
        assert (letter["record_no"], letter["error_class"]) == (1, "ValidationError")
        assert "item must be lower case" in letter["error_message"]

    asyncio.run(scenario())


def test_an_upsert_frame_keeps_the_first_row_of_a_repeated_key(pg_dsn: str, schema: str) -> None:
    """Upsert mode: a key repeated in a frame is written once, the repeat dead-lettered."""
    target = sales_target(schema, mode=WriteMode.UPSERT)
    frame = pd.DataFrame({"sale_id": [1, 2, 1], "item": ["a", "b", "again"], "amount": 1.0})

    async def scenario() -> None:
        report = await load(pg_dsn, target, classify_output(frame, "t"), model=Sale)
        assert (report.written, report.dead_lettered) == (2, 1)
        assert [r[:2] for r in await sales_rows(pg_dsn, schema)] == [(1, "a"), (2, "b")]
        [letter] = await dead_letters(pg_dsn, schema)
        assert (letter["record_no"], letter["error_class"]) == (2, "DuplicateKey")

    asyncio.run(scenario())


def test_an_iterator_of_frames_is_consumed_chunk_by_chunk() -> None:
    """Classifying a lazy iterator of frames peeks at one chunk and consumes nothing else."""
    pulled: list[int] = []

    def chunks() -> Iterator[pd.DataFrame]:
        for i in range(3):
            pulled.append(i)
            yield sales_frame(10)

    source = classify_output(chunks(), "t")
    assert pulled == [0]
    assert sum(len(c) for c in source) == 30
    assert pulled == [0, 1, 2]


def test_the_engine_api_classifies_its_source_too(pg_dsn: str, schema: str) -> None:
    """load_partition handed a bare DataFrame loads it; handed a Series, it refuses."""
    target = sales_target(schema)

    async def scenario() -> None:
        report = await load(pg_dsn, target, sales_frame(10), model=Sale)
        assert (report.written, report.dead_lettered) == (10, 0)
        with pytest.raises(ConfigurationError, match="iterates as values"):
            await load(pg_dsn, target, pd.Series([1, 2]), model=Sale, load_id="run-2")

    asyncio.run(scenario())


def test_one_frame_for_several_partitions_is_split_by_its_date_column() -> None:
    """Each row goes to the partition its date names; none is dropped or invented."""
    frame = pd.DataFrame(
        {"sale_id": [1, 2, 3], "data_date": [DAY, DAY + dt.timedelta(days=1), DAY]}
    )
    keys = [DAY.isoformat(), (DAY + dt.timedelta(days=1)).isoformat()]
    parts = split_by_partition(frame, "data_date", keys, "test")
    assert {k: t.column("sale_id").to_pylist() for k, t in parts.items()} == {
        keys[0]: [1, 3],
        keys[1]: [2],
    }


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (pd.DataFrame({"sale_id": [1]}), "has no partition column 'data_date'"),
        (
            pd.DataFrame({"sale_id": [1, 2], "data_date": [DAY, DAY + dt.timedelta(days=9)]}),
            "1 of its 2 rows have a 'data_date' that is null or outside the run's partitions",
        ),
    ],
    ids=["no date column", "a row outside the run"],
)
def test_a_frame_that_cannot_be_split_is_refused(frame: pd.DataFrame, message: str) -> None:
    """Without the date column, or with rows outside the run, nothing is loaded."""
    with pytest.raises(ConfigurationError, match=message):
        split_by_partition(frame, "data_date", [DAY.isoformat()], "test")
