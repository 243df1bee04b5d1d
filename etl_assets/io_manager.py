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

import asyncio
import dataclasses
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import dagster as dg
from dagster._core.storage.tags import BACKFILL_ID_TAG
from pydantic import Field

from etl_assets.batch_bytes import DEFAULT_BATCH_BYTES
from etl_assets.catalog import partition_row_count, table_metadata
from etl_assets.checks import evaluate_partitions, plans_in_run
from etl_assets.errors import ConfigurationError, EtlError
from etl_assets.frames import classify_output, is_frame, split_by_partition
from etl_assets.input_gate import reads_unverified, require_verified
from etl_assets.input_shapes import InputShape, convert_table, input_shape
from etl_assets.partition_keys import data_date
from etl_assets.partition_outcomes import (
    InFlight,
    PartitionFailure,
    PartitionOutcomes,
    partitions_failed,
    stops_the_run,
)
from etl_assets.postgres.lease import DEFAULT_LEASE_TTL_S
from etl_assets.postgres.loader import (
    LoadReport,
    LoadSettings,
    finished_report,
    load_partition,
    resolve_load_id,
)
from etl_assets.postgres.lock_wait import DEFAULT_LOCK_TIMEOUT_S, DEFAULT_LOCK_WAIT_BUDGET_S
from etl_assets.postgres.reader import PartitionStream, read_arrow, read_dicts
from etl_assets.postgres.resource import PostgresResource, run_sync
from etl_assets.postgres.retry import RetryPolicy
from etl_assets.spec import PostgresTable

__all__ = [
    "IO_MANAGER_KEY",
    "KEY_DIGEST_KEY",
    "LOAD_SETTING_KEYS",
    "PartitionRecords",
    "PartitionStream",
    "ResilientPostgresIOManager",
    "data_date",
    "load_report_metadata",
    "postgres_asset",
    "record_load_metadata",
]

IO_MANAGER_KEY = "postgres_io_manager"
KEY_DIGEST_KEY = "etl_assets/key_digest"
"""Definition metadata that turns the key digest on or off for one asset (the YAML load's
``load.key_digest``); absent: the IO manager's ``key_digest``."""
LOAD_SETTING_KEYS = {
    "key_digest": KEY_DIGEST_KEY,
    "lease_ttl_s": "etl_assets/lease_ttl_s",
    "lock_timeout_s": "etl_assets/lock_timeout_s",
    "lock_wait_budget_s": "etl_assets/lock_wait_budget_s",
}
"""Definition metadata keys of the IO manager's settings one asset may set for itself (the
Component's ``load_settings``); absent: the IO manager's value."""
BACKFILL_CHUNK = 31
"""Partitions per backfill run: a wide backfill pays one run's start-up (process, code
load, resources) per chunk instead of per partition, and a run's memory is bounded by
the chunk (a downstream input holds at most this many partitions), not by the backfill."""

SETTLE_BUDGET_S = 15.0
"""How long a stopped step may ask the ledger about the partition it was loading."""
SETTLE_RETRY = RetryPolicy(attempts=3, timeout_s=SETTLE_BUDGET_S, wait_max_s=2.0)

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
    metadata (with its name and columns for Dagster's catalog, ``etl_assets.catalog``),
    the ``postgres`` pool and IO manager; any ``dg.asset`` argument overrides.
    """
    kwargs.setdefault("backfill_policy", dg.BackfillPolicy.multi_run(BACKFILL_CHUNK))
    kwargs.setdefault("io_manager_key", IO_MANAGER_KEY)
    kwargs.setdefault("pool", "postgres")
    kwargs.setdefault("kinds", {"postgres"})
    metadata = {**spec.metadata(), **table_metadata(spec.target()), **kwargs.pop("metadata", {})}
    # backfill_policy is beta in Dagster 1.13; this package relies on it knowingly, and a
    # user of postgres_asset should not see the note at every code load.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        decorator: Callable[[Callable[..., Any]], dg.AssetsDefinition] = dg.asset(
            partitions_def=partitions_def, metadata=metadata, **kwargs
        )
    return decorator


def _per_asset(settings: LoadSettings, metadata: Mapping[str, Any]) -> LoadSettings:
    """``settings`` with the asset's own values (``LOAD_SETTING_KEYS``) in place."""
    changes = {}
    for name, key in LOAD_SETTING_KEYS.items():
        if (value := metadata.get(key)) is not None:
            kind = type(getattr(settings, name))  # bool or float, as the default is
            changes[name] = kind(getattr(value, "value", value))
    return dataclasses.replace(settings, **changes) if changes else settings


class ResilientPostgresIOManager(dg.ConfigurableIOManager):
    """Writes each partition through the ledgered, retried, audited load engine."""

    postgres: PostgresResource
    batch_size: int = Field(default=25_000, ge=1, description="Records per transaction.")
    batch_bytes: int = Field(
        default=DEFAULT_BATCH_BYTES,
        ge=1,
        description=(
            "Estimated bytes per transaction: a batch of wide rows is cut before batch_size "
            "(etl_assets.batch_bytes), so memory stays bounded whatever the row width."
        ),
    )
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
    lease_ttl_s: float = Field(
        default=DEFAULT_LEASE_TTL_S,
        ge=1,
        description="A load's lease (renewed on a thread of its own, whatever the source "
        "does) lapses this long after its process could last renew it: how soon a cleanup "
        "or a second load of the partition may take over a load whose process died.",
    )
    lock_timeout_s: float = Field(
        default=DEFAULT_LOCK_TIMEOUT_S,
        gt=0,
        description="Each request of a publish for a table lock gives up after this, so "
        "readers queued behind it wait at most this long (README, Production PostgreSQL).",
    )
    lock_wait_budget_s: float = Field(
        default=DEFAULT_LOCK_WAIT_BUDGET_S,
        ge=0,
        description="How long a publish goes on asking for its lock behind other sessions "
        "before the load fails naming them (nothing published, staged rows kept).",
    )

    def settings(
        self, spec: PostgresTable, metadata: Mapping[str, Any] | None = None
    ) -> LoadSettings:
        """The load settings of one asset: this IO manager's, with the asset's own
        (``spec``, and ``LOAD_SETTING_KEYS`` in its definition ``metadata``) in place."""
        return _per_asset(self._settings(spec), metadata or {})

    def _settings(self, spec: PostgresTable) -> LoadSettings:
        return LoadSettings(
            batch_size=spec.batch_size or self.batch_size,
            batch_bytes=self.batch_bytes,
            writers=self.writers,
            max_dead_letter_ratio=(
                self.max_dead_letter_ratio
                if spec.max_dead_letter_ratio is None
                else spec.max_dead_letter_ratio
            ),
            retry=RetryPolicy(attempts=self.retry_attempts, timeout_s=self.retry_budget_s),
            ledger_schema=self.postgres.ledger_schema,
            key_digest=self.key_digest,
            lease_ttl_s=self.lease_ttl_s,
            lock_timeout_s=self.lock_timeout_s,
            lock_wait_budget_s=self.lock_wait_budget_s,
        )

    # A generator: Dagster stores the events it yields (execute_step.py _store_output).
    def handle_output(  # type: ignore[override]
        self, context: dg.OutputContext, obj: Any
    ) -> Iterator[dg.DagsterEvent]:
        """Load every partition of the step; one partition's failure stays its own.

        On success Dagster records one materialization per partition (with its own
        metadata). When a partition fails, or the step is stopped, the partitions that
        published are recorded here, with their checks, before the step fails naming
        each failed partition: Dagster never disagrees with the table.
        """
        owner = context.asset_key.to_user_string()
        spec = PostgresTable.from_metadata(context.definition_metadata, owner)
        partitions = _partitions(context, obj, owner, spec.partition_column)
        run = _RunLineage.of(context)
        settings = self.settings(spec, context.definition_metadata)
        outcomes = PartitionOutcomes()

        async def load_all(pool: asyncpg.Pool) -> None:
            for key, records in partitions:
                try:
                    outcomes.published(
                        await _load_one(pool, spec, key, records, run, settings, context, outcomes)
                    )
                except Exception as exc:  # kept: the step fails naming it, after the rest
                    if stops_the_run(exc) or len(partitions) == 1:
                        raise
                    failure = PartitionFailure(key, exc)
                    outcomes.failed(failure)
                    # One line per partition; the step failure keeps the first traceback
                    # (76 missing landing days are 76 lines, not 76 tracebacks).
                    context.log.error(f"{owner} partition {key} failed: {failure.reason}")  # noqa: TRY400

        try:  # a run of one partition fails with that partition's own error, as it is
            self.postgres.run(load_all)
        except BaseException:
            published = [*outcomes.reports, *self._settle_in_flight(context, spec, outcomes)]
            yield from _published_events(context, published)  # then the error goes on
            raise
        if outcomes.failures:
            yield from _published_events(context, outcomes.reports)
            yield from self._check_events(context, spec, outcomes.published_keys)
            raise partitions_failed(owner, outcomes) from outcomes.failures[0].error
        record_load_metadata(context, outcomes.reports)

    def _settle_in_flight(
        self, context: dg.OutputContext, spec: PostgresTable, outcomes: PartitionOutcomes
    ) -> list[LoadReport]:
        """The partition a stopped step was loading, if its publish committed after all.

        Asked of the ledger, on a short budget: a step stopped because the server is gone
        must not wait a load's retry budget to say so. Unanswered, the partition is named
        in a warning (its materialization may be missing until it is loaded again).
        """
        flight = outcomes.in_flight
        if flight is None:
            return []
        target, day = spec.target(), data_date(flight.partition_key)

        async def ask() -> LoadReport | None:
            async with asyncio.timeout(SETTLE_BUDGET_S), self.postgres.pool() as pool:
                return await finished_report(
                    pool, target, day, flight.load_id, self.postgres.ledger_schema, SETTLE_RETRY
                )

        try:
            done = run_sync(ask)
        except (EtlError, TimeoutError) as exc:
            context.log.warning(
                f"{target.name} {flight.partition_key}: the step stopped while loading it and "
                f"the ledger could not be asked whether it published ({exc}); if it did, "
                "Dagster has no materialization for it until it is materialized again"
            )
            return []
        return [done] if done is not None else []

    def _check_events(
        self, context: dg.OutputContext, spec: PostgresTable, partition_keys: Sequence[str]
    ) -> Iterator[dg.DagsterEvent]:
        """The run's partition checks for the published partitions of a failing step.

        Dagster skips the check steps of a failed step; the partitions that did publish
        still get their verdicts, from the same code and database truth as the checks.
        """
        step = context.step_context
        plans = plans_in_run(step, context.asset_key)
        for evaluation in evaluate_partitions(
            self.postgres, step.instance, context.asset_key, spec.target(), plans, partition_keys
        ):
            yield dg.DagsterEvent.asset_check_evaluation(step, evaluation)

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
        if days is not None and not reads_unverified(context.definition_metadata):
            require_verified(
                self.postgres,
                _instance_of(context),
                upstream.asset_key,
                target,
                context.asset_partition_keys,
                whole_table=not _downstream_partitioned(context),
            )
        wanted = input_shape(context.dagster_type.typing_type)
        if wanted is InputShape.STREAM:
            return PartitionStream(self.postgres.resolved_dsn(), target, days, owner)
        if wanted is InputShape.DICTS:
            return self.postgres.run(lambda pool: read_dicts(pool, target, days, owner))
        table = self.postgres.run(lambda pool: read_arrow(pool, target, days, owner))
        return convert_table(table, wanted)


@dataclass(frozen=True, slots=True)
class _RunLineage:
    """The run's id, its root's, and whether it re-executes a failed run."""

    root_id: str
    run_id: str
    resumes_failure: bool

    @classmethod
    def of(cls, context: dg.OutputContext) -> _RunLineage:
        run = context.step_context.dagster_run
        parent = run.parent_run_id
        parent_run = context.step_context.instance.get_run_by_id(parent) if parent else None
        return cls(
            root_id=run.root_run_id or run.run_id,
            run_id=run.run_id,
            resumes_failure=bool(parent_run and parent_run.status == dg.DagsterRunStatus.FAILURE),
        )


async def _load_one(
    pool: asyncpg.Pool,
    spec: PostgresTable,
    partition_key: str,
    records: Any,
    run: _RunLineage,
    settings: LoadSettings,
    context: dg.OutputContext,
    outcomes: PartitionOutcomes,
) -> LoadReport:
    """One partition: resumed, skipped (its failed run already published it) or loaded.

    Re-executing a failed run re-runs its step over the whole range; the partitions the
    failed run published are reported from the ledger, so only what failed is loaded.
    """
    target, day = spec.target(), data_date(partition_key)
    if run.resumes_failure:
        outcomes.in_flight = InFlight(partition_key, run.root_id)
        done = await finished_report(pool, target, day, run.root_id, settings.ledger_schema)
        if done is not None:
            context.log.info(f"{target.name} {partition_key}: published by run {run.root_id}, kept")
            return done
    owner = context.asset_key.to_user_string()
    records = classify_output(records, f"asset {owner} partition {partition_key}")
    load_id = await resolve_load_id(
        pool, target, day, run.root_id, run.run_id, settings.ledger_schema
    )
    outcomes.in_flight = InFlight(partition_key, load_id)
    return await load_partition(
        pool, target, day, records, load_id=load_id, model=spec.model, settings=settings,
        log=context.log,
    )  # fmt: skip


def _downstream_partitioned(context: dg.InputContext) -> bool:
    """Whether the asset reading this input is partitioned (a range run's included): an
    unpartitioned one reads every upstream partition there is, loaded or not."""
    try:
        step = context.step_context
    except dg.DagsterInvariantViolationError:  # built without a step: its own partition key
        return context.has_partition_key
    reader = step.job_def.asset_layer.get_assets_def_for_node(step.node_handle)
    if reader is None:  # an op, not an asset: as partitioned as its run
        return step.has_partitions
    return reader.partitions_def is not None


def _instance_of(context: dg.InputContext) -> dg.DagsterInstance | None:
    """The run's instance; None for an input context built without one (direct calls)."""
    try:
        return context.instance
    except dg.DagsterInvariantViolationError:
        return None


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
    return parts


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


def _published_events(
    context: dg.OutputContext, reports: Sequence[LoadReport]
) -> Iterator[dg.DagsterEvent]:
    """A materialization per published partition, for a step that is about to fail.

    Dagster records an output's materializations only when ``handle_output`` returns;
    a failing step records these instead, so a published partition is never missing
    from Dagster's records (and a backfill counts it as materialized, not failed).
    """
    step = context.step_context
    backfill = step.get_tag(BACKFILL_ID_TAG)
    for report in reports:
        materialization = dg.AssetMaterialization(
            asset_key=context.asset_key,
            partition=report.partition_key,
            metadata=load_report_metadata(report),
            tags={BACKFILL_ID_TAG: backfill} if backfill else None,
        )
        yield dg.DagsterEvent.asset_materialization(step, materialization)


def load_report_metadata(report: LoadReport) -> dict[str, Any]:
    """The numbers of one partition's load, as materialization metadata."""
    metadata: dict[str, Any] = {
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
        **partition_row_count(report.written),
    }
    if report.columns_added:  # on_schema_change="add_columns" evolved the table
        metadata["columns_added"] = ", ".join(report.columns_added)
    return metadata
