"""Real faults, never mocks: cut connections, killed backends, unreachable servers."""

from __future__ import annotations

import asyncio
import time
import urllib.parse

import pytest

from etl_assets.postgres.resource import APPLICATION_NAME, ConnectionFailedError, PostgresResource
from etl_assets.postgres.sql import qualified
from etl_assets.postgres.target import WriteMode
from etl_assets_tests.faults.harness import our_connections
from etl_assets_tests.postgres.helpers import (
    events_target,
    expected,
    fetch,
    ledger_sums,
    load,
    records,
    table_rows,
)
from etl_assets_tests.postgres.proxy import FaultProxy


@pytest.mark.parametrize("mode", [WriteMode.REPLACE, WriteMode.UPSERT])
def test_batch_whose_commit_outcome_was_lost_is_not_written_twice(
    pg_dsn: str, schema: str, mode: WriteMode
) -> None:
    """The link dies right after COMMIT reached the server: the retry finds it, counts it once."""
    target = events_target(schema, mode)
    url = urllib.parse.urlsplit(pg_dsn)

    async def scenario() -> None:
        async with FaultProxy(url.hostname or "127.0.0.1", url.port or 5432) as proxy:
            proxy.cut_on_commits(5)  # 1: the ledger, 2: the lease, 3: begin, 4, 5: batches
            report = await load(proxy.dsn(pg_dsn), target, records(6_000), writers=1)
        assert proxy.cuts == 1
        assert report.batches_resumed == 1  # the batch that committed unseen, counted once
        assert (report.enqueued, report.written, report.dead_lettered) == (6_000, 6_000, 0)
        assert await table_rows(pg_dsn, target) == expected(6_000)
        assert await ledger_sums(pg_dsn, schema, "run-1") == (6, 6_000, 6_000, 0)

    asyncio.run(scenario())


def test_backend_killed_mid_copy_is_retried_without_loss_or_duplicates(
    pg_dsn: str, schema: str
) -> None:
    """pg_terminate_backend of writers during COPY: retried, 0 lost, 0 duplicated."""
    target = events_target(schema)

    async def killer(stop: asyncio.Event, kills: list[int]) -> None:
        while not stop.is_set() and len(kills) < 3:
            rows = await fetch(
                pg_dsn,
                "SELECT pg_terminate_backend(pid), pid FROM pg_stat_activity "
                "WHERE application_name = $1 AND query LIKE 'COPY%' AND state = 'active'",
                APPLICATION_NAME,
            )
            kills.extend(r["pid"] for r in rows if r[0])
            await asyncio.sleep(0.002)

    async def scenario() -> None:
        stop, kills = asyncio.Event(), list[int]()
        task = asyncio.create_task(killer(stop, kills))
        report = await load(pg_dsn, target, records(60_000), batch_size=2_000, writers=3)
        stop.set()
        await task
        assert kills, "the fault was never injected: no COPY was caught in flight"
        assert report.retries >= 1
        assert (report.enqueued, report.written, report.dead_lettered) == (60_000, 60_000, 0)
        assert await table_rows(pg_dsn, target) == expected(60_000)
        assert await our_connections(pg_dsn) == 0

    asyncio.run(scenario())


def test_failed_load_leaves_no_connection_open(pg_dsn: str, schema: str) -> None:
    """After a load fails, every pooled connection is closed (pg_stat_activity is the judge)."""
    target = events_target(schema)

    def broken() -> object:
        yield from records(5_000)
        raise ValueError("source broke")

    async def scenario() -> None:
        with pytest.raises(ValueError, match="source broke"):
            await load(pg_dsn, target, broken(), writers=3)
        assert await our_connections(pg_dsn) == 0

    asyncio.run(scenario())


def test_unreachable_server_fails_clearly_within_bounded_time(pg_dsn: str) -> None:
    """No server on the port: bounded retries, then an error naming the host and the fix."""
    url = urllib.parse.urlsplit(pg_dsn)
    dsn = f"postgresql://etl:s3cret-pw@127.0.0.1:1/{url.path.lstrip('/')}"
    resource = PostgresResource(dsn=dsn, connect_attempts=3, connect_timeout_s=2)

    async def scenario() -> None:
        async with resource.pool():
            pass

    started = time.monotonic()
    with pytest.raises(ConnectionFailedError) as info:
        asyncio.run(scenario())
    assert time.monotonic() - started < 20
    message = str(info.value)
    assert "127.0.0.1:1" in message
    assert "after 3 attempt(s)" in message
    assert "s3cret-pw" not in message
    assert info.value.__cause__ is None  # asyncpg's own message may quote the DSN


def test_malformed_dsn_is_a_configuration_error_without_the_secret() -> None:
    """A DSN asyncpg cannot parse gives a clear message that does not echo the password."""
    resource = PostgresResource(dsn="postgresql://u:hunter2@host:notaport/db")

    async def scenario() -> None:
        async with resource.pool():
            pass

    with pytest.raises(Exception, match="malformed") as info:
        asyncio.run(scenario())
    assert "hunter2" not in str(info.value)


def test_dead_letter_table_has_one_row_per_rejected_record_after_commit_loss(
    pg_dsn: str, schema: str
) -> None:
    """Commits lost in preparation and in a batch with a dead letter: retried, nothing doubled."""
    target = events_target(schema)
    url = urllib.parse.urlsplit(pg_dsn)
    rows = [*records(100), {"event_id": 1000}]  # last record lacks columns: dead letter

    async def scenario() -> None:
        async with FaultProxy(url.hostname or "127.0.0.1", url.port or 5432) as proxy:
            # COMMIT 1: the ledger's DDL (retried, then found done); 2: the lease;
            # 3: the load's begin; 4: the batch.
            proxy.cut_on_commits(1, 4)
            report = await load(proxy.dsn(pg_dsn), target, rows, batch_size=1_000)
        assert proxy.cuts == 2
        assert (report.written, report.dead_lettered, report.batches_resumed) == (100, 1, 1)
        count = await fetch(pg_dsn, f"SELECT count(*) FROM {qualified(schema, 'dead_letters')}")
        assert count[0][0] == 1

    asyncio.run(scenario())


@pytest.mark.parametrize("through", ["direct", "pgbouncer"])
def test_a_lease_claim_whose_commit_reply_was_lost_is_claimed_again(
    pg_dsn: str, schema: str, through: str, request: pytest.FixtureRequest
) -> None:
    """The lease's COMMIT reached the server unseen: the retry finds its own claim (behind
    a pooler, where no advisory lock vouches for it, too)."""
    target = events_target(schema)
    dsn = pg_dsn if through == "direct" else request.getfixturevalue("bouncer_transaction")
    url = urllib.parse.urlsplit(dsn)

    async def scenario() -> None:
        async with FaultProxy(url.hostname or "127.0.0.1", url.port or 5432) as proxy:
            # direct: 1: the ledger, 2: the lease; pooled, the pooler probe's COMMIT first
            proxy.cut_on_commits(2 if through == "direct" else 3)
            report = await load(proxy.dsn(dsn), target, records(500), batch_size=100)
        assert proxy.cuts == 1
        assert (report.written, report.published) == (500, True)
        assert await table_rows(pg_dsn, target) == expected(500)

    asyncio.run(scenario())


def test_discarding_a_connection_the_pool_already_let_go_does_not_hide_the_error(
    pg_dsn: str,
) -> None:
    """Regression (soak run): ``terminate()`` on a proxy the pool had detached raised
    InterfaceError and replaced the real error. Discarding it now is a no-op."""
    from asyncpg.exceptions import _base as pgbase

    from etl_assets.postgres.retry import discard

    async def scenario() -> None:
        async with PostgresResource(dsn=pg_dsn).pool() as pool:
            proxy = await pool.acquire()
            await pool.release(proxy)
            with pytest.raises(pgbase.InterfaceError, match="released back to the pool"):
                proxy.terminate()
            discard(proxy)

    asyncio.run(scenario())
