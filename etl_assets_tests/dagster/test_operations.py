"""Replay, schedule and sensors, evaluated with Dagster's own test helpers."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Any

import dagster as dg
import pytest

from etl_assets.checks import partition_checks
from etl_assets.example import definitions
from etl_assets.example.logs import LOGS, daily_metrics, raw_logs
from etl_assets.example.schedules import daily_logs_job, daily_logs_schedule
from etl_assets.jobs import build_replay_job
from etl_assets.sensors import dead_letter_sensor, failure_alert
from etl_assets_tests.dagster.conftest import DAYS, LINES_PER_DAY, logs_config
from etl_assets_tests.dagster.test_failures import run_with_database_down
from etl_assets_tests.dagster.test_pipeline import Landing, materialize
from etl_assets_tests.postgres.helpers import execute, fetch, partition_audit

FIX_SEVERITY = """UPDATE etl.dead_letters SET payload = jsonb_set(payload, '{severity}', '"ERROR"')
                  WHERE payload->>'severity' = 'FATAL'"""


def replay(
    resources: dict[str, Any], instance: dg.DagsterInstance, asset: str, partition: str
) -> dg.ExecuteInProcessResult:
    job = build_replay_job([raw_logs, daily_metrics])
    return job.execute_in_process(
        run_config={
            "ops": {"replay_dead_letters_op": {"config": {"asset": asset, "partition": partition}}}
        },
        resources={"postgres": resources["postgres"]},
        instance=instance,
        raise_on_error=False,
    )


def observed(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    [event] = [e for e in result.all_events if e.event_type_value == "ASSET_OBSERVATION"]
    observation = event.event_specific_data.asset_observation  # type: ignore[union-attr]
    return {k: v.value for k, v in observation.metadata.items()}


def test_replay_after_a_fix_writes_once_and_keeps_the_partition_accounted(
    db_dsn: str, resources: dict[str, Any], instance: dg.DagsterInstance, landing: Landing
) -> None:
    folder, samples = landing
    day = DAYS[0]
    valid = LINES_PER_DAY - samples[day].malformed
    assert materialize(resources, instance, folder, day.isoformat()).success
    asyncio.run(execute(db_dsn, FIX_SEVERITY))  # the fix: FATAL is mapped to ERROR

    first = replay(resources, instance, "raw_logs", day.isoformat())
    second = replay(resources, instance, "raw_logs", day.isoformat())

    assert first.success
    assert second.success
    assert {k: observed(first)[k] for k in ("replayed", "written", "dead_lettered_again")} == {
        "replayed": 3,
        "written": 1,
        "dead_lettered_again": 2,
    }
    assert {k: observed(second)[k] for k in ("replayed", "written", "dead_lettered_again")} == {
        "replayed": 2,  # the two still broken, re-driven and dead-lettered again
        "written": 0,
        "dead_lettered_again": 2,
    }
    rows = asyncio.run(fetch(db_dsn, "SELECT count(*) FROM public.logs WHERE data_date = $1", day))
    assert rows[0][0] == valid + 1
    fixed = asyncio.run(
        fetch(
            db_dsn,
            "SELECT l.severity FROM public.logs l JOIN etl.dead_letters d "
            "ON d.payload->>'source_file' = l.source_file "
            "AND (d.payload->>'line_no')::int = l.line_no WHERE d.payload->>'severity' = 'ERROR' "
            "AND d.status = 'replayed'",
        )
    )
    assert [r[0] for r in fixed] == ["ERROR"]
    letters = asyncio.run(
        fetch(
            db_dsn,
            "SELECT load_id LIKE 'replay:%', status, replay_attempts, "
            "last_error_class IS NOT NULL, resolved_by LIKE 'replay:%', count(*) "
            "FROM etl.dead_letters GROUP BY 1, 2, 3, 4, 5 ORDER BY 2",
        )
    )
    # Letters stay the load's own: one replayed (by the first replay), two still open
    # after two attempts, each with the error of its last attempt.
    assert [tuple(r) for r in letters] == [
        (False, "open", 2, True, None, 2),
        (False, "replayed", 1, False, True, 1),
    ]
    verdict = asyncio.run(partition_audit(db_dsn, LOGS.target(), day))
    assert verdict.problems == ()
    assert (verdict.written, verdict.replayed_in, verdict.in_table) == (valid, 1, valid + 1)


def test_replay_of_an_unknown_asset_names_the_replayable_ones(
    resources: dict[str, Any], instance: dg.DagsterInstance
) -> None:
    result = replay(resources, instance, "nope", "2024-03-01")
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert "replayable assets: daily_metrics, raw_logs" in str(failure.step_failure_data.error)


def test_daily_schedule_requests_yesterdays_partition_and_starts_stopped() -> None:
    schedule = definitions.defs.get_schedule_def("daily_logs_schedule")
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    with dg.instance_for_test() as instance:
        context = dg.build_schedule_context(
            instance=instance,
            scheduled_execution_time=dt.datetime(2024, 3, 8, 0, 30, tzinfo=dt.UTC),
            repository_def=definitions.defs.get_repository_def(),
        )
        [request] = schedule.evaluate_tick(context).run_requests or []
    assert request.partition_key == "2024-03-07"


def test_dead_letter_sensor_requests_a_report_once_per_new_letters(
    db_dsn: str, resources: dict[str, Any], instance: dg.DagsterInstance, landing: Landing
) -> None:
    folder, _ = landing

    def evaluate(cursor: str | None = None) -> dg.SensorResult:
        with dg.build_sensor_context(
            cursor=cursor, resources={"postgres": resources["postgres"]}
        ) as context:
            return dead_letter_sensor(context)  # type: ignore[return-value]

    assert evaluate().run_requests == []
    assert materialize(resources, instance, folder, DAYS[0].isoformat()).success

    first = evaluate()
    again = evaluate(first.cursor)

    [request] = first.run_requests
    assert request.asset_selection == [dg.AssetKey("dead_letter_queue")]
    assert request.tags["etl_assets/new_dead_letters"] == "3"
    max_id = asyncio.run(fetch(db_dsn, "SELECT max(id) FROM etl.dead_letters"))[0][0]
    assert first.cursor == str(max_id)
    assert again.run_requests == []
    assert again.skip_reason is not None


def test_run_failure_sensor_builds_a_structured_alert(
    instance: dg.DagsterInstance, landing: Landing
) -> None:
    result = run_with_database_down(instance, landing[0], connect_attempts=1)
    context = dg.build_run_status_sensor_context(
        sensor_name="run_failure_alert",
        dagster_event=result.get_run_failure_event(),
        dagster_instance=instance,
        dagster_run=result.dagster_run,
    ).for_run_failure()

    alert = failure_alert(context)

    assert alert["alert"] == "etl_assets.run_failed"
    assert alert["run_id"] == result.run_id
    assert alert["partition"] == DAYS[0].isoformat()
    assert [s["step"] for s in alert["failed_steps"]] == ["raw_logs"]
    assert alert["failed_steps"][0]["error"].startswith(
        "etl_assets.postgres.resource.ConnectionFailedError: could not connect to PostgreSQL "
        "at postgresql://etl@127.0.0.1:"
    )
    assert "s3cret-pw" not in json.dumps(alert)


@pytest.mark.parametrize(
    "name", ["dead_letter_sensor", "run_failure_alert", "default_automation_condition_sensor"]
)
def test_sensors_run_by_default(name: str) -> None:
    sensor = definitions.defs.get_sensor_def(name)
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING


def test_schedule_tick_run_records_each_check_under_its_partition(
    resources: dict[str, Any], instance: dg.DagsterInstance, landing: Landing
) -> None:
    """The run a schedule tick requests leaves Passed results under that partition."""

    context = dg.build_schedule_context(
        instance=instance,
        scheduled_execution_time=dt.datetime(2024, 3, 3, 0, 30, tzinfo=dt.UTC),
        repository_def=definitions.defs.get_repository_def(),
    )
    schedule = definitions.defs.get_schedule_def(daily_logs_schedule.name)
    [request] = schedule.evaluate_tick(context).run_requests or []
    defs = dg.Definitions(
        assets=[raw_logs, daily_metrics],
        asset_checks=[*partition_checks(raw_logs), *partition_checks(daily_metrics)],
        jobs=[daily_logs_job],
        resources=resources,
    )
    result = defs.resolve_job_def("daily_logs").execute_in_process(
        run_config=logs_config(landing[0]), instance=instance, tags=request.tags
    )
    assert result.success
    keys = [  # the job loads raw_logs; daily_metrics follows by its automation condition
        dg.AssetCheckKey(dg.AssetKey("raw_logs"), name)
        for name in ("written_equals_enqueued", "no_duplicate_keys", "dead_letter_rate")
    ]
    infos = instance.event_log_storage.get_asset_check_partition_info(keys)
    assert sorted(
        (i.check_key.asset_key.to_user_string(), i.check_key.name, i.partition_key,
         i.latest_execution_status.value, i.is_current)
        for i in infos
    ) == sorted(
        (k.asset_key.to_user_string(), k.name, "2024-03-02", "SUCCEEDED", True) for k in keys
    )  # fmt: skip
