"""The ledger's layout: table names, statuses, the schema version and its migrations.

``LedgerLayout.ensure`` runs on every start: it creates the current layout, or migrates
an older one in place (under an advisory lock, in one transaction), and records the
version in ``ledger_version``. A ledger newer than the package is refused, not guessed at.
"""

from __future__ import annotations

import enum

import asyncpg

from etl_assets.errors import ConfigurationError
from etl_assets.postgres.privileges import create_schema_if_missing, explained, ledger_needs
from etl_assets.postgres.sql import qualified, quote_ident

__all__ = [
    "DDL_LOCK",
    "REPLAY_MODE",
    "SCHEMA_VERSION",
    "LedgerLayout",
    "LetterStatus",
    "LoadStatus",
]

SCHEMA_VERSION = 3
DDL_LOCK = 0x65746C5F  # "etl_": serializes DDL of concurrent loads (CREATE IF NOT EXISTS races)
REPLAY_MODE = "replay"


class LoadStatus(enum.StrEnum):
    LOADING = "loading"
    FAILED = "failed"
    PUBLISHED = "published"  # replace mode: the partition was swapped in
    COMPLETE = "complete"  # upsert mode and replays: merged
    ABANDONED = "abandoned"  # its process died; cleanup dropped its staging table

    @property
    def finished(self) -> bool:
        return self in (LoadStatus.PUBLISHED, LoadStatus.COMPLETE)

    @property
    def resumable(self) -> bool:
        """A load with this status may go on under its own id (it did not end)."""
        return self in (LoadStatus.LOADING, LoadStatus.FAILED)


class LetterStatus(enum.StrEnum):
    PENDING = "pending"
    OPEN = "open"
    REPLAYED = "replayed"
    SUPERSEDED = "superseded"
    DISCARDED = "discarded"


def _check(column: str, values: type[enum.StrEnum]) -> str:
    return f"CHECK ({column} IN ({', '.join(repr(v.value) for v in values)}))"


class LedgerLayout:
    """The ledger tables of one schema: their names, their layout and its migrations."""

    def __init__(self, schema: str = "etl") -> None:
        self.schema = schema
        self.ledger = qualified(schema, "load_ledger")
        self.dead_letters = qualified(schema, "dead_letters")
        self.loads = qualified(schema, "partition_loads")
        self.deleted_letters = qualified(schema, "deleted_letters")
        self.version_table = qualified(schema, "ledger_version")
        self.leases = qualified(schema, "load_leases")

    async def ensure(self, conn: asyncpg.Connection) -> None:
        """Create the current layout, or migrate an older one in place (idempotent)."""
        doing = f"use the ledger in schema {self.schema!r}"
        async with explained(conn, doing, lambda c: ledger_needs(c, self.schema, write=False)):
            if await self._version(conn) == SCHEMA_VERSION:  # usual: no lock, no COMMIT
                return
        doing = f"create or migrate the ledger in schema {self.schema!r}"
        async with explained(conn, doing, lambda c: ledger_needs(c, self.schema, ddl=True)):
            await self._migrate(conn)

    async def _migrate(self, conn: asyncpg.Connection) -> None:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", DDL_LOCK)
            version = await self._version(conn)
            if version == SCHEMA_VERSION:
                return
            if version is not None and version > SCHEMA_VERSION:
                raise ConfigurationError(
                    f"the ledger in schema {self.schema!r} has layout v{version}, newer than "
                    f"this etl_assets (v{SCHEMA_VERSION}); upgrade etl_assets"
                )
            await create_schema_if_missing(conn, self.schema)
            if version is None and await self._has_v1_layout(conn):
                version = 1
            for statement in self._upgrade(version):
                await conn.execute(statement)
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self.version_table} "
                "(version integer NOT NULL, migrated_at timestamptz NOT NULL)"
            )
            await conn.execute(f"DELETE FROM {self.version_table}")
            await conn.execute(
                f"INSERT INTO {self.version_table} VALUES ($1, clock_timestamp())", SCHEMA_VERSION
            )

    async def _version(self, conn: asyncpg.Connection) -> int | None:
        if await conn.fetchval("SELECT to_regclass($1) IS NULL", self.version_table):
            return None
        version: int | None = await conn.fetchval(f"SELECT max(version) FROM {self.version_table}")
        return version

    async def _has_v1_layout(self, conn: asyncpg.Connection) -> bool:
        """v1 (before the version table): dead letters carried a ``replayed`` flag."""
        return bool(
            await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass($1) "
                "AND attname = 'replayed' AND NOT attisdropped)",
                self.dead_letters,
            )
        )

    def _upgrade(self, version: int | None) -> list[str]:
        """The statements from layout ``version`` (None: no ledger yet) to the current one."""
        if version is None:
            return [*self._create_v2(), *self._migrate_v2_to_v3()]
        steps = {1: self._migrate_v1_to_v2, 2: self._migrate_v2_to_v3}
        return [statement for v in range(version, SCHEMA_VERSION) for statement in steps[v]()]

    def _migrate_v2_to_v3(self) -> list[str]:
        """v3 keeps the count of the letters a retention deleted, per load and status, and
        the loads' leases (``_create_leases``).

        The checks compare a load's letters with its ledger: deleting resolved letters
        must not change their verdict, so the deleting statement tallies what it deleted
        here, in its own transaction (``Ledger.apply_retention``).
        """
        resolved = (LetterStatus.REPLAYED, LetterStatus.SUPERSEDED, LetterStatus.DISCARDED)
        statuses = ", ".join(repr(s.value) for s in resolved)
        return [
            f"""CREATE TABLE IF NOT EXISTS {self.deleted_letters} (
                target text NOT NULL,
                partition_key text NOT NULL,
                load_id text NOT NULL,
                status text NOT NULL CHECK (status IN ({statuses})),
                letters bigint NOT NULL CHECK (letters > 0),
                last_deleted_at timestamptz NOT NULL DEFAULT clock_timestamp(),
                PRIMARY KEY (target, partition_key, load_id, status)
            )""",
            self._create_leases(),
        ]

    def _create_v2(self) -> list[str]:
        return [
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
                key_cells bigint[],
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
                {", ".join(self._letter_columns_v2())},
                UNIQUE (target, partition_key, load_id, record_no)
            )""",
            self._open_index(),
            f"""CREATE TABLE IF NOT EXISTS {self.loads} (
                target text NOT NULL,
                partition_key text NOT NULL,
                load_id text NOT NULL,
                mode text NOT NULL,
                status text NOT NULL {_check("status", LoadStatus)},
                staging_table text,
                enqueued bigint,
                written bigint,
                dead_lettered bigint,
                started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
                finished_at timestamptz,
                base_load_id text,
                PRIMARY KEY (target, partition_key, load_id)
            )""",
        ]

    def _create_leases(self) -> str:
        """v3: a running load's lease, a lock that lives in the data (any pooler keeps it).

        ``holder`` is a token per claim: only it renews or releases the lease.
        ``session_pid`` is set only when the claim was made on a proven direct session
        that also holds the load's advisory lock: then a free lock means a dead holder
        at once; otherwise only ``expires_at`` (renewed while the load runs) does.
        """
        return f"""CREATE TABLE IF NOT EXISTS {self.leases} (
                target text NOT NULL,
                partition_key text NOT NULL,
                load_id text NOT NULL,
                holder text NOT NULL,
                session_pid integer,
                claimed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
                renewed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
                expires_at timestamptz NOT NULL,
                PRIMARY KEY (target, partition_key, load_id)
            )"""

    def _letter_columns_v2(self) -> list[str]:
        return [
            f"status text NOT NULL DEFAULT 'pending' {_check('status', LetterStatus)}",
            "replay_attempts integer NOT NULL DEFAULT 0",
            "last_error_class text",
            "last_error_message text",
            "resolved_at timestamptz",
            "resolved_by text",
            "resolution text",
        ]

    def _open_index(self) -> str:
        return (
            f"CREATE INDEX IF NOT EXISTS dead_letters_status_idx "
            f"ON {self.dead_letters} (target, partition_key, status)"
        )

    def _migrate_v1_to_v2(self) -> list[str]:
        """v1 kept a ``replayed`` flag and counted every unreplayed letter as open.

        A v1 replay copied a letter that failed again into a new letter of the replay
        load (``record_no`` = the original's id): the original is superseded by its copy.
        """
        dl, loads = self.dead_letters, self.loads
        current = (
            f"(SELECT c.load_id FROM {loads} AS c WHERE c.target = l.target "
            f"AND c.partition_key = l.partition_key AND c.mode <> '{REPLAY_MODE}' "
            f"AND c.status IN ('published', 'complete') ORDER BY c.finished_at DESC LIMIT 1)"
        )
        columns = ", ".join(f"ADD COLUMN {c}" for c in self._letter_columns_v2())
        return [
            f"ALTER TABLE {dl} {columns}",
            f"ALTER TABLE {loads} ADD COLUMN base_load_id text",
            # The batch's key digest (etl_assets.postgres.key_digest); v1 batches have none.
            f"ALTER TABLE {self.ledger} ADD COLUMN key_cells bigint[]",
            f"ALTER TABLE {loads} DROP CONSTRAINT IF EXISTS partition_loads_status_check",
            f"ALTER TABLE {loads} ADD CONSTRAINT partition_loads_status_check "
            f"{_check('status', LoadStatus)}",
            f"""UPDATE {loads} AS r SET base_load_id = (
                    SELECT l.load_id FROM {loads} AS l WHERE l.target = r.target
                    AND l.partition_key = r.partition_key AND l.mode <> '{REPLAY_MODE}'
                    AND l.status IN ('published', 'complete') AND l.finished_at < r.started_at
                    ORDER BY l.finished_at DESC LIMIT 1)
                WHERE r.mode = '{REPLAY_MODE}'""",
            f"""UPDATE {dl} SET status = 'replayed', resolved_at = replayed_at,
                    resolved_by = replayed_by, resolution = 'replayed (v1)'
                WHERE replayed""",
            f"""UPDATE {dl} AS o SET status = 'superseded', resolved_at = c.first_seen,
                    resolved_by = c.load_id,
                    resolution = 'failed again on replay; carried on as letter ' || c.id
                FROM {dl} AS c JOIN {loads} AS r USING (target, partition_key, load_id)
                WHERE r.mode = '{REPLAY_MODE}' AND c.target = o.target
                AND c.partition_key = o.partition_key AND c.record_no = o.id""",
            f"""UPDATE {dl} AS d SET status = 'open' FROM {loads} AS l
                WHERE d.status = 'pending' AND l.target = d.target
                AND l.partition_key = d.partition_key AND l.load_id = d.load_id
                AND (l.load_id = {current} OR l.base_load_id = {current})""",
            f"""UPDATE {dl} AS d SET status = 'superseded', resolved_at = clock_timestamp(),
                    resolution = 'a later load of the partition published (v1)'
                FROM {loads} AS l
                WHERE d.status = 'pending' AND l.target = d.target
                AND l.partition_key = d.partition_key AND l.load_id = d.load_id
                AND l.status IN ('published', 'complete')""",
            f"DROP INDEX IF EXISTS {quote_ident(self.schema)}.dead_letters_open_idx",
            f"ALTER TABLE {dl} DROP COLUMN replayed, DROP COLUMN replayed_at, "
            "DROP COLUMN replayed_by",
            self._open_index(),
        ]
