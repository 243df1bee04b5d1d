"""PostgresLoadComponent: a load into PostgreSQL declared in a ``defs.yaml``.

The Component builds on the Python pieces, never beside them: the table is a
:class:`~etl_assets.spec.PostgresTable`, the asset is a :func:`postgres_asset` written by
:class:`ResilientPostgresIOManager`, and its checks are :func:`partition_checks`. So a
YAML load has the same ledger, checks (three, blocking, per partition), backfill chunks
and catalog metadata as a Python one. Its source is called once per partition, inside
that partition's generator, so one failing day fails alone (README, "Backfills").

Every YAML mistake is refused while the definitions load (``dg check defs``), naming the
file, the field and the fix (``etl_assets.component_errors``).

(No ``from __future__ import annotations``: Dagster derives the YAML schema from the
field annotations at class creation.)
"""

import datetime as dt
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg
from dagster.components.resolved.core_models import ResolvedAssetSpec
from dagster.components.utils.translation import ResolvedTranslationFn

from etl_assets.checks import partition_checks
from etl_assets.component_errors import YamlFields
from etl_assets.component_scaffolder import PostgresLoadScaffolder
from etl_assets.frames import classify_output
from etl_assets.io_manager import (
    BACKFILL_CHUNK,
    LOAD_SETTING_KEYS,
    PartitionRecords,
    postgres_asset,
)
from etl_assets.partition_keys import data_date
from etl_assets.resources import default_resources
from etl_assets.spec import PostgresTable

__all__ = [
    "LoadOptions",
    "PartitionsOptions",
    "PostgresLoadComponent",
    "PostgresLoadData",
    "Source",
    "TableOptions",
    "partition_source",
]

Source = Callable[[dt.date], Any]
"""A function of the data date returning the day's records (a list or an iterator of
dicts or pydantic models), a DataFrame / Arrow table, or an iterator of frames."""


@dataclass
class TableOptions(dg.Resolvable):
    """Where the records land (``etl_assets.spec.PostgresTable``)."""

    name: str
    db_schema: str = "public"
    mode: str = "replace"
    primary_key: Sequence[str] = ()
    partition_column: str = "data_date"
    on_schema_change: str = "refuse"


@dataclass
class PartitionsOptions(dg.Resolvable):
    """One partition per data date: ``daily`` is the only type a load writes today."""

    start_date: str
    type: str = "daily"
    timezone: str | None = None
    end_offset: int = 0


@dataclass
class LoadOptions(dg.Resolvable):
    """Per-asset load settings; unset ones take the IO manager's defaults."""

    batch_size: int | None = None
    max_dead_letter_ratio: float | None = None
    key_digest: bool | None = None
    lease_ttl_s: float | None = None
    lock_timeout_s: float | None = None
    lock_wait_budget_s: float | None = None


@dataclass(frozen=True)
class PostgresLoadData:
    """What ``translation`` sees as ``data``: the table the asset writes."""

    table: PostgresTable


@dg.scaffold_with(PostgresLoadScaffolder)
@dataclass
class PostgresLoadComponent(dg.Component, dg.Resolvable):
    """A date-partitioned load into PostgreSQL: nothing lost, nothing duplicated.

    One asset written by ``ResilientPostgresIOManager`` (ledgered, retried, audited per
    partition) and its three partition checks. ``record_model`` and ``source`` are import paths,
    relative to this folder when they start with a dot (``.source.Order``).
    Subclass and override :meth:`execute` to change how a run's records are produced.
    """

    asset: ResolvedAssetSpec
    table: TableOptions
    record_model: str
    source: str
    partitions: PartitionsOptions
    backfill_chunk: int = BACKFILL_CHUNK
    load_settings: LoadOptions | None = None
    translation: ResolvedTranslationFn[PostgresLoadData] = None
    provide_resources: bool = True
    """Bind ``postgres`` and ``postgres_io_manager`` (``etl_assets.resources``); false when
    your definitions bind them themselves."""

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        fields = YamlFields(context)
        model = fields.pydantic_model("record_model", self.record_model)
        source = fields.function("source", self.source)
        table = fields.table(self.table, self.load_settings or LoadOptions(), model)
        partitions_def = fields.partitions(self.partitions)
        for name, least, example in (("lease_ttl_s", 1.0, 120), ("lock_timeout_s", 0.001, 2)):
            value = getattr(self.load_settings, name, None)
            if value is not None and value < least:
                fields.refuse(
                    f"load_settings.{name}", f"{value} is below {least:g}", f"e.g. {example}"
                )
        budget = getattr(self.load_settings, "lock_wait_budget_s", None)
        if budget is not None and budget < 0:
            fields.refuse("load_settings.lock_wait_budget_s", f"{budget} is negative", "e.g. 300")
        if self.backfill_chunk < 1:
            fields.refuse("backfill_chunk", f"{self.backfill_chunk} is not >= 1", "e.g. 31")
        if self.asset.partitions_def is not None:
            fields.refuse(
                "asset.partitions_def",
                "partitions are declared once, for the table",
                "move them to `partitions:` (type: daily, start_date, timezone, end_offset)",
            )
        spec = self.get_asset_spec(PostgresLoadData(table))
        assets_def = self.build_asset(spec, table, partitions_def, source)
        return dg.Definitions(
            assets=[assets_def],
            asset_checks=partition_checks(assets_def),
            resources=default_resources() if self.provide_resources else None,
        )

    def get_asset_spec(self, data: PostgresLoadData) -> dg.AssetSpec:
        """The YAML's ``asset`` after ``translation``; override to change it in Python."""
        if self.translation is None:
            return self.asset
        return self.translation(self.asset, data)

    def build_asset(
        self,
        spec: dg.AssetSpec,
        table: PostgresTable,
        partitions_def: dg.PartitionsDefinition,
        source: Source,
    ) -> dg.AssetsDefinition:
        """The asset, through ``postgres_asset``: the same defaults as in Python."""
        metadata = dict(spec.metadata)
        for name, key in LOAD_SETTING_KEYS.items():
            value = getattr(self.load_settings, name, None)
            if value is not None:
                metadata[key] = value
        tags = {k: v for k, v in spec.tags.items() if not k.startswith("dagster/kind/")}

        @postgres_asset(
            table,
            partitions_def=partitions_def,
            key=spec.key,
            deps=spec.deps,
            description=spec.description,
            metadata=metadata,
            group_name=spec.group_name,
            code_version=spec.code_version,
            owners=spec.owners,
            tags=tags,
            kinds={"postgres", *spec.kinds},
            automation_condition=spec.automation_condition,
            backfill_policy=dg.BackfillPolicy.multi_run(self.backfill_chunk),
        )
        def _load(context: dg.AssetExecutionContext) -> PartitionRecords:
            return self.execute(context, source)

        return _load

    def execute(self, context: dg.AssetExecutionContext, source: Source) -> PartitionRecords:
        """``{partition_key: records}`` for the run: each partition's own lazy generator.

        The source is called when the load starts to read that partition, not here, so
        a day whose source raises fails alone and the other days of the run still load.
        """
        return {key: partition_source(source, key) for key in context.partition_keys}


def partition_source(source: Source, partition_key: str) -> Iterator[Any]:
    """The records of one partition, the source called only when they are read.

    What the source returned is classified as an asset's output is (a frame stays a
    frame; a string, a mapping or None is refused, never iterated as records).
    """
    where = f"source {getattr(source, '__qualname__', source)!r} for partition {partition_key}"
    yield from classify_output(source(data_date(partition_key)), where)
