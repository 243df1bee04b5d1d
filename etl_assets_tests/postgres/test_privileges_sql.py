"""The GRANT statements of the DBA layout, as strings (no database)."""

from __future__ import annotations

from etl_assets.postgres.privileges import grant_statements, table_use
from etl_assets.postgres.target import WriteMode
from etl_assets_tests.postgres.helpers import events_target


def test_grants_create_each_schema_once_and_give_usage_and_create() -> None:
    """The ledger schema first, each target schema once, names quoted."""
    assert grant_statements('loader "x"', "etl", ["public", "sales", "public"], "db") == [
        'GRANT CONNECT ON DATABASE "db" TO "loader ""x"""',
        'CREATE SCHEMA IF NOT EXISTS "etl"',
        'GRANT USAGE, CREATE ON SCHEMA "etl" TO "loader ""x"""',
        'CREATE SCHEMA IF NOT EXISTS "public"',
        'GRANT USAGE, CREATE ON SCHEMA "public" TO "loader ""x"""',
        'CREATE SCHEMA IF NOT EXISTS "sales"',
        'GRANT USAGE, CREATE ON SCHEMA "sales" TO "loader ""x"""',
    ]


def test_each_operation_asks_only_what_it_does_to_the_table() -> None:
    """Checks read; replays insert (and update to upsert); a replace load owns partitions."""
    replace, upsert = events_target("s"), events_target("s", WriteMode.UPSERT)
    assert table_use(replace, "check").privileges == ("SELECT",)
    assert table_use(replace, "replay").privileges == ("SELECT", "INSERT")
    assert table_use(upsert, "replay").privileges == ("SELECT", "INSERT", "UPDATE")
    assert table_use(replace, "load").owner_if_partitioned
    assert table_use(replace, "load").privileges == ("SELECT", "INSERT", "DELETE")
    assert not table_use(upsert, "load").owner_if_partitioned
