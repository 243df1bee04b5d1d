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
    """After the summary, the process ends with the session's status, whatever lingers.

    Twice (2 of 5 full runs) the session printed its summary and then never exited: the
    main thread waited in interpreter shutdown on native threads (tokio and polars
    workers, and three unnamed ones started with polars'), no Python thread of ours among
    them. ``.ci/run`` would have run into its time limit. So a Python thread still
    running is printed with its stack (10 s grace each), and then the process exits at
    once with the session's own status, skipping the native finalizers: the tests'
    verdict stands and nothing is left to hang.
    """
    if not _EXIT_STATUS:  # no session ran (a usage error): pytest's own exit
        return
    lingering = [
        t for t in threading.enumerate() if not t.daemon and t is not threading.main_thread()
    ]
    for thread in lingering:
        thread.join(timeout=10)
    frames = sys._current_frames()
    out = sys.__stderr__ or sys.stderr
    for thread in (t for t in lingering if t.is_alive()):
        stack = (
            "".join(traceback.format_stack(frames[thread.ident])) if thread.ident in frames else ""
        )
        out.write(f"\nLEAKED THREAD {thread.name!r} still running after the session:\n{stack}")
    sys.stdout.flush()
    out.flush()
    os._exit(_EXIT_STATUS[0])
