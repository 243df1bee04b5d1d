"""Partition-aware asset checks, computed from database truth.

* ``written_equals_enqueued`` (blocking): the ledger of the partition's latest load adds
  up (enqueued == written + dead-lettered, dead-letter rows == the ledger's count) AND
  the target holds exactly the rows the ledger accounts for (plus replayed ones).
* ``no_duplicate_keys`` (blocking): no primary key occurs twice in the partition.
* ``dead_letter_rate`` (warning): the share of dead-lettered records stays under a limit.

A blocking check that fails stops downstream assets in the same run; for runs started by
sensors or automation, downstream assets also wait on
``AutomationCondition.all_deps_blocking_checks_passed()``.

Partitioned checks are a preview in Dagster 1.13: a run of one partition records a
result for that partition, but a single-run range backfill records ONE result without a
partition. So the checks verify every partition of the run and fail if any fails,
naming it; the example assets default to one partition per run.
"""

import datetime as dt
import warnings
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import asyncpg
import dagster as dg

from etl_assets.io_manager import data_date
from etl_assets.postgres.ledger import LedgerTables
from etl_assets.postgres.resource import PostgresResource
from etl_assets.postgres.target import TableTarget
from etl_assets.postgres.verify import audit_partition, duplicate_keys
from etl_assets.spec import PostgresTable

__all__ = ["partition_checks"]

DESCRIPTION_LIMIT = 2_000


@dataclass(frozen=True, slots=True)
class _Finding:
    partition_key: str
    numbers: dict[str, int | float]
    problems: Sequence[str] = field(default_factory=tuple)


Inspect = Callable[[asyncpg.Connection, LedgerTables, TableTarget, dt.date], Awaitable[_Finding]]


def partition_checks(
    asset: dg.AssetsDefinition, *, max_dead_letter_ratio: float = 0.01
) -> list[dg.AssetChecksDefinition]:
    """The three checks for an asset written by ResilientPostgresIOManager."""
    key = asset.key
    spec = PostgresTable.from_metadata(asset.metadata_by_key[key], key.to_user_string())
    target = spec.target()

    async def accounted(
        conn: asyncpg.Connection, ledger: LedgerTables, target: TableTarget, day: dt.date
    ) -> _Finding:
        audit = await audit_partition(conn, ledger, target, day)
        numbers = {k: v for k, v in audit.metadata().items() if not isinstance(v, str)}
        return _Finding(audit.partition_key, numbers, audit.problems)

    async def rate(
        conn: asyncpg.Connection, ledger: LedgerTables, target: TableTarget, day: dt.date
    ) -> _Finding:
        audit = await audit_partition(conn, ledger, target, day)
        ratio = audit.dead_letter_ratio
        numbers = {"dead_lettered": audit.dead_lettered, "enqueued": audit.enqueued}
        problems = []
        if ratio > max_dead_letter_ratio:
            problems.append(
                f"{ratio:.2%} of records dead-lettered (limit {max_dead_letter_ratio:.2%})"
            )
        return _Finding(audit.partition_key, {**numbers, "dead_letter_ratio": ratio}, problems)

    async def unique(
        conn: asyncpg.Connection, ledger: LedgerTables, target: TableTarget, day: dt.date
    ) -> _Finding:
        repeated = await duplicate_keys(conn, target, day)
        key_name = ", ".join(target.primary_key) or "all columns"
        problems = [f"{repeated} key(s) ({key_name}) occur more than once"] if repeated else []
        return _Finding(day.isoformat(), {"duplicate_keys": repeated}, problems)

    specs = [
        ("written_equals_enqueued", True, dg.AssetCheckSeverity.ERROR, accounted),
        ("no_duplicate_keys", True, dg.AssetCheckSeverity.ERROR, unique),
        ("dead_letter_rate", False, dg.AssetCheckSeverity.WARN, rate),
    ]
    return [
        _check(asset, target, name, blocking, severity, inspect)
        for name, blocking, severity, inspect in specs
    ]


def _check(
    asset: dg.AssetsDefinition,
    target: TableTarget,
    name: str,
    blocking: bool,
    severity: dg.AssetCheckSeverity,
    inspect: Inspect,
) -> dg.AssetChecksDefinition:
    with warnings.catch_warnings():  # partitioned checks: preview in Dagster 1.13 (see above)
        warnings.simplefilter("ignore", dg.PreviewWarning)

        @dg.asset_check(
            asset=asset.key,
            name=name,
            blocking=blocking,
            partitions_def=asset.partitions_def,
            pool="postgres",
            description=_DESCRIPTIONS[name],
        )
        def check(
            context: dg.AssetCheckExecutionContext, postgres: PostgresResource
        ) -> dg.AssetCheckResult:
            days = [data_date(k) for k in _partition_keys(context)]
            ledger = LedgerTables(postgres.ledger_schema)

            async def run(pool: asyncpg.Pool) -> list[_Finding]:
                async with pool.acquire() as conn:
                    return [await inspect(conn, ledger, target, day) for day in days]

            return _result(postgres.run(run), severity)

    return check


_DESCRIPTIONS = {
    "written_equals_enqueued": "Ledger and table agree for the partition: enqueued == written "
    "+ dead-lettered, and the table holds exactly the rows written (plus replayed).",
    "no_duplicate_keys": "No primary key occurs twice in the partition.",
    "dead_letter_rate": "The share of dead-lettered records stays under the limit.",
}


def _partition_keys(context: dg.AssetCheckExecutionContext) -> list[str]:
    if context.has_partition_key_range or context.has_partition_key:
        return list(context.partition_keys)
    raise dg.Failure(
        "this check verifies partitions: run it with a partition (or a partition range)"
    )


def _result(findings: list[_Finding], severity: dg.AssetCheckSeverity) -> dg.AssetCheckResult:
    """One result: the partition's numbers, or totals over a range naming what failed."""
    failing = [f for f in findings if f.problems]
    if len(findings) == 1:
        metadata: dict[str, int | float | str] = {**findings[0].numbers}
    else:
        metadata = {
            name: sum(f.numbers[name] for f in findings)
            for name in findings[0].numbers
            if name != "dead_letter_ratio"
        }
        metadata["partitions_checked"] = len(findings)
        metadata["failing_partitions"] = ", ".join(f.partition_key for f in failing)
    first, last = findings[0].partition_key, findings[-1].partition_key
    metadata["partition"] = first if first == last else f"{first}..{last}"
    description = "; ".join(f"{f.partition_key}: {p}" for f in failing for p in f.problems)
    return dg.AssetCheckResult(
        passed=not failing,
        severity=severity,
        metadata=metadata,
        description=description[:DESCRIPTION_LIMIT] or None,
    )
