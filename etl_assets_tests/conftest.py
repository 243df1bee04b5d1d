"""Fixtures: a real PostgreSQL (embedded, or ETL_ASSETS_TEST_DSN) and a schema per test."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import traceback
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import stamina

from etl_assets.postgres.embedded import EmbeddedPostgres
from etl_assets.postgres.sql import quote_ident
from etl_assets_tests.pgbouncer import pgbouncer
from etl_assets_tests.postgres.helpers import execute


@pytest.fixture(scope="session", autouse=True)
def _instant_retries() -> Iterator[None]:
    """Retries still happen (up to 6 attempts) but never sleep through backoff."""
    with stamina.set_testing(True, attempts=6, cap=True):
        yield


@pytest.fixture(scope="session")
def pg_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """DSN of the server the tests use: ETL_ASSETS_TEST_DSN, else an embedded one."""
    external = os.environ.get("ETL_ASSETS_TEST_DSN")
    if external:
        yield external
        return
    server = EmbeddedPostgres(
        Path(tmp_path_factory.mktemp("pg")) / "pgdata",
        settings={"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"},
    )
    with server.leased() as dsn:
        yield dsn


@pytest.fixture(scope="session")
def bouncer_transaction(pg_dsn: str) -> Iterator[str]:
    """The test server through a real PgBouncer in transaction mode (pool of 20)."""
    with pgbouncer(pg_dsn, pool_mode="transaction") as dsn:
        yield dsn


@pytest.fixture(scope="session")
def bouncer_session(pg_dsn: str) -> Iterator[str]:
    """The test server through a real PgBouncer in session mode (pool of 20)."""
    with pgbouncer(pg_dsn, pool_mode="session") as dsn:
        yield dsn


@pytest.fixture(params=["transaction", "session"])
def bouncer(request: pytest.FixtureRequest) -> str:
    """Each test that takes it runs through PgBouncer in both pool modes."""
    dsn: str = request.getfixturevalue(f"bouncer_{request.param}")
    return dsn


@pytest.fixture
def schema(pg_dsn: str) -> Iterator[str]:
    """A fresh schema (with a quote and a space in its name) dropped after the test."""
    name = f'etl test "{uuid.uuid4().hex[:8]}"'
    yield name
    asyncio.run(execute(pg_dsn, f"DROP SCHEMA IF EXISTS {quote_ident(name)} CASCADE"))


@pytest.fixture
def db_dsn(pg_dsn: str) -> Iterator[str]:
    """A database of its own for the test (the example tables live in ``public``)."""
    name = f"etl_{uuid.uuid4().hex[:10]}"
    asyncio.run(execute(pg_dsn, f'CREATE DATABASE "{name}"'))
    yield urllib.parse.urlsplit(pg_dsn)._replace(path=f"/{name}").geturl()
    asyncio.run(execute(pg_dsn, f'DROP DATABASE "{name}" WITH (FORCE)'))


_EXIT_STATUS: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With ETL_ASSETS_RELIABILITY_REPORT=path, write the fault scenarios' table there."""
    _EXIT_STATUS.append(int(exitstatus))
    from etl_assets_tests.faults.harness import OUTCOMES, REPORT_ENV, write_report

    path = os.environ.get(REPORT_ENV)
    if path and OUTCOMES:
        write_report(Path(path))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """A thread left running by a test must not hang the suite at exit: name it, exit.

    Once (CI-like full run) the session printed its summary and then waited for ever on
    a thread a test had left behind; ``.ci/run`` would have run into its time limit.
    So after the summary, every non-daemon thread gets 10 s to end; those that do not
    are printed with their stacks (where it waits names the culprit) and the process
    exits with the session's own status: the tests' verdict stands, and the leak is on
    record in the output instead of a run killed at its time limit.
    """
    lingering = [
        t for t in threading.enumerate() if not t.daemon and t is not threading.main_thread()
    ]
    for thread in lingering:
        thread.join(timeout=10)
    stuck = [t for t in lingering if t.is_alive()]
    if not stuck:
        return
    frames = sys._current_frames()
    out = sys.__stderr__ or sys.stderr
    for thread in stuck:
        stack = (
            "".join(traceback.format_stack(frames[thread.ident])) if thread.ident in frames else ""
        )
        out.write(f"\nLEAKED THREAD {thread.name!r} still running after the session:\n{stack}")
    out.flush()
    os._exit(_EXIT_STATUS[0] if _EXIT_STATUS else 1)
