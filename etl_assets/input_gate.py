"""No silent zeros downstream: a partition is read only once it was published and passed.

A downstream asset that reads a day whose load failed (or that was never loaded) would
otherwise get an empty list and write its aggregate as zeros: the loss this package
exists to rule out, one asset further down. Before an input is read, each of its
partitions must have been published by a load (the ledger: database truth) and its
latest blocking checks must not have failed (Dagster's records). A partition published
with zero records is read as empty: it was loaded, and it is empty.

An input may opt in to unverified data with ``dg.AssetIn(metadata=READ_UNVERIFIED)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg
import dagster as dg
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

from etl_assets.checks import check_plans
from etl_assets.errors import FatalError
from etl_assets.postgres.ledger import Ledger, PartitionState
from etl_assets.postgres.resource import PostgresResource
from etl_assets.postgres.target import TableTarget

__all__ = ["READ_UNVERIFIED", "UnverifiedPartitionError", "require_verified", "reads_unverified"]

READ_UNVERIFIED_KEY = "etl_assets/read_unverified"
READ_UNVERIFIED: Mapping[str, Any] = {READ_UNVERIFIED_KEY: True}
"""``dg.AssetIn(metadata=READ_UNVERIFIED)``: read partitions whatever their state."""


class UnverifiedPartitionError(FatalError):
    """An input partition was never published, or its blocking check failed."""


def reads_unverified(metadata: Mapping[str, Any] | None) -> bool:
    value = (metadata or {}).get(READ_UNVERIFIED_KEY, False)
    return bool(getattr(value, "value", value))


def require_verified(
    postgres: PostgresResource,
    instance: dg.DagsterInstance | None,
    asset_key: dg.AssetKey,
    target: TableTarget,
    partition_keys: Sequence[str],
    *,
    whole_table: bool = False,
) -> None:
    """Raise naming every partition of the input that must not be read, and the fix.

    ``whole_table``: an unpartitioned downstream asset reads every partition the
    definition has (up to today); days never loaded are simply not in the table then.
    A day whose load failed or whose blocking check failed still blocks the read.
    """
    ledger = Ledger(postgres.ledger_schema)

    async def states(conn: asyncpg.Connection) -> dict[str, PartitionState]:
        return await ledger.partition_states(conn, target.name, partition_keys)

    published = postgres.retried(states)
    failed_checks = _failed_blocking_checks(instance, asset_key, partition_keys)
    problems = []
    for key in partition_keys:
        state = published.get(key)
        if state is None and whole_table:
            continue
        if state is None or not state.published:
            how = "never loaded" if state is None else f"its load is {state.latest.value}"
            problems.append(f"{key}: never published ({how})")
        elif key in failed_checks:
            problems.append(f"{key}: blocking check(s) {', '.join(failed_checks[key])} failed")
    if problems:
        asset = asset_key.to_user_string()
        raise UnverifiedPartitionError(
            f"input {asset} is not ready for {len(problems)} partition(s):\n  "
            + "\n  ".join(problems[:20])
            + ("\n  ..." if len(problems) > 20 else "")
            + f"\nMaterialize {asset} for these partitions (after fixing the cause; its "
            "checks must pass) and run this asset again. To read them anyway, declare the "
            f"input dg.AssetIn(metadata={{{READ_UNVERIFIED_KEY!r}: True}})."
        )


def _failed_blocking_checks(
    instance: dg.DagsterInstance | None, asset_key: dg.AssetKey, partition_keys: Sequence[str]
) -> dict[str, list[str]]:
    """partition -> blocking checks whose latest result, about its latest materialization,
    failed (no instance, as in a direct IO-manager call: nothing known, nothing failed)."""
    if instance is None:
        return {}
    keys = [dg.AssetCheckKey(asset_key, p.name) for p in check_plans() if p.blocking]
    failed: dict[str, list[str]] = {}
    infos = instance.event_log_storage.get_asset_check_partition_info(
        keys, partition_keys=list(partition_keys)
    )
    for info in infos:
        if (
            info.partition_key is not None
            and info.latest_execution_status == AssetCheckExecutionRecordStatus.FAILED
            and info.is_current
        ):
            failed.setdefault(info.partition_key, []).append(info.check_key.name)
    return failed
