"""PostgresTable: how an asset's records land in PostgreSQL, declared once per asset.

The IO manager, the asset checks and the replay job all need the same facts (table,
primary key, write mode, record model, partition column). They travel as the asset's
definition metadata, so they are also what the Dagster UI shows on the asset page, and
are rebuilt from it with :meth:`PostgresTable.from_metadata`. Only plain values go into
metadata; the record model travels as its import path, explicit columns as a mapping of
name to type (``{"tags": "jsonb", "qty": "smallint not null"}``).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pydantic

from etl_assets.errors import ConfigurationError
from etl_assets.postgres.target import (
    Column,
    SchemaChange,
    TableTarget,
    WriteMode,
    columns_from_model,
)

__all__ = ["METADATA_PREFIX", "PostgresTable"]

METADATA_PREFIX = "etl_assets/"


@dataclass(frozen=True, slots=True)
class PostgresTable:
    """The target of an asset written by :class:`ResilientPostgresIOManager`.

    Attributes:
        table: target table name.
        model: pydantic model of one record; validates at the edge and gives the columns.
        schema: schema of the target table.
        mode: ``replace`` (swap the whole partition) or ``upsert`` (ON CONFLICT on the key).
        primary_key: required for ``upsert``; must include ``partition_column``.
        partition_column: the DATE column that holds the partition's data date.
        batch_size: records per transaction (None: the IO manager's default).
        max_dead_letter_ratio: the reject share this source may have before its load
            fails (the breaker, ``etl_assets.breaker``; None: the IO manager's default).
        on_schema_change: ``refuse`` (default: a model field the table lacks is refused at
            prepare, naming the ALTER TABLE) or ``add_columns`` (it is added as a nullable
            column; older partitions read NULL). Other drift is always refused.
        columns: explicit columns, each naming a field of the model, that win over the
            type the field derives: ``Column("qty", "smallint")``,
            ``Column("amount", "numeric(12,4)")``, ``Column("tags", "jsonb")``, a user's
            enum type. The other fields keep their derived types (README: "Column types").
    """

    table: str
    model: type[pydantic.BaseModel]
    schema: str = "public"
    mode: WriteMode = WriteMode.REPLACE
    primary_key: tuple[str, ...] = ()
    partition_column: str = "data_date"
    batch_size: int | None = None
    max_dead_letter_ratio: float | None = None
    on_schema_change: SchemaChange = SchemaChange.REFUSE
    columns: tuple[Column, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", _write_mode(self.mode, self.table))
        object.__setattr__(self, "primary_key", tuple(self.primary_key))
        object.__setattr__(self, "columns", tuple(self.columns))
        if not all(isinstance(c, Column) for c in self.columns):
            raise ConfigurationError(
                f"table {self.table!r}: columns are Column(name, pg_type) values, e.g. "
                "columns=(Column('tags', 'jsonb'),)"
            )
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigurationError(f"table {self.table!r}: batch_size must be >= 1")
        ratio = self.max_dead_letter_ratio
        if ratio is not None and not 0 <= ratio <= 1:
            raise ConfigurationError(
                f"table {self.table!r}: max_dead_letter_ratio is a share between 0 and 1, "
                f"e.g. 0.05 for 5% (got {ratio})"
            )
        if "<locals>" in self.model.__qualname__:
            raise ConfigurationError(
                f"table {self.table!r}: model {self.model.__qualname__} is defined inside a "
                "function; define it at module level so it can be imported by path"
            )
        # Validates names, key, mode and on_schema_change now, not at the first run.
        object.__setattr__(self, "on_schema_change", self.target().on_schema_change)

    @property
    def model_path(self) -> str:
        return f"{self.model.__module__}:{self.model.__qualname__}"

    def target(self) -> TableTarget:
        return TableTarget(
            schema=self.schema,
            table=self.table,
            columns=columns_from_model(
                self.model, exclude=(self.partition_column,), columns=self.columns
            ),
            partition_column=self.partition_column,
            mode=self.mode,
            primary_key=self.primary_key,
            on_schema_change=self.on_schema_change,
        )

    def metadata(self) -> dict[str, Any]:
        """Definition metadata for ``@asset(metadata=...)``: plain values the UI shows."""
        values: dict[str, Any] = {
            "table": self.table,
            "schema": self.schema,
            "mode": self.mode.value,
            "primary_key": ",".join(self.primary_key),
            "partition_column": self.partition_column,
            "model": self.model_path,
        }
        if self.batch_size is not None:
            values["batch_size"] = self.batch_size
        if self.max_dead_letter_ratio is not None:
            values["max_dead_letter_ratio"] = self.max_dead_letter_ratio
        if self.on_schema_change is not SchemaChange.REFUSE:
            values["on_schema_change"] = self.on_schema_change.value
        if self.columns:
            values["columns"] = {c.name: _column_text(c) for c in self.columns}
        return {METADATA_PREFIX + k: v for k, v in values.items()}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any], owner: str) -> PostgresTable:
        """Rebuild the spec from an asset's definition metadata; ``owner`` names the asset."""
        values = {
            k.removeprefix(METADATA_PREFIX): _raw(v)
            for k, v in metadata.items()
            if k.startswith(METADATA_PREFIX)
        }
        if "table" not in values or "model" not in values:
            raise ConfigurationError(
                f"asset {owner} has no PostgresTable metadata; declare it with "
                "@asset(metadata=PostgresTable(table=..., model=...).metadata())"
            )
        key = str(values.get("primary_key") or "")
        batch_size = values.get("batch_size")
        ratio = values.get("max_dead_letter_ratio")
        columns = values.get("columns") or {}
        if not isinstance(columns, Mapping):
            raise ConfigurationError(
                f"asset {owner}: metadata 'etl_assets/columns' must map column names to types"
            )
        return cls(
            table=str(values["table"]),
            model=_import_model(str(values["model"]), owner),
            schema=str(values.get("schema", "public")),
            mode=_write_mode(str(values.get("mode", "replace")), str(values["table"])),
            primary_key=tuple(k for k in key.split(",") if k),
            partition_column=str(values.get("partition_column", "data_date")),
            batch_size=int(batch_size) if batch_size is not None else None,
            max_dead_letter_ratio=float(ratio) if ratio is not None else None,
            on_schema_change=str(values.get("on_schema_change", "refuse")),  # type: ignore[arg-type]  # checked by __post_init__
            columns=tuple(_column_of(str(k), str(v)) for k, v in columns.items()),
        )


def _write_mode(mode: WriteMode | str, table: str) -> WriteMode:
    try:
        return WriteMode(mode)
    except ValueError:
        choices = ", ".join(m.value for m in WriteMode)
        raise ConfigurationError(
            f"table {table!r}: mode {mode!r} is not one of {choices}"
        ) from None


_NOT_NULL = " not null"


def _column_text(column: Column) -> str:
    """A column's metadata value: its type, with `` not null`` when it is."""
    return column.pg_type + ("" if column.nullable else _NOT_NULL)


def _column_of(name: str, text: str) -> Column:
    """The inverse of :func:`_column_text`."""
    if text.lower().endswith(_NOT_NULL):
        return Column(name, text[: -len(_NOT_NULL)], nullable=False)
    return Column(name, text)


def _raw(value: Any) -> Any:
    """Dagster may hand metadata back wrapped in a MetadataValue."""
    return getattr(value, "value", value)


def _import_model(path: str, owner: str) -> type[pydantic.BaseModel]:
    module_name, _, qualname = path.partition(":")
    try:
        found: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(
            f"asset {owner}: record model {path!r} cannot be imported ({exc})"
        ) from None
    if not (isinstance(found, type) and issubclass(found, pydantic.BaseModel)):
        raise ConfigurationError(f"asset {owner}: {path!r} is not a pydantic model")
    return found
