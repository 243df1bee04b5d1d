"""What sits between us and the server: nothing, a session pooler or a transaction pooler.

Detected, never guessed from a port or a host name:

* **direct**: the process id the server announced at start-up (``BackendKeyData``, what
  ``Connection.get_server_pid`` returns) is the backend's own ``pg_backend_pid()``. A
  pooler answers the start-up itself with a key of its own (PgBouncer: random), so
  equality proves our session IS a server session, held for the connection's life.
* **transaction pooler**: proven when one client connection's ``pg_backend_pid()``
  changes between two statements, or when a second client, inside a transaction, gets
  the backend the first one used while the first is still connected. Neither can happen
  to a client pinned to a server session.
* **session pooler**: a pooler (the key differs) that never showed either sign.

Only the statement cache rests on the result (off behind a transaction pooler, where a
prepared statement lives on a server connection the next statement may not get); no
guarantee does: the load lease (``etl_assets.postgres.lease``) holds the same through
any of the three, and trusts a session's advisory lock only on a proven direct session.
"""

from __future__ import annotations

import asyncio
import enum
from typing import Any

import asyncpg

from etl_assets.errors import PoolExhaustedError

__all__ = ["PROBE_ROUNDS", "Pooling", "ServerClaims", "detect_pooling", "is_direct"]

PROBE_ROUNDS = 3  # a transaction pooler under other traffic may hide one round, not three


class Pooling(enum.StrEnum):
    DIRECT = "direct"
    SESSION = "session"
    TRANSACTION = "transaction"


async def is_direct(conn: asyncpg.Connection) -> bool:
    """True when ``conn`` is a server session of its own (no pooler in between)."""
    backend: int = await conn.fetchval("SELECT pg_backend_pid()")
    announced: int = conn.get_server_pid()
    return backend == announced


async def detect_pooling(dsn: str, options: dict[str, Any]) -> Pooling:
    """Open two probe connections (statement cache off) and tell the three cases apart."""
    probe = {**options, "statement_cache_size": 0}
    first = await asyncpg.connect(dsn, **probe)
    try:
        if await is_direct(first):
            return Pooling.DIRECT
        second = await asyncpg.connect(dsn, **probe)
        try:
            for _ in range(PROBE_ROUNDS):
                if await _shows_transaction_pooling(first, second):
                    return Pooling.TRANSACTION
        finally:
            await second.close()
    finally:
        await first.close()
    return Pooling.SESSION


async def _shows_transaction_pooling(first: asyncpg.Connection, second: asyncpg.Connection) -> bool:
    before: int = await first.fetchval("SELECT pg_backend_pid()")
    async with second.transaction():
        borrowed: int = await second.fetchval("SELECT pg_backend_pid()")
        after: int = await first.fetchval("SELECT pg_backend_pid()")
    return borrowed == before or after != before


class ServerClaims:
    """Every new connection's first statement, bounded: a pooler's queue is not a hang.

    A pooler hands a server connection to a client only when one is free; with its pool
    smaller than the clients' demand, a statement waits (PgBouncer: until
    ``query_wait_timeout``, or for ever with 0). Each new pooled connection of ours runs
    ``SELECT 1`` first, within ``wait_s``; one that cannot names both pool sizes.
    """

    def __init__(self, pooling: Pooling, max_size: int, wait_s: float) -> None:
        self.pooling = pooling
        self.max_size = max_size
        self.wait_s = wait_s
        self.live = 0  # connections of this pool that got a server connection

    async def first_statement(self, conn: asyncpg.Connection) -> None:
        if self.pooling is Pooling.DIRECT:
            return  # the server answers at once, or refuses (53300) and we retry
        try:
            async with asyncio.timeout(self.wait_s):
                await conn.fetchval("SELECT 1")
        except TimeoutError:
            conn.terminate()  # its statement still queues in the pooler: no graceful close
            raise PoolExhaustedError(
                f"a {self.pooling.value} pooler in front of PostgreSQL gave this step "
                f"{self.live} server connection(s) of the {self.max_size} it may use "
                f"(PostgresResource max_pool_size={self.max_size}); the next waited "
                f"{self.wait_s:g} s (server_wait_s). Give the pooler's pool (PgBouncer: "
                "default_pool_size, or pool_size of the database, within max_db_connections "
                "and max_user_connections) at least concurrent steps x max_pool_size server "
                "connections, or lower max_pool_size (at least 2 for a load: README, "
                "Production PostgreSQL)"
            ) from None
        self.live += 1
