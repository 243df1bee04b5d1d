"""Sensors: new dead letters refresh the dead-letter report; failed runs raise an alert.

A dead letter is data the pipeline could not write; it waits for a fix, so the sensor
reports it (a run of ``dead_letter_queue`` with the summary, and a warning per target
and partition) rather than replaying blindly: a replay before the fix only fails again.
Failed blocking checks fail their run, so the run failure sensor reports them too.
"""

import json
import logging
from typing import Any

import dagster as dg

from etl_assets.dead_letter_queue import dead_letter_queue
from etl_assets.postgres.dead_letters import summarize_dead_letters
from etl_assets.postgres.ledger import Ledger
from etl_assets.postgres.resource import PostgresResource

__all__ = ["automation_sensor", "dead_letter_sensor", "failure_alert", "run_failure_alert"]

alerts = logging.getLogger("etl_assets.alerts")

# Dagster's implicit default_automation_condition_sensor starts STOPPED, so
# ``all_deps_blocking_checks_passed()`` on daily_metrics would never be evaluated on a
# fresh checkout. Declaring it under the same name, running, makes the automation
# conditions work out of the box; turn it off under Automation like any sensor.
automation_sensor = dg.AutomationConditionSensorDefinition(
    "default_automation_condition_sensor",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Evaluates the assets' automation conditions (daily_metrics: eager, once "
    "the upstream partition's blocking checks passed).",
)


@dg.sensor(
    name="dead_letter_sensor",
    minimum_interval_seconds=60,
    asset_selection=[dead_letter_queue],
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="New dead letters: refresh the dead-letter report and warn per partition.",
)
def dead_letter_sensor(
    context: dg.SensorEvaluationContext, postgres: PostgresResource
) -> dg.SensorResult:
    cursor = int(context.cursor or 0)
    ledger = Ledger(postgres.ledger_schema)

    summary = postgres.retried(
        lambda conn: summarize_dead_letters(conn, ledger, after_id=cursor, newest=0),
        min_size=0,
        max_size=1,
    )
    if summary.max_id <= cursor:
        return dg.SensorResult(skip_reason=f"no dead letters after id {cursor}")
    for group in summary.groups:
        if group.open:
            context.log.warning(
                f"{group.open} new dead letter(s) in {group.target} partition "
                f"{group.partition_key}: {group.error_class}"
            )
    request = dg.RunRequest(
        run_key=f"dead-letters-{summary.max_id}",
        asset_selection=[dead_letter_queue.key],
        tags={"etl_assets/new_dead_letters": str(summary.open)},
    )
    return dg.SensorResult(run_requests=[request], cursor=str(summary.max_id))


def failure_alert(context: dg.RunFailureSensorContext) -> dict[str, Any]:
    """The structured alert of a failed run: what failed, where, and the first error."""
    run = context.dagster_run
    steps = [
        {"step": event.step_key, "error": _error_message(event), **_partitions_of(event)}
        for event in context.get_step_failure_events()
    ]
    return {
        "alert": "etl_assets.run_failed",
        "run_id": run.run_id,
        "job": run.job_name,
        "partition": run.tags.get("dagster/partition"),
        "partition_range": [
            run.tags.get("dagster/asset_partition_range_start"),
            run.tags.get("dagster/asset_partition_range_end"),
        ],
        "failed_steps": steps,
        "message": context.failure_event.message,
    }


@dg.run_failure_sensor(
    name="run_failure_alert",
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Logs a structured JSON alert for every failed run (etl_assets.alerts logger).",
)
def run_failure_alert(context: dg.RunFailureSensorContext) -> None:
    alert = failure_alert(context)
    alerts.error(json.dumps(alert, default=str))
    context.log.error(json.dumps(alert, default=str))


def _partitions_of(event: dg.DagsterEvent) -> dict[str, Any]:
    """Which partitions of a multi-partition step failed and which published (the step's
    failure metadata, ``partition_outcomes.partitions_failed``); empty for other steps."""
    failure = getattr(event.event_specific_data, "user_failure_data", None)
    metadata = failure.metadata if failure is not None else {}
    return {
        key: metadata[key].value
        for key in ("failed_partitions", "published_partitions")
        if key in metadata
    }


def _error_message(event: dg.DagsterEvent) -> str | None:
    """The root cause's message: Dagster wraps IO manager errors in its own."""
    error = getattr(event.event_specific_data, "error", None)
    while error is not None and error.cause is not None:
        error = error.cause
    return error.message.strip() if error is not None else None
