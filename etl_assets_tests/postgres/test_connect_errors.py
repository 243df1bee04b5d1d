"""Connection errors whose fix is a setting name that setting, on a real server."""

from __future__ import annotations

import socket
import urllib.parse

import pytest

from etl_assets.errors import ConfigurationError
from etl_assets.postgres.resource import PostgresResource
from etl_assets.storage import ExplainedPostgresStorage


def _with(dsn: str, **parts: str) -> str:
    return urllib.parse.urlsplit(dsn)._replace(**parts).geturl()


def _ping(resource: PostgresResource) -> int:
    async def one(pool: object) -> int:
        return 1

    return resource.run(one)  # type: ignore[arg-type]


def test_wrong_database_names_the_database_and_the_variable(pg_dsn: str) -> None:
    """A DSN naming a missing database says which, where to fix it, and how to create it."""
    dsn = _with(pg_dsn, path="/no_such_db")
    with pytest.raises(ConfigurationError) as caught:
        _ping(PostgresResource(dsn=dsn, connect_attempts=3))
    parts = urllib.parse.urlsplit(pg_dsn)
    user = f"{parts.username}@" if parts.username else ""
    assert str(caught.value) == (
        f"database 'no_such_db' does not exist on postgresql://{user}{parts.hostname}:"
        f"{parts.port}/no_such_db [3D000]: fix the database name in ETL_ASSETS_PG_DSN (the dsn "
        'of PostgresResource), or create it (CREATE DATABASE "no_such_db")'
    )


def test_wrong_user_names_the_user_and_the_variable_without_the_password(pg_dsn: str) -> None:
    """A refused role says which user, where to fix it, and never shows the password."""
    parts = urllib.parse.urlsplit(pg_dsn)
    dsn = _with(pg_dsn, netloc=f"nobody_here:pw-s3cret@{parts.hostname}:{parts.port}")
    with pytest.raises(ConfigurationError) as caught:
        _ping(PostgresResource(dsn=dsn, connect_attempts=3))
    assert str(caught.value) == (
        f"PostgreSQL at postgresql://nobody_here@{parts.hostname}:{parts.port}{parts.path} "
        f"refused user 'nobody_here' [{caught.value.sqlstate}]: fix the user or password in "
        "ETL_ASSETS_PG_DSN (the dsn of PostgresResource), or the server's pg_hba.conf for "
        "this host"
    )
    assert caught.value.sqlstate in {"28000", "28P01"}
    assert "pw-s3cret" not in repr(caught.value)


def test_dagster_storage_down_names_dagster_pg_url() -> None:
    """Dagster's storage on a closed port fails with an error naming DAGSTER_PG_URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql+psycopg2://etl:pw-s3cret@127.0.0.1:{port}/dagster"
    with pytest.raises(ConfigurationError) as caught:
        ExplainedPostgresStorage.from_config_value(None, {"postgres_url": url})
    message = str(caught.value)
    assert message.startswith(
        f"Dagster's own storage (runs, events, schedules) at "
        f"postgresql+psycopg2://etl@127.0.0.1:{port}/dagster is unreachable (OperationalError: "
    )
    assert message.endswith(
        "It is set by DAGSTER_PG_URL: start `etl-assets-dev` (it serves that database) and, "
        "in another terminal, `. .etl_assets/env.sh`; or point DAGSTER_PG_URL at a running "
        "server (postgresql+psycopg2://user:password@host:5432/dagster)."
    )
    assert "pw-s3cret" not in message
