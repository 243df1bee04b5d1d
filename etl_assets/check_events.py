"""One asset check evaluation per partition, however many partitions the run covers.

Dagster 1.13 stores an ``AssetCheckResult`` with the partition taken from the run's
``dagster/partition`` tag alone, so a run that covers a range (a UI or daemon asset
backfill, a single-run backfill: their runs carry only the range tags) records every
result with ``partition=None`` and the check's Partitions tab reads "Skipped". The step
accepts ``AssetCheckEvaluation`` events as well (``execute_step.py``), which carry their
partition and the materialization they checked; this module builds them, so every
partition gets its own Passed/Failed, whatever the run's shape. A failed blocking
evaluation still fails the step, so downstream steps of the run do not run.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import dagster as dg
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData,
)

__all__ = [
    "TargetMaterializations",
    "check_output",
    "latest_materializations",
    "partition_evaluation",
]

TargetMaterializations = Mapping[str, AssetCheckEvaluationTargetMaterializationData]
PAGE = 1_000


def latest_materializations(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, partition_keys: Sequence[str]
) -> TargetMaterializations:
    """The latest materialization of each partition, in pages rather than one query each.

    The check points each evaluation at it: that is how Dagster tells a current result
    from one about an older materialization (``AssetCheckPartitionInfo.is_current``).
    """
    wanted = set(partition_keys)
    records_filter = dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=sorted(wanted))
    found: dict[str, AssetCheckEvaluationTargetMaterializationData] = {}
    cursor: str | None = None
    while wanted - found.keys():
        page = instance.fetch_materializations(
            records_filter,
            limit=PAGE,
            cursor=cursor,
            ascending=False,
        )
        for record in page.records:
            key = record.partition_key
            if key is not None and key in wanted and key not in found:
                found[key] = AssetCheckEvaluationTargetMaterializationData(
                    run_id=record.run_id, storage_id=record.storage_id, timestamp=record.timestamp
                )
        if not page.has_more:
            break
        cursor = page.cursor
    return found


def partition_evaluation(
    check_key: dg.AssetCheckKey,
    partition_key: str,
    *,
    passed: bool,
    blocking: bool,
    severity: dg.AssetCheckSeverity,
    metadata: Mapping[str, Any],
    description: str | None,
    targets: TargetMaterializations,
) -> dg.AssetCheckEvaluation:
    """The result of ``check_key`` for one partition, recorded under that partition."""
    return dg.AssetCheckEvaluation(
        asset_key=check_key.asset_key,
        check_name=check_key.name,
        passed=passed,
        partition=partition_key,
        metadata=dict(metadata),
        severity=severity,
        description=description,
        blocking=blocking,
        target_materialization_data=targets.get(partition_key),
    )


def check_output(evaluations: Sequence[dg.AssetCheckEvaluation]) -> Iterator[Any]:
    """The evaluations, then the check op's (empty) output that Dagster requires."""
    yield from evaluations
    yield dg.Output(None)
