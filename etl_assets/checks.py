"""Partition-aware asset checks, computed from database truth.

* ``written_equals_enqueued`` (blocking): the ledger of the partition's latest load adds
  up (enqueued == written + dead-lettered, dead-letter rows == the ledger's count) AND
  the target holds exactly the rows the ledger accounts for (plus replayed ones): as
  many, and the same keys by the key digest (``postgres/key_digest.py``), which names
  the missing and foreign keys when they differ.
* ``no_duplicate_keys`` (blocking): no primary key occurs twice in the partition.
* ``dead_letter_rate`` (warning): the share of dead-lettered records stays under a limit.

Each check records one evaluation PER PARTITION of its run (``check_events.py``):
a run of one partition, a range run of a backfill chunk, a schedule tick, a sensor
request or the CLI all leave every partition its own Passed/Failed in the check's
Partitions tab. A blocking check that fails any partition fails its step, so downstream
assets of that run do not run; across runs, downstream assets also wait on
``AutomationCondition.all_deps_blocking_checks_passed()``, per partition.
"""

import datetime as dt
import warnings
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import dagster as dg

from etl_assets.check_events import (
    check_output,
    latest_materializations,
    partition_evaluation,
)
from etl_assets.partition_keys import data_date
from etl_assets.postgres.key_audit import verify_keys
from etl_assets.postgres.ledger import Ledger
from etl_assets.postgres.resource import PostgresResource
from etl_assets.postgres.target import TableTarget
from etl_assets.postgres.verify import (
    audit_partition,
    check_snapshot,
    duplicate_keys,
    missing_table,
)
from etl_assets.spec import PostgresTable

__all__ = ["CheckPlan", "check_plans", "evaluate_partitions", "partition_checks", "plans_in_run"]

DESCRIPTION_LIMIT = 2_000


@dataclass(frozen=True, slots=True)
class _Finding:
    partition_key: str
    numbers: Mapping[str, int | float | str]
    problems: Sequence[str] = field(default_factory=tuple)


Inspect = Callable[[asyncpg.Connection, Ledger, TableTarget, dt.date], Awaitable[_Finding]]


def partition_checks(
    asset: dg.AssetsDefinition, *, max_dead_letter_ratio: float = 0.01
) -> list[dg.AssetChecksDefinition]:
    """The three checks for an asset written by ResilientPostgresIOManager."""
    key = asset.key
    spec = PostgresTable.from_metadata(asset.metadata_by_key[key], key.to_user_string())
    return [_check(asset, spec.target(), plan) for plan in check_plans(max_dead_letter_ratio)]


@dataclass(frozen=True, slots=True)
class CheckPlan:
    """One partition check: what it inspects and how a failure counts."""

    name: str
    blocking: bool
    severity: dg.AssetCheckSeverity
    inspect: Inspect
    description: str
    max_dead_letter_ratio: float

    def metadata(self) -> dict[str, Any]:
        """On the check's spec, so the IO manager can run the same check (see
        ``plans_in_run``) when its own step fails and the check steps are skipped."""
        return {PLAN_KEY: self.name, RATIO_KEY: self.max_dead_letter_ratio}


PLAN_KEY = "etl_assets/partition_check"
RATIO_KEY = "etl_assets/max_dead_letter_ratio"


def check_plans(max_dead_letter_ratio: float = 0.01) -> list[CheckPlan]:
    """The three checks, in the order they are defined."""

    async def rate(
        conn: asyncpg.Connection, ledger: Ledger, target: TableTarget, day: dt.date
    ) -> _Finding:
        if missing := await missing_table(conn, target):
            return _Finding(day.isoformat(), {}, [missing])
        audit = await audit_partition(conn, ledger, target, day, count_rows=False)
        ratio = audit.dead_letter_ratio
        numbers = {
            "dead_lettered": audit.dead_lettered,
            "enqueued": audit.enqueued,
            "dead_letter_ratio": ratio,
            "limit": max_dead_letter_ratio,
        }
        problems = []
        if ratio > max_dead_letter_ratio:
            problems.append(
                f"{ratio:.2%} of records dead-lettered (limit {max_dead_letter_ratio:.2%})"
            )
        return _Finding(audit.partition_key, numbers, problems)

    rate_description = (
        f"At most {max_dead_letter_ratio:.2%} of the partition's records are dead-lettered "
        "(warning only: it does not block downstream assets)."
    )
    error, warn = dg.AssetCheckSeverity.ERROR, dg.AssetCheckSeverity.WARN
    return [
        CheckPlan(
            "written_equals_enqueued",
            True,
            error,
            _accounted,
            _DESCRIPTIONS["written_equals_enqueued"],
            max_dead_letter_ratio,
        ),
        CheckPlan(
            "no_duplicate_keys",
            True,
            error,
            _unique,
            _DESCRIPTIONS["no_duplicate_keys"],
            max_dead_letter_ratio,
        ),
        CheckPlan("dead_letter_rate", False, warn, rate, rate_description, max_dead_letter_ratio),
    ]


def plans_in_run(step_context: Any, asset_key: dg.AssetKey) -> list[CheckPlan]:
    """The partition checks of ``asset_key`` that the current run selected.

    ``step_context`` is a Dagster ``StepExecutionContext``: the job's asset graph knows
    each check's spec, whose metadata names the plan (``CheckPlan.metadata``).
    """
    graph = step_context.job_def.asset_layer.asset_graph
    selected = step_context.dagster_run.asset_check_selection
    plans: list[CheckPlan] = []
    for check_key in sorted(graph.get_check_keys_for_assets({asset_key}), key=str):
        if selected is not None and check_key not in selected:
            continue
        meta = graph.get_check_spec(check_key).metadata or {}
        if PLAN_KEY in meta:
            ratio = float(_raw(meta[RATIO_KEY]))
            plans.extend(p for p in check_plans(ratio) if p.name == _raw(meta[PLAN_KEY]))
    return plans


def _raw(value: Any) -> Any:
    """A metadata value as given (Dagster wraps it in a MetadataValue)."""
    return getattr(value, "value", value)


def evaluate_partitions(
    postgres: PostgresResource,
    instance: dg.DagsterInstance,
    asset_key: dg.AssetKey,
    target: TableTarget,
    plans: Sequence[CheckPlan],
    partition_keys: Sequence[str],
) -> list[dg.AssetCheckEvaluation]:
    """Every plan's evaluation of every partition, from database truth.

    Each evaluation points at the partition's latest materialization, so Dagster tells a
    current result from one about an older materialization.
    """
    days = [data_date(k) for k in partition_keys]
    ledger = Ledger(postgres.ledger_schema)

    async def inspect_all(conn: asyncpg.Connection) -> list[tuple[CheckPlan, _Finding]]:
        return [
            (plan, await plan.inspect(conn, ledger, target, day)) for plan in plans for day in days
        ]

    # Retried like a load: a lost COMMIT reply must not block a good partition.
    findings = postgres.retried(inspect_all) if plans and days else []
    targets = latest_materializations(instance, asset_key, partition_keys)
    return [
        partition_evaluation(
            dg.AssetCheckKey(asset_key, plan.name),
            finding.partition_key,
            passed=not finding.problems,
            blocking=plan.blocking,
            severity=plan.severity,
            metadata=finding.numbers,
            description=_describe(finding),
            targets=targets,
        )
        for plan, finding in findings
    ]


async def _accounted(
    conn: asyncpg.Connection, ledger: Ledger, target: TableTarget, day: dt.date
) -> _Finding:
    """Counts and keys in one snapshot: the key scan's rows are the count audit's count."""
    async with check_snapshot(conn, ledger, target):
        keys = await verify_keys(conn, ledger, target, day)  # count-preserving corruption
        audit = await audit_partition(conn, ledger, target, day, rows_in_table=keys.rows_in_table)
    numbers: dict[str, int | float | str] = {
        k: v for k, v in audit.metadata().items() if not isinstance(v, str)
    }
    return _Finding(
        audit.partition_key, {**numbers, **keys.metadata()}, (*audit.problems, *keys.problems)
    )


async def _unique(
    conn: asyncpg.Connection, ledger: Ledger, target: TableTarget, day: dt.date
) -> _Finding:
    if missing := await missing_table(conn, target):
        return _Finding(day.isoformat(), {}, [missing])
    repeated = await duplicate_keys(conn, target, day)
    key_name = ", ".join(target.primary_key) or "all columns"
    problems = [f"{repeated} key(s) ({key_name}) occur more than once"] if repeated else []
    return _Finding(day.isoformat(), {"duplicate_keys": repeated}, problems)


def _check(
    asset: dg.AssetsDefinition, target: TableTarget, plan: CheckPlan
) -> dg.AssetChecksDefinition:
    with warnings.catch_warnings():  # partitioned checks: preview in Dagster 1.13 (see above)
        warnings.simplefilter("ignore", dg.PreviewWarning)

        @dg.asset_check(  # type: ignore[arg-type]  # yields evaluations: see check_events.py
            asset=asset.key,
            name=plan.name,
            blocking=plan.blocking,
            partitions_def=asset.partitions_def,
            pool="postgres",
            description=plan.description,
            metadata=plan.metadata(),
        )
        def check(
            context: dg.AssetCheckExecutionContext, postgres: PostgresResource
        ) -> Iterator[Any]:
            keys = _partition_keys(context)
            evaluations = evaluate_partitions(
                postgres, context.instance, asset.key, target, [plan], keys
            )
            failing = [e.partition for e in evaluations if not e.passed]
            if failing:
                context.log.warning(
                    f"{plan.name} failed for partition(s) {', '.join(map(str, failing))}"
                )
            yield from check_output(evaluations)

    return check


_DESCRIPTIONS = {
    "written_equals_enqueued": "Ledger and table agree for the partition: enqueued == written "
    "+ dead-lettered, and the table holds exactly the rows written (plus replayed): as many "
    "and, by a digest of their primary keys, the same keys (metadata key_digest says whether "
    "the keys were checked or, for loads without a digest, only the counts).",
    "no_duplicate_keys": "No primary key occurs twice in the partition.",
}


def _partition_keys(context: dg.AssetCheckExecutionContext) -> list[str]:
    if context.has_partition_key_range or context.has_partition_key:
        return list(context.partition_keys)
    raise dg.Failure(
        "this check verifies partitions: run it with a partition (or a partition range)"
    )


def _describe(finding: _Finding) -> str | None:
    """What failed in the partition, bounded so a huge finding cannot flood the event log."""
    return "; ".join(finding.problems)[:DESCRIPTION_LIMIT] or None
