"""SQL builders as strings: quoting, bounds, upsert; no database needed."""

from __future__ import annotations

import datetime as dt

import pytest

from etl_assets.postgres.sql import (
    day_check_constraint,
    partition_table_name,
    qualified,
    quote_ident,
    short_name,
    upsert_statement,
)


def test_identifiers_are_always_quoted_and_embedded_quotes_doubled() -> None:
    """Quotes, spaces and keywords survive as one identifier."""
    assert quote_ident("select") == '"select"'
    assert quote_ident('a "b" c') == '"a ""b"" c"'
    assert qualified("my schema", 'x"y') == '"my schema"."x""y"'


@pytest.mark.parametrize("bad", ["", "a\x00b", "x" * 64])
def test_unusable_identifiers_are_refused(bad: str) -> None:
    """Empty, NUL or over-long names raise instead of being truncated by Postgres."""
    with pytest.raises(ValueError, match="identifier"):
        quote_ident(bad)


def test_partition_bounds_come_from_date_objects_only() -> None:
    """DDL literals are rendered from a date; a string is a TypeError, not injected."""
    check = day_check_constraint("day", dt.date(2024, 2, 29))
    assert check == (
        'CHECK ("day" IS NOT NULL AND "day" >= DATE \'2024-02-29\' AND "day" < DATE \'2024-03-01\')'
    )
    with pytest.raises(TypeError):
        day_check_constraint("day", "2024-01-01'; DROP TABLE x; --")  # type: ignore[arg-type]


def test_generated_names_fit_in_63_bytes_and_are_stable() -> None:
    """Staging and partition names stay under NAMEDATALEN and are deterministic."""
    long_table = "t" * 60
    assert len(partition_table_name(long_table, dt.date(2024, 1, 1))) <= 63
    assert partition_table_name("logs", dt.date(2024, 1, 1)) == "logs_p20240101"
    assert short_name("_stg", "a", "b") == short_name("_stg", "a", "b")
    assert short_name("_stg", "a", "b") != short_name("_stg", "a", "c")


def test_upsert_updates_every_non_key_column() -> None:
    """ON CONFLICT on the key, updating the rest from EXCLUDED."""
    sql = upsert_statement('"s"."t"', "pg_temp.stage", ["d", "id", "v w"], ["d", "id"])
    assert sql == (
        'INSERT INTO "s"."t" ("d", "id", "v w") SELECT "d", "id", "v w" FROM pg_temp.stage '
        'ON CONFLICT ("d", "id") DO UPDATE SET "v w" = EXCLUDED."v w"'
    )
