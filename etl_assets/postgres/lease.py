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
test. A load whose lease was taken over (it could not renew for ``ttl_s``: a source that
blocked the event loop that long, or a server unreachable that long) is cancelled and
fails with ``LeaseLostError``; its publish refuses too (the load is no longer
``loading``), so the partition keeps its last published state.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable

import asyncpg

from etl_assets.errors import ConfigurationError, EtlError, FatalError, LeaseLostError
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


@contextlib.asynccontextmanager
async def load_lease(
    pool: asyncpg.Pool,
    ledger: Ledger,
    key: LoadKey,
    policy: RetryPolicy,
    ttl_s: float = DEFAULT_LEASE_TTL_S,
) -> AsyncIterator[None]:
    """Hold the load's lease for the body's lifetime; the body is cancelled if it is lost."""
    if pool.get_max_size() < 2:
        raise ConfigurationError(
            f"{key}: a load needs a pool of at least 2 connections (its lease and a writer); "
            "raise PostgresResource(max_pool_size=...)"
        )
    lease = _Lease(pool, ledger, key, policy, ttl_s)
    await lease.claim()
    body = asyncio.current_task()
    assert body is not None  # an async context manager runs in a task
    renewer = asyncio.create_task(lease.keep_renewed(body), name=f"etl-lease {key}")
    try:
        yield
    except BaseException as exc:
        if lease.lost is None:
            raise
        if isinstance(exc, asyncio.CancelledError):
            body.uncancel()  # the cancellation was ours: the lost lease is the error
        raise lease.lost from exc
    finally:
        renewer.cancel()
        await asyncio.gather(renewer, return_exceptions=True)
        await lease.release()
    if lease.lost is not None:  # lost after the body's last await: it must not count
        body.uncancel()
        raise lease.lost


class _Lease:
    """One claim of one load's lease, on a pooled connection of its own."""

    def __init__(
        self, pool: asyncpg.Pool, ledger: Ledger, key: LoadKey, policy: RetryPolicy, ttl_s: float
    ) -> None:
        self.pool, self.ledger, self.key, self.policy, self.ttl_s = pool, ledger, key, policy, ttl_s
        self.holder = uuid.uuid4().hex
        self.conn: asyncpg.Connection | None = None
        self.session_locked = False
        self.lost: BaseException | None = None

    async def claim(self) -> None:
        async def take(_attempt: int) -> bool:
            with classified():
                conn = await self._connection()
                try:
                    await self.ledger.ensure(conn)
                    async with explained(conn, f"run a load of {self.key}", self._needs):
                        return await self._take(conn)
                except DRIVER_ERRORS:
                    await self._drop_connection()
                    raise

        if not await call_with_retries(self.policy, take):
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

    async def keep_renewed(self, body: asyncio.Task[object]) -> None:
        """Renew every ``ttl_s / 4``; on loss (or an error past the retries), cancel the body."""
        try:
            while True:
                await asyncio.sleep(self.ttl_s / 4)
                await call_with_retries(self.policy, self._renew)
        except Exception as exc:  # noqa: BLE001 - handed to the body, which raises it
            self.lost = exc
            body.cancel()

    async def _renew(self, _attempt: int) -> None:
        with classified():
            conn = await self._connection()
            try:
                renewed = await self.ledger.renew_lease(conn, self.key, self.holder, self.ttl_s)
            except DRIVER_ERRORS:
                await self._drop_connection()
                raise
        if not renewed:
            raise LeaseLostError(
                f"{self.key}: load {self.key.load_id!r} lost its lease: it was not renewed for "
                f"{self.ttl_s:g} s (the server unreachable, or the event loop blocked that "
                "long by the source), so a cleanup or another load of the partition took it "
                "over as dead. Nothing of this load was published; run it again"
            )

    async def release(self) -> None:
        """Best effort: the lease deleted, the advisory lock unlocked, the connection back."""
        try:
            async with asyncio.timeout(RELEASE_BUDGET_S):
                with classified():
                    conn = await self._connection()
                    await self.ledger.release_lease(conn, self.key, self.holder)
                    if self.session_locked:
                        await conn.execute("SELECT pg_advisory_unlock_all()")
        except (EtlError, TimeoutError):
            await self._drop_connection()  # the lease expires; a dead session's lock is free
        if self.conn is not None:
            await self.pool.release(self.conn)
            self.conn = None

    async def _connection(self) -> asyncpg.Connection:
        if self.conn is None:
            self.conn = await self.pool.acquire()
        return self.conn

    async def _drop_connection(self) -> None:
        if self.conn is not None:
            conn, self.conn = self.conn, None
            discard(conn)
            await self.pool.release(conn)
