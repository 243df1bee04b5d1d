"""The load lease: "this load runs", kept in the database's data, not in a session.

A session's state (an advisory lock, a prepared statement) means nothing behind a
transaction pooler: the next transaction may run on another server connection, and the
lock stays with whichever session took it. So a running load (and a replay) holds a row
of ``load_leases``, claimed in a transaction and renewed in transactions every
``ttl_s / 4`` seconds; it expires only ``ttl_s`` after the last renewal, i.e. after its
holder stopped renewing. Cleanup and a second load of the partition
(``Ledger.dead_loads``) take over a load only when its lease expired, through any pooler.

On a proven direct session (``pooler.is_direct``) the lease also takes the session
advisory lock of before, and says so: a killed process then frees its lock at once and
is cleaned up without waiting for the expiry. Behind a pooler the expiry is the one
test.

The lease lives on a thread of its own, with its own event loop and its own connection:
a source is read on the load's event loop, and a synchronous source that pauses (a slow
API, a file still arriving) blocks that loop for as long as it pauses. Renewed from the
load's loop, a merely slow load lost its lease to a routine cleanup; renewed here, only a
dead process (or a server unreachable for ``ttl_s``) lets it lapse. A lapsed lease that
nobody took over is simply renewed again. A load whose lease was taken over is
cancelled and fails with ``LeaseLostError``; its publish refuses too (the load is no
longer ``loading``), so the partition keeps its last published state and never covers a
newer load's.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import asyncpg

from etl_assets.errors import EtlError, FatalError, LeaseLostError
from etl_assets.postgres.ledger import Ledger, LoadKey
from etl_assets.postgres.pooler import is_direct
from etl_assets.postgres.privileges import Missing, explained, ledger_needs
from etl_assets.postgres.retry import (
    DRIVER_ERRORS,
    RetryPolicy,
    call_with_retries,
    classified,
    discard,
)

__all__ = ["DEFAULT_LEASE_TTL_S", "load_lease"]

# Long enough that a slow source batch or a short server restart never lets a live
# load's lease lapse; short enough that behind a pooler a killed load is cleaned up
# within two minutes (on a direct connection its advisory lock frees it at once).
DEFAULT_LEASE_TTL_S = 120.0
RELEASE_BUDGET_S = 10.0  # best effort: an unreleased lease expires on its own
T = TypeVar("T")
Connect = Callable[[], Awaitable[asyncpg.Connection]]


@contextlib.asynccontextmanager
async def load_lease(
    pool: asyncpg.Pool,
    ledger: Ledger,
    key: LoadKey,
    policy: RetryPolicy,
    ttl_s: float = DEFAULT_LEASE_TTL_S,
) -> AsyncIterator[None]:
    """Hold the load's lease for the body's lifetime; the body is cancelled if it is lost."""
    body = asyncio.current_task()
    assert body is not None  # an async context manager runs in a task
    loop = asyncio.get_running_loop()

    def cancel_body() -> None:
        with contextlib.suppress(RuntimeError):  # the load's loop already closed: it ended
            loop.call_soon_threadsafe(body.cancel)

    lease = _Lease(connect_like(pool), ledger, key, policy, ttl_s)
    with _LeaseThread(key) as thread:
        await thread.run(lease.claim())
        await thread.run(lease.start_renewing(cancel_body))
        try:
            yield
        except BaseException as exc:
            if lease.lost is None:
                raise
            if isinstance(exc, asyncio.CancelledError):
                body.uncancel()  # the cancellation was ours: the lost lease is the error
            raise lease.lost from exc
        finally:
            await thread.run(lease.end())
        if lease.lost is not None:  # lost after the body's last await: it must not count
            body.uncancel()
            raise lease.lost


def connect_like(pool: asyncpg.Pool) -> Connect:
    """A new connection with the pool's own connect arguments (DSN, timeouts, statement
    cache, application_name) and first statement, outside the pool: the lease's thread has
    its own loop, and a pooled connection belongs to the load's. ``PostgresResource``
    keeps one connection of ``max_pool_size`` out of its pool for it. asyncpg keeps them
    as ``_connect_args``, ``_connect_kwargs`` (what its public ``Pool.set_connect_args``
    sets) and ``_init``."""
    args, kwargs, init = list(pool._connect_args), dict(pool._connect_kwargs), pool._init

    async def connect() -> asyncpg.Connection:
        conn = await asyncpg.connect(*args, **kwargs)
        if init is not None:
            try:
                await init(conn)  # behind a pooler: bounded, like every pooled connection
            except BaseException:
                conn.terminate()
                raise
        return conn

    return connect


class _LeaseThread:
    """A thread running an event loop of its own, for one load's lease.

    ``run`` awaits a coroutine there from the load's loop.
    On exit the loop is stopped (what still runs there is cancelled by ``asyncio.run``)
    and the thread joined: a daemon, so even a stuck server cannot hold the process.
    """

    def __init__(self, key: LoadKey) -> None:
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._serve, name=f"etl-lease {key}", daemon=True)

    def __enter__(self) -> _LeaseThread:
        self._thread.start()
        self._ready.wait()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # its loop already ended
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(RELEASE_BUDGET_S + 5)

    def _serve(self) -> None:
        async def serve() -> None:
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            self._ready.set()
            await self._stop.wait()

        asyncio.run(serve())

    async def run(self, work: Coroutine[Any, Any, T]) -> T:
        """``work`` on the lease's loop; cancelling the caller cancels it there too."""
        assert self._loop is not None
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(work, self._loop))


class _Lease:
    """One claim of one load's lease, on a connection of its own (the lease thread's)."""

    def __init__(
        self, connect: Connect, ledger: Ledger, key: LoadKey, policy: RetryPolicy, ttl_s: float
    ) -> None:
        self.connect, self.ledger, self.key, self.policy = connect, ledger, key, policy
        self.ttl_s = ttl_s
        self.holder = uuid.uuid4().hex
        self.conn: asyncpg.Connection | None = None
        self.session_locked = False
        self.lost: BaseException | None = None
        self._renewer: asyncio.Task[None] | None = None

    async def claim(self) -> None:
        async def take(_attempt: int) -> bool:
            with classified():
                conn = await self._connection()
                try:
                    await self.ledger.ensure(conn)
                    async with explained(conn, f"run a load of {self.key}", self._needs):
                        return await self._take(conn)
                except DRIVER_ERRORS:
                    self._drop_connection()
                    raise

        try:
            claimed = await call_with_retries(self.policy, take)
        except BaseException:
            await self.release()
            raise
        if not claimed:
            await self.release()
            raise FatalError(
                f"{self.key}: load {self.key.load_id!r} is already running in another process "
                "(its lease is held); wait for it to end (or terminate it) before running it "
                "again"
            )

    async def _take(self, conn: asyncpg.Connection) -> bool:
        if await is_direct(conn):
            self.session_locked = await self.ledger.hold_load_lock(conn, self.key)
            if not self.session_locked:
                return False
        async with conn.transaction():
            return await self.ledger.claim_lease(
                conn, self.key, self.holder, self.ttl_s, session_locked=self.session_locked
            )

    def _needs(self, conn: asyncpg.Connection) -> Awaitable[list[Missing]]:
        return ledger_needs(conn, self.ledger.schema)

    async def start_renewing(self, on_lost: Callable[[], None]) -> None:
        self._renewer = asyncio.create_task(self.keep_renewed(on_lost), name=f"renew {self.key}")

    async def end(self) -> None:
        """Renewals stopped (none left in flight on the connection), then released."""
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
        await self.release()

    async def keep_renewed(self, on_lost: Callable[[], None]) -> None:
        """Renew every ``ttl_s / 4``; on loss (or an error past the retries), ``on_lost()``."""
        try:
            while True:
                await asyncio.sleep(self.ttl_s / 4)
                await call_with_retries(self.policy, self._renew)
        except Exception as exc:  # noqa: BLE001 - handed to the body, which raises it
            self.lost = exc
            on_lost()

    async def _renew(self, _attempt: int) -> None:
        with classified():
            conn = await self._connection()
            try:
                renewed = await self.ledger.renew_lease(conn, self.key, self.holder, self.ttl_s)
            except DRIVER_ERRORS:
                self._drop_connection()
                raise
        if not renewed:
            raise LeaseLostError(
                f"{self.key}: load {self.key.load_id!r} lost its lease: no renewal reached the "
                f"server for lease_ttl_s={self.ttl_s:g} s (the server unreachable that long, "
                "or this process stalled), so a cleanup or another load of the partition "
                "took it over as dead. Nothing of this load was published; run it again "
                "(or raise lease_ttl_s on ResilientPostgresIOManager, the Component's "
                "load_settings or LoadSettings, if the server is often unreachable that long)"
            )

    async def release(self) -> None:
        """Best effort: the lease deleted, the advisory lock unlocked, the connection closed."""
        try:
            async with asyncio.timeout(RELEASE_BUDGET_S):
                with classified():
                    conn = await self._connection()
                    await self.ledger.release_lease(conn, self.key, self.holder)
                    if self.session_locked:
                        await conn.execute("SELECT pg_advisory_unlock_all()")
                    await conn.close()
                    self.conn = None
        except (EtlError, TimeoutError):
            pass  # the lease expires on its own; a dead session's lock is free
        finally:
            self._drop_connection()

    async def _connection(self) -> asyncpg.Connection:
        if self.conn is None:
            self.conn = await self.connect()
        return self.conn

    def _drop_connection(self) -> None:
        if self.conn is not None:
            conn, self.conn = self.conn, None
            discard(conn)
