"""The server's own rules, explained: refused at prepare with the fix, or named at publish."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from etl_assets.errors import ConfigurationError, PublishRefusedError
from etl_assets.postgres.sql import quote_ident
from etl_assets_tests.postgres.helpers import DAY, events_target, execute, fetch, load, records


def test_a_default_partition_holding_the_day_is_refused_at_prepare(
    pg_dsn: str, schema: str
) -> None:
    """A DBA's DEFAULT partition with rows of the day: named with the fix, nothing recorded."""
    target = events_target(schema)
    asyncio.run(load(pg_dsn, target, records(10)))  # creates the RANGE-partitioned table
    other_day = DAY + dt.timedelta(days=1)
    default = f"{quote_ident(schema)}.{quote_ident('events default')}"
    asyncio.run(
        execute(
            pg_dsn,
            f"CREATE TABLE {default} PARTITION OF {target.sql_name} DEFAULT; "
            f'INSERT INTO {target.sql_name} (event_id, "user name", amount, "data date") '
            f"VALUES (1, 'x', 1.0, '{other_day}'), (2, 'y', 2.0, '{other_day}')",
        )
    )

    with pytest.raises(ConfigurationError) as raised:
        asyncio.run(load(pg_dsn, target, records(10), day=other_day, load_id="run-2"))

    message = str(raised.value)
    assert f"holds 2 row(s) of {other_day}" in message
    assert "events default" in message
    assert "DELETE FROM" in message
    loads = asyncio.run(
        fetch(pg_dsn, f"SELECT count(*) FROM {quote_ident(schema)}.partition_loads "
              "WHERE load_id = 'run-2'")
    )  # fmt: skip
    assert loads[0][0] == 0  # refused before the load was recorded


def test_a_trigger_refusing_the_publish_is_a_publish_error_not_a_record_error(
    pg_dsn: str, schema: str
) -> None:
    """Into a plain table whose trigger refuses a row (staging has no triggers), the publish
    stops: PublishRefusedError (what it does: nothing published), with the server's
    detail, not a RecordError. (A foreign key is not such a rule any more: staging carries
    it, so an orphan is a dead letter: test_foreign_keys.)"""
    target = events_target(schema, table="child")
    s = quote_ident(schema)
    asyncio.run(
        execute(
            pg_dsn,
            f"CREATE SCHEMA {s}; "
            f'CREATE TABLE {target.sql_name} ("data date" date NOT NULL, '
            f'event_id bigint NOT NULL, "user name" text, '
            f'amount double precision, PRIMARY KEY ("data date", event_id)); '
            f"CREATE FUNCTION {s}.no_five() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF NEW.event_id = 5 THEN RAISE EXCEPTION 'no five' USING ERRCODE = '23503'; "
            "END IF; RETURN NEW; END $$; "
            f"CREATE TRIGGER no_five BEFORE INSERT ON {target.sql_name} FOR EACH ROW "
            f"EXECUTE FUNCTION {s}.no_five()",
        )
    )

    with pytest.raises(PublishRefusedError) as raised:
        asyncio.run(load(pg_dsn, target, records(6)))  # the trigger refuses event 5

    assert raised.value.sqlstate == "23503"
    assert "nothing was published" in str(raised.value)
    rows = asyncio.run(fetch(pg_dsn, f"SELECT count(*) FROM {target.sql_name}"))
    assert rows[0][0] == 0
