"""What is in front of the server is detected, through a real PgBouncer in both modes."""

from __future__ import annotations

import asyncio
import time
import urllib.parse

import asyncpg
import pytest

from etl_assets.errors import LoginRefusedError, PoolExhaustedError
from etl_assets.postgres.loader import LoadSettings, load_partition
from etl_assets.postgres.pooler import Pooling, detect_pooling
from etl_assets.postgres.resource import PostgresResource
from etl_assets_tests.pgbouncer import pgbouncer, with_user
from etl_assets_tests.postgres.helpers import DAY, events_target, fetch, partition_audit, records


def _detected(dsn: str) -> Pooling:
    return asyncio.run(detect_pooling(dsn, {}))


def _cache_size(resource: PostgresResource) -> int:
    async def size(pool: asyncpg.Pool) -> int:
        async with pool.acquire() as conn:
            return int(conn._stmt_cache.get_max_size())  # asyncpg exposes it no other way

    return resource.run(size)


def test_a_direct_connection_is_detected_as_direct(pg_dsn: str) -> None:
    """The server's start-up pid is the backend's own: no pooler in between."""
    assert _detected(pg_dsn) is Pooling.DIRECT


def test_pgbouncer_in_transaction_mode_is_detected(bouncer_transaction: str) -> None:
    """A client's backend changes between statements: a transaction pooler."""
    assert _detected(bouncer_transaction) is Pooling.TRANSACTION


def test_pgbouncer_in_session_mode_is_detected(bouncer_session: str) -> None:
    """A pooler that pins each client to one backend: a session pooler."""
    assert _detected(bouncer_session) is Pooling.SESSION


def test_statement_cache_is_off_behind_a_transaction_pooler_only(
    pg_dsn: str, bouncer_transaction: str, bouncer_session: str
) -> None:
    """Detected: 0 behind transaction pooling, asyncpg's 100 elsewhere; a setting wins."""
    assert _cache_size(PostgresResource(dsn=bouncer_transaction)) == 0
    assert _cache_size(PostgresResource(dsn=bouncer_session)) == 100
    assert _cache_size(PostgresResource(dsn=pg_dsn)) == 100
    assert _cache_size(PostgresResource(dsn=pg_dsn, statement_cache_size=0)) == 0


def test_a_wrong_password_through_pgbouncer_fails_at_once(bouncer: str) -> None:
    """PgBouncer's 08P01 refusal is fatal on the first attempt, password never shown."""
    dsn = with_user(bouncer, "postgres", "wrong-pw-s3cret")
    started = time.monotonic()
    with pytest.raises(LoginRefusedError) as caught:
        PostgresResource(dsn=dsn).run(lambda pool: asyncio.sleep(0))
    assert time.monotonic() - started < 5
    port = urllib.parse.urlsplit(dsn).port
    assert str(caught.value) == (
        f"the connection pooler at postgresql://postgres@127.0.0.1:{port}/postgres refused "
        "user 'postgres' [08P01]: fix the user or password in ETL_ASSETS_PG_DSN (the dsn of "
        "PostgresResource), or the pooler's auth_file / auth_query (PgBouncer: userlist.txt) "
        "for this user"
    )
    assert "wrong-pw-s3cret" not in repr(caught.value)


def _load_through(dsn: str, schema: str, n: int) -> int:
    async def run() -> int:
        async with PostgresResource(dsn=dsn, server_wait_s=2).pool() as pool:
            report = await load_partition(
                pool, events_target(schema), DAY, records(n), load_id="small-pool",
                settings=LoadSettings(ledger_schema=schema, batch_size=100),
            )  # fmt: skip
        return report.written

    return asyncio.run(run())


def test_a_session_pooler_pool_of_2_fails_a_load_within_the_bound(pg_dsn: str, schema: str) -> None:
    """A session pooler with 2 server connections for a step of 4: both sizes named, fast."""
    with pgbouncer(pg_dsn, pool_mode="session", pool_size=2, query_wait_timeout_s=0) as dsn:
        started = time.monotonic()
        with pytest.raises(PoolExhaustedError) as caught:
            _load_through(dsn, schema, 500)
        assert time.monotonic() - started < 10
    assert str(caught.value) == (
        "a session pooler in front of PostgreSQL gave this step 2 server connection(s) of the "
        "4 it may use (PostgresResource max_pool_size=4); the next waited 2 s (server_wait_s). "
        "Give the pooler's pool (PgBouncer: default_pool_size, or pool_size of the database, "
        "within max_db_connections and max_user_connections) at least concurrent steps x "
        "max_pool_size server connections, or lower max_pool_size (at least 2 for a load: "
        "README, Production PostgreSQL)"
    )
    tables = asyncio.run(
        fetch(pg_dsn, "SELECT count(*) FROM pg_tables WHERE schemaname = $1", schema)
    )
    assert tables[0][0] == 0  # refused before the ledger or a table was touched


def test_a_transaction_pooler_pool_of_2_queues_a_load_and_it_is_exact(
    pg_dsn: str, schema: str
) -> None:
    """Behind transaction pooling 2 server connections serve a step of 4, one transaction
    at a time each: the load waits its turn and is exact."""
    with pgbouncer(pg_dsn, pool_mode="transaction", pool_size=2) as dsn:
        assert _load_through(dsn, schema, 1_000) == 1_000
    audit = asyncio.run(partition_audit(pg_dsn, events_target(schema), DAY, schema))
    assert (audit.problems, audit.written, audit.in_table) == ((), 1_000, 1_000)
