"""Every common column type, declared through Dagster (``PostgresTable``) and read back equal.

(No ``from __future__ import annotations``: the assets below are decorated in the tests.)
"""

import asyncio
import datetime as dt
import decimal
import enum
import ipaddress
import json
import uuid
from typing import Any

import dagster as dg
import pandas as pd
import pydantic
import pytest

from etl_assets.checks import partition_checks
from etl_assets.example.partitions import daily
from etl_assets.io_manager import PartitionRecords
from etl_assets.postgres.target import Column
from etl_assets.spec import PostgresTable
from etl_assets_tests.postgres.helpers import execute, fetch

DAY = "2024-06-03"
D = decimal.Decimal


class Mood(enum.Enum):
    HAPPY = "happy"
    SAD = "sad"


class Wide(pydantic.BaseModel):
    id: int
    doc: dict[str, Any]  # -> jsonb
    raw: dict[str, Any]  # declared json
    tags: list[str]  # -> text[]
    nums: list[int]  # -> bigint[]
    days: list[dt.date]  # -> date[]
    small: int  # declared smallint
    medium: int  # declared integer
    amount: D  # declared numeric(12,4)
    ident: uuid.UUID
    ip: ipaddress.IPv4Address  # -> inet
    net: ipaddress.IPv4Network  # -> cidr
    took: dt.timedelta  # -> interval
    blob: bytes
    clock: dt.time
    naive: pydantic.NaiveDatetime  # -> timestamp
    mood: Mood  # declared as the user's enum type
    docs: list[dict[str, Any]]  # declared jsonb[]
    moods: list[Mood]  # declared as an array of the user's enum type


WIDE = PostgresTable(
    table="wide",
    model=Wide,
    primary_key=("data_date", "id"),
    columns=(
        Column("raw", "json"),
        Column("small", "smallint", nullable=False),
        Column("medium", "integer"),
        Column("amount", "numeric(12,4)"),
        Column("mood", "public.mood"),
        Column("docs", "jsonb[]"),
        Column("moods", "public.mood[]"),
    ),
)


def record(i: int) -> dict[str, Any]:
    return {
        "id": i,
        "doc": {"k": i, "nested": {"list": [1, "two", None, True]}, "text": "é\"'"},
        "raw": {"b": 1, "a": [i]},
        "tags": ["x", f"t{i}", "with,comma"],
        "nums": [i, -(2**62), 0],
        "days": [dt.date(2024, 1, 1), dt.date(1999, 12, 31)],
        "small": -32768 + i,
        "medium": 2**31 - 1 - i,
        "amount": D("12345678.1234") - i,
        "ident": uuid.UUID(int=i + 1),
        "ip": ipaddress.IPv4Address(f"10.0.0.{i}"),
        "net": ipaddress.IPv4Network(f"10.{i}.0.0/16"),
        "took": dt.timedelta(days=i, seconds=5, microseconds=7),
        "blob": bytes([0, 255, i]),
        "clock": dt.time(23, 59, 59, 999_999 - i),
        "naive": dt.datetime(2024, 6, 3, 12, i % 60, 0),
        "mood": Mood.SAD if i % 2 else Mood.HAPPY,
        "docs": [{"n": i}, {"other": [True, None]}],
        "moods": [Mood.HAPPY, Mood.SAD, Mood.HAPPY],
    }


def read_back(row: Any) -> dict[str, Any]:
    """A row of the table as the values the model holds (json as parsed, enum by value)."""
    values = dict(row)
    values.pop("data_date")
    values["doc"], values["raw"] = json.loads(values["doc"]), json.loads(values["raw"])
    values["mood"] = Mood(values["mood"])
    values["docs"] = [json.loads(d) for d in values["docs"]]
    values["moods"] = [Mood(m) for m in values["moods"]]
    values["net"] = ipaddress.IPv4Network(values["net"])
    return values


def frame_of(records: list[dict[str, Any]]) -> pd.DataFrame:
    """The records as a DataFrame source would carry them: JSON as JSON text (Arrow cannot
    hold dicts of mixed shapes), ids, addresses and enums as text."""
    rows = [
        {
            **r,
            "doc": json.dumps(r["doc"]),
            "raw": json.dumps(r["raw"]),
            "ident": str(r["ident"]),
            "ip": str(r["ip"]),
            "net": str(r["net"]),
            "mood": r["mood"].value,
            "docs": [json.dumps(d) for d in r["docs"]],
            "moods": [m.value for m in r["moods"]],
        }
        for r in records
    ]
    return pd.DataFrame(rows)


def wide_asset(source: Any) -> dg.AssetsDefinition:
    @dg.asset(
        name="wide", partitions_def=daily, io_manager_key="postgres_io_manager",
        metadata=WIDE.metadata(),
    )  # fmt: skip
    def wide(context: dg.AssetExecutionContext) -> PartitionRecords:
        return {context.partition_key: source}

    return wide


def run(asset: dg.AssetsDefinition, resources: dict[str, Any], instance: Any) -> Any:
    return dg.materialize(
        [asset, *partition_checks(asset)],
        resources=resources,
        instance=instance,
        partition_key=DAY,
        raise_on_error=False,
    )


def test_explicit_columns_round_trip_through_definition_metadata() -> None:
    """The spec rebuilt from the asset's metadata declares the same columns."""
    asset = wide_asset([])
    rebuilt = PostgresTable.from_metadata(asset.metadata_by_key[asset.key], "wide")
    assert rebuilt == WIDE
    assert {c.name: c.pg_type for c in rebuilt.target().columns} == {
        "id": "bigint", "doc": "jsonb", "raw": "json", "tags": "text[]", "nums": "bigint[]",
        "days": "date[]", "small": "smallint", "medium": "integer", "amount": "numeric(12,4)",
        "ident": "uuid", "ip": "inet", "net": "cidr", "took": "interval", "blob": "bytea",
        "clock": "time", "naive": "timestamp", "mood": "public.mood", "docs": "jsonb[]",
        "moods": "public.mood[]",
    }  # fmt: skip


@pytest.mark.parametrize("path", ["records", "dataframe"])
def test_every_type_loads_through_dagster_and_reads_back_equal(
    path: str, db_dsn: str, resources: dict[str, Any], instance: dg.DagsterInstance
) -> None:
    """19 column types in one table, on the record and the DataFrame path: each value equal,
    the checks green (the key digest checked)."""
    asyncio.run(execute(db_dsn, "CREATE TYPE public.mood AS ENUM ('happy', 'sad')"))
    records = [record(i) for i in range(1, 6)]
    source = records if path == "records" else frame_of(records)
    result = run(wide_asset(source), resources, instance)
    assert result.success
    [event] = result.asset_materializations_for_node("wide")
    assert (event.metadata["written"].value, event.metadata["dead_lettered"].value) == (5, 0)
    rows = asyncio.run(fetch(db_dsn, "SELECT * FROM public.wide ORDER BY id"))
    assert [read_back(r) for r in rows] == [Wide(**r).model_dump() for r in records]
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == dict.fromkeys(checks, True)
    assert len(checks) == 3


def test_a_value_without_a_json_form_is_one_dead_letter_and_the_rest_is_written(
    db_dsn: str, resources: dict[str, Any], instance: dg.DagsterInstance
) -> None:
    """A set and a NaN inside a dict for jsonb: one dead letter each with the reason, never
    a raw TypeError; the dict records beside them are written as their JSON."""
    asyncio.run(execute(db_dsn, "CREATE TYPE public.mood AS ENUM ('happy', 'sad')"))
    records = [record(i) for i in range(1, 101)]
    records[10]["doc"] = {"tags": {"a", "b"}}
    records[20]["doc"] = {"ratio": float("nan")}
    result = run(wide_asset(records), resources, instance)
    assert result.success
    [event] = result.asset_materializations_for_node("wide")
    assert (event.metadata["written"].value, event.metadata["dead_lettered"].value) == (98, 2)
    letters = asyncio.run(
        fetch(
            db_dsn,
            "SELECT record_no, error_class, error_message FROM etl.dead_letters ORDER BY record_no",
        )
    )
    assert [(r["record_no"], r["error_class"]) for r in letters] == [
        (10, "UnencodableValue"),
        (20, "UnencodableValue"),
    ]
    assert letters[0]["error_message"] in {
        f"doc: no JSON form: a set value ({text}) has no JSON form"
        for text in ("{'a', 'b'}", "{'b', 'a'}")
    }
    assert letters[1]["error_message"] == "doc: a NaN or infinite float has no JSON form"
    docs = asyncio.run(fetch(db_dsn, "SELECT doc FROM public.wide WHERE id = 1"))
    assert json.loads(docs[0]["doc"]) == record(1)["doc"]


def test_a_dataframe_column_of_dicts_into_jsonb_is_refused_with_the_way_that_works(
    db_dsn: str, resources: dict[str, Any], instance: dg.DagsterInstance
) -> None:
    """Arrow makes dicts a struct (every key in every row): refused, nothing written, the
    message says to carry JSON text."""
    asyncio.run(execute(db_dsn, "CREATE TYPE public.mood AS ENUM ('happy', 'sad')"))
    records = [record(i) for i in range(1, 3)]
    for i, r in enumerate(records):
        r["doc"] = {"k": i} if i else {"j": i}
    frame = frame_of(records).assign(doc=[r["doc"] for r in records])
    result = run(wide_asset(frame), resources, instance)
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.to_string()  # type: ignore[union-attr]
    assert "column 'doc' of the DataFrame is struct<" in message
    assert "as JSON text" in message
    rows = asyncio.run(fetch(db_dsn, "SELECT count(*) FROM public.wide"))
    assert rows[0][0] == 0


class Arrays(pydantic.BaseModel):
    """Only types pgpq encodes: a DataFrame of it is written by binary COPY, not per record."""

    id: int
    nums: list[int]  # -> bigint[]
    ints: list[int]  # declared integer[]
    tags: list[str]  # -> text[]
    days: list[dt.date]  # -> date[]
    small: int  # declared smallint
    clock: dt.time
    blob: bytes
    flag: bool


ARRAYS = PostgresTable(
    table="arrays",
    model=Arrays,
    primary_key=("data_date", "id"),
    columns=(Column("ints", "integer[]"), Column("small", "smallint")),
)


def arrays_record(i: int) -> dict[str, Any]:
    return {
        "id": i,
        "nums": [i, -(2**62)],
        "ints": [i, 2**31 - 1],
        "tags": [f"t{i}", "with,comma", ""],
        "days": [dt.date(2024, 1, 1 + i % 28)],
        "small": i,
        "clock": dt.time(1, 2, 3, i),
        "blob": bytes([i % 256]),
        "flag": bool(i % 2),
    }


def test_arrays_of_a_vectorisable_model_take_the_binary_copy_path() -> None:
    """list[int], list[str], list[date] into arrays: the batch is validated column-wise."""
    from etl_assets.arrow_shaper import ArrowShaper

    types = {c.name: c.pg_type for c in ARRAYS.target().columns}
    types["clock"] = "time without time zone"  # format_type's spelling, as the table has it
    columns = tuple(types)
    shaper = ArrowShaper(types, columns, "data_date", dt.date(2024, 6, 3), Arrays)
    assert shaper.vectorised


def test_arrays_load_from_a_dataframe_and_bad_items_are_dead_letters(
    db_dsn: str, resources: dict[str, Any], instance: dg.DagsterInstance
) -> None:
    """40 rows by binary COPY, read back equal; a null item in a list[int] and an item out
    of integer range are one dead letter each, the rest written."""
    records = [arrays_record(i) for i in range(40)]
    records[7]["nums"] = [1, None]
    records[9]["ints"] = [2**40]

    @dg.asset(
        name="arrays", partitions_def=daily, io_manager_key="postgres_io_manager",
        metadata=ARRAYS.metadata(),
    )  # fmt: skip
    def arrays(context: dg.AssetExecutionContext) -> PartitionRecords:
        return {context.partition_key: pd.DataFrame(records)}

    result = run(arrays, resources, instance)
    assert result.success
    [event] = result.asset_materializations_for_node("arrays")
    assert (event.metadata["written"].value, event.metadata["dead_lettered"].value) == (38, 2)
    letters = asyncio.run(
        fetch(db_dsn, "SELECT record_no, error_message FROM etl.dead_letters ORDER BY 1")
    )
    assert [r["record_no"] for r in letters] == [7, 9]
    assert letters[0]["error_message"].startswith("nums.1: ")
    assert letters[1]["error_message"].startswith("ints: ")
    rows = asyncio.run(fetch(db_dsn, "SELECT * FROM public.arrays ORDER BY id"))
    expected = [Arrays(**r).model_dump() for i, r in enumerate(records) if i not in (7, 9)]
    assert [{k: v for k, v in dict(r).items() if k != "data_date"} for r in rows] == expected
