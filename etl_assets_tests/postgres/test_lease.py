"""The load lease holds through a real PgBouncer in both pool modes (a real slow load)."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from etl_assets.errors import FatalError, LeaseLostError
from etl_assets.postgres.housekeeping import cleanup
from etl_assets.postgres.ledger import Ledger
from etl_assets.postgres.resource import PostgresResource
from etl_assets.postgres.retry import RetryPolicy
from etl_assets.postgres.sql import qualified
from etl_assets_tests.postgres.helpers import (
    DAY,
    events_target,
    execute,
    fetch,
    load,
    partition_audit,
    records,
)
from etl_assets_tests.postgres.test_housekeeping import load_state, start_load, wait_for_batches


def start_slow_load(
    dsn: str, schema: str, load_id: str, n: int, delay: float, ttl_s: float = 120.0
) -> subprocess.Popen[str]:
    return start_load(dsn, schema, load_id, DAY, n, delay, ttl_s)


def abandoned_by_cleanup(dsn: str, schema: str) -> list[str]:
    async def clean() -> list[str]:
        async with PostgresResource(dsn=dsn).pool() as pool:
            report = await cleanup(pool, Ledger(schema), RetryPolicy())
        return [load.key.load_id for load in report.abandoned]

    return asyncio.run(clean())


def leases(dsn: str, schema: str) -> list[tuple[Any, ...]]:
    rows = asyncio.run(
        fetch(
            dsn,
            f"SELECT load_id, session_pid IS NOT NULL, expires_at > clock_timestamp() "
            f"FROM {qualified(schema, 'load_leases')} ORDER BY load_id",
        )
    )
    return [tuple(r) for r in rows]


def test_a_slow_load_is_never_abandoned_by_cleanup_or_a_second_load(
    bouncer: str, pg_dsn: str, schema: str
) -> None:
    """Cleanup (through PgBouncer and direct) and a second load leave a live load alone."""
    live = start_slow_load(bouncer, schema, "live", 800, 0.008)
    try:
        wait_for_batches(pg_dsn, schema, "live", 1)
        assert leases(pg_dsn, schema) == [("live", False, True)]  # pooled: the lease alone
        assert abandoned_by_cleanup(bouncer, schema) == []
        assert abandoned_by_cleanup(pg_dsn, schema) == []
        second = asyncio.run(load(bouncer, events_target(schema), records(300), load_id="second"))
        assert (second.written, second.published) == (300, True)
        with pytest.raises(FatalError, match="'live' is already running in another process"):
            asyncio.run(load(bouncer, events_target(schema), records(5), load_id="live"))
        assert load_state(pg_dsn, schema) == {
            "live": ("loading", True),
            "second": ("published", False),
        }
        out, err = live.communicate(timeout=120)
    finally:
        live.kill()
    assert live.returncode == 0, err[-2000:]
    assert out.split() == ["800"]
    assert load_state(pg_dsn, schema) == {
        "live": ("published", False),
        "second": ("published", False),
    }
    audit = asyncio.run(partition_audit(pg_dsn, events_target(schema), DAY, schema))
    assert (audit.problems, audit.written, audit.in_table) == ((), 800, 800)
    assert leases(pg_dsn, schema) == []


def test_a_killed_load_behind_pgbouncer_is_abandoned_once_its_lease_expired(
    bouncer_transaction: str, pg_dsn: str, schema: str
) -> None:
    """No advisory lock to free behind a pooler: the lease's expiry tells the load is dead."""
    killed = start_slow_load(bouncer_transaction, schema, "killed", 2_000, 0.01, ttl_s=2.0)
    wait_for_batches(pg_dsn, schema, "killed", 2)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait(timeout=30)
    assert abandoned_by_cleanup(bouncer_transaction, schema) == []  # its lease still runs
    time.sleep(2.5)
    assert abandoned_by_cleanup(bouncer_transaction, schema) == ["killed"]
    assert load_state(pg_dsn, schema) == {"killed": ("abandoned", False)}
    assert leases(pg_dsn, schema) == []


def test_a_direct_load_holds_its_lease_and_its_advisory_lock(pg_dsn: str, schema: str) -> None:
    """On a proven direct session the lease also trusts the session lock: alive while it
    runs, abandoned the moment a SIGKILL frees the lock (no waiting for the expiry)."""
    live = start_slow_load(pg_dsn, schema, "live", 2_000, 0.01)
    try:
        wait_for_batches(pg_dsn, schema, "live", 1)
        assert leases(pg_dsn, schema) == [("live", True, True)]
        assert abandoned_by_cleanup(pg_dsn, schema) == []
        os.kill(live.pid, signal.SIGKILL)
        live.wait(timeout=30)
    finally:
        live.kill()
    assert leases(pg_dsn, schema) == [("live", True, True)]  # unexpired: 120 s to go
    assert abandoned_by_cleanup(pg_dsn, schema) == ["live"]
    assert load_state(pg_dsn, schema) == {"live": ("abandoned", False)}


def test_a_load_whose_lease_was_taken_over_fails_and_publishes_nothing(
    bouncer_transaction: str, pg_dsn: str, schema: str
) -> None:
    """A lease gone from under a running load cancels it with LeaseLostError, unpublished."""
    table = qualified(schema, "load_leases")

    def source() -> Iterator[dict[str, Any]]:
        for i, record in enumerate(records(1_000)):
            if i == 300:  # as a cleanup would, once the lease had lapsed
                taker = threading.Thread(
                    target=lambda: asyncio.run(execute(pg_dsn, f"DELETE FROM {table}"))
                )
                taker.start()
                taker.join()
            if i >= 300:
                time.sleep(0.002)
            yield record

    with pytest.raises(LeaseLostError) as caught:
        asyncio.run(
            load(bouncer_transaction, events_target(schema), source(), batch_size=100,
                 lease_ttl_s=0.4)
        )  # fmt: skip
    assert str(caught.value) == (
        f"{events_target(schema).name} partition {DAY}: load 'run-1' lost its lease: no "
        "renewal reached the server for lease_ttl_s=0.4 s (the server unreachable that long, "
        "or this process stalled), so a cleanup or another load of the partition took it "
        "over as dead. Nothing of this load was published; run it again (or raise "
        "lease_ttl_s on ResilientPostgresIOManager, the Component's load_settings or "
        "LoadSettings, if the server is often unreachable that long)"
    )
    assert load_state(pg_dsn, schema) == {"run-1": ("failed", True)}
    audit = asyncio.run(partition_audit(pg_dsn, events_target(schema), DAY, schema))
    assert audit.in_table == 0


def test_concurrent_loads_of_different_days_through_pgbouncer_are_exact(
    bouncer: str, pg_dsn: str, schema: str
) -> None:
    """Two days at once on one pool, then a reload of one: every count and key exact."""
    target = events_target(schema)
    other = DAY + dt.timedelta(days=1)

    async def both() -> list[int]:
        reports = await asyncio.gather(
            load(bouncer, target, records(1_500), day=DAY, load_id="a", batch_size=200),
            load(bouncer, target, records(700, tag="v"), day=other, load_id="b", batch_size=200),
        )
        again = await load(bouncer, target, records(900), day=DAY, load_id="c", batch_size=200)
        return [r.written for r in (*reports, again)]

    assert asyncio.run(both()) == [1_500, 700, 900]
    for day, n in ((DAY, 900), (other, 700)):
        audit = asyncio.run(partition_audit(pg_dsn, target, day, schema))
        assert (audit.problems, audit.written, audit.in_table) == ((), n, n)
