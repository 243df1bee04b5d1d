"""One retry policy for every database round trip: bounded, jittered, transient errors only."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import asyncpg
import stamina
from asyncpg.exceptions import _base as pgbase

from etl_assets.errors import RetryableError, StatementTimeoutError, classify
from etl_assets.postgres.sql import quote_ident

__all__ = [
    "DRIVER_ERRORS",
    "RetryPolicy",
    "classified",
    "connection",
    "discard",
    "retrying",
    "timed_out",
    "call_with_retries",
    "with_retries",
]

T = TypeVar("T")

# What asyncpg and the OS raise; everything else is a bug and propagates as it is.
DRIVER_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    pgbase.InterfaceError,
    # A connection whose backend died mid-operation can be left in a protocol state
    # asyncpg refuses to use ("cannot switch to state ..."): found by the soak run.
    pgbase.InternalClientError,
    OSError,
    TimeoutError,
)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounds for retrying one unit of work: attempts AND total time, backoff + jitter.

    stamina rather than tenacity (retries everything by default) or backoff (archived):
    ``on=`` is mandatory, both bounds are on by default, and ``stamina.set_testing``
    removes the sleeps in tests while still exercising the retry path.
    """

    # Time is the bound users reason about ("ride out a server restart"): 30 attempts at
    # most 5 s apart outlast the 120 s budget, so the budget ends the retries, and a
    # 30 s restart is retried every few seconds until the server is back.
    attempts: int = 30
    timeout_s: float = 120.0
    wait_initial_s: float = 0.2
    wait_max_s: float = 5.0
    wait_jitter_s: float = 1.0


def retrying(policy: RetryPolicy) -> AsyncIterator[stamina.Attempt]:
    """``async for attempt in retrying(policy): with attempt: ...`` retries RetryableError."""
    return stamina.retry_context(
        on=RetryableError,
        attempts=policy.attempts,
        timeout=policy.timeout_s,
        wait_initial=policy.wait_initial_s,
        wait_max=policy.wait_max_s,
        wait_jitter=policy.wait_jitter_s,
    )


async def with_retries(
    pool: asyncpg.Pool, policy: RetryPolicy, work: Callable[[asyncpg.Connection], Awaitable[T]]
) -> T:
    """``work(conn)`` on a fresh pooled connection per attempt, retried within ``policy``.

    Driver errors are classified, transient ones retried, and a connection that saw one
    is discarded. ``work`` must be safe to run again (its own transaction, or idempotent).
    """

    async def on_connection(_attempt: int) -> T:
        with classified():
            async with connection(pool) as conn:
                return await work(conn)

    return await call_with_retries(policy, on_connection)


async def call_with_retries(
    policy: RetryPolicy,
    attempt: Callable[[int], Awaitable[T]],
    on_retry: Callable[[int, RetryableError], None] | None = None,
) -> T:
    """``attempt(n)`` until it returns, retrying ``RetryableError`` within ``policy``.

    The one retry loop of the package (as stamina's ``RetryingCaller``): the last error
    is re-raised when the policy is spent; ``on_retry`` hears of each new attempt.
    """
    last_error: RetryableError | None = None
    async for stamina_attempt in retrying(policy):
        with stamina_attempt:
            if last_error is not None and on_retry is not None:
                on_retry(stamina_attempt.num, last_error)
            try:
                return await attempt(stamina_attempt.num)
            except RetryableError as exc:
                last_error = exc
                raise
    raise AssertionError("unreachable: stamina re-raises the last error")  # pragma: no cover


@contextlib.contextmanager
def classified() -> Iterator[None]:
    """Re-raise driver and OS errors as this package's errors (the original as cause)."""
    try:
        yield
    except DRIVER_ERRORS as exc:
        raise classify(exc) from exc


@contextlib.asynccontextmanager
async def connection(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection that is terminated, not handed back, after a driver error.

    A connection that saw its backend die or its protocol state break must not serve
    the next attempt; the pool opens a fresh one instead. A statement cancelled by the
    session's ``statement_timeout`` is not transient: see :func:`timed_out`.
    """
    async with pool.acquire() as conn:
        started = time.monotonic()
        try:
            yield conn
        except asyncpg.QueryCanceledError as exc:
            timeout = await timed_out(conn, time.monotonic() - started)
            if timeout is not None:
                raise timeout from exc
            discard(conn)
            raise
        except DRIVER_ERRORS:
            discard(conn)
            raise


async def timed_out(conn: asyncpg.Connection, elapsed_s: float) -> StatementTimeoutError | None:
    """The error to raise when a cancel (57014) was the session's ``statement_timeout``.

    57014 is the same SQLSTATE for an operator's cancel and for a timeout, and the
    message text is localized; what tells them apart is the setting itself: a timeout
    is set and the work ran at least that long. A timeout would cancel every retry of
    the same statement again, so it fails at once, naming the setting and the fix.
    """
    try:
        setting_ms, role = await conn.fetchrow(
            "SELECT setting::bigint, current_user FROM pg_settings WHERE name = 'statement_timeout'"
        )
    except DRIVER_ERRORS:  # the connection is unusable: not a timeout we can name
        return None
    if not setting_ms or elapsed_s * 1000 < setting_ms:
        return None
    return StatementTimeoutError(
        f"a statement was cancelled by statement_timeout = {setting_ms} ms (in force for "
        f"role {role!r}: set on the role, the database or the server, or in the DSN's "
        "options); a retry would be cancelled again. Raise it for this role, e.g. "
        f"ALTER ROLE {quote_ident(role)} SET statement_timeout = '10min', or load smaller "
        "batches (batch_size)",
        sqlstate="57014",
    )


def discard(conn: asyncpg.Connection) -> None:
    """Terminate a connection after a driver error, unless the pool already let go of it."""
    # InterfaceError: the pool already detached it (its backend died); nothing left to do.
    with contextlib.suppress(pgbase.InterfaceError):
        conn.terminate()
