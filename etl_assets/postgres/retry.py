"""One retry policy for every database round trip: bounded, jittered, transient errors only."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import asyncpg
import stamina
from asyncpg.exceptions import _base as pgbase

from etl_assets.errors import RetryableError, classify

__all__ = [
    "DRIVER_ERRORS",
    "RetryPolicy",
    "classified",
    "connection",
    "discard",
    "retrying",
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
    the next attempt; the pool opens a fresh one instead.
    """
    async with pool.acquire() as conn:
        try:
            yield conn
        except DRIVER_ERRORS:
            discard(conn)
            raise


def discard(conn: asyncpg.Connection) -> None:
    """Terminate a connection after a driver error, unless the pool already let go of it."""
    # InterfaceError: the pool already detached it (its backend died); nothing left to do.
    with contextlib.suppress(pgbase.InterfaceError):
        conn.terminate()
