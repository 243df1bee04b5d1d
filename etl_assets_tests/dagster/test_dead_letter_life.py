"""The dead-letter queue through Dagster: a reload, a fix file replayed by the job, cleanup."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import dagster as dg

from etl_assets.dead_letter_queue import dead_letter_queue
from etl_assets.example.logs import LOGS, daily_metrics, raw_logs
from etl_assets.jobs import build_cleanup_job, build_replay_job
from etl_assets_tests.dagster.conftest import DAYS, LINES_PER_DAY
from etl_assets_tests.dagster.test_pipeline import Landing, materialize
from etl_assets_tests.postgres.helpers import execute, fetch, partition_audit


def queue_metadata(resources: dict[str, Any], instance: dg.DagsterInstance) -> dict[str, Any]:
    result = dg.materialize(
        [dead_letter_queue], resources={"postgres": resources["postgres"]}, instance=instance
    )
    [event] = result.asset_materializations_for_node("dead_letter_queue")
    return {
        k: v.value for k, v in event.metadata.items() if k in ("open", "superseded", "replayed")
    }


def test_a_reload_supersedes_and_a_fix_file_is_replayed_by_the_job(
    db_dsn: str, resources: dict[str, Any], instance: dg.DagsterInstance, landing: Landing,
    tmp_path: Path,
) -> None:  # fmt: skip
    folder, samples = landing
    day = DAYS[0]
    valid = LINES_PER_DAY - samples[day].malformed
    assert materialize(resources, instance, folder, day.isoformat()).success
    assert materialize(resources, instance, folder, day.isoformat()).success  # a reload
    assert queue_metadata(resources, instance) == {"open": 3, "superseded": 3, "replayed": 0}

    [letter] = asyncio.run(
        fetch(db_dsn, "SELECT id, payload FROM etl.dead_letters "
                      "WHERE status = 'open' AND payload->>'severity' = 'FATAL'")
    )  # fmt: skip
    payload = {**json.loads(letter["payload"]), "severity": "WARN"}
    fixes = tmp_path / "fixes.jsonl"
    fixes.write_text(json.dumps({"id": letter["id"], "payload": payload}) + "\n")
    job = build_replay_job([raw_logs, daily_metrics])
    config = {"asset": "raw_logs", "partition": day.isoformat(), "fixes_file": str(fixes)}
    result = job.execute_in_process(
        run_config={"ops": {"replay_dead_letters_op": {"config": config}}},
        resources={"postgres": resources["postgres"]},
        instance=instance,
    )
    assert result.success
    assert queue_metadata(resources, instance) == {"open": 2, "superseded": 3, "replayed": 1}
    rows = asyncio.run(
        fetch(db_dsn, "SELECT severity FROM public.logs WHERE data_date = $1 AND line_no = $2 "
                      "AND source_file = $3", day, payload["line_no"], payload["source_file"])
    )  # fmt: skip
    assert [r[0] for r in rows] == ["WARN"]
    audit = asyncio.run(partition_audit(db_dsn, LOGS.target(), day))
    assert (audit.problems, audit.in_table, audit.replayed_in) == ((), valid + 1, 1)


def test_the_cleanup_job_abandons_a_dead_load_and_drops_its_staging_table(
    db_dsn: str, resources: dict[str, Any], instance: dg.DagsterInstance, landing: Landing
) -> None:
    folder, _ = landing
    assert materialize(resources, instance, folder, DAYS[0].isoformat()).success
    asyncio.run(
        execute(
            db_dsn,
            """CREATE TABLE public._etl_stage_dead (LIKE public.logs);
               INSERT INTO etl.partition_loads (target, partition_key, load_id, mode, status,
                 staging_table) VALUES ('public.logs', '2099-01-01', 'dead', 'replace',
                 'loading', '_etl_stage_dead');""",
        )
    )
    result = build_cleanup_job().execute_in_process(
        resources={"postgres": resources["postgres"]}, instance=instance
    )
    assert result.success
    loads = asyncio.run(
        fetch(db_dsn, "SELECT load_id, status, to_regclass('public._etl_stage_dead') IS NULL "
                      "FROM etl.partition_loads WHERE load_id = 'dead'")
    )  # fmt: skip
    assert [tuple(r) for r in loads] == [("dead", "abandoned", True)]
    published = asyncio.run(
        fetch(db_dsn, "SELECT count(*) FROM etl.partition_loads WHERE status = 'published'")
    )
    assert published[0][0] == 1
