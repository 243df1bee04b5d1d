"""Jobs: replay a partition's dead letters (with a fix), and clean up after dead loads.

(No ``from __future__ import annotations``: Dagster reads the op's config type from it.)
"""

from collections.abc import Sequence
from typing import Optional

import asyncpg
import dagster as dg
import pydantic

from etl_assets.dead_letter_file import replay_filter
from etl_assets.errors import ConfigurationError
from etl_assets.io_manager import data_date
from etl_assets.postgres.housekeeping import CleanupReport, cleanup
from etl_assets.postgres.ledger import Ledger
from etl_assets.postgres.loader import LoadSettings
from etl_assets.postgres.replay import ReplayFilter, ReplayReport, replay_dead_letters
from etl_assets.postgres.resource import PostgresResource
from etl_assets.postgres.retry import RetryPolicy
from etl_assets.spec import PostgresTable

__all__ = ["ReplayConfig", "build_cleanup_job", "build_replay_job", "replayable_tables"]


class ReplayConfig(dg.Config):
    asset: str = pydantic.Field(description="Asset whose dead letters to replay, e.g. raw_logs.")
    partition: str = pydantic.Field(description="Partition (data date) to replay, YYYY-MM-DD.")
    batch_size: int = pydantic.Field(default=10_000, ge=1, description="Letters per transaction.")
    error_classes: list[str] = pydantic.Field(
        default=[], description="Only letters of these error classes (empty: all)."
    )
    ids: list[int] = pydantic.Field(default=[], description="Only these letters (empty: all).")
    fixes_file: Optional[str] = pydantic.Field(  # noqa: UP045  (Dagster config: no X | None)
        default=None,
        description="JSON lines as `etl-assets-dead-letters export` writes, payloads corrected: "
        "only those letters are replayed, with the corrected payloads.",
    )
    transform: Optional[str] = pydantic.Field(  # noqa: UP045
        default=None,
        description="'package.module:function' applied to each payload before revalidation.",
    )

    def replay_filter(self) -> ReplayFilter:
        return replay_filter(self.error_classes, self.ids, self.transform, self.fixes_file)


def replayable_tables(assets: Sequence[dg.AssetsDefinition]) -> dict[str, PostgresTable]:
    """Asset name -> its table spec, for the assets written by ResilientPostgresIOManager."""
    return {
        a.key.to_user_string(): PostgresTable.from_metadata(
            a.metadata_by_key[a.key], a.key.to_user_string()
        )
        for a in assets
    }


def table_of(specs: dict[str, PostgresTable], asset: str) -> PostgresTable:
    spec = specs.get(asset)
    if spec is None:
        raise ConfigurationError(
            f"no asset {asset!r} writes through ResilientPostgresIOManager here; "
            f"replayable assets: {', '.join(sorted(specs))}"
        )
    return spec


def build_replay_job(assets: Sequence[dg.AssetsDefinition]) -> dg.JobDefinition:
    """``replay_dead_letters``: re-drive one partition's dead letters after a fix.

    Idempotent: every letter is claimed in the transaction that writes its row, so
    running it twice (or twice at once) replays each letter once.
    """
    specs = replayable_tables(assets)

    @dg.op(name="replay_dead_letters_op", pool="postgres")
    def replay_op(
        context: dg.OpExecutionContext, config: ReplayConfig, postgres: PostgresResource
    ) -> None:
        try:
            spec = table_of(specs, config.asset)
            only = config.replay_filter()
        except ConfigurationError as exc:
            raise dg.Failure(str(exc)) from None
        day = data_date(config.partition)
        settings = LoadSettings(batch_size=config.batch_size, ledger_schema=postgres.ledger_schema)

        async def replay(pool: asyncpg.Pool) -> ReplayReport:
            return await replay_dead_letters(
                pool,
                spec.target(),
                day,
                load_id=f"replay:{context.run_id}",
                model=spec.model,
                settings=settings,
                log=context.log,
                only=only,
            )

        report = postgres.run(replay)
        context.log_event(
            dg.AssetObservation(
                asset_key=config.asset,
                partition=config.partition,
                metadata={
                    "replayed": report.replayed,
                    "written": report.written,
                    "dead_lettered_again": report.dead_lettered,
                    "replay_load_id": report.load_id,
                },
            )
        )

    @dg.job(
        name="replay_dead_letters",
        description="Re-drive one partition's dead letters into its table, once each.",
    )
    def replay_job() -> None:
        replay_op()

    return replay_job


class CleanupConfig(dg.Config):
    keep_resolved_letters_days: Optional[int] = pydantic.Field(  # noqa: UP045
        default=None,
        ge=0,
        description="Delete dead letters resolved (replayed, superseded, discarded) more than "
        "this many days ago. Default: keep them. Open letters are never deleted.",
    )


def build_cleanup_job() -> dg.JobDefinition:
    """``etl_cleanup``: abandon dead loads (staging tables dropped), apply the retention."""

    @dg.op(name="etl_cleanup_op", pool="postgres")
    def cleanup_op(
        context: dg.OpExecutionContext, config: CleanupConfig, postgres: PostgresResource
    ) -> None:
        ledger = Ledger(postgres.ledger_schema)

        async def clean(pool: asyncpg.Pool) -> CleanupReport:
            return await cleanup(
                pool,
                ledger,
                RetryPolicy(),
                keep_resolved_letters_days=config.keep_resolved_letters_days,
            )

        report = postgres.run(clean)
        for load in report.abandoned:
            context.log.warning(
                f"abandoned dead load {load.key.load_id!r} of {load.key} ({load.status}); "
                f"staging table {load.staging_table or '-'} dropped"
            )
        context.log.info(
            f"cleanup: {len(report.abandoned)} dead load(s) abandoned, "
            f"{report.letters_deleted} resolved dead letter(s) deleted by retention"
        )

    @dg.job(
        name="etl_cleanup",
        description="Abandon loads whose process died (staging tables, 'loading' rows); never "
        "a load that still runs. Optionally delete old resolved dead letters.",
    )
    def cleanup_job() -> None:
        cleanup_op()

    return cleanup_job
