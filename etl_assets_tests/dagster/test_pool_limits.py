"""Pool "postgres"'s default limit on the package's Dagster storage (dagster-io/dagster#33552).

Dagster 1.13 initialises a pool's default limit with an insert and, on a duplicate, an
update in the same transaction, which PostgreSQL has already aborted. These tests hit
that duplicate for real: a changed ``default_limit``, and a second run's insert that
waits on a first one's. Both fail with ``InFailedSqlTransaction`` on plain
``dagster_postgres``; on ``ExplainedPostgresStorage`` the pool ends with the limit and
exactly that many slots.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import psycopg2
import pytest
import sqlalchemy.exc

from etl_assets.storage import PoolSafeEventLogStorage
from etl_assets_tests.postgres.helpers import fetch

POOL = "postgres"


PACKAGE_STORAGE = (
    "custom:\n    module: etl_assets.storage\n    class: ExplainedPostgresStorage\n    config:"
)
PLAIN_STORAGE = "postgres:"


def instance_yaml(storage_url: str, default_limit: int, storage: str) -> str:
    return f"""\
storage:
  {storage}
      postgres_url: {storage_url}
concurrency:
  pools:
    default_limit: {default_limit}
    granularity: op
telemetry:
  enabled: false
"""


@contextlib.contextmanager
def instance_with(
    db_dsn: str, folder: Path, default_limit: int, storage: str = PACKAGE_STORAGE
) -> Iterator[dg.DagsterInstance]:
    """An instance on ``storage`` (the package's), in ``folder``, with that pool default."""
    url = urllib.parse.urlsplit(db_dsn)._replace(scheme="postgresql+psycopg2").geturl()
    folder.mkdir(exist_ok=True)
    (folder / "dagster.yaml").write_text(instance_yaml(url, default_limit, storage))
    with dg.DagsterInstance.from_config(str(folder)) as instance:
        yield instance


def slot_rows(db_dsn: str) -> int:
    """Live slot rows for the pool, counted in the table itself."""
    sql = "SELECT count(*) FROM concurrency_slots WHERE concurrency_key = $1 AND NOT deleted"
    return int(asyncio.run(fetch(db_dsn, sql, POOL))[0][0])


def limit_row(db_dsn: str) -> tuple[int, bool]:
    sql = 'SELECT "limit", using_default_limit FROM concurrency_limits WHERE concurrency_key = $1'
    (row,) = asyncio.run(fetch(db_dsn, sql, POOL))
    return int(row[0]), bool(row[1])


def test_the_instance_and_its_run_workers_get_the_pool_safe_event_log(
    db_dsn: str, tmp_path: Path
) -> None:
    """A run worker rebuilds the instance from its ref: the same storage class again."""
    with instance_with(db_dsn, tmp_path / "home", 4) as instance:
        assert isinstance(instance.event_log_storage, PoolSafeEventLogStorage)
        with dg.DagsterInstance.from_ref(instance.get_ref()) as rebuilt:
            assert isinstance(rebuilt.event_log_storage, PoolSafeEventLogStorage)


def test_a_changed_default_limit_is_applied_not_crashed_on(db_dsn: str, tmp_path: Path) -> None:
    """default_limit 4 then 6: every later run used to fail claiming its first slot."""
    with instance_with(db_dsn, tmp_path / "four", 4) as instance:
        assert instance.event_log_storage.initialize_concurrency_limit_to_default(POOL) is True
    assert (limit_row(db_dsn), slot_rows(db_dsn)) == ((4, True), 4)
    with instance_with(db_dsn, tmp_path / "six", 6) as instance:
        assert instance.event_log_storage.initialize_concurrency_limit_to_default(POOL) is True
    assert (limit_row(db_dsn), slot_rows(db_dsn)) == ((6, True), 6)
    with instance_with(db_dsn, tmp_path / "three", 3) as instance:
        assert instance.event_log_storage.initialize_concurrency_limit_to_default(POOL) is True
    assert (limit_row(db_dsn), slot_rows(db_dsn)) == ((3, True), 3)


def test_a_limit_set_by_hand_is_kept(db_dsn: str, tmp_path: Path) -> None:
    """`dagster instance concurrency set postgres 2` wins over the default of 4."""
    with instance_with(db_dsn, tmp_path / "home", 4) as instance:
        instance.event_log_storage.set_concurrency_slots(POOL, 2)
        assert instance.event_log_storage.initialize_concurrency_limit_to_default(POOL) is True
    assert (limit_row(db_dsn), slot_rows(db_dsn)) == ((2, False), 2)


def test_two_first_runs_initialising_the_pool_at_once(db_dsn: str, tmp_path: Path) -> None:
    """The second insert waits on the first's uncommitted row, then meets it: no failure."""
    with instance_with(db_dsn, tmp_path / "home", 4) as instance:
        instance.event_log_storage.get_pool_limits()  # tables exist before the race
        first = psycopg2.connect(db_dsn)
        try:
            with first.cursor() as cur:  # the first run's insert, not yet committed
                cur.execute(
                    'INSERT INTO concurrency_limits (concurrency_key, "limit", '
                    "using_default_limit) VALUES (%s, 4, true)",
                    (POOL,),
                )
            outcome: list[object] = []
            second = threading.Thread(
                target=lambda: outcome.append(
                    instance.event_log_storage.initialize_concurrency_limit_to_default(POOL)
                ),
                daemon=True,
            )
            second.start()
            time.sleep(1.0)  # the second insert is now waiting on the first's row lock
            assert second.is_alive(), f"the second run did not wait: {outcome}"
            first.commit()
            second.join(30)
        finally:
            first.close()
        assert outcome == [True]
    assert (limit_row(db_dsn), slot_rows(db_dsn)) == ((4, True), 4)


def test_plain_dagster_postgres_still_has_the_bug(db_dsn: str, tmp_path: Path) -> None:
    """Why the repair exists. When a Dagster release fixes #33552 this fails: drop the repair."""
    with instance_with(db_dsn, tmp_path / "four", 4, PLAIN_STORAGE) as instance:
        assert instance.event_log_storage.initialize_concurrency_limit_to_default(POOL) is True
    with (
        instance_with(db_dsn, tmp_path / "six", 6, PLAIN_STORAGE) as instance,
        pytest.raises(sqlalchemy.exc.InternalError, match="InFailedSqlTransaction"),
    ):
        instance.event_log_storage.initialize_concurrency_limit_to_default(POOL)
