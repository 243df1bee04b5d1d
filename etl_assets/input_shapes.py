"""What a downstream input asked for, by its annotation: dicts, a DataFrame, Arrow, a stream.

Dagster hands the IO manager the input's annotation (``context.dagster_type``); the
IO manager reads the partitions once, as Arrow, and converts to what was asked for.
Dagster refuses ``Iterator[...]`` input annotations, hence
:class:`~etl_assets.postgres.reader.PartitionStream` for streams.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["InputShape", "convert_table", "input_shape"]


class InputShape(enum.Enum):
    """What a downstream input asked for, by its annotation."""

    DICTS = "dicts"
    ARROW = "pyarrow.Table"
    PANDAS = "pandas.DataFrame"
    POLARS = "polars.DataFrame"
    STREAM = "PartitionStream"


def input_shape(annotation: Any) -> InputShape:
    """The shape an input annotation names; anything unrecognised gets a list of dicts."""
    name = getattr(annotation, "__name__", "")
    module = getattr(annotation, "__module__", "").split(".")[0]
    if name == "PartitionStream" and module == "etl_assets":
        return InputShape.STREAM
    for shape in (InputShape.ARROW, InputShape.PANDAS, InputShape.POLARS):
        if f"{module}.{name}" == shape.value:
            return shape
    return InputShape.DICTS


def convert_table(table: pa.Table, shape: InputShape) -> Any:
    """An Arrow table as the DataFrame type the input asked for."""
    if shape is InputShape.PANDAS:
        return table.to_pandas()
    if shape is InputShape.POLARS:
        import polars

        return polars.from_arrow(table)
    return table
