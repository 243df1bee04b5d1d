"""no_duplicate_keys' database truth: a unique index proves it, otherwise a scan counts."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from etl_assets.postgres.sql import quote_ident
from etl_assets.postgres.target import Column, TableTarget
from etl_assets.postgres.verify import duplicate_keys, unique_index_covers
from etl_assets_tests.postgres.helpers import DAY, events_target, execute, load, records


async def _judge(dsn: str, target: TableTarget) -> tuple[bool, int]:
    conn = await asyncpg.connect(dsn)
    try:
        return await unique_index_covers(conn, target), await duplicate_keys(conn, target, DAY)
    finally:
        await conn.close()


def test_a_partition_under_the_tables_primary_key_needs_no_scan(pg_dsn: str, schema: str) -> None:
    """The package's own table has its primary key: duplicates are ruled out by the index."""
    target = events_target(schema)
    asyncio.run(load(pg_dsn, target, records(100)))

    assert asyncio.run(_judge(pg_dsn, target)) == (True, 0)


@pytest.mark.parametrize(
    ("index", "why"),
    [
        ("", "no index"),
        ('CREATE UNIQUE INDEX ON {t} ("data date", event_id) WHERE amount > 0', "partial"),
        ('CREATE UNIQUE INDEX ON {t} ("data date", "user name")', "not the key's columns"),
        ('CREATE UNIQUE INDEX ON {t} ("data date", (md5("user name")))', "an expression"),
        ('CREATE UNIQUE INDEX ON {t} ("data date", nullable_id)', "a nullable column"),
    ],
)
def test_without_an_index_that_proves_it_the_partition_is_scanned(
    pg_dsn: str, schema: str, index: str, why: str
) -> None:
    """A plain table whose indexes do not rule duplicates out: the scan finds the repeat."""
    target = events_target(schema, table="plain")
    t = target.sql_name
    s = quote_ident(schema)
    asyncio.run(
        execute(
            pg_dsn,
            f'CREATE SCHEMA {s}; CREATE TABLE {t} ("data date" date NOT NULL, '
            'event_id bigint NOT NULL, "user name" text, amount double precision, '
            f"nullable_id bigint); INSERT INTO {t} VALUES "
            f"('{DAY}', 1, 'a', 1.0, 1), ('{DAY}', 1, 'b', -1.0, 2), ('{DAY}', 2, 'c', 1.0, 3); "
            + index.format(t=t),
        )
    )
    if "nullable" in index:  # a key with a nullable column: NULLs are distinct to the index
        target = TableTarget(
            schema=target.schema, table=target.table,
            columns=(*target.columns, Column("nullable_id", "bigint")),
            partition_column=target.partition_column,
            primary_key=("data date", "nullable_id"),
        )  # fmt: skip
        asyncio.run(execute(pg_dsn, f"INSERT INTO {t} VALUES ('{DAY}', 7, 'd', 1.0, NULL), "
                            f"('{DAY}', 8, 'e', 1.0, NULL)"))  # fmt: skip

    assert asyncio.run(_judge(pg_dsn, target)) == (False, 1), why
