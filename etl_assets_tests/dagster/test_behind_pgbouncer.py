"""The whole flow through a real PgBouncer (transaction and session mode), exact by count."""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from pathlib import Path

import dagster as dg
import pytest

from etl_assets.dead_letter_cli import main
from etl_assets.example import definitions
from etl_assets.example.logs import LOGS, daily_metrics, raw_logs
from etl_assets.jobs import build_replay_job
from etl_assets.postgres.resource import PostgresResource
from etl_assets_tests.dagster.conftest import DAYS, LINES_PER_DAY
from etl_assets_tests.dagster.test_pipeline import Landing, check_results, materialize
from etl_assets_tests.postgres.helpers import fetch, partition_audit


@pytest.fixture
def pooled(bouncer: str, db_dsn: str) -> str:
    """The test's own database, through PgBouncer."""
    return urllib.parse.urlsplit(bouncer)._replace(path=urllib.parse.urlsplit(db_dsn).path).geturl()


def test_loads_reloads_checks_replays_and_the_cli_are_exact_behind_pgbouncer(
    pooled: str, db_dsn: str, instance: dg.DagsterInstance, landing: Landing, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """A load, a reload, another day, their checks, a replay job and the CLI: database truth."""
    whole_flow(pooled, db_dsn, instance, landing, tmp_path, monkeypatch, capsys)


def whole_flow(
    dsn: str, db_dsn: str, instance: dg.DagsterInstance, landing: Landing, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """Through ``dsn``: load, reload, another day, checks, CLI replay + cleanup, replay job;
    audited on the server (``db_dsn``, the same database as its owner)."""
    folder, samples = landing
    resources = definitions.resources(PostgresResource(dsn=dsn))
    first, second = DAYS[0], DAYS[1]
    for day in (first, first, second):  # a load, a reload, another day
        result = materialize(resources, instance, folder, day.isoformat())
        assert result.success
        checks = check_results(result)
        assert len(checks) == 6  # three per asset: raw_logs and daily_metrics
        assert all(checks.values()), checks
    for day in (first, second):
        valid = LINES_PER_DAY - samples[day].malformed
        audit = asyncio.run(partition_audit(db_dsn, LOGS.target(), day))
        assert (audit.problems, audit.written, audit.in_table) == ((), valid, valid)

    monkeypatch.setenv("ETL_ASSETS_PG_DSN", dsn)
    assert main(["export", "raw_logs", first.isoformat()]) == 0
    letters = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(letters) == samples[first].malformed
    [fatal] = [x for x in letters if x["payload"].get("severity") == "FATAL"]
    fixes = tmp_path / "fixes.jsonl"
    fixes.write_text(
        json.dumps({"id": fatal["id"], "payload": {**fatal["payload"], "severity": "WARN"}})
    )
    assert main(["replay", "raw_logs", first.isoformat(), "--fixes", str(fixes)]) == 0
    assert "replayed 1 dead letter(s): 1 written, 0 failed again" in capsys.readouterr().out
    assert main(["cleanup"]) == 0
    assert "0 dead load(s) abandoned" in capsys.readouterr().out

    job = build_replay_job([raw_logs, daily_metrics])
    config = {"asset": "raw_logs", "partition": second.isoformat(), "error_classes": ["Nope"]}
    result = job.execute_in_process(
        run_config={"ops": {"replay_dead_letters_op": {"config": config}}},
        resources={"postgres": resources["postgres"]},
        instance=instance,
    )
    assert result.success
    valid = LINES_PER_DAY - samples[first].malformed
    audit = asyncio.run(partition_audit(db_dsn, LOGS.target(), first))
    assert (audit.problems, audit.in_table, audit.replayed_in) == ((), valid + 1, 1)
    statuses = asyncio.run(
        fetch(db_dsn, "SELECT status, count(*) FROM etl.dead_letters GROUP BY 1 ORDER BY 1")
    )
    malformed = samples[first].malformed
    assert [tuple(r) for r in statuses] == [
        ("open", malformed - 1 + samples[second].malformed),
        ("replayed", 1),
        ("superseded", malformed),
    ]
