"""``dg scaffold defs etl_assets.PostgresLoadComponent <name>``: a load that runs as written.

Writes ``defs.yaml`` (every field, with this package's defaults spelled out) and
``source.py`` (a record model and a source function of the data date) into the new
folder; the table and the asset take the folder's name. Materializing it as scaffolded
loads three rows per day.
"""

from __future__ import annotations

import textwrap
from typing import Any

import dagster as dg
from dagster.components.component_scaffolding import scaffold_component
from dagster.components.scaffold.scaffold import NoParams

__all__ = ["PostgresLoadScaffolder", "scaffold_attributes"]

SOURCE_STUB = '''\
"""The source of the `{name}` load: one record's model, and the records of a data date."""

import datetime as dt
from collections.abc import Iterator

import pydantic


class Record(pydantic.BaseModel):
    """One row of the table (the partition column, data_date, is added by the load)."""

    id: int
    amount: float


def read(day: dt.date) -> Iterator[dict[str, object]]:
    """Your source: the day's records (or a DataFrame); called once per partition."""
    for n in range(1, 4):
        yield {{"id": n, "amount": n * day.day + 0.5}}
'''


def scaffold_attributes(name: str) -> dict[str, Any]:
    """The ``attributes`` of a new load named ``name`` (its asset key and table)."""
    return {
        "asset": {"key": name, "group_name": "loads", "description": f"The {name} load."},
        "table": {
            "name": name,
            "db_schema": "public",
            "mode": "replace",
            "primary_key": ["data_date", "id"],
            "partition_column": "data_date",
        },
        "record_model": ".source.Record",
        "source": ".source.read",
        "partitions": {"type": "daily", "start_date": "2024-01-01", "timezone": "UTC"},
        "backfill_chunk": 31,
        "load_settings": {"batch_size": 25_000, "max_dead_letter_ratio": 0.05, "key_digest": True},
    }


class PostgresLoadScaffolder(dg.Scaffolder[NoParams]):
    """Writes ``defs.yaml`` and ``source.py`` for one load."""

    def scaffold(self, request: dg.ScaffoldRequest[Any]) -> None:
        name = request.target_path.name
        request.target_path.mkdir(parents=True, exist_ok=True)
        (request.target_path / "source.py").write_text(
            textwrap.dedent(SOURCE_STUB).format(name=name), encoding="utf-8"
        )
        scaffold_component(request=request, yaml_attributes=scaffold_attributes(name))
