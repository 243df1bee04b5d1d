"""PostgresResource at its edges: malformed DSNs, and errors that carry no false context."""

from __future__ import annotations

import asyncio

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
