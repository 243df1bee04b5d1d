"""Any value a record can hold lands in the dead-letter table; the partition still loads."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import json
from typing import Any

import pydantic
import pytest

from etl_assets.postgres.target import Column, TableTarget
from etl_assets.records import MAX_PAYLOAD_CHARS, OVERSIZED_HEAD_CHARS, payload_json
from etl_assets.spec import PostgresTable
from etl_assets_tests.postgres.helpers import dead_letters, ledger_sums, load


class Reading(pydantic.BaseModel):
    reading_id: int
    value: float


class Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")

    __str__ = __repr__


def readings_target(schema: str) -> TableTarget:
    return PostgresTable(
        table="readings", model=Reading, schema=schema, primary_key=("data_date", "reading_id")
    ).target()


def test_nan_in_an_int_field_is_dead_lettered_not_fatal(pg_dsn: str, schema: str) -> None:
    """NaN fails int validation; its payload stores as "NaN" and the partition loads."""
    rows = [
        {"reading_id": 1, "value": 1.0},
        {"reading_id": float("nan"), "value": float("inf")},
    ]

    async def scenario() -> None:
        report = await load(pg_dsn, readings_target(schema), rows, model=Reading)
        assert (report.written, report.dead_lettered) == (1, 1)
        [letter] = await dead_letters(pg_dsn, schema)
        assert json.loads(letter["payload"]) == {"reading_id": "NaN", "value": "Infinity"}

    asyncio.run(scenario())


def test_nan_in_a_float_field_is_written_as_nan(pg_dsn: str, schema: str) -> None:
    """On the record path NaN is a float value: double precision stores it as NaN."""

    async def scenario() -> None:
        target = readings_target(schema)
        report = await load(
            pg_dsn, target, [{"reading_id": 1, "value": float("nan")}], model=Reading
        )
        assert (report.written, report.dead_lettered) == (1, 0)

    asyncio.run(scenario())


def test_every_kind_of_value_is_storable_as_a_dead_letter(pg_dsn: str, schema: str) -> None:
    """bytes, Decimal, datetimes, nesting, 2 MB text, invalid Unicode, an unprintable object."""
    odd: dict[str, Any] = {
        "bytes": b"\x00\xff",
        "decimal": decimal.Decimal("1.10"),
        "when": dt.datetime(2024, 3, 1, 12, tzinfo=dt.UTC),
        "nested": {"a": [1, {"b": float("nan")}], 2: ("t", None)},
        "huge": "x" * 2_000_000,
        "invalid": b"caf\xff".decode("utf-8", "surrogateescape"),
        "nul": "a\x00b",
        "object": Unprintable(),
    }
    rows = [{"reading_id": i, "value": 1.0} for i in range(20)]
    rows += [{"reading_id": "bad", "value": 1.0, **odd}]

    async def scenario() -> None:
        report = await load(pg_dsn, readings_target(schema), rows, model=Reading)
        assert (report.enqueued, report.written, report.dead_lettered) == (21, 20, 1)
        [letter] = await dead_letters(pg_dsn, schema)
        payload = json.loads(letter["payload"])
        assert payload["bytes"] == "b'\\x00\\xff'"
        assert payload["decimal"] == "1.10"
        assert payload["when"] == "2024-03-01 12:00:00+00:00"
        assert payload["nested"] == {"a": [1, {"b": "NaN"}], "2": ["t", None]}
        assert len(payload["huge"]) == 2_000_000
        assert payload["invalid"] == "caf\\udcff"
        assert payload["nul"] == "a\u2400b"
        assert payload["object"] == "<unrepresentable Unprintable: RuntimeError>"
        assert (await ledger_sums(pg_dsn, schema, "run-1"))[1:] == (21, 20, 1)

    asyncio.run(scenario())


@pytest.mark.slow
def test_a_value_the_server_cannot_store_is_one_dead_letter(pg_dsn: str, schema: str) -> None:
    """A 270 MB string into jsonb (54000, over jsonb's 256 MB limit) is one dead letter with
    a labelled head of its payload; the other 99 records are loaded."""
    target = TableTarget(
        schema=schema,
        table="docs",
        columns=(Column("id", "bigint", nullable=False), Column("doc", "jsonb")),
        primary_key=("data_date", "id"),
    )
    rows: list[dict[str, Any]] = [{"id": i, "doc": {"k": i}} for i in range(100)]
    rows[70]["doc"] = {"big": "x" * (270 << 20)}

    async def scenario() -> None:
        report = await load(pg_dsn, target, rows)
        assert (report.enqueued, report.written, report.dead_lettered) == (100, 99, 1)
        [letter] = await dead_letters(pg_dsn, schema)
        assert (letter["record_no"], letter["sqlstate"]) == (70, "54000")
        assert letter["error_class"] == "ProgramLimitExceededError"
        payload = json.loads(letter["payload"])
        assert payload["oversized_payload"] is True
        assert (270 << 20) < payload["json_chars"] < (270 << 20) + 100
        assert len(payload["sha256"]) == 64
        head = payload["head"]
        assert len(head) == OVERSIZED_HEAD_CHARS
        assert head.startswith('{"id": 70, "doc": ')  # the value as it was sent: jsonb text

    asyncio.run(scenario())


def test_a_payload_over_the_limit_is_kept_as_a_labelled_head() -> None:
    """At the limit the payload is whole; one character over, it is the labelled head."""
    fits = {"t": "y" * (MAX_PAYLOAD_CHARS - len('{"t": ""}'))}
    assert json.loads(payload_json(fits)) == fits
    over = {"t": "y" * (MAX_PAYLOAD_CHARS - len('{"t": ""}') + 1)}
    kept = json.loads(payload_json(over))
    assert set(kept) == {"oversized_payload", "json_chars", "sha256", "head"}
    assert (kept["json_chars"], len(kept["head"])) == (MAX_PAYLOAD_CHARS + 1, OVERSIZED_HEAD_CHARS)
