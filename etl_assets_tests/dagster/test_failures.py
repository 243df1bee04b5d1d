"""Failures are loud: a silent loss fails the blocking check, a dead server fails the run."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import dagster as dg

from etl_assets import ResilientPostgresIOManager
from etl_assets.example import definitions
from etl_assets.postgres.resource import PostgresResource
from etl_assets_tests.dagster.conftest import DAYS, LINES_PER_DAY, drop_rows_after_publish
from etl_assets_tests.dagster.test_pipeline import Landing, materialize
from etl_assets_tests.postgres.helpers import execute, fetch
from etl_assets_tests.postgres.proxy import FaultProxy


def test_rows_lost_behind_the_io_managers_back_fail_the_check_and_block_downstream(
    db_dsn: str, resources: dict[str, Any], instance: dg.DagsterInstance, landing: Landing
) -> None:
    folder, samples = landing
    day1, day2 = DAYS[0].isoformat(), DAYS[1].isoformat()
    assert materialize(resources, instance, folder, day1).success
    asyncio.run(execute(db_dsn, drop_rows_after_publish()))

    result = materialize(resources, instance, folder, day2, raise_on_error=False)

    assert not result.success
    [check] = [
        e for e in result.get_asset_check_evaluations()
        if e.asset_key == dg.AssetKey("raw_logs") and e.check_name == "written_equals_enqueued"
    ]  # fmt: skip
    written = LINES_PER_DAY - samples[DAYS[1]].malformed
    assert not check.passed
    assert check.partition == day2
    assert check.metadata["written"].value == written
    assert check.metadata["in_table"].value == written - 5
    assert check.description is not None
    assert check.description.startswith(
        f"5 row(s) missing: the table holds {written - 5} rows for {day2}, "
        f"the ledger accounts for {written}; 5 key(s) the ledger accounts for are not in "
        "the table: (<key with hash 0x"  # a (file, line) key cannot be recovered from its hash
    )
    assert check.metadata["keys_missing"].value == 5
    assert result.asset_materializations_for_node("daily_metrics") == []
    metrics = asyncio.run(
        fetch(db_dsn, "SELECT count(*) FROM public.daily_metrics WHERE date = $1", DAYS[1])
    )
    assert metrics[0][0] == 0


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_with_database_down(
    instance: dg.DagsterInstance, landing: Path, *, connect_attempts: int
) -> dg.ExecuteInProcessResult:
    """The log pipeline for one day against a server that refuses every connection."""
    dsn = f"postgresql://etl:s3cret-pw@127.0.0.1:{closed_port()}/etl"
    down = definitions.resources(PostgresResource(dsn=dsn, connect_attempts=connect_attempts))
    return materialize(down, instance, landing, DAYS[0].isoformat(), raise_on_error=False)


def test_database_down_past_the_retry_budget_fails_the_run_without_leaking_the_password(
    instance: dg.DagsterInstance, landing: Landing
) -> None:
    result = run_with_database_down(instance, landing[0], connect_attempts=3)

    assert not result.success
    assert result.asset_materializations_for_node("raw_logs") == []
    [failure] = [e for e in result.all_events if e.is_step_failure]
    message = str(failure.step_failure_data.error)
    assert "could not connect to PostgreSQL at postgresql://etl@127.0.0.1" in message
    assert "after 3 attempt(s)" in message
    assert "s3cret-pw" not in message


def dagster_cli(
    args: list[str], env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    dagster = Path(sys.executable).with_name("dagster")
    clean = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    return subprocess.run(
        [str(dagster), *args],
        cwd=cwd,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_cli_materialize_exits_0_on_success_and_non_zero_when_the_database_is_down(
    db_dsn: str, landing: Landing, tmp_path: Path
) -> None:
    folder, samples = landing
    args = ["asset", "materialize", "-m", "etl_assets.example.definitions", "--select", "raw_logs"]
    args += ["--partition", DAYS[4].isoformat()]
    env = {"ETL_ASSETS_LANDING": str(folder)}

    ok = dagster_cli(args, {**env, "ETL_ASSETS_PG_DSN": db_dsn}, tmp_path)
    down_dsn = f"postgresql://etl:pw@127.0.0.1:{closed_port()}/etl"
    down = dagster_cli(args, {**env, "ETL_ASSETS_PG_DSN": down_dsn}, tmp_path)

    assert ok.returncode == 0, ok.stderr[-3000:]
    rows = asyncio.run(
        fetch(db_dsn, "SELECT count(*) FROM public.logs WHERE data_date = $1", DAYS[4])
    )
    assert rows[0][0] == LINES_PER_DAY - samples[DAYS[4]].malformed
    assert down.returncode != 0
    assert "ConnectionFailedError" in down.stderr + down.stdout


def test_a_check_whose_commit_reply_is_lost_retries_and_passes(
    db_dsn: str, instance: dg.DagsterInstance, landing: Landing
) -> None:
    """The checks' link drops the reply to their COMMITs: they retry, and a good day passes."""
    folder, _ = landing
    url = urllib.parse.urlsplit(db_dsn)

    async def scenario() -> tuple[dg.ExecuteInProcessResult, int]:
        async with FaultProxy(url.hostname or "127.0.0.1", url.port or 5432) as proxy:
            proxy.cut_on_commits(1, 2)  # both audit transactions lose their COMMIT reply
            loads = PostgresResource(dsn=db_dsn)  # the load itself goes direct
            resources = {
                "postgres": PostgresResource(dsn=proxy.dsn(db_dsn)),
                "postgres_io_manager": ResilientPostgresIOManager(postgres=loads),
            }
            result = await asyncio.to_thread(
                materialize, resources, instance, folder, DAYS[0].isoformat(), raise_on_error=False
            )
            return result, proxy.cuts

    result, cuts = asyncio.run(scenario())

    assert cuts == 2
    assert result.success
    checks = {
        (e.asset_key.path[-1], e.check_name): e.passed for e in result.get_asset_check_evaluations()
    }
    assert checks[("raw_logs", "written_equals_enqueued")] is True
    assert checks[("raw_logs", "dead_letter_rate")] is True
    assert all(checks.values()), checks


SWAP_KEY_ON_PUBLISH = """
CREATE FUNCTION public.swap_key_on_publish() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'published' AND NEW.target = 'public.logs' THEN
        UPDATE public.logs SET line_no = line_no + 1000000
        WHERE data_date = NEW.partition_key::date AND ctid = (
            SELECT ctid FROM public.logs WHERE data_date = NEW.partition_key::date
            ORDER BY source_file, line_no LIMIT 1);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER swap_key_on_publish AFTER UPDATE ON etl.partition_loads
    FOR EACH ROW EXECUTE FUNCTION public.swap_key_on_publish();
"""


def test_a_key_swapped_behind_the_io_managers_back_fails_the_check_naming_it(
    db_dsn: str, resources: dict[str, Any], instance: dg.DagsterInstance, landing: Landing
) -> None:
    """Counts stay equal; the key digest fails the blocking check and names the foreign key."""
    folder, _ = landing
    day1, day2 = DAYS[0].isoformat(), DAYS[1].isoformat()
    assert materialize(resources, instance, folder, day1).success
    asyncio.run(execute(db_dsn, SWAP_KEY_ON_PUBLISH))

    result = materialize(resources, instance, folder, day2, raise_on_error=False)

    assert not result.success
    [check] = [
        e for e in result.get_asset_check_evaluations()
        if e.asset_key == dg.AssetKey("raw_logs") and e.check_name == "written_equals_enqueued"
    ]  # fmt: skip
    [(source_file, line_no)] = asyncio.run(
        fetch(db_dsn, "SELECT source_file, line_no FROM public.logs WHERE line_no > 1000000")
    )
    assert not check.passed
    assert check.metadata["in_table"].value == check.metadata["written"].value
    assert check.metadata["key_digest"].value == "checked"
    assert (check.metadata["keys_missing"].value, check.metadata["keys_foreign"].value) == (1, 1)
    assert check.description is not None
    assert check.description.startswith(
        "1 key(s) the ledger accounts for are not in the table: (<key with hash 0x"
    )
    assert check.description.endswith(
        "1 key(s) in the table were never written by a load: "
        f"(source_file={source_file!r}, line_no={line_no})"
    )
    assert result.asset_materializations_for_node("daily_metrics") == []
