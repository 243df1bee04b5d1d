"""The ledger: the one owner of the tables that prove where every record went.

Five tables in the ledger schema (``etl`` by default):

* ``load_ledger``: one row per committed batch, keyed (target, partition, load, batch).
  It commits in the same transaction as the batch's rows, so its unique key is what
  makes a retry after an unknown commit outcome harmless.
* ``dead_letters``: one row per record that could not be written, with the error and
  the payload; it also commits in the batch's transaction. Its life (``LetterStatus``):
  ``pending`` while its load runs, ``open`` once the load published, then ``replayed``
  (written by a replay), ``superseded`` (a later load of the partition published, or
  its load was abandoned) or ``discarded`` (by a person, who and why kept). A letter
  row is never deleted, except by an explicit retention setting, and only once resolved.
* ``deleted_letters``: what a retention deleted, counted per (load, status) in the
  deleting transaction, so a load's letters still add up to its ledger afterwards
  (``dead_letter_rows`` and ``letter_counts`` count them).
* ``partition_loads``: one row per (target, partition, load): where it stands
  (``LoadStatus``) and its audited totals; a replay names the load it replays into.
* ``ledger_version``: the layout's version. ``Ledger.ensure`` creates the current
  layout, or migrates an older one in place, on every start (under a lock).

Dagster's ``DbIOManager`` / ``DbClient`` split, applied: the loader, publisher, checks
and replay say *what* happened; this module holds every statement that records it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import asyncpg

from etl_assets.postgres.ledger_layout import (
    DDL_LOCK,
    REPLAY_MODE,
    SCHEMA_VERSION,
    LedgerLayout,
    LetterStatus,
    LoadStatus,
)

__all__ = [
    "DDL_LOCK",
    "REPLAY_MODE",
    "SCHEMA_VERSION",
    "BatchLedgerRow",
    "DeadLoad",
    "LetterStatus",
    "Ledger",
    "LoadKey",
    "LoadStatus",
    "PartitionState",
    "PartitionTotals",
]

LOAD_LOCK_CLASS = 0x65746C6C  # "etll": pg_advisory_lock(class, hash of a load) = "it runs"
PUBLISH_LOCK_CLASS = 0x65746C70  # "etlp": one publish of a partition at a time


class LoadKey(NamedTuple):
    """One load of one partition of one target (a tuple, so ``*key`` binds ``$1..$3``)."""

    target: str
    partition_key: str
    load_id: str

    def __str__(self) -> str:
        return f"{self.target} partition {self.partition_key}"


@dataclass(frozen=True, slots=True)
class BatchLedgerRow:
    """What one committed batch recorded."""

    batch_no: int
    enqueued: int
    written: int
    dead_lettered: int
    attempts: int
    digest: str
    key_cells: list[int] | None = None  # etl_assets.postgres.key_digest; None: no digest


@dataclass(frozen=True, slots=True)
class PartitionTotals:
    """Ledger sums for one load of one partition."""

    batches: int
    enqueued: int
    written: int
    dead_lettered: int


@dataclass(frozen=True, slots=True)
class PartitionState:
    """Whether a partition was ever published, and how its newest load ended."""

    published: bool
    latest: LoadStatus


@dataclass(frozen=True, slots=True)
class DeadLoad:
    """A load whose process is gone: status ``loading`` or ``failed``, its lock free."""

    key: LoadKey
    status: LoadStatus
    staging_table: str | None


class Ledger(LedgerLayout):
    """The ledger tables of one schema, and every statement that reads or writes them."""

    # --- batches --------------------------------------------------------------------

    async def committed_batch(
        self, conn: asyncpg.Connection, key: LoadKey, batch_no: int
    ) -> asyncpg.Record | None:
        return await conn.fetchrow(
            f"SELECT batch_no, enqueued, written, dead_lettered, attempts, batch_digest "
            f"FROM {self.ledger} "
            f"WHERE target = $1 AND partition_key = $2 AND load_id = $3 AND batch_no = $4",
            *key,
            batch_no,
        )

    async def record_batch(
        self, conn: asyncpg.Connection, key: LoadKey, row: BatchLedgerRow
    ) -> None:
        await conn.execute(
            f"INSERT INTO {self.ledger} (target, partition_key, load_id, batch_no, enqueued, "
            f"written, dead_lettered, attempts, batch_digest, key_cells) "
            f"VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            *key,
            row.batch_no,
            row.enqueued,
            row.written,
            row.dead_lettered,
            row.attempts,
            row.digest,
            row.key_cells,
        )

    async def record_dead_letters(
        self,
        conn: asyncpg.Connection,
        key: LoadKey,
        batch_no: int,
        attempts: int,
        letters: Sequence[Any],
    ) -> None:
        """One round trip per batch. ``pending`` until the load publishes.

        ON CONFLICT: a replayed batch (unknown commit outcome) must not fail on, nor
        duplicate, the dead letters its first attempt already committed.
        """
        await conn.execute(
            f"INSERT INTO {self.dead_letters} (target, partition_key, load_id, batch_no, "
            f"record_no, payload, error_class, error_message, sqlstate, error_detail, attempts) "
            f"SELECT $1, $2, $3, $4, d.record_no, d.payload::jsonb, d.error_class, "
            f"d.error_message, d.sqlstate, d.error_detail, $5 "
            f"FROM unnest($6::bigint[], $7::text[], $8::text[], $9::text[], $10::text[], "
            f"$11::text[]) AS d(record_no, payload, error_class, error_message, sqlstate, "
            f"error_detail) "
            f"ON CONFLICT (target, partition_key, load_id, record_no) "
            f"DO UPDATE SET last_seen = clock_timestamp()",
            *key,
            batch_no,
            attempts,
            *_letter_arrays(letters),
        )

    async def totals(self, conn: asyncpg.Connection, key: LoadKey) -> PartitionTotals:
        row = await conn.fetchrow(
            f"SELECT count(*), coalesce(sum(enqueued), 0), coalesce(sum(written), 0), "
            f"coalesce(sum(dead_lettered), 0) FROM {self.ledger} "
            f"WHERE target = $1 AND partition_key = $2 AND load_id = $3",
            *key,
        )
        return PartitionTotals(*row)

    async def dead_letter_rows(self, conn: asyncpg.Connection, key: LoadKey) -> int:
        """Letters recorded for the load, whatever became of them since (a retention's
        deleted ones by their tally)."""
        of_load = "WHERE target = $1 AND partition_key = $2 AND load_id = $3"
        count: int = await conn.fetchval(
            f"SELECT (SELECT count(*) FROM {self.dead_letters} {of_load}) "
            f"+ (SELECT coalesce(sum(letters), 0) FROM {self.deleted_letters} {of_load})::bigint",
            *key,
        )
        return count

    # --- loads ----------------------------------------------------------------------

    async def status(self, conn: asyncpg.Connection, key: LoadKey) -> LoadStatus | None:
        status = await conn.fetchval(
            f"SELECT status FROM {self.loads} "
            "WHERE target = $1 AND partition_key = $2 AND load_id = $3",
            *key,
        )
        return None if status is None else LoadStatus(status)

    async def lock_status(self, conn: asyncpg.Connection, key: LoadKey) -> LoadStatus | None:
        """The status, row-locked until the transaction ends (publish decides on it)."""
        status = await conn.fetchval(
            f"SELECT status FROM {self.loads} "
            "WHERE target = $1 AND partition_key = $2 AND load_id = $3 FOR UPDATE",
            *key,
        )
        return None if status is None else LoadStatus(status)

    async def begin_load(
        self,
        conn: asyncpg.Connection,
        key: LoadKey,
        mode: str,
        staging_table: str | None,
        base_load_id: str | None = None,
    ) -> None:
        """The load's ``loading`` row; a failed load resumed under its id starts again."""
        await conn.execute(
            f"INSERT INTO {self.loads} (target, partition_key, load_id, mode, status, "
            f"staging_table, base_load_id) VALUES ($1, $2, $3, $4, 'loading', $5, $6) "
            f"ON CONFLICT (target, partition_key, load_id) DO UPDATE "
            f"SET status = 'loading', finished_at = NULL "
            f"WHERE {self.loads}.status IN ('loading', 'failed')",
            *key,
            mode,
            staging_table,
            base_load_id,
        )

    async def finish_load(
        self,
        conn: asyncpg.Connection,
        key: LoadKey,
        status: LoadStatus,
        totals: PartitionTotals,
    ) -> None:
        await conn.execute(
            f"UPDATE {self.loads} SET status = $4, enqueued = $5, written = $6, "
            f"dead_lettered = $7, finished_at = clock_timestamp() "
            f"WHERE target = $1 AND partition_key = $2 AND load_id = $3",
            *key,
            status.value,
            totals.enqueued,
            totals.written,
            totals.dead_lettered,
        )

    async def fail_load(self, conn: asyncpg.Connection, key: LoadKey) -> None:
        await conn.execute(
            f"UPDATE {self.loads} SET status = 'failed', finished_at = clock_timestamp() "
            f"WHERE target = $1 AND partition_key = $2 AND load_id = $3 AND status = 'loading'",
            *key,
        )

    async def current_load(
        self, conn: asyncpg.Connection, target: str, partition_key: str
    ) -> asyncpg.Record | None:
        """The partition's newest finished load (replays aside): what the partition holds."""
        return await conn.fetchrow(
            f"SELECT load_id, finished_at FROM {self.loads} "
            f"WHERE target = $1 AND partition_key = $2 AND mode <> $3 "
            f"AND status IN ('published', 'complete') ORDER BY finished_at DESC LIMIT 1",
            target,
            partition_key,
            REPLAY_MODE,
        )

    async def partition_states(
        self, conn: asyncpg.Connection, target: str, partition_keys: Sequence[str]
    ) -> dict[str, PartitionState]:
        """Per partition: has a load ever published it, and how its newest load ended.

        Readers ask this before handing a partition downstream: a partition no load
        published must not be read as empty. A ledger not created yet means no partition
        was ever loaded (no DDL on a read: a reading role may not own the schema).
        """
        if await conn.fetchval("SELECT to_regclass($1) IS NULL", self.loads):
            return {}
        rows = await conn.fetch(
            f"SELECT partition_key, bool_or(status IN ('published', 'complete')), "
            f"(array_agg(status ORDER BY started_at DESC))[1] FROM {self.loads} "
            f"WHERE target = $1 AND partition_key = ANY($2::text[]) AND mode <> $3 "
            f"GROUP BY partition_key",
            target,
            list(partition_keys),
            REPLAY_MODE,
        )
        return {
            key: PartitionState(published, LoadStatus(latest)) for key, published, latest in rows
        }

    async def replayed_in(self, conn: asyncpg.Connection, key: LoadKey) -> int:
        """Rows that replays wrote into the load's partition (ledger rows, not load totals:
        a replay that died halfway still wrote its committed batches)."""
        count: int = await conn.fetchval(
            f"SELECT coalesce(sum(b.written), 0) FROM {self.ledger} AS b "
            f"JOIN {self.loads} AS l USING (target, partition_key, load_id) "
            f"WHERE b.target = $1 AND b.partition_key = $2 AND l.mode = $3 "
            f"AND l.base_load_id = $4",
            key.target,
            key.partition_key,
            REPLAY_MODE,
            key.load_id,
        )
        return count

    async def key_cells(self, conn: asyncpg.Connection, key: LoadKey) -> list[list[int] | None]:
        """The key digests of the load's batches and of its replays' (None: no digest)."""
        rows = await conn.fetch(
            f"SELECT b.key_cells FROM {self.ledger} AS b "
            f"JOIN {self.loads} AS l USING (target, partition_key, load_id) "
            f"WHERE b.target = $1 AND b.partition_key = $2 "
            f"AND (b.load_id = $3 OR (l.mode = $4 AND l.base_load_id = $3))",
            *key,
            REPLAY_MODE,
        )
        return [row["key_cells"] for row in rows]

    # --- the dead letters' life -------------------------------------------------------

    async def letter_counts(self, conn: asyncpg.Connection, key: LoadKey) -> dict[str, int]:
        """The load's letters (and its replays') by status, a retention's deleted ones
        included (by their tally): deleting resolved letters changes no check's verdict."""
        of_load = self._of_load_or_its_replays(1)
        rows = await conn.fetch(
            f"SELECT status, sum(n)::bigint FROM ("
            f"SELECT d.status, count(*) AS n FROM {self.dead_letters} AS d "
            f"WHERE {of_load} GROUP BY 1 UNION ALL "
            f"SELECT d.status, sum(d.letters) FROM {self.deleted_letters} AS d "
            f"WHERE {of_load} GROUP BY 1) AS c GROUP BY 1",
            *key,
        )
        return {row[0]: row[1] for row in rows}

    def _of_load_or_its_replays(self, first: int) -> str:
        """SQL: letter ``d`` belongs to the load ``$first..$first+2`` or a replay of it
        (replays of the v1 layout kept letters of their own)."""
        a, b, c = f"${first}", f"${first + 1}", f"${first + 2}"
        return (
            f"d.target = {a} AND d.partition_key = {b} AND (d.load_id = {c} OR d.load_id IN "
            f"(SELECT r.load_id FROM {self.loads} AS r WHERE r.target = {a} "
            f"AND r.partition_key = {b} AND r.mode = '{REPLAY_MODE}' AND r.base_load_id = {c}))"
        )

    async def publish_letters(self, conn: asyncpg.Connection, key: LoadKey) -> int:
        """In the publish transaction: every letter of the load opens, and the letters
        of the loads whose rows this publish replaces are superseded.

        Superseded: the open letters of loads that published before (their rows go), and
        the pending ones of loads that ended without publishing (failed, abandoned).
        Never the pending letters of a load still ``loading``: a second load of the
        partition running meanwhile may publish after this one, and its rejected
        records must then be open, not lost (publishes of one partition are serialized
        by :meth:`lock_partition_publish`, so "still loading" is read after any earlier
        publish committed). The load's own letters open whatever became of them while it
        ran: a failed load resumed under its id may have seen them superseded.
        """
        await conn.execute(
            f"UPDATE {self.dead_letters} AS d SET status = 'superseded', "
            f"resolved_at = clock_timestamp(), resolved_by = $3, "
            f"resolution = 'load ' || $3 || ' of the partition published' "
            f"WHERE d.target = $1 AND d.partition_key = $2 AND d.load_id <> $3 "
            f"AND d.status IN ('pending', 'open') AND NOT EXISTS ("
            f"SELECT 1 FROM {self.loads} AS l WHERE l.target = d.target "
            f"AND l.partition_key = d.partition_key AND l.load_id = d.load_id "
            f"AND l.status = 'loading')",
            *key,
        )
        status = await conn.execute(
            f"UPDATE {self.dead_letters} SET status = 'open', resolved_at = NULL, "
            f"resolved_by = NULL, resolution = NULL "
            f"WHERE target = $1 AND partition_key = $2 AND load_id = $3 "
            f"AND status IN ('pending', 'superseded')",
            *key,
        )
        return int(status.rsplit(" ", 1)[-1])

    async def lock_partition_publish(self, conn: asyncpg.Connection, key: LoadKey) -> None:
        """Serialize the publishes of one partition (a transaction lock: any pooler).

        Two loads of a partition publishing at once would each read the other as still
        loading and supersede none of its letters; in turn, each reads the other's
        outcome after it committed.
        """
        await conn.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))", *self.publish_lock(key)
        )

    def publish_lock(self, key: LoadKey) -> tuple[int, str]:
        """The partition's publish lock: its class and the name hashed into its key."""
        return PUBLISH_LOCK_CLASS, "\x1f".join((self.schema, key.target, key.partition_key))

    async def own_letter_statuses(self, conn: asyncpg.Connection, key: LoadKey) -> dict[str, int]:
        """The load's own letters by status (a retention's deleted ones by their tally).

        What the blocking check proves of the published load: each of its rejected
        records is open or resolved, none pending or superseded (where no one looks).
        """
        of_load = "WHERE target = $1 AND partition_key = $2 AND load_id = $3"
        rows = await conn.fetch(
            f"SELECT status, sum(n)::bigint FROM ("
            f"SELECT status, count(*) AS n FROM {self.dead_letters} {of_load} GROUP BY 1 "
            f"UNION ALL SELECT status, sum(letters) FROM {self.deleted_letters} {of_load} "
            f"GROUP BY 1) AS c GROUP BY 1",
            *key,
        )
        return {row[0]: row[1] for row in rows}

    async def open_letters(
        self,
        conn: asyncpg.Connection,
        base: LoadKey,
        *,
        after_id: int,
        limit: int,
        error_classes: Sequence[str] = (),
        ids: Sequence[int] = (),
        exclude_classes: Sequence[str] = (),
    ) -> list[asyncpg.Record]:
        """The next page of the load's open letters (optionally filtered), by id."""
        rows: list[asyncpg.Record] = await conn.fetch(
            f"SELECT d.id, d.payload::text AS payload, d.error_class, d.error_message, "
            f"d.replay_attempts, d.last_error_class, d.last_error_message "
            f"FROM {self.dead_letters} AS d WHERE {self._of_load_or_its_replays(1)} "
            f"AND d.status = 'open' AND d.id > $4 "
            f"AND (cardinality($5::text[]) = 0 OR d.error_class = ANY($5::text[])) "
            f"AND (cardinality($6::bigint[]) = 0 OR d.id = ANY($6::bigint[])) "
            f"AND d.error_class <> ALL($7::text[]) "
            f"ORDER BY d.id LIMIT $8",
            *base,
            after_id,
            list(error_classes),
            list(ids),
            list(exclude_classes),
            limit,
        )
        return rows

    async def unfinished_letters(
        self, conn: asyncpg.Connection, target: str, partition_key: str, *, limit: int
    ) -> list[asyncpg.Record]:
        """The pending letters of the partition's loads that did not finish (failed, or
        still loading), oldest load first, with ``load_id`` and ``load_status``.

        Not replayable (their load never published), but they are where a failed load's
        message points: they open if that load is resumed and publishes, and the
        partition's next load supersedes them.
        """
        rows: list[asyncpg.Record] = await conn.fetch(
            f"SELECT d.id, d.load_id, l.status AS load_status, d.error_class, "
            f"d.error_message, d.replay_attempts, d.last_error_class, d.last_error_message "
            f"FROM {self.dead_letters} AS d JOIN {self.loads} AS l "
            f"ON l.target = d.target AND l.partition_key = d.partition_key "
            f"AND l.load_id = d.load_id "
            f"WHERE d.target = $1 AND d.partition_key = $2 AND d.status = 'pending' "
            f"AND l.status IN ('loading', 'failed') ORDER BY l.started_at, d.id LIMIT $3",
            target,
            partition_key,
            limit,
        )
        return rows

    async def claim_letters(
        self, conn: asyncpg.Connection, base: LoadKey, ids: Sequence[int]
    ) -> int:
        """Row-lock the letters a replay batch re-drives; how many are still open.

        The lock holds until the batch commits: a concurrent replay waits and then finds
        them resolved; a load publishing meanwhile waits too (it supersedes them).
        """
        count: int = await conn.fetchval(
            f"SELECT count(*) FROM (SELECT 1 FROM {self.dead_letters} AS d "
            f"WHERE d.id = ANY($4::bigint[]) AND d.status = 'open' "
            f"AND {self._of_load_or_its_replays(1)} FOR UPDATE) AS claimed",
            *base,
            list(ids),
        )
        return count

    async def mark_replayed(
        self, conn: asyncpg.Connection, ids: Sequence[int], replay_load_id: str
    ) -> None:
        await conn.execute(
            f"UPDATE {self.dead_letters} SET status = 'replayed', "
            f"replay_attempts = replay_attempts + 1, resolved_at = clock_timestamp(), "
            f"resolved_by = $2, resolution = 'replayed' WHERE id = ANY($1::bigint[])",
            list(ids),
            replay_load_id,
        )

    async def mark_failed_again(self, conn: asyncpg.Connection, letters: Sequence[Any]) -> None:
        """A replayed letter that failed again stays open, with the new error and count."""
        if not letters:
            return
        await conn.execute(
            f"UPDATE {self.dead_letters} AS d SET replay_attempts = d.replay_attempts + 1, "
            f"last_error_class = f.error_class, last_error_message = f.error_message, "
            f"last_seen = clock_timestamp() "
            f"FROM unnest($1::bigint[], $2::text[], $3::text[]) "
            f"AS f(id, error_class, error_message) WHERE d.id = f.id",
            [d.record_no for d in letters],
            [d.error_class for d in letters],
            [d.error_message for d in letters],
        )

    async def discard(
        self,
        conn: asyncpg.Connection,
        target: str,
        partition_key: str,
        ids: Sequence[int],
        *,
        by: str,
        why: str,
    ) -> list[int]:
        """Resolve open letters by hand: kept, marked discarded, with who and why."""
        rows = await conn.fetch(
            f"UPDATE {self.dead_letters} SET status = 'discarded', "
            f"resolved_at = clock_timestamp(), resolved_by = $4, resolution = $5 "
            f"WHERE target = $1 AND partition_key = $2 AND id = ANY($3::bigint[]) "
            f"AND status = 'open' RETURNING id",
            target,
            partition_key,
            list(ids),
            by,
            why,
        )
        return sorted(r["id"] for r in rows)

    # --- housekeeping ---------------------------------------------------------------

    async def dead_loads(
        self,
        conn: asyncpg.Connection,
        *,
        target: str | None = None,
        partition_key: str | None = None,
        exclude_load_id: str | None = None,
    ) -> list[DeadLoad]:
        """In the caller's transaction: unfinished loads whose holder is gone, row-locked.

        A load is alive while its lease (``load_leases``) has not expired: renewed in
        transactions, it holds through any pooler. A lease claimed on a proven direct
        session is also dead at once when that session's advisory lock is free (the
        process died); a load with no lease (one that ended ``failed``, or a load of a
        release before leases) is judged by the advisory lock alone. The load's row and
        its lease are locked before the verdict and stay locked until the caller's
        transaction ends, and ``pg_try_advisory_xact_lock`` keeps the lock too: the load
        cannot renew, resume or publish under the caller meanwhile.
        """
        rows = await conn.fetch(
            f"SELECT target, partition_key, load_id FROM {self.loads} "
            f"WHERE status IN ('loading', 'failed') "
            f"AND ($1::text IS NULL OR target = $1) "
            f"AND ($2::text IS NULL OR partition_key = $2) "
            f"AND ($3::text IS NULL OR load_id <> $3) ORDER BY started_at",
            target,
            partition_key,
            exclude_load_id,
        )
        dead = []
        for row in rows:
            key = LoadKey(row["target"], row["partition_key"], row["load_id"])
            load = await self._dead_load(conn, key)
            if load is not None:
                dead.append(load)
        return dead

    async def _dead_load(self, conn: asyncpg.Connection, key: LoadKey) -> DeadLoad | None:
        row = await conn.fetchrow(
            f"SELECT status, staging_table FROM {self.loads} WHERE target = $1 "
            f"AND partition_key = $2 AND load_id = $3 AND status IN ('loading', 'failed') "
            f"FOR UPDATE",
            *key,
        )
        if row is None:  # it ended meanwhile
            return None
        lease = await conn.fetchrow(
            f"SELECT session_pid IS NOT NULL AS session_locked, "
            f"expires_at < clock_timestamp() AS expired FROM {self.leases} "
            f"WHERE target = $1 AND partition_key = $2 AND load_id = $3 FOR UPDATE",
            *key,
        )
        if lease is not None and lease["expired"]:
            holder_gone = True
        elif lease is None or lease["session_locked"]:
            holder_gone = await self._lock_is_free(conn, key)
        else:
            holder_gone = False  # a live lease behind a pooler: only its expiry tells
        if not holder_gone:
            return None
        await conn.execute(
            f"DELETE FROM {self.leases} WHERE target = $1 AND partition_key = $2 AND load_id = $3",
            *key,
        )
        return DeadLoad(key, LoadStatus(row["status"]), row["staging_table"])

    async def _lock_is_free(self, conn: asyncpg.Connection, key: LoadKey) -> bool:
        """Takes it too, until the transaction ends (a transaction-level lock: any pooler)."""
        free: bool = await conn.fetchval(
            "SELECT pg_try_advisory_xact_lock($1, hashtext($2))",
            LOAD_LOCK_CLASS,
            self.lock_name(key),
        )
        return free

    # --- leases ---------------------------------------------------------------------

    async def claim_lease(
        self,
        conn: asyncpg.Connection,
        key: LoadKey,
        holder: str,
        ttl_s: float,
        *,
        session_locked: bool,
    ) -> bool:
        """Claim the load's lease; False while another holder's lease is alive.

        An expired lease is taken over; so is one claimed on a direct session when we
        hold the advisory lock now (``session_locked``): its holder's session is gone.
        Our own earlier claim is ours again: a retry after its COMMIT reply was lost.
        """
        claimed: str | None = await conn.fetchval(
            f"INSERT INTO {self.leases} AS s (target, partition_key, load_id, holder, "
            f"session_pid, expires_at) VALUES ($1, $2, $3, $4, "
            f"CASE WHEN $6 THEN pg_backend_pid() END, "
            f"clock_timestamp() + make_interval(secs => $5)) "
            f"ON CONFLICT (target, partition_key, load_id) DO UPDATE SET "
            f"holder = EXCLUDED.holder, session_pid = EXCLUDED.session_pid, "
            f"claimed_at = clock_timestamp(), renewed_at = clock_timestamp(), "
            f"expires_at = EXCLUDED.expires_at "
            f"WHERE s.holder = EXCLUDED.holder OR s.expires_at < clock_timestamp() "
            f"OR (s.session_pid IS NOT NULL AND $6) "
            f"RETURNING holder",
            *key,
            holder,
            ttl_s,
            session_locked,
        )
        return claimed == holder

    async def renew_lease(
        self, conn: asyncpg.Connection, key: LoadKey, holder: str, ttl_s: float
    ) -> bool:
        """Push the expiry on; False if the lease is no longer ours (taken as dead).

        Renewed from another session than the claim's (the claim's connection was lost),
        the lease stops trusting the advisory lock: only its expiry counts from then on.
        """
        renewed = await conn.fetchval(
            f"UPDATE {self.leases} SET renewed_at = clock_timestamp(), "
            f"expires_at = clock_timestamp() + make_interval(secs => $5), "
            f"session_pid = CASE WHEN session_pid = pg_backend_pid() THEN session_pid END "
            f"WHERE target = $1 AND partition_key = $2 AND load_id = $3 AND holder = $4 "
            f"RETURNING true",
            *key,
            holder,
            ttl_s,
        )
        return bool(renewed)

    async def release_lease(self, conn: asyncpg.Connection, key: LoadKey, holder: str) -> None:
        await conn.execute(
            f"DELETE FROM {self.leases} WHERE target = $1 AND partition_key = $2 "
            f"AND load_id = $3 AND holder = $4",
            *key,
            holder,
        )

    async def abandon(self, conn: asyncpg.Connection, load: DeadLoad, reason: str) -> None:
        """The dead load is abandoned and its pending letters superseded (never deleted)."""
        await conn.execute(
            f"UPDATE {self.loads} SET status = 'abandoned', finished_at = clock_timestamp() "
            f"WHERE target = $1 AND partition_key = $2 AND load_id = $3",
            *load.key,
        )
        await conn.execute(
            f"UPDATE {self.dead_letters} SET status = 'superseded', "
            f"resolved_at = clock_timestamp(), resolution = $4 "
            f"WHERE target = $1 AND partition_key = $2 AND load_id = $3 AND status = 'pending'",
            *load.key,
            reason,
        )

    async def apply_retention(self, conn: asyncpg.Connection, keep_days: int) -> int:
        """Delete RESOLVED letters older than ``keep_days``; open ones are never deleted.

        One statement deletes them and adds them to ``deleted_letters`` per (load,
        status): the accounting keeps every letter, the table only the recent ones.
        """
        deleted: int = await conn.fetchval(
            f"WITH gone AS (DELETE FROM {self.dead_letters} "
            f"WHERE status IN ('replayed', 'superseded', 'discarded') "
            f"AND resolved_at < clock_timestamp() - make_interval(days => $1) "
            f"RETURNING target, partition_key, load_id, status), "
            f"tally AS (INSERT INTO {self.deleted_letters} "
            f"(target, partition_key, load_id, status, letters) "
            f"SELECT target, partition_key, load_id, status, count(*) FROM gone "
            f"GROUP BY 1, 2, 3, 4 "
            f"ON CONFLICT (target, partition_key, load_id, status) DO UPDATE "
            f"SET letters = {self.deleted_letters}.letters + EXCLUDED.letters, "
            f"last_deleted_at = clock_timestamp()) "
            f"SELECT count(*) FROM gone",
            keep_days,
        )
        return deleted

    def lock_name(self, key: LoadKey) -> str:
        """What a running load's advisory lock is keyed by (hashed to 32 bits)."""
        return "\x1f".join((self.schema, *key))

    async def hold_load_lock(self, conn: asyncpg.Connection, key: LoadKey) -> bool:
        """Session lock on ``conn``: "this load runs". False if another process holds it."""
        taken: bool = await conn.fetchval(
            "SELECT pg_try_advisory_lock($1, hashtext($2))", LOAD_LOCK_CLASS, self.lock_name(key)
        )
        return taken


def _letter_arrays(letters: Sequence[Any]) -> list[list[Any]]:
    """Column arrays of dead letters (one ``unnest`` per batch)."""
    return [
        [d.record_no for d in letters],
        [d.payload for d in letters],
        [d.error_class for d in letters],
        [d.error_message for d in letters],
        [d.sqlstate for d in letters],
        [d.detail for d in letters],
    ]
