"""Lock waits: retried behind readers within a budget, the holders named (no database)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

import pytest

from etl_assets.errors import PublishBlockedError
from etl_assets.postgres.lock_wait import _CONFLICTS, Blocker, LockWait, behind_readers

READER = Blocker(4711, "bi-reader", "idle in transaction", 41.2, dt.datetime(2024, 3, 1, 9))


def test_the_conflict_table_is_symmetric() -> None:
    """PostgreSQL's lock conflicts go both ways; a typo in the table would break that."""
    for mode, conflicts in _CONFLICTS.items():
        for other in conflicts:
            assert mode in _CONFLICTS[other], (mode, other)


def test_every_wait_is_logged_and_a_spent_budget_names_the_holders(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each lock timeout is one warning naming the holder; when the retries are spent the
    error names it too, with the settings and the fix."""
    attempts = 0

    async def always_blocked() -> None:
        nonlocal attempts
        attempts += 1
        raise LockWait([READER])

    log = logging.getLogger("test_lock_wait")
    with (
        caplog.at_level(logging.WARNING, "test_lock_wait"),
        pytest.raises(PublishBlockedError) as failed,
    ):
        asyncio.run(
            behind_readers(
                "t partition 2024-03-01", "public.t", always_blocked, doing="publish",
                lock_timeout_s=2.0, budget_s=300.0, log=log,
            )
        )  # fmt: skip
    assert attempts == 6  # the tests' stamina cap; in production the budget ends it
    waits = [r.getMessage() for r in caplog.records if r.name == "test_lock_wait"]
    assert len(waits) == 6
    assert waits[0].startswith(
        "t partition 2024-03-01: publish waited 2.0 s for its lock on public.t "
        "(lock_timeout_s), held by pid 4711 (application_name 'bi-reader', state idle in "
        "transaction, transaction open 41 s, query started 2024-03-01T09:00:00)"
    )
    message = str(failed.value)
    assert "lock_wait_budget_s=300" in message
    assert "behind pid 4711 (application_name 'bi-reader'" in message
    assert "this load's staged rows are kept" in message
    assert failed.value.sqlstate == "55P03"


def test_an_attempt_that_gets_its_lock_returns_at_once() -> None:
    """The second attempt gets the lock: its result, one wait."""
    calls: list[int] = []

    async def second_time_lucky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise LockWait([])
        return "published"

    result = asyncio.run(
        behind_readers(
            "k", "public.t", second_time_lucky, doing="prepare", lock_timeout_s=2.0,
            budget_s=300.0, log=logging.getLogger("test_lock_wait"),
        )
    )  # fmt: skip
    assert (result, len(calls)) == ("published", 2)
