"""PostgresResource at its edges: malformed DSNs, and errors that carry no false context."""

from __future__ import annotations

import asyncio
import time

import pytest

from etl_assets.errors import ConfigurationError
from etl_assets.postgres.resource import PostgresResource, run_sync


@pytest.mark.parametrize(
    "dsn",
    ["postgresql://u:secret@127.0.0.1:99999/db", "postgresql://u:secret@127.0.0.1:port/db"],
    ids=["port out of range", "port not a number"],
)
def test_a_malformed_dsn_is_a_configuration_error_without_the_password(dsn: str) -> None:
    """A port past 65535 raised a raw OverflowError; now it names the expected form."""

    async def open_pool() -> None:
        async with PostgresResource(dsn=dsn).pool():
            pass

    with pytest.raises(ConfigurationError, match="DSN is malformed") as caught:
        asyncio.run(open_pool())
    assert "secret" not in str(caught.value)


def test_errors_through_run_sync_carry_no_spurious_loop_context() -> None:
    """An error raised by the coroutine is not chained to "no running event loop"."""

    async def fail() -> None:
        raise KeyError("boom")

    with pytest.raises(KeyError) as caught:
        run_sync(fail)
    assert caught.value.__context__ is None


class Interrupted(BaseException):
    """Like Dagster's DagsterExecutionInterruptedError: a BaseException, not an Exception."""


def test_an_interrupt_raised_in_an_event_loop_callback_stops_the_work() -> None:
    """A SIGTERM handler that fires while the loop runs a plain callback: asyncio alone would
    log the interrupt and let the work run on (CI saw a killed run finish with exit 0)."""
    cleaned_up = []

    async def work() -> str:
        def signal_handler_fires() -> None:
            raise Interrupted

        asyncio.get_running_loop().call_soon(signal_handler_fires)
        try:
            await asyncio.sleep(30)
        finally:
            cleaned_up.append(True)  # a load's own cleanup (mark failed) still runs
        return "finished as if never stopped"

    started = time.monotonic()
    with pytest.raises(Interrupted):
        run_sync(work)
    assert time.monotonic() - started < 5
    assert cleaned_up == [True]


def test_ordinary_callback_errors_still_go_to_asyncio_and_the_work_goes_on() -> None:
    """Only interrupts stop the work; an Exception in a callback is logged as before."""

    async def work() -> str:
        def broken_callback() -> None:
            raise ValueError("a callback's own bug")

        asyncio.get_running_loop().call_soon(broken_callback)
        await asyncio.sleep(0.05)
        return "done"

    assert run_sync(work) == "done"
