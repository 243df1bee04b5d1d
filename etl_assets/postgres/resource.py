"""PostgresResource: where the database is, and an asyncpg pool that is always closed.

The DSN comes from ``EnvVar("ETL_ASSETS_PG_DSN")`` in the Definitions and is never
logged nor put into an error message (``redact_dsn`` is what errors show). With no DSN,
the embedded server is leased for the step and released at teardown.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import signal
import sys
import threading
import types
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import dagster as dg
from pydantic import Field, PrivateAttr

from etl_assets.errors import (
    ConfigurationError,
    FatalError,
    LoginRefusedError,
    RetryableError,
    classify,
)
from etl_assets.postgres.embedded import EmbeddedPostgres, default_data_dir
from etl_assets.postgres.pooler import Pooling, ServerClaims, detect_pooling
from etl_assets.postgres.retry import DRIVER_ERRORS, RetryPolicy, call_with_retries, with_retries
from etl_assets.postgres.sql import quote_ident

__all__ = ["ConnectionFailedError", "PostgresResource", "redact_dsn", "run_sync"]

APPLICATION_NAME = "etl_assets"
DEFAULT_STATEMENT_CACHE = 100  # asyncpg's own default

T = TypeVar("T")


def run_sync(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion on a fresh event loop, closed afterwards.

    Dagster calls assets, IO managers and checks synchronously. If the calling thread
    already runs a loop (an ``async def`` asset), the work gets a thread of its own:
    one loop per call either way, never a loop shared with code we do not own.
    """
    if not _loop_running():  # the usual case; run outside any except block, so that its
        return asyncio.run(_interruptible(main))  # errors carry no "no running loop" context
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="etl-assets") as pool:
        return pool.submit(asyncio.run, _interruptible(main)).result()


async def _interruptible(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """``main()``, stopped by an interrupt wherever in the event loop it lands.

    Dagster's SIGTERM handler raises ``DagsterExecutionInterruptedError`` (a BaseException,
    not a KeyboardInterrupt) in whatever frame the main thread is running. In an event
    loop that frame may be a plain callback, where asyncio logs and drops it, or a
    background task (a lease renewal, a writer), which keeps it to itself: the stopped
    run would load on. So, while the work runs, the signal's handler is called inside
    ours: what it raises is kept, the work is cancelled at its next await (a load marks
    itself failed) and the interrupt is raised here, in its place. The loop's exception
    handler catches what still reaches a callback.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    interrupts: list[BaseException] = []

    def interrupt(error: BaseException) -> None:
        interrupts.append(error)
        if task is not None:
            loop.call_soon_threadsafe(task.cancel)

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        error = context.get("exception")
        if error is None or isinstance(error, Exception | asyncio.CancelledError):
            loop.default_exception_handler(context)
            return
        interrupt(error)

    loop.set_exception_handler(handle)
    with _signals_caught(interrupt):
        try:
            result = await main()
        except asyncio.CancelledError:
            if interrupts:
                raise interrupts[0] from None
            raise
    if interrupts:  # the work ended anyway: the stop still stands
        raise interrupts[0]
    return result


@contextlib.contextmanager
def _signals_caught(interrupt: Callable[[BaseException], None]) -> Iterator[None]:
    """SIGINT and SIGTERM handled by their own handlers, but what those raise goes to
    ``interrupt`` instead of into whatever frame the main thread was running."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals are delivered to the main thread only
        return
    handlers: dict[int, Callable[[int, types.FrameType | None], Any]] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(sig)
        if callable(handler):  # SIG_DFL and SIG_IGN stay as they are
            handlers[sig] = handler

    def caught(signo: int, frame: types.FrameType | None) -> None:
        try:
            handlers[signo](signo, frame)
        except BaseException as error:  # noqa: BLE001  the interrupt, handed to the work
            interrupt(error)

    for number in handlers:
        signal.signal(number, caught)
    try:
        yield
    finally:
        for number, previous in handlers.items():
            signal.signal(number, previous)


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # asyncio's way of saying "no loop in this thread"
        return False
    return True


class ConnectionFailedError(FatalError):
    """The server could not be reached within the connect retry budget."""


def redact_dsn(dsn: str) -> str:
    """``postgresql://user@host:port/db``: what an error may show of a DSN."""
    try:
        parts = urllib.parse.urlsplit(dsn)
        host = parts.hostname or "localhost"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparseable DSN>"
    user = f"{parts.username}@" if parts.username else ""
    return f"{parts.scheme}://{user}{host}{port}{parts.path}"


class PostgresResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """A PostgreSQL server for the loads: an external one by DSN, or the embedded one."""

    dsn: str | None = Field(
        default=None,
        description=(
            "libpq-style URL, e.g. postgresql://user:pass@host:5432/db. Pass it as "
            "dg.EnvVar('ETL_ASSETS_PG_DSN'). Unset: the embedded server from the wheel."
        ),
    )
    embedded_data_dir: str | None = Field(
        default=None,
        description="Data directory of the embedded server (default ./.etl_assets/pgdata).",
    )
    min_pool_size: int = Field(default=1, ge=0, description="Connections kept open per step.")
    max_pool_size: int = Field(
        default=4,
        ge=1,
        description="Upper bound of connections per step: a pool of max_pool_size - 1 "
        "(writers, prepare, publish) plus a load's lease, on a connection of its own.",
    )
    connect_timeout_s: float = Field(default=10.0, gt=0, description="Per connection attempt.")
    connect_attempts: int = Field(
        default=20,
        ge=1,
        description="Attempts to open the pool; with the default, connect_budget_s is the bound.",
    )
    connect_budget_s: float = Field(
        default=60.0, gt=0, description="Total time allowed for opening the pool, retries included."
    )
    command_timeout_s: float | None = Field(
        default=None, description="Client-side timeout per statement (None: none)."
    )
    ledger_schema: str = Field(
        default="etl",
        description="Schema of the load ledger, the dead-letter queue and the load states.",
    )
    statement_cache_size: int | None = Field(
        default=None,
        ge=0,
        description=(
            "asyncpg's prepared-statement cache per connection. None: detected, 100 on a "
            "direct connection or behind a session pooler, 0 (off) behind a transaction "
            "pooler (PgBouncer pool_mode=transaction). 0 turns it off whatever is detected."
        ),
    )
    server_wait_s: float = Field(
        default=30.0,
        gt=0,
        description=(
            "Behind a pooler: how long a new connection may wait for a server connection "
            "before the step fails naming both pool sizes (see README, Production PostgreSQL)."
        ),
    )

    _embedded: EmbeddedPostgres | None = PrivateAttr(default=None)
    _detected: Pooling | None = PrivateAttr(default=None)
    _embedded_dsn: str | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        if self.dsn is None:
            self.resolved_dsn()

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self.close()

    def resolved_dsn(self) -> str:
        """The configured DSN, or the embedded server's (leasing it on first use)."""
        if self.dsn:
            return self.dsn
        if self._embedded_dsn is None:
            refuse_embedded_on_worker()
            data_dir = (
                Path(self.embedded_data_dir) if self.embedded_data_dir else default_data_dir()
            )
            self._embedded = EmbeddedPostgres(data_dir)
            self._embedded_dsn = self._embedded.acquire()
        return self._embedded_dsn

    def close(self) -> None:
        """Release the embedded server lease, if this resource holds one."""
        if self._embedded is not None:
            self._embedded.release()
            self._embedded, self._embedded_dsn = None, None

    def run(self, work: Callable[[asyncpg.Pool], Awaitable[T]], **pool_overrides: Any) -> T:
        """``work(pool)`` on its own event loop, with a pool closed on every path."""

        async def main() -> T:
            async with self.pool(**pool_overrides) as pool:
                return await work(pool)

        return run_sync(main)

    def retried(
        self, work: Callable[[asyncpg.Connection], Awaitable[T]], **pool_overrides: Any
    ) -> T:
        """``work(conn)`` retried on transient errors like a load's (``with_retries``).

        For every database touch outside the load: checks, sensors, the dead-letter
        asset, reads. A lost COMMIT reply or a restart must not fail a good partition's
        check. ``work`` must be safe to run again (a read, or its own transaction).
        """
        return self.run(lambda pool: with_retries(pool, RetryPolicy(), work), **pool_overrides)

    @contextlib.asynccontextmanager
    async def pool(self, **overrides: Any) -> AsyncIterator[asyncpg.Pool]:
        """An asyncpg pool for the current event loop, closed on every path.

        On success the pool is closed gracefully; on an exception or cancellation it is
        terminated at once, so a failing step never waits on a dead server. With no DSN,
        an embedded server this call leased is released again on every path (under
        Dagster, the resource holds the lease for the whole step instead).
        """
        leased_here = self.dsn is None and self._embedded_dsn is None
        try:
            pool = await self._open_pool(**overrides)
            try:
                yield pool
            except BaseException:
                pool.terminate()
                raise
            try:
                await asyncio.wait_for(pool.close(), timeout=30)
            except TimeoutError:
                pool.terminate()
        finally:
            if leased_here:  # the engine API, outside Dagster's resource lifecycle
                self.close()

    async def _open_pool(self, **overrides: Any) -> asyncpg.Pool:
        dsn = self.resolved_dsn()
        connect: dict[str, Any] = {
            "timeout": self.connect_timeout_s,
            "command_timeout": self.command_timeout_s,
            "server_settings": {"application_name": APPLICATION_NAME},
        }
        pooled = max(1, self.max_pool_size - 1)  # the last one is a load's lease's
        options: dict[str, Any] = {
            **connect,
            "min_size": min(self.min_pool_size, pooled),
            "max_size": pooled,
            "server_budget": self.max_pool_size,
            **overrides,
        }
        attempts = 0
        try:
            policy = RetryPolicy(
                attempts=self.connect_attempts,
                timeout_s=self.connect_budget_s,
                wait_initial_s=0.5,
                wait_max_s=5.0,
            )

            async def open_pool(attempt: int) -> asyncpg.Pool:
                nonlocal attempts
                attempts = attempt
                pooling = await self._pooling(dsn, connect)
                return await _create_pool(dsn, self._pool_options(options, pooling), pooling)

            return await call_with_retries(policy, open_pool)
        except RetryableError as exc:
            raise ConnectionFailedError(
                f"could not connect to PostgreSQL at {redact_dsn(dsn)} after {attempts} "
                f"attempt(s): {exc}. Is the server up, and is ETL_ASSETS_PG_DSN right?"
            ) from None

    async def _pooling(self, dsn: str, connect: dict[str, Any]) -> Pooling:
        """What is in front of the server: detected once per resource (see ``pooler``)."""
        if self.dsn is None:
            return Pooling.DIRECT  # the embedded server, on loopback
        if self._detected is None:
            self._detected = await _detect(dsn, connect)
        return self._detected

    def _pool_options(self, options: dict[str, Any], pooling: Pooling) -> dict[str, Any]:
        """The statement cache set for ``pooling``; a session pooler's pool opened whole.

        Behind a session pooler each of our connections pins a server connection for the
        step: opening all ``max_pool_size`` at once, each bounded by ``server_wait_s``,
        finds a pooler pool too small at the start of the step, not mid-load.
        """
        cache = self.statement_cache_size
        if cache is None:
            cache = 0 if pooling is Pooling.TRANSACTION else DEFAULT_STATEMENT_CACHE
        sized = {"statement_cache_size": cache, "server_wait_s": self.server_wait_s}
        if pooling is Pooling.SESSION:
            sized["min_size"] = options["max_size"]
        return {**options, **sized}


async def _detect(dsn: str, connect: dict[str, Any]) -> Pooling:
    with _connect_errors(dsn):
        return await detect_pooling(dsn, connect)


async def _create_pool(dsn: str, options: dict[str, Any], pooling: Pooling) -> asyncpg.Pool:
    budget = int(options.pop("server_budget", options["max_size"]))
    claimed = ServerClaims(pooling, budget, options.pop("server_wait_s"))
    with _connect_errors(dsn):
        return await asyncpg.create_pool(dsn, init=claimed.first_statement, **options)


@contextlib.contextmanager
def _connect_errors(dsn: str) -> Iterator[None]:
    """A refused or failed connection as this package's error, the DSN's secret kept out."""
    try:
        yield
    except DRIVER_ERRORS as exc:
        # from None: asyncpg's own message may quote the DSN, password included.
        error = classify(exc)
        raise _connect_hint(error, dsn) or _redacted(error, dsn) from None
    except (ValueError, OverflowError) as exc:  # asyncpg's DSN parser (a port past 65535)
        raise ConfigurationError(
            f"the PostgreSQL DSN is malformed ({type(exc).__name__}); expected "
            "postgresql://user:password@host:port/database"
        ) from None


DSN_SOURCE = "ETL_ASSETS_PG_DSN (the dsn of PostgresResource)"


def refuse_embedded_on_worker() -> None:
    """No embedded server for a step that runs in a Celery task: say so, with the fix.

    The embedded server is leased per machine, through its data directory. A step that
    dagster-celery hands to a worker runs on whatever host took the task: there, a lease
    would start (or find) a server of that host's own, and the load would land in a
    database no one else reads, or wait on a server that is not there. Being inside a
    Celery task is the signal (``celery.current_task``; the module is only looked up,
    never imported, so the core does not depend on Celery).
    """
    celery = sys.modules.get("celery")
    task = getattr(celery, "current_task", None) if celery is not None else None
    if not task:  # a Proxy to no task is falsy
        return
    worker = getattr(getattr(task, "request", None), "hostname", None) or "a Celery worker"
    raise ConfigurationError(
        f"no PostgreSQL DSN is set, and this step runs in a Celery task on {worker}: the "
        "embedded server is a local convenience of the machine that started it, which a "
        "worker cannot share. Set ETL_ASSETS_PG_DSN (the dsn of PostgresResource) in every "
        'worker\'s environment to the server the loads go to (README, "Running at scale")'
    )


def _connect_hint(error: Exception, dsn: str) -> ConfigurationError | None:
    """A refused connection whose fix is in the DSN, said as such (by SQLSTATE, not text)."""
    sqlstate = getattr(error, "sqlstate", None)
    parts = urllib.parse.urlsplit(dsn) if "://" in dsn else None
    where = redact_dsn(dsn)
    if sqlstate == "3D000":  # invalid_catalog_name
        name = parts.path.lstrip("/") if parts else "?"
        return ConfigurationError(
            f"database {name!r} does not exist on {where} [3D000]: fix the database name in "
            f"{DSN_SOURCE}, or create it (CREATE DATABASE {quote_ident(name)})",
            sqlstate=sqlstate,
        )
    user = (parts.username if parts else None) or "(none given)"
    if sqlstate in {"28P01", "28000"}:  # invalid_password, invalid_authorization_spec
        return LoginRefusedError(
            f"PostgreSQL at {where} refused user {user!r} [{sqlstate}]: fix the user or "
            f"password in {DSN_SOURCE}, or the server's pg_hba.conf for this host",
            sqlstate=sqlstate,
        )
    if isinstance(error, LoginRefusedError):  # a pooler's refusal (PgBouncer: 08P01)
        return LoginRefusedError(
            f"the connection pooler at {where} refused user {user!r} [{sqlstate}]: fix the "
            f"user or password in {DSN_SOURCE}, or the pooler's auth_file / auth_query "
            f"(PgBouncer: userlist.txt) for this user",
            sqlstate=sqlstate,
        )
    return None


def _redacted(error: Exception, dsn: str) -> Exception:
    password = urllib.parse.urlsplit(dsn).password if "://" in dsn else None
    if password and password in str(error):
        return type(error)(str(error).replace(password, "***"))
    return error
