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
from etl_assets.io_manager import data_date
from etl_assets.postgres.key_audit import verify_keys
from etl_assets.postgres.ledger import Ledger
from etl_assets.postgres.resource import PostgresResource
from etl_assets.postgres.target import TableTarget
from etl_assets.postgres.verify import audit_partition, duplicate_keys
from etl_assets.spec import PostgresTable

__all__ = ["partition_checks"]

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
    target = spec.target()

    async def accounted(
        conn: asyncpg.Connection, ledger: Ledger, target: TableTarget, day: dt.date
    ) -> _Finding:
        audit = await audit_partition(conn, ledger, target, day)
        numbers: dict[str, int | float | str] = {
            k: v for k, v in audit.metadata().items() if not isinstance(v, str)
        }
        keys = await verify_keys(conn, ledger, target, day)  # count-preserving corruption
        return _Finding(
            audit.partition_key, {**numbers, **keys.metadata()}, (*audit.problems, *keys.problems)
        )

    async def rate(
        conn: asyncpg.Connection, ledger: Ledger, target: TableTarget, day: dt.date
    ) -> _Finding:
        audit = await audit_partition(conn, ledger, target, day)
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

    async def unique(
        conn: asyncpg.Connection, ledger: Ledger, target: TableTarget, day: dt.date
    ) -> _Finding:
        repeated = await duplicate_keys(conn, target, day)
        key_name = ", ".join(target.primary_key) or "all columns"
        problems = [f"{repeated} key(s) ({key_name}) occur more than once"] if repeated else []
        return _Finding(day.isoformat(), {"duplicate_keys": repeated}, problems)

    descriptions = {
        **_DESCRIPTIONS,
        "dead_letter_rate": f"At most {max_dead_letter_ratio:.2%} of the partition's records "
        "are dead-lettered (warning only: it does not block downstream assets).",
    }
    specs = [
        ("written_equals_enqueued", True, dg.AssetCheckSeverity.ERROR, accounted),
        ("no_duplicate_keys", True, dg.AssetCheckSeverity.ERROR, unique),
        ("dead_letter_rate", False, dg.AssetCheckSeverity.WARN, rate),
    ]
    return [
        _check(asset, target, name, blocking, severity, inspect, descriptions[name])
        for name, blocking, severity, inspect in specs
    ]


def _check(
    asset: dg.AssetsDefinition,
    target: TableTarget,
    name: str,
    blocking: bool,
    severity: dg.AssetCheckSeverity,
    inspect: Inspect,
    description: str,
) -> dg.AssetChecksDefinition:
    with warnings.catch_warnings():  # partitioned checks: preview in Dagster 1.13 (see above)
        warnings.simplefilter("ignore", dg.PreviewWarning)

        @dg.asset_check(  # type: ignore[arg-type]  # yields evaluations: see check_events.py
            asset=asset.key,
            name=name,
            blocking=blocking,
            partitions_def=asset.partitions_def,
            pool="postgres",
            description=description,
        )
        def check(
            context: dg.AssetCheckExecutionContext, postgres: PostgresResource
        ) -> Iterator[Any]:
            keys = _partition_keys(context)
            days = [data_date(k) for k in keys]
            ledger = Ledger(postgres.ledger_schema)

            async def inspect_all(conn: asyncpg.Connection) -> list[_Finding]:
                return [await inspect(conn, ledger, target, day) for day in days]

            # Retried like a load: a lost COMMIT reply must not block a good partition.
            findings = postgres.retried(inspect_all)
            targets = latest_materializations(context.instance, asset.key, keys)
            check_key = dg.AssetCheckKey(asset.key, name)
            evaluations = [
                partition_evaluation(
                    check_key,
                    finding.partition_key,
                    passed=not finding.problems,
                    blocking=blocking,
                    severity=severity,
                    metadata=finding.numbers,
                    description=_describe(finding),
                    targets=targets,
                )
                for finding in findings
            ]
            failing = [f.partition_key for f in findings if f.problems]
            if failing:
                context.log.warning(f"{name} failed for partition(s) {', '.join(failing)}")
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
