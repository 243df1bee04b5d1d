"""The YAML of a ``PostgresLoadComponent`` read field by field, each mistake named.

``dg check defs`` shows what a Component raises while its definitions build; so every
field is checked here, before an asset exists, and a refusal names the ``defs.yaml``,
the field (``attributes.table.mode``) and the fix. Nothing here runs SQL.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import dagster as dg
import pydantic

from etl_assets.errors import ConfigurationError
from etl_assets.postgres.target import SchemaChange, WriteMode, columns_from_model
from etl_assets.spec import PostgresTable

if TYPE_CHECKING:
    from etl_assets.component import LoadOptions, PartitionsOptions, TableOptions

__all__ = ["YamlFields"]

SUPPORTED_PARTITIONS = ("daily",)


class YamlFields:
    """One Component's ``defs.yaml``: its fields resolved, or a refusal that names them."""

    def __init__(self, context: dg.ComponentLoadContext) -> None:
        self._context = context
        self.path: Path = context.path / "defs.yaml"

    def refuse(self, field: str, problem: str, fix: str) -> NoReturn:
        raise ConfigurationError(f"{self.path}: attributes.{field}: {problem}; {fix}")

    def _import(self, field: str, path: str) -> Any:
        """``.module.name`` (relative to this folder, like dagster-dlt's) or absolute."""
        absolute = path
        if path.startswith("."):
            absolute = self._context.defs_relative_module_name(self._context.path) + path
        module_name, _, name = absolute.rpartition(".")
        example = ".source.read" if field == "source" else ".source.Record"
        if not module_name or not name:
            self.refuse(
                field, f"{path!r} is not an import path", f"write `module.name`, e.g. {example}"
            )
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            self.refuse(
                field,
                f"{path!r} does not import ({type(exc).__name__}: {exc})",
                f"a path starting with '.' is relative to {self._context.path} (e.g. "
                f"{example} for the file source.py next to defs.yaml)",
            )
        try:
            return getattr(module, name)
        except AttributeError:
            self.refuse(
                field,
                f"module {module_name} has no {name!r}",
                f"define {name} in {module_name} or name one it has",
            )

    def pydantic_model(self, field: str, path: str) -> type[pydantic.BaseModel]:
        found = self._import(field, path)
        if not (isinstance(found, type) and issubclass(found, pydantic.BaseModel)):
            self.refuse(
                field,
                f"{path!r} is a {type(found).__name__}, not a pydantic model",
                "name a class deriving from pydantic.BaseModel (one record of the table)",
            )
        return found

    def function(self, field: str, path: str) -> Callable[..., Any]:
        found = self._import(field, path)
        if not callable(found):
            self.refuse(
                field,
                f"{path!r} is a {type(found).__name__}, not a function",
                "name a function of the data date (datetime.date) returning the day's records",
            )
        return found  # type: ignore[no-any-return]

    def table(
        self, table: TableOptions, load: LoadOptions, model: type[pydantic.BaseModel]
    ) -> PostgresTable:
        """The table, every field checked in the order a reader fixes them."""
        modes = ", ".join(m.value for m in WriteMode)
        if table.mode not in {m.value for m in WriteMode}:
            self.refuse(
                "table.mode",
                f"{table.mode!r} is not a write mode",
                f"write one of {modes} (replace swaps the partition; upsert merges on the key)",
            )
        changes = ", ".join(c.value for c in SchemaChange)
        if table.on_schema_change not in {c.value for c in SchemaChange}:
            self.refuse(
                "table.on_schema_change",
                f"{table.on_schema_change!r} is not a schema-change policy",
                f"write one of {changes}",
            )
        key = list(table.primary_key)
        if key and table.partition_column not in key:
            self.refuse(
                "table.primary_key",
                f"{key} lacks the partition column {table.partition_column!r}",
                f"write primary_key: {[table.partition_column, *key]} (a key without the "
                "data date would let a row move between partitions)",
            )
        try:
            columns_from_model(model, exclude=(table.partition_column,))
        except ConfigurationError:
            self._refuse_field_types(model, table.partition_column)
        try:
            return PostgresTable(
                table=table.name,
                model=model,
                schema=table.db_schema,
                mode=WriteMode(table.mode),
                primary_key=tuple(key),
                partition_column=table.partition_column,
                batch_size=load.batch_size,
                max_dead_letter_ratio=load.max_dead_letter_ratio,
                on_schema_change=SchemaChange(table.on_schema_change),
            )
        except ConfigurationError as exc:
            self.refuse("table", str(exc), "correct the field it names")

    def _refuse_field_types(self, model: type[pydantic.BaseModel], partition_column: str) -> None:
        """Name every model field no Postgres column type can hold."""
        bad = []
        for name, info in model.model_fields.items():
            others = [other for other in model.model_fields if other != name]
            try:
                columns_from_model(model, exclude=[*others, partition_column])
            except ConfigurationError:
                bad.append(f"{name}: {info.annotation!r}")
        self.refuse(
            "record_model",
            f"{model.__qualname__} has fields the table cannot hold ({'; '.join(bad)})",
            "declare each as int, float, Decimal, str, bool, bytes, date, datetime, time, "
            "timedelta, UUID, an Enum or a Literal (README, 'Lossless or refused')",
        )

    def partitions(self, partitions: PartitionsOptions) -> dg.PartitionsDefinition:
        if partitions.type not in SUPPORTED_PARTITIONS:
            self.refuse(
                "partitions.type",
                f"{partitions.type!r} partitions are not supported: a load writes one "
                "PostgreSQL partition per data date",
                "write type: daily (a backfill of a month or a week runs its days together, "
                "backfill_chunk at a time)",
            )
        try:
            return dg.DailyPartitionsDefinition(
                start_date=partitions.start_date,
                timezone=partitions.timezone,
                end_offset=partitions.end_offset,
            )
        except Exception as exc:  # noqa: BLE001  # Dagster's own check errors, re-named
            self.refuse(
                "partitions",
                str(exc).splitlines()[0],
                'write start_date as "YYYY-MM-DD" and timezone as an IANA name (e.g. UTC)',
            )
