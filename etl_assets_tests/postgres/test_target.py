"""TableTarget and the type mapping from pydantic models: checked before a row moves."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import uuid
from typing import Literal

import pydantic
import pytest

from etl_assets.errors import ConfigurationError
from etl_assets.postgres.target import Column, TableTarget, WriteMode, columns_from_model


class Colour(enum.Enum):
    RED = "red"


class Everything(pydantic.BaseModel):
    flag: bool
    count: int
    ratio: float
    name: str
    blob: bytes
    price: decimal.Decimal
    at: dt.datetime
    aware: pydantic.AwareDatetime
    naive: pydantic.NaiveDatetime
    day: dt.date
    clock: dt.time
    took: dt.timedelta
    ident: uuid.UUID
    kind: Literal["a", "b"]
    colour: Colour
    maybe: int | None
    either: int | str
    defaulted: str = "x"


def test_every_supported_annotation_maps_to_its_postgres_type() -> None:
    columns = {c.name: (c.pg_type, c.nullable) for c in columns_from_model(Everything)}
    assert columns == {
        "flag": ("boolean", False),
        "count": ("bigint", False),
        "ratio": ("double precision", False),
        "name": ("text", False),
        "blob": ("bytea", False),
        "price": ("numeric", False),
        "at": ("timestamptz", False),
        "aware": ("timestamptz", False),
        "naive": ("timestamp", False),
        "day": ("date", False),
        "clock": ("time", False),
        "took": ("interval", False),
        "ident": ("uuid", False),
        "kind": ("text", False),
        "colour": ("text", False),
        "maybe": ("bigint", True),
        "either": ("jsonb", False),
        "defaulted": ("text", True),  # not required: a record may leave it out
    }


def test_excluded_fields_are_left_out_in_declaration_order() -> None:
    names = [c.name for c in columns_from_model(Everything, exclude=("blob", "either"))]
    assert names[:4] == ["flag", "count", "ratio", "name"]
    assert "blob" not in names
    assert "either" not in names


def test_replace_target_is_created_range_partitioned_by_day() -> None:
    """The DDL makes one range partition per data date possible."""
    target = TableTarget("s", "t", (Column("id", "bigint", nullable=False),), "day")
    assert target.create_table_sql() == (
        'CREATE TABLE IF NOT EXISTS "s"."t" ("id" bigint NOT NULL, "day" date NOT NULL) '
        'PARTITION BY RANGE ("day")'
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": WriteMode.UPSERT}, "needs a primary_key"),
        ({"mode": WriteMode.UPSERT, "primary_key": ("id",)}, "must include the partition column"),
        ({"primary_key": ("nope",)}, "unknown"),
    ],
)
def test_bad_target_config_names_the_fix(kwargs: dict[str, object], message: str) -> None:
    """A wrong target is a ConfigurationError before any row moves."""
    with pytest.raises(ConfigurationError, match=message):
        TableTarget("s", "t", (Column("id", "bigint"),), "day", **kwargs)  # type: ignore[arg-type]


def test_sql_injection_in_a_type_name_is_refused() -> None:
    """Column types are plain type names, not SQL."""
    with pytest.raises(ConfigurationError, match="plain Postgres type"):
        Column("x", "text); DROP TABLE t; --")
