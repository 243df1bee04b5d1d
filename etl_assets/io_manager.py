"""ResilientPostgresIOManager: Dagster outputs into PostgreSQL partitions, nothing lost.

An asset returns its records (a list, or better an iterator: the load streams it in
bounded batches) and declares its table with :class:`~etl_assets.spec.PostgresTable`
metadata. The partition key is the data date. A run over several partitions
(``BackfillPolicy.single_run()``) returns ``{partition_key: records}`` and each partition
is loaded, ledgered and published on its own.

Dagster calls IO managers synchronously; each call runs the async engine on one fresh
event loop with one pool, closed on every path (``PostgresResource.run``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import asyncpg
import dagster as dg
from pydantic import Field

from etl_assets.errors import ConfigurationError
from etl_assets.frames import classify_output, is_frame, split_by_partition
from etl_assets.input_shapes import InputShape, convert_table, input_shape
from etl_assets.postgres.loader import LoadReport, LoadSettings, load_partition, resolve_load_id
from etl_assets.postgres.reader import PartitionStream, read_arrow, read_dicts
from etl_assets.postgres.resource import PostgresResource
from etl_assets.postgres.retry import RetryPolicy
from etl_assets.postgres.writer import Log
from etl_assets.spec import PostgresTable

__all__ = [
    "IO_MANAGER_KEY",
    "PartitionRecords",
    "PartitionStream",
    "ResilientPostgresIOManager",
    "data_date",
    "load_report_metadata",
    "postgres_asset",
    "record_load_metadata",
]

IO_MANAGER_KEY = "postgres_io_manager"
BACKFILL_CHUNK = 31
"""Partitions per backfill run: a wide backfill pays one run's start-up (process, code
load, resources) per chunk instead of per partition, and a run's memory is bounded by
the chunk (a downstream input holds at most this many partitions), not by the backfill."""

PartitionRecords = dict[str, Any]
"""What an asset may return: ``{partition_key: records}``, records being a list or an
iterator of pydantic models or dicts. (Spelled ``dict[str, Any]`` because Dagster cannot
type-check iterators; the IO manager checks the shape instead.)"""


def postgres_asset(
    spec: PostgresTable, *, partitions_def: dg.PartitionsDefinition, **kwargs: Any
) -> Callable[[Callable[..., Any]], dg.AssetsDefinition]:
    """``@dg.asset`` for a table written by the IO manager, with this package's defaults.

    Backfills run in chunks of ``BACKFILL_CHUNK`` partitions (each partition still gets
    its own load, ledger, materialization event and check results), the table's
    metadata, the ``postgres`` pool and IO manager; any ``dg.asset`` argument overrides.
    """
    kwargs.setdefault("backfill_policy", dg.BackfillPolicy.multi_run(BACKFILL_CHUNK))
    kwargs.setdefault("io_manager_key", IO_MANAGER_KEY)
    kwargs.setdefault("pool", "postgres")
    kwargs.setdefault("kinds", {"postgres"})
    metadata = {**spec.metadata(), **kwargs.pop("metadata", {})}
    decorator: Callable[[Callable[..., Any]], dg.AssetsDefinition] = dg.asset(
        partitions_def=partitions_def, metadata=metadata, **kwargs
    )
    return decorator


class ResilientPostgresIOManager(dg.ConfigurableIOManager):
    """Writes each partition through the ledgered, retried, audited load engine."""

    postgres: PostgresResource
    batch_size: int = Field(default=25_000, ge=1, description="Records per transaction.")
    writers: int = Field(default=3, ge=1, description="Concurrent batch writers per partition.")
    max_dead_letter_ratio: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description=(
            "Bound on a source's true reject share: a load fails when its dead letters rule it "
            "out at 99% confidence, or when every record was dead-lettered. "
            "PostgresTable(max_dead_letter_ratio=...) overrides it per asset."
        ),
    )
    retry_attempts: int = Field(
        default=30,
        ge=1,
        description="Attempts per transaction; with the default, retry_budget_s is the bound.",
    )
    retry_budget_s: float = Field(
        default=120.0, gt=0, description="Total seconds one transaction may spend retrying."
    )
    key_digest: bool = Field(
        default=True,
        description="Store a digest of each batch's primary keys, so the blocking check "
        "catches a row swapped for another (costs ~5% of load speed; off: counts only).",
    )

    def settings(self, spec: PostgresTable) -> LoadSettings:
        return LoadSettings(
            batch_size=spec.batch_size or self.batch_size,
            writers=self.writers,
            max_dead_letter_ratio=(
                self.max_dead_letter_ratio
                if spec.max_dead_letter_ratio is None
                else spec.max_dead_letter_ratio
            ),
            retry=RetryPolicy(attempts=self.retry_attempts, timeout_s=self.retry_budget_s),
            ledger_schema=self.postgres.ledger_schema,
            key_digest=self.key_digest,
        )

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        owner = context.asset_key.to_user_string()
        spec = PostgresTable.from_metadata(context.definition_metadata, owner)
        partitions = _partitions(context, obj, owner, spec.partition_column)
        run_ids = _run_ids(context)
        settings = self.settings(spec)

        async def load_all(pool: asyncpg.Pool) -> list[LoadReport]:
            reports = []
            for key, records in partitions:
                reports.append(
                    await _load_one(
                        pool, spec, data_date(key), records, run_ids, settings, context.log
                    )
                )
            return reports

        reports = self.postgres.run(load_all)
        record_load_metadata(context, reports)

    def load_input(self, context: dg.InputContext) -> Any:
        """The upstream rows of the input's partitions (all rows if it has none).

        What the input is annotated with decides the shape: ``pd.DataFrame``,
        ``pl.DataFrame``, ``pa.Table``, :class:`PartitionStream` (Arrow batches in flat
        memory), or anything else: a list of dicts.
        """
        upstream = context.upstream_output
        if upstream is None or not upstream.has_asset_key:
            raise ConfigurationError("ResilientPostgresIOManager loads asset inputs only")
        owner = upstream.asset_key.to_user_string()
        spec = PostgresTable.from_metadata(upstream.definition_metadata, owner)
        days = (
            [data_date(k) for k in context.asset_partition_keys]
            if context.has_asset_partitions
            else None
        )
        target = spec.target()
        wanted = input_shape(context.dagster_type.typing_type)
        if wanted is InputShape.STREAM:
            return PartitionStream(self.postgres.resolved_dsn(), target, days, owner)
        if wanted is InputShape.DICTS:
            return self.postgres.run(lambda pool: read_dicts(pool, target, days, owner))
        table = self.postgres.run(lambda pool: read_arrow(pool, target, days, owner))
        return convert_table(table, wanted)


async def _load_one(
    pool: asyncpg.Pool,
    spec: PostgresTable,
    day: dt.date,
    records: Iterable[Any],
    run_ids: tuple[str, str],
    settings: LoadSettings,
    log: Log,
) -> LoadReport:
    target = spec.target()
    load_id = await resolve_load_id(pool, target, day, *run_ids, settings.ledger_schema)
    return await load_partition(
        pool, target, day, records, load_id=load_id, model=spec.model, settings=settings, log=log
    )


def data_date(partition_key: str) -> dt.date:
    """The data date a partition key names (daily partitions: ``YYYY-MM-DD``)."""
    try:
        return dt.date.fromisoformat(partition_key)
    except ValueError:
        raise ConfigurationError(
            f"partition key {partition_key!r} is not a date (YYYY-MM-DD); etl_assets writes "
            "one partition per data date: use a DailyPartitionsDefinition"
        ) from None


def _partitions(
    context: dg.OutputContext, obj: Any, owner: str, partition_column: str
) -> list[tuple[str, Iterable[Any]]]:
    """``(partition_key, records)`` for each partition of the run.

    A multi-partition run (a backfill chunk) may return ``{partition_key: records}``, or
    one DataFrame / Arrow table that carries the partition column: its rows are routed
    to their partitions by that column.
    """
    if not context.has_asset_partitions:
        raise ConfigurationError(
            f"asset {owner} is not partitioned; ResilientPostgresIOManager writes one "
            "partition per data date (give it partitions_def=DailyPartitionsDefinition(...))"
        )
    keys = list(context.asset_partition_keys)
    if isinstance(obj, Mapping):
        if set(obj) != set(keys):
            raise ConfigurationError(
                f"asset {owner} returned records for partitions {sorted(obj)[:5]}, but the run "
                f"covers {keys[:5]}{' ...' if len(keys) > 5 else ''}: return exactly one entry "
                "per partition of the run"
            )
        parts = [(k, obj[k]) for k in keys]
    elif len(keys) == 1:
        parts = [(keys[0], obj)]
    elif is_frame(obj):
        where = f"asset {owner} ran for {len(keys)} partitions in one run and returned one frame"
        parts = list(split_by_partition(obj, partition_column, keys, where).items())
    else:
        raise ConfigurationError(
            f"asset {owner} ran for {len(keys)} partitions in one run (single-run backfill); "
            "return a dict {partition_key: records} so each partition is loaded on its own"
        )
    return [
        (key, classify_output(records, f"asset {owner} partition {key}")) for key, records in parts
    ]


def _run_ids(context: dg.OutputContext) -> tuple[str, str]:
    """(root run id, run id): a re-executed failed run resumes its root's load."""
    run = context.step_context.dagster_run
    return run.root_run_id or run.run_id, run.run_id


def record_load_metadata(context: dg.OutputContext, reports: Sequence[LoadReport]) -> None:
    """Each partition's own numbers on its own materialization event.

    Output metadata is copied onto every partition's event of a multi-partition run, so
    totals there would plot as the same bar for every partition; partition-scoped asset
    metadata gives the Partitions plot (enqueued, written, dead_lettered, rows_per_s by
    partition) one true point per partition, whatever the run's shape.
    """
    for report in reports:
        context.step_context.add_asset_metadata(
            load_report_metadata(report),
            asset_key=context.asset_key,
            partition_key=report.partition_key,
        )


def load_report_metadata(report: LoadReport) -> dict[str, Any]:
    """The numbers of one partition's load, as materialization metadata."""
    return {
        "enqueued": report.enqueued,
        "written": report.written,
        "dead_lettered": report.dead_lettered,
        "batches": report.batches,
        "batches_resumed": report.batches_resumed,
        "retries": report.retries,
        "rows_per_s": round(report.rows_per_s, 1),
        "elapsed_s": round(report.elapsed_s, 3),
        "publish_s": round(report.publish_s, 3),
        "load_id": report.load_id,
        "table": report.target,
        "mode": report.mode,
        "dagster/row_count": report.written,
    }
