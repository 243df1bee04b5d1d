"""A statement cancelled by statement_timeout fails at once, naming the setting; an
operator's cancel of the same statement is retried."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from etl_assets.errors import RetryableError, StatementTimeoutError
from etl_assets.postgres.key_audit import verify_keys
from etl_assets.postgres.ledger import Ledger
from etl_assets.postgres.resource import PostgresResource
from etl_assets.postgres.retry import RetryPolicy, with_retries
from etl_assets.postgres.verify import audit_partition
from etl_assets_tests.postgres.helpers import DAY, events_target, load, records


def test_a_statement_timeout_is_not_retried_and_names_the_setting(pg_dsn: str) -> None:
    """pg_sleep past a 100 ms statement_timeout: one attempt, the setting and fix named."""
    attempts = 0

    async def sleepy(conn: asyncpg.Connection) -> None:
        nonlocal attempts
        attempts += 1
        await conn.execute("SELECT pg_sleep(0.5)")

    async def scenario() -> None:
        resource = PostgresResource(dsn=pg_dsn)
        async with resource.pool(server_settings={"statement_timeout": "100ms"}) as pool:
            await with_retries(pool, RetryPolicy(), sleepy)

    with pytest.raises(StatementTimeoutError) as raised:
        asyncio.run(scenario())

    assert attempts == 1
    message = str(raised.value)
    assert message.startswith("a statement was cancelled by statement_timeout = 100 ms")
    assert "ALTER ROLE \"postgres\" SET statement_timeout = '10min'" in message
    assert raised.value.sqlstate == "57014"


def test_an_operators_cancel_is_retried(pg_dsn: str) -> None:
    """pg_cancel_backend of a running statement (no timeout set) is transient: retried."""
    attempts = 0

    async def cancelled_once(conn: asyncpg.Connection) -> int:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            pid = conn.get_server_pid()
            canceller = await asyncpg.connect(pg_dsn)
            try:
                sleeping = asyncio.create_task(conn.execute("SELECT pg_sleep(5)"))
                await asyncio.sleep(0.3)
                await canceller.execute("SELECT pg_cancel_backend($1)", pid)
                await sleeping
            finally:
                await canceller.close()
        return int(await conn.fetchval("SELECT 42"))

    async def scenario() -> int:
        async with PostgresResource(dsn=pg_dsn).pool() as pool:
            return await with_retries(pool, RetryPolicy(), cancelled_once)

    assert asyncio.run(scenario()) == 42
    assert attempts == 2


def test_a_check_under_a_role_timeout_fails_fast_naming_it(pg_dsn: str, schema: str) -> None:
    """The checks' scans of a 300k-row partition under a 20 ms timeout: no 120 s of retries."""
    target = events_target(schema)
    asyncio.run(load(pg_dsn, target, records(300_000), batch_size=50_000))
    ledger = Ledger(schema)

    async def check(conn: asyncpg.Connection) -> None:
        await audit_partition(conn, ledger, target, DAY)
        await verify_keys(conn, ledger, target, DAY)

    async def scenario() -> None:
        resource = PostgresResource(dsn=pg_dsn)
        async with resource.pool(server_settings={"statement_timeout": "20ms"}) as pool:
            await with_retries(pool, RetryPolicy(), check)

    with pytest.raises(StatementTimeoutError, match="statement_timeout = 20 ms"):
        asyncio.run(scenario())
    assert not issubclass(StatementTimeoutError, RetryableError)
