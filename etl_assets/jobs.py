"""Jobs: the daily partitioned job of the example pipeline, and the dead-letter replay.

(No ``from __future__ import annotations``: Dagster reads the op's config type from it.)
"""

from collections.abc import Sequence

import asyncpg
import dagster as dg
import pydantic

from etl_assets.io_manager import data_date
from etl_assets.postgres.loader import LoadSettings
from etl_assets.postgres.replay import ReplayReport, replay_dead_letters
from etl_assets.postgres.resource import PostgresResource
from etl_assets.spec import PostgresTable

__all__ = ["ReplayConfig", "build_replay_job"]


class ReplayConfig(dg.Config):
    asset: str = pydantic.Field(description="Asset whose dead letters to replay, e.g. raw_logs.")
    partition: str = pydantic.Field(description="Partition (data date) to replay, YYYY-MM-DD.")
    batch_size: int = pydantic.Field(default=10_000, ge=1, description="Letters per transaction.")


def build_replay_job(assets: Sequence[dg.AssetsDefinition]) -> dg.JobDefinition:
    """``replay_dead_letters``: re-drive one partition's dead letters after a fix.

    Idempotent: every letter is claimed in the transaction that writes its row, so
    running it twice (or twice at once) replays each letter once.
    """
    specs = {
        a.key.to_user_string(): PostgresTable.from_metadata(
            a.metadata_by_key[a.key], a.key.to_user_string()
        )
        for a in assets
    }

    @dg.op(name="replay_dead_letters_op", pool="postgres")
    def replay_op(
        context: dg.OpExecutionContext, config: ReplayConfig, postgres: PostgresResource
    ) -> None:
        spec = specs.get(config.asset)
        if spec is None:
            raise dg.Failure(
                f"no asset {config.asset!r} writes through ResilientPostgresIOManager here; "
                f"replayable assets: {', '.join(sorted(specs))}"
            )
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
