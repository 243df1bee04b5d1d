"""Shared test data: an events target, deterministic records, and database truth queries."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import asyncpg
import pydantic

from etl_assets.postgres.ledger import Ledger
from etl_assets.postgres.loader import LoadReport, LoadSettings, load_partition
from etl_assets.postgres.resource import PostgresResource
from etl_assets.postgres.sql import qualified
from etl_assets.postgres.target import Column, TableTarget, WriteMode
from etl_assets.postgres.verify import PartitionAudit, audit_partition

DAY = dt.date(2024, 3, 1)


class Event(pydantic.BaseModel):
    event_id: int
    user_name: str
    amount: float


def events_target(
    schema: str, mode: WriteMode = WriteMode.REPLACE, table: str = 'ev "log" x'
) -> TableTarget:
    return TableTarget(
        schema=schema,
        table=table,
        columns=(
            Column("event_id", "bigint", nullable=False),
            Column("user name", "text"),
            Column("amount", "double precision"),
        ),
        partition_column="data date",
        mode=mode,
        primary_key=("data date", "event_id"),
    )


def records(n: int, *, start: int = 0, tag: str = "u") -> Iterator[dict[str, Any]]:
    """Records as dicts keyed by the target's column names (a generator: streamed)."""
    for i in range(start, start + n):
        yield {"event_id": i, "user name": f"{tag}{i}", "amount": i * 0.5}


def settings(**kw: Any) -> LoadSettings:
    kw.setdefault("ledger_schema", kw.pop("schema"))
    kw.setdefault("batch_size", 1000)
    return LoadSettings(**kw)


async def load(
    dsn: str,
    target: TableTarget,
    rows: Any,
    *,
    load_id: str = "run-1",
    day: dt.date = DAY,
    **kw: Any,
) -> LoadReport:
    model = kw.pop("model", None)
    async with PostgresResource(dsn=dsn).pool() as pool:
        return await load_partition(
            pool,
            target,
            day,
            rows,
            load_id=load_id,
            model=model,
            settings=settings(schema=target.schema, **kw),
        )


async def fetch(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def execute(dsn: str, sql: str) -> None:
    """Run a script (several statements, no parameters)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def partition_audit(
    dsn: str, target: TableTarget, day: dt.date = DAY, ledger_schema: str = "etl"
) -> PartitionAudit:
    """The blocking check's verdict on one partition (database truth)."""
    conn = await asyncpg.connect(dsn)
    try:
        return await audit_partition(conn, Ledger(ledger_schema), target, day)
    finally:
        await conn.close()


async def table_rows(dsn: str, target: TableTarget, day: dt.date = DAY) -> list[tuple[Any, ...]]:
    rows = await fetch(
        dsn,
        f'SELECT event_id, "user name", amount FROM {target.sql_name} '
        f'WHERE "data date" = $1 ORDER BY event_id',
        day,
    )
    return [tuple(r) for r in rows]


async def dead_letters(dsn: str, schema: str) -> list[asyncpg.Record]:
    return await fetch(
        dsn,
        f"SELECT record_no, payload, error_class, error_message, sqlstate, error_detail "
        f"FROM {qualified(schema, 'dead_letters')} ORDER BY record_no",
    )


async def ledger_sums(dsn: str, schema: str, load_id: str) -> tuple[int, int, int, int]:
    row = (
        await fetch(
            dsn,
            f"SELECT count(*), sum(enqueued), sum(written), sum(dead_lettered) "
            f"FROM {qualified(schema, 'load_ledger')} WHERE load_id = $1",
            load_id,
        )
    )[0]
    return (row[0], row[1] or 0, row[2] or 0, row[3] or 0)


def expected(n: int, *, start: int = 0, tag: str = "u") -> list[tuple[Any, ...]]:
    return [(r["event_id"], r["user name"], r["amount"]) for r in records(n, start=start, tag=tag)]


def failing_after(n: int, tag: str) -> Iterator[dict[str, Any]]:
    yield from records(n, tag=tag)
    raise OSError("landing file vanished mid-read")
