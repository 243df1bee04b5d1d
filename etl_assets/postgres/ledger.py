"""The ledger and the dead-letter queue: DDL and the statements that touch them.

Three tables in the ledger schema (``etl`` by default):

* ``load_ledger``: one row per committed batch, keyed (target, partition, load, batch).
  It commits in the same transaction as the batch's rows, so its unique key is what
  makes a retry after an unknown commit outcome harmless.
* ``dead_letters``: one row per record that could not be written, with the error and
  the payload; it also commits in the batch's transaction.
* ``partition_loads``: one row per (target, partition, load): where it stands
  (``loading`` -> ``published``/``complete``, or ``failed``) and its audited totals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from etl_assets.postgres.sql import qualified, quote_ident

__all__ = ["BatchLedgerRow", "LedgerTables", "PartitionTotals"]


@dataclass(frozen=True, slots=True)
class BatchLedgerRow:
    """What one committed batch recorded."""

    batch_no: int
    enqueued: int
    written: int
    dead_lettered: int
    attempts: int
    digest: str


@dataclass(frozen=True, slots=True)
class PartitionTotals:
    """Ledger sums for one load of one partition."""

    batches: int
    enqueued: int
    written: int
    dead_lettered: int


class LedgerTables:
    """Names and statements for the ledger tables in one schema."""

    def __init__(self, schema: str = "etl") -> None:
        self.schema = schema
        self.ledger = qualified(schema, "load_ledger")
        self.dead_letters = qualified(schema, "dead_letters")
        self.loads = qualified(schema, "partition_loads")

    def ddl(self) -> list[str]:
        """Idempotent DDL (safe to run on every start, concurrently guarded by a lock)."""
        return [
            f"CREATE SCHEMA IF NOT EXISTS {quote_ident(self.schema)}",
            f"""CREATE TABLE IF NOT EXISTS {self.ledger} (
                target text NOT NULL,
                partition_key text NOT NULL,
                load_id text NOT NULL,
                batch_no integer NOT NULL,
                enqueued integer NOT NULL CHECK (enqueued >= 0),
                written integer NOT NULL CHECK (written >= 0),
                dead_lettered integer NOT NULL CHECK (dead_lettered >= 0),
                attempts integer NOT NULL,
                batch_digest text NOT NULL,
                committed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
                PRIMARY KEY (target, partition_key, load_id, batch_no),
                CHECK (enqueued = written + dead_lettered)
            )""",
            f"""CREATE TABLE IF NOT EXISTS {self.dead_letters} (
                id bigserial PRIMARY KEY,
                target text NOT NULL,
                partition_key text NOT NULL,
                load_id text NOT NULL,
                batch_no integer NOT NULL,
                record_no bigint NOT NULL,
                payload jsonb NOT NULL,
                error_class text NOT NULL,
                error_message text NOT NULL,
                sqlstate text,
                error_detail text,
                attempts integer NOT NULL,
                first_seen timestamptz NOT NULL DEFAULT clock_timestamp(),
                last_seen timestamptz NOT NULL DEFAULT clock_timestamp(),
                replayed boolean NOT NULL DEFAULT false,
                replayed_at timestamptz,
                UNIQUE (target, partition_key, load_id, record_no)
            )""",
            f"ALTER TABLE {self.dead_letters} ADD COLUMN IF NOT EXISTS replayed_by text",
            f"""CREATE INDEX IF NOT EXISTS dead_letters_open_idx
                ON {self.dead_letters} (target, partition_key) WHERE NOT replayed""",
            f"""CREATE TABLE IF NOT EXISTS {self.loads} (
                target text NOT NULL,
                partition_key text NOT NULL,
                load_id text NOT NULL,
                mode text NOT NULL,
                status text NOT NULL
                    CHECK (status IN ('loading', 'failed', 'published', 'complete')),
                staging_table text,
                enqueued bigint,
                written bigint,
                dead_lettered bigint,
                started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
                finished_at timestamptz,
                PRIMARY KEY (target, partition_key, load_id)
            )""",
            # The batch's key digest (etl_assets.postgres.key_digest); NULL before it existed.
            f"ALTER TABLE {self.ledger} ADD COLUMN IF NOT EXISTS key_cells bigint[]",
        ]

    # --- batch ledger -------------------------------------------------------------

    def select_batch(self) -> str:
        return (
            f"SELECT batch_no, enqueued, written, dead_lettered, attempts, batch_digest "
            f"FROM {self.ledger} "
            f"WHERE target = $1 AND partition_key = $2 AND load_id = $3 AND batch_no = $4"
        )

    def insert_batch(self) -> str:
        return (
            f"INSERT INTO {self.ledger} (target, partition_key, load_id, batch_no, enqueued, "
            f"written, dead_lettered, attempts, batch_digest) "
            f"VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        )

    def sum_batches(self) -> str:
        return (
            f"SELECT count(*), coalesce(sum(enqueued), 0), coalesce(sum(written), 0), "
            f"coalesce(sum(dead_lettered), 0) FROM {self.ledger} "
            f"WHERE target = $1 AND partition_key = $2 AND load_id = $3"
        )

    def insert_dead_letters(self) -> str:
        # ON CONFLICT: a replayed batch (unknown commit outcome) must not fail on, nor
        # duplicate, the dead letters its first attempt already committed.
        return (
            f"INSERT INTO {self.dead_letters} (target, partition_key, load_id, batch_no, "
            f"record_no, payload, error_class, error_message, sqlstate, error_detail, attempts) "
            f"SELECT $1, $2, $3, $4, d.record_no, d.payload::jsonb, d.error_class, "
            f"d.error_message, d.sqlstate, d.error_detail, $5 "
            f"FROM unnest($6::bigint[], $7::text[], $8::text[], $9::text[], $10::text[], "
            f"$11::text[]) AS d(record_no, payload, error_class, error_message, sqlstate, "
            f"error_detail) "
            f"ON CONFLICT (target, partition_key, load_id, record_no) "
            f"DO UPDATE SET last_seen = clock_timestamp()"
        )

    # --- partition loads ----------------------------------------------------------

    def select_load(self) -> str:
        return (
            f"SELECT status, staging_table FROM {self.loads} "
            f"WHERE target = $1 AND partition_key = $2 AND load_id = $3"
        )

    def begin_load(self) -> str:
        return (
            f"INSERT INTO {self.loads} (target, partition_key, load_id, mode, status, "
            f"staging_table) VALUES ($1, $2, $3, $4, 'loading', $5) "
            f"ON CONFLICT (target, partition_key, load_id) DO UPDATE "
            f"SET status = 'loading', finished_at = NULL "
            f"WHERE {self.loads}.status IN ('loading', 'failed')"
        )

    def finish_load(self) -> str:
        return (
            f"UPDATE {self.loads} SET status = $4, enqueued = $5, written = $6, "
            f"dead_lettered = $7, finished_at = clock_timestamp() "
            f"WHERE target = $1 AND partition_key = $2 AND load_id = $3"
        )

    def fail_load(self) -> str:
        return (
            f"UPDATE {self.loads} SET status = 'failed', finished_at = clock_timestamp() "
            f"WHERE target = $1 AND partition_key = $2 AND load_id = $3 AND status = 'loading'"
        )


def dead_letter_arrays(letters: Sequence[Any]) -> list[list[Any]]:
    """Column arrays for :meth:`LedgerTables.insert_dead_letters` (one round trip per batch)."""
    return [
        [d.record_no for d in letters],
        [d.payload for d in letters],
        [d.error_class for d in letters],
        [d.error_message for d in letters],
        [d.sqlstate for d in letters],
        [d.detail for d in letters],
    ]
