"""The ledger's layout: created at the current version, migrated in place from v1 with data."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from etl_assets.errors import ConfigurationError
from etl_assets.postgres.ledger import SCHEMA_VERSION, Ledger, LoadKey
from etl_assets.postgres.sql import quote_ident

# The layout etl_assets created before the ledger had a version (v1), verbatim.
V1_DDL = """
CREATE SCHEMA {s};
CREATE TABLE {s}.load_ledger (
    target text NOT NULL, partition_key text NOT NULL, load_id text NOT NULL,
    batch_no integer NOT NULL, enqueued integer NOT NULL CHECK (enqueued >= 0),
    written integer NOT NULL CHECK (written >= 0),
    dead_lettered integer NOT NULL CHECK (dead_lettered >= 0), attempts integer NOT NULL,
    batch_digest text NOT NULL, committed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (target, partition_key, load_id, batch_no),
    CHECK (enqueued = written + dead_lettered));
CREATE TABLE {s}.dead_letters (
    id bigserial PRIMARY KEY, target text NOT NULL, partition_key text NOT NULL,
    load_id text NOT NULL, batch_no integer NOT NULL, record_no bigint NOT NULL,
    payload jsonb NOT NULL, error_class text NOT NULL, error_message text NOT NULL,
    sqlstate text, error_detail text, attempts integer NOT NULL,
    first_seen timestamptz NOT NULL DEFAULT clock_timestamp(),
    last_seen timestamptz NOT NULL DEFAULT clock_timestamp(),
    replayed boolean NOT NULL DEFAULT false, replayed_at timestamptz,
    UNIQUE (target, partition_key, load_id, record_no));
ALTER TABLE {s}.dead_letters ADD COLUMN IF NOT EXISTS replayed_by text;
CREATE INDEX dead_letters_open_idx ON {s}.dead_letters (target, partition_key) WHERE NOT replayed;
CREATE TABLE {s}.partition_loads (
    target text NOT NULL, partition_key text NOT NULL, load_id text NOT NULL, mode text NOT NULL,
    status text NOT NULL CHECK (status IN ('loading', 'failed', 'published', 'complete')),
    staging_table text, enqueued bigint, written bigint, dead_lettered bigint,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(), finished_at timestamptz,
    PRIMARY KEY (target, partition_key, load_id));
"""

# Day 1 loaded twice (old-1, then new-1), a v1 replay of new-1 whose letter 5 failed again
# (copied as letter 6) and letter 4 went through; day 2 has a load still running.
V1_DATA = """
INSERT INTO {s}.partition_loads (target, partition_key, load_id, mode, status, started_at,
    finished_at) VALUES
 ('t', 'd1', 'old-1', 'replace', 'published', '2024-01-01 10:00', '2024-01-01 10:01'),
 ('t', 'd1', 'new-1', 'replace', 'published', '2024-01-02 10:00', '2024-01-02 10:01'),
 ('t', 'd1', 'replay:r', 'replay', 'complete', '2024-01-03 10:00', '2024-01-03 10:01'),
 ('t', 'd2', 'run-2', 'replace', 'loading', '2024-01-04 10:00', NULL);
INSERT INTO {s}.load_ledger VALUES
 ('t', 'd1', 'old-1', 0, 10, 8, 2, 1, 'x'), ('t', 'd1', 'new-1', 0, 10, 8, 2, 1, 'y'),
 ('t', 'd1', 'replay:r', 0, 2, 1, 1, 1, 'z');
INSERT INTO {s}.dead_letters (id, target, partition_key, load_id, batch_no, record_no, payload,
    error_class, error_message, attempts, replayed, replayed_at, replayed_by) VALUES
 (1, 't', 'd1', 'old-1', 0, 3, '{{}}', 'E', 'm', 1, false, NULL, NULL),
 (2, 't', 'd1', 'old-1', 0, 7, '{{}}', 'E', 'm', 1, false, NULL, NULL),
 (4, 't', 'd1', 'new-1', 0, 3, '{{}}', 'E', 'm', 1, true, '2024-01-03 10:00', 'replay:r'),
 (5, 't', 'd1', 'new-1', 0, 7, '{{}}', 'E', 'm', 1, true, '2024-01-03 10:00', 'replay:r'),
 (6, 't', 'd1', 'replay:r', 0, 5, '{{}}', 'E2', 'm2', 1, false, NULL, NULL),
 (7, 't', 'd2', 'run-2', 0, 1, '{{}}', 'E', 'm', 1, false, NULL, NULL);
"""


def test_a_v1_ledger_with_data_is_migrated_in_place(pg_dsn: str, schema: str) -> None:
    async def scenario() -> None:
        conn = await asyncpg.connect(pg_dsn)
        try:
            s = quote_ident(schema)
            await conn.execute(V1_DDL.format(s=s) + V1_DATA.format(s=s))
            ledger = Ledger(schema)
            await ledger.ensure(conn)
            await ledger.ensure(conn)  # idempotent once migrated
            assert await conn.fetchval(f"SELECT version FROM {ledger.version_table}") == 3
            assert await conn.fetchval(f"SELECT count(*) FROM {ledger.leases}") == 0  # v3
            letters = await conn.fetch(
                f"SELECT id, status, resolved_by FROM {ledger.dead_letters} ORDER BY id"
            )
            assert [tuple(r) for r in letters] == [
                (1, "superseded", None),  # old-1's: the partition was loaded again
                (2, "superseded", None),
                (4, "replayed", "replay:r"),
                (5, "superseded", "replay:r"),  # failed again: carried on as letter 6
                (6, "open", None),  # the copy, a letter of the current load's replay
                (7, "pending", None),  # its load still runs
            ]
            base = await conn.fetchval(
                f"SELECT base_load_id FROM {ledger.loads} WHERE load_id = 'replay:r'"
            )
            assert base == "new-1"
            current = LoadKey("t", "d1", "new-1")
            assert await ledger.replayed_in(conn, current) == 1
            assert await ledger.letter_counts(conn, current) == {
                "open": 1, "replayed": 1, "superseded": 1,
            }  # fmt: skip
            assert [
                r["id"] for r in await ledger.open_letters(conn, current, after_id=0, limit=9)
            ] == [6]
            columns = await conn.fetchval(
                "SELECT count(*) FROM pg_attribute WHERE attrelid = $1::regclass "
                "AND attname IN ('replayed', 'replayed_at', 'replayed_by') AND NOT attisdropped",
                ledger.dead_letters,
            )
            assert columns == 0
        finally:
            await conn.close()

    asyncio.run(scenario())


def test_a_ledger_newer_than_the_package_is_refused(pg_dsn: str, schema: str) -> None:
    async def scenario() -> None:
        conn = await asyncpg.connect(pg_dsn)
        try:
            ledger = Ledger(schema)
            await ledger.ensure(conn)
            assert (
                await conn.fetchval(f"SELECT version FROM {ledger.version_table}") == SCHEMA_VERSION
            )
            await conn.execute(f"UPDATE {ledger.version_table} SET version = 99")
            with pytest.raises(ConfigurationError, match="layout v99, newer than this etl_assets"):
                await ledger.ensure(conn)
        finally:
            await conn.close()

    asyncio.run(scenario())


def test_a_v2_ledger_gains_the_tally_and_the_leases_in_place(pg_dsn: str, schema: str) -> None:
    """v2 had no deleted_letters and no load_leases; the migration adds both, keeps every
    row of the v2 tables, and counts from 0."""

    async def scenario() -> None:
        conn = await asyncpg.connect(pg_dsn)
        try:
            ledger = Ledger(schema)
            await ledger.ensure(conn)
            await conn.execute(
                f"DROP TABLE {ledger.deleted_letters}; DROP TABLE {ledger.leases}; "
                f"UPDATE {ledger.version_table} SET version = 2; "
                f"INSERT INTO {ledger.dead_letters} (target, partition_key, load_id, batch_no, "
                "record_no, payload, error_class, error_message, attempts, status) "
                "VALUES ('t', 'd', 'l', 0, 1, '{}', 'E', 'm', 1, 'open'); "
                f"INSERT INTO {ledger.loads} (target, partition_key, load_id, mode, status) "
                "VALUES ('t', 'd', 'l', 'replace', 'published')"
            )
            await ledger.ensure(conn)
            assert await conn.fetchval(f"SELECT version FROM {ledger.version_table}") == 3
            assert await conn.fetchval(f"SELECT count(*) FROM {ledger.deleted_letters}") == 0
            assert await conn.fetchval(f"SELECT count(*) FROM {ledger.leases}") == 0
            assert await conn.fetchval(f"SELECT count(*) FROM {ledger.loads}") == 1
            assert await ledger.dead_letter_rows(conn, LoadKey("t", "d", "l")) == 1
        finally:
            await conn.close()

    asyncio.run(scenario())
