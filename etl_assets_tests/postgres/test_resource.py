"""PostgresResource at its edges: malformed DSNs, and errors that carry no false context."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
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


def test_a_sigterm_landing_in_a_background_task_still_stops_the_work() -> None:
    """A real SIGTERM whose handler raises (as Dagster's does) while a background task is
    busy: that task would keep the interrupt to itself and the work would run on."""

    def dagster_like(signo: int, frame: object) -> None:
        raise Interrupted

    async def work() -> str:
        async def busy() -> None:
            while True:  # Python bytecode inside this task's step: the signal lands here
                until = time.monotonic() + 0.5
                while time.monotonic() < until:
                    pass
                await asyncio.sleep(0)

        background = asyncio.create_task(busy())
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()
        await asyncio.sleep(30)
        background.cancel()
        return "finished as if never stopped"

    previous = signal.signal(signal.SIGTERM, dagster_like)
    started = time.monotonic()
    try:
        with pytest.raises(Interrupted):
            run_sync(work)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert time.monotonic() - started < 5
    assert signal.getsignal(signal.SIGTERM) is previous  # handlers restored
