"""Stage, audit, publish: a partition becomes visible in one transaction, or not at all.

Dagster's own DB IO managers delete a partition and insert it again in separate steps
(dagster issue #14091): a failed rerun leaves the last good partition empty or half
written, and readers see it half written meanwhile. Here batches commit into a staging
table of their own (one per target, partition and load); the previously published
partition is not touched until the staged one is complete and audited, and then the
swap is one transaction:

* RANGE-partitioned target (the default for tables this package creates): detach and
  drop the old partition, attach the staged table in its place. The staged table carries
  a CHECK that implies the partition bound, so ATTACH skips its validation scan, and the
  data is never copied a second time.
* plain table that already existed: ``DELETE`` the day, ``INSERT ... SELECT`` from
  staging, in one transaction.

Foreign keys. Staging gets the target's own FOREIGN KEY constraints (``LIKE`` copies
none): an orphan (a row whose parent key is absent) is then refused by the server as the
batch is written, 23503 with the constraint and the missing key named, and is isolated
and dead-lettered like any rejected row, while the rest of the day is written and
published; a replay after the parent arrives writes it once. A replace target that other
tables reference cannot swap its day's partition (detaching it would orphan the
children, after the load did all its work), so it publishes by merging the day in place
on its primary key: the day's rows not staged are deleted (refused, naming the
constraint, if a child still references one), the staged ones inserted or updated. Such
a target without a primary key is refused at prepare.

Upsert mode stages the same way and then merges (``INSERT ... SELECT ... ON CONFLICT
DO UPDATE``) in one transaction, the way dlt's ``merge`` does: readers never see half a
load, and the staging table's primary key catches a key that repeats across batches
(dead-lettered as a duplicate) so ``written`` counts each key once.
"""

from __future__ import annotations

import datetime as dt
import enum
import re

import asyncpg

from etl_assets.errors import ConfigurationError, LoadIntegrityError, SchemaChangedError
from etl_assets.postgres.ledger import Ledger, LoadKey, LoadStatus, PartitionTotals
from etl_assets.postgres.lock_wait import (
    DEFAULT_LOCK_TIMEOUT_S,
    Blocker,
    lock_holders,
    set_lock_timeout,
)
from etl_assets.postgres.schema_drift import refuse_drift
from etl_assets.postgres.sql import (
    column_list,
    date_literal,
    day_check_constraint,
    partition_bounds,
    partition_table_name,
    qualified,
    quote_ident,
    short_name,
    upsert_statement,
)
from etl_assets.postgres.target import TableTarget, WriteMode

__all__ = [
    "StagedPublisher",
    "TargetKind",
    "audit",
    "inspect_target",
    "refuse_default_partition_rows",
    "refuse_unkeyed_referenced",
]


_DEFERRABLE = re.compile(r"\s+(NOT\s+)?DEFERRABLE(\s+INITIALLY\s+(DEFERRED|IMMEDIATE))?")


def _column_change(row: asyncpg.Record) -> str | None:
    """What staging needs for one column to match the table: ``ADD COLUMN ...`` (carried
    over), a refusal that names the change, or None (they match)."""
    name = quote_ident(row["attname"])
    if row["type"] is None:
        return f"column {name} ({row['staged_type']}) was dropped from the table"
    if row["staged_type"] is not None:
        if row["staged_type"] == row["type"]:
            return None
        return f"column {name} changed type from {row['staged_type']} to {row['type']}"
    if row["derived"]:
        return f"column {name} was added as a generated or identity column"
    if row["attnotnull"] and row["default_expr"] is None:
        return f"column {name} ({row['type']}) was added NOT NULL without a DEFAULT"
    default = "" if row["default_expr"] is None else f" DEFAULT {row['default_expr']}"
    required = " NOT NULL" if row["attnotnull"] else ""
    return f"ADD COLUMN {name} {row['type']}{default}{required}"


class TargetKind(enum.Enum):
    PARTITIONED = "partitioned"  # RANGE on the partition column: publish swaps a partition
    PLAIN = "plain"  # publish deletes the day and inserts from staging


async def inspect_target(conn: asyncpg.Connection, target: TableTarget) -> TargetKind:
    """How the existing target is laid out; a layout we cannot publish into is a config error."""
    row = await conn.fetchrow(
        """SELECT c.relkind::text AS relkind, p.partstrat::text AS partstrat, p.partnatts,
                  (SELECT a.attname FROM pg_attribute a
                    WHERE a.attrelid = c.oid AND a.attnum = p.partattrs[0]) AS partcol
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           LEFT JOIN pg_partitioned_table p ON p.partrelid = c.oid
           WHERE n.nspname = $1 AND c.relname = $2""",
        target.schema,
        target.table,
    )
    if row is None:
        raise ConfigurationError(f"target table {target.name} does not exist")
    await refuse_drift(conn, target)  # every drift named, with its fix, before a batch
    if row["relkind"] == "r":
        return TargetKind.PLAIN
    if (
        row["relkind"] == "p"
        and row["partstrat"] == "r"
        and row["partnatts"] == 1
        and row["partcol"] == target.partition_column
    ):
        return TargetKind.PARTITIONED
    raise ConfigurationError(
        f"target {target.name} is partitioned, but not by RANGE ({target.partition_column}); "
        "replace mode needs one range partition per data date, or a plain table"
    )


async def refuse_default_partition_rows(
    conn: asyncpg.Connection, target: TableTarget, day: dt.date
) -> None:
    """Refuse at prepare, not at publish, a day whose rows a DEFAULT partition holds.

    ATTACH of the day's partition must move nothing out of the DEFAULT partition: the
    server rejects it (23514) when the DEFAULT holds rows of the day, after the load did
    all its work. Found first, it is a message naming the partition and the fix.
    """
    default = await conn.fetchval(
        """SELECT format('%I.%I', n.nspname, c.relname)
           FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
           JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE i.inhparent = $1::regclass AND pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT'""",
        target.sql_name,
    )
    if default is None:
        return
    day_column = quote_ident(target.partition_column)
    held = await conn.fetchval(f"SELECT count(*) FROM {default} WHERE {day_column} = $1", day)
    if held:
        raise ConfigurationError(
            f"the DEFAULT partition {default} of {target.name} holds {held} row(s) of "
            f"{day.isoformat()}: the day's own partition cannot be attached while they are "
            f"there (PostgreSQL refuses with 23514). Move them out first, e.g. "
            f"DELETE FROM {default} WHERE {day_column} = {date_literal(day)} (after keeping "
            "them elsewhere if they matter), then load the day again"
        )


async def _references_to(conn: asyncpg.Connection, target: TableTarget) -> list[str]:
    """The foreign keys of other tables that reference the target, as ``table (constraint)``."""
    rows = await conn.fetch(
        """SELECT format('%s (%I)', conrelid::regclass, conname) FROM pg_constraint
           WHERE contype = 'f' AND confrelid = $1::regclass AND conparentid = 0
             AND conrelid <> $1::regclass ORDER BY 1""",
        target.sql_name,
    )
    return [r[0] for r in rows]


async def refuse_unkeyed_referenced(conn: asyncpg.Connection, target: TableTarget) -> None:
    """Refuse at prepare a replace target that children reference and that has no key.

    Such a day cannot be swapped (it would orphan the children) nor merged in place
    (rows are matched by key); found here, not at publish after all the work.
    """
    if target.mode is not WriteMode.REPLACE or target.primary_key:
        return
    references = await _references_to(conn, target)
    if references:
        raise ConfigurationError(
            f"target {target.name} is referenced by foreign key(s) {', '.join(references)}: "
            "replacing its day would orphan their rows, and without a primary key it cannot "
            "be merged in place instead. Declare the key the children reference as "
            f"primary_key (e.g. primary_key=({target.partition_column!r}, 'id')), or use "
            "mode='upsert'"
        )


async def audit(
    conn: asyncpg.Connection,
    ledger: Ledger,
    key: LoadKey,
    *,
    expected_enqueued: int,
    expected_batches: int,
) -> PartitionTotals:
    """Prove the ledger accounts for every record the asset handed over."""
    totals = await ledger.totals(conn, key)
    batches, enqueued, written, dead = (
        totals.batches, totals.enqueued, totals.written, totals.dead_lettered,
    )  # fmt: skip
    dead_rows = await ledger.dead_letter_rows(conn, key)
    problems = []
    if batches != expected_batches:
        problems.append(f"{batches} batches in the ledger, {expected_batches} cut")
    if enqueued != expected_enqueued:
        problems.append(f"ledger enqueued {enqueued} != {expected_enqueued} records handed over")
    if enqueued != written + dead:
        problems.append(f"enqueued {enqueued} != written {written} + dead-lettered {dead}")
    if dead_rows != dead:
        problems.append(f"{dead_rows} dead-letter rows, ledger says {dead}")
    if problems:
        raise LoadIntegrityError(f"{key}: " + "; ".join(problems))
    return totals


class StagedPublisher:
    """Staging, audit and publish (replace) or merge (upsert) for one (target, partition, load)."""

    def __init__(self, target: TableTarget, ledger: Ledger, day: dt.date, load_id: str) -> None:
        self.target = target
        self.ledger = ledger
        self.day = day
        self.key = LoadKey(target.name, day.isoformat(), load_id)
        self.staging_table = short_name("_etl_stage", *self.key)

    @property
    def staging(self) -> tuple[str, str]:
        return self.target.schema, self.staging_table

    @property
    def staging_sql(self) -> str:
        return qualified(*self.staging)

    async def prepare(self, conn: asyncpg.Connection) -> None:
        """Create the staging table (kept across a resumed load, so committed batches stay).

        Its partition column defaults to the day: COPY leaves the column out and the
        server fills it, instead of every row carrying (and encoding) the same date.
        The CHECK still proves every row belongs to the day.
        """
        check = quote_ident(f"{self.staging_table}_day")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {self.staging_sql} "
            f"(LIKE {self.target.sql_name} INCLUDING ALL, "
            f"CONSTRAINT {check} {day_check_constraint(self.target.partition_column, self.day)})"
        )
        await conn.execute(
            f"ALTER TABLE {self.staging_sql} ALTER COLUMN "
            f"{quote_ident(self.target.partition_column)} SET DEFAULT {date_literal(self.day)}"
        )
        await self._copy_foreign_keys(conn)

    async def _copy_foreign_keys(self, conn: asyncpg.Connection) -> None:
        """The target's FOREIGN KEYs on staging too, under their own names: an orphan is
        then refused row by row as it is written (and dead-lettered), not at publish.

        Not a key that references the target itself (a manager in the same table): its
        parent may be a row of this very load, not in the table until the publish,
        which checks it then.
        """
        rows = await conn.fetch(
            """SELECT conname, pg_get_constraintdef(oid) AS definition FROM pg_constraint
               WHERE contype = 'f' AND conrelid = $1::regclass AND conparentid = 0
                 AND confrelid <> $1::regclass
                 AND conname NOT IN (SELECT conname FROM pg_constraint
                                     WHERE conrelid = $2::regclass)""",
            self.target.sql_name,
            self.staging_sql,
        )
        for row in rows:
            # Checked at once even where the target defers it: a deferred check would fail
            # the batch's COMMIT, where no row can be isolated any more.
            definition = _DEFERRABLE.sub("", row["definition"])
            await conn.execute(
                f"ALTER TABLE {self.staging_sql} ADD CONSTRAINT "
                f"{quote_ident(row['conname'])} {definition}"
            )

    async def publish(
        self,
        conn: asyncpg.Connection,
        kind: TargetKind,
        totals: PartitionTotals,
        lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
    ) -> None:
        """Swap (replace) or merge (upsert) the staged rows in and record it, in ONE transaction.

        The dead letters change hands first (this load's open, the partition's others
        superseded): a replay batch holding some of them finishes before the swap, and
        one that comes after finds them superseded (letters, then the table: one lock
        order for both, so they serialize instead of deadlocking).

        Every lock is asked for under ``lock_timeout``: a lock request that waits queues
        every later reader of the table behind it, so it gives up after
        ``lock_timeout_s`` (55P03, everything rolled back) and the caller tries again
        after a pause in which readers run (``loader._finish``), instead of taking the
        table offline for as long as the longest reader.
        """
        async with conn.transaction():
            await set_lock_timeout(conn, lock_timeout_s)
            await self.ledger.lock_partition_publish(conn, self.key)
            status = await self.ledger.lock_status(conn, self.key)
            if status is not None and status.finished:  # an earlier COMMIT went through
                return
            if status is not LoadStatus.LOADING:
                raise LoadIntegrityError(
                    f"{self.key}: load {self.key.load_id!r} is {status}, not loading "
                    "(cleaned up as dead?); not publishing"
                )
            # No count(*) of staging: each batch ledgered the rows COPY stored, in the
            # COPY's transaction (writer._check_accounted); docs/PERFORMANCE.md argues it.
            staged = totals.written
            await self.ledger.publish_letters(conn, self.key)
            if self.target.mode is WriteMode.UPSERT:
                await self._merge_rows(conn, staged)
            elif await _references_to(conn, self.target) and (
                kind is TargetKind.PLAIN or await self._partitions_for_day(conn)
            ):  # a day not there yet has no rows to keep: swapped in like any other
                await self._merge_day(conn, staged)
            elif kind is TargetKind.PARTITIONED:
                await self._swap_partition(conn)
            else:
                await self._replace_rows(conn, staged)
            await self.ledger.finish_load(conn, self.key, self.finished_status, totals)

    @property
    def finished_status(self) -> LoadStatus:
        upsert = self.target.mode is WriteMode.UPSERT
        return LoadStatus.COMPLETE if upsert else LoadStatus.PUBLISHED

    async def _merge_rows(self, conn: asyncpg.Connection, staged: int) -> None:
        cols = self.target.row_columns
        merge = upsert_statement(
            self.target.sql_name, self.staging_sql, cols, self.target.primary_key
        )
        merged = int((await conn.execute(merge)).rsplit(" ", 1)[-1])
        if merged != staged:  # a trigger or rule swallowed rows: refuse rather than under-count
            raise LoadIntegrityError(
                f"{self.key}: merging {staged} staged rows "
                f"affected {merged}; not completing the load"
            )
        await conn.execute(f"DROP TABLE {self.staging_sql}")

    async def _merge_day(self, conn: asyncpg.Connection, staged: int) -> None:
        """Replace a day that other tables reference, keeping the keys they hold: the day's
        rows that are not staged go (the server refuses it, naming the constraint, if a
        child references one), the staged rows are inserted or updated on the key."""
        target, day_column = self.target.sql_name, quote_ident(self.target.partition_column)
        key = column_list(self.target.primary_key)
        await conn.execute(f"LOCK TABLE {target} IN SHARE ROW EXCLUSIVE MODE")
        await conn.execute(
            f"DELETE FROM {target} WHERE {day_column} = $1 AND ({key}) NOT IN "
            f"(SELECT {key} FROM {self.staging_sql})",
            self.day,
        )
        await self._merge_rows(conn, staged)
        in_table = await conn.fetchval(
            f"SELECT count(*) FROM {target} WHERE {day_column} = $1", self.day
        )
        if in_table != staged:
            raise LoadIntegrityError(
                f"{self.key}: after merging {staged} staged rows the table holds {in_table} "
                "for the day (a trigger or rule changed them); not publishing"
            )

    async def _swap_partition(self, conn: asyncpg.Connection) -> None:
        """A new day is attached (SHARE UPDATE EXCLUSIVE on the parent: readers and
        writers of the table go on); a reloaded day's old partition is detached first,
        which takes ACCESS EXCLUSIVE on the parent for the rest of the transaction."""
        low, high = partition_bounds(self.day)
        parent = self.target.sql_name
        old_partitions = await self._partitions_for_day(conn)
        if old_partitions:  # asked for first, explicitly: no weaker lock to upgrade from
            await conn.execute(f"LOCK TABLE {parent} IN ACCESS EXCLUSIVE MODE")
        for old in old_partitions:
            await conn.execute(f"ALTER TABLE {parent} DETACH PARTITION {old}")
            await conn.execute(f"DROP TABLE {old}")
        name = partition_table_name(self.target.table, self.day)
        day_column = quote_ident(self.target.partition_column)
        await conn.execute(f"ALTER TABLE {self.staging_sql} ALTER COLUMN {day_column} DROP DEFAULT")
        staging = self.staging_sql
        for deferrable in await conn.fetch(
            """SELECT conname FROM pg_constraint WHERE contype = 'f' AND condeferrable
                 AND conrelid = $1::regclass AND conparentid = 0""",
            parent,
        ):  # staging checked a deferrable key at once; the partition takes the parent's own
            await conn.execute(
                f"ALTER TABLE {staging} DROP CONSTRAINT IF EXISTS {quote_ident(deferrable[0])}"
            )
        await self._reconcile_columns(conn)
        await conn.execute(f"ALTER TABLE {self.staging_sql} RENAME TO {quote_ident(name)}")
        await conn.execute(
            f"ALTER TABLE {parent} ATTACH PARTITION {qualified(self.target.schema, name)} "
            f"FOR VALUES FROM ({low}) TO ({high})"
        )

    async def strongest_lock(self, conn: asyncpg.Connection, kind: TargetKind) -> str:
        """The strongest lock the publish asks for on the target (see ``publish``)."""
        if self.target.mode is WriteMode.UPSERT:
            return "RowExclusiveLock"
        old = await self._partitions_for_day(conn) if kind is TargetKind.PARTITIONED else []
        if await _references_to(conn, self.target) and (kind is TargetKind.PLAIN or old):
            return "ShareRowExclusiveLock"  # _merge_day
        if kind is TargetKind.PLAIN:
            return "RowExclusiveLock"
        return "AccessExclusiveLock" if old else "ShareUpdateExclusiveLock"

    async def blockers(self, conn: asyncpg.Connection, kind: TargetKind) -> list[Blocker]:
        """Who holds what blocks the publish's strongest lock (see :func:`lock_holders`)."""
        wanted = await self.strongest_lock(conn, kind)
        advisory = self.ledger.publish_lock(self.key)
        return await lock_holders(conn, self.target, wanted, advisory)

    async def _reconcile_columns(self, conn: asyncpg.Connection) -> None:
        """Staging takes the columns the table gained while the load ran, or the publish is
        refused naming the change.

        Staging copied the table's columns at prepare. Another day's load with
        ``add_columns`` (a model change deployed mid-backfill) or a DBA's ``ADD COLUMN``
        adds one to the table meanwhile, and ATTACH would refuse the staged day (42804).
        Such a column is added to staging as the table has it (type, default): the day's
        rows read NULL there, or its default, as the older days' do. A change that cannot
        be carried over this way (a required column without a default, a type changed, a
        column dropped, a generated or identity column added) is refused by name.
        """
        rows = await conn.fetch(
            """SELECT t.attname, format_type(t.atttypid, t.atttypmod) AS type, t.attnotnull,
                      pg_get_expr(d.adbin, d.adrelid) AS default_expr,
                      t.attgenerated <> '' OR t.attidentity <> '' AS derived,
                      format_type(s.atttypid, s.atttypmod) AS staged_type
               FROM pg_attribute t
               LEFT JOIN pg_attrdef d ON d.adrelid = t.attrelid AND d.adnum = t.attnum
               LEFT JOIN pg_attribute s ON s.attrelid = $2::regclass AND s.attname = t.attname
                    AND s.attnum > 0 AND NOT s.attisdropped
               WHERE t.attrelid = $1::regclass AND t.attnum > 0 AND NOT t.attisdropped
               UNION ALL
               SELECT s.attname, NULL, false, NULL, false, format_type(s.atttypid, s.atttypmod)
               FROM pg_attribute s
               WHERE s.attrelid = $2::regclass AND s.attnum > 0 AND NOT s.attisdropped
                 AND NOT EXISTS (SELECT 1 FROM pg_attribute t WHERE t.attrelid = $1::regclass
                                 AND t.attname = s.attname AND NOT t.attisdropped)""",
            self.target.sql_name,
            self.staging_sql,
        )
        changes = [change for row in rows if (change := _column_change(row)) is not None]
        refused = [change for change in changes if not change.startswith("ADD COLUMN")]
        if refused:
            raise SchemaChangedError(
                f"{self.key}: {self.target.name} changed while this load ran, in a way its "
                f"staged rows cannot follow: {'; '.join(refused)}. Nothing was published: "
                "the partition keeps its last published rows and this load's staged rows "
                "are kept. Make the change carry over (a new column nullable or with a "
                "DEFAULT), then re-execute the failed run to publish them, or load the day "
                "again for the new layout"
            )
        for change in changes:
            await conn.execute(f"ALTER TABLE {self.staging_sql} {change}")

    async def _partitions_for_day(self, conn: asyncpg.Connection) -> list[str]:
        """Existing partitions whose bound is exactly this day (found by bound, not by name)."""
        rows = await conn.fetch(
            """SELECT n.nspname, c.relname, pg_get_expr(c.relpartbound, c.oid) AS bound
               FROM pg_inherits i
               JOIN pg_class c ON c.oid = i.inhrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE i.inhparent = $1::regclass""",
            self.target.sql_name,
        )
        after = self.day + dt.timedelta(days=1)
        wanted = f"FOR VALUES FROM ('{self.day.isoformat()}') TO ('{after.isoformat()}')"
        return [qualified(r["nspname"], r["relname"]) for r in rows if r["bound"] == wanted]

    async def _replace_rows(self, conn: asyncpg.Connection, staged: int) -> None:
        """DELETE the day and INSERT the staged rows, audited before the COMMIT.

        Unlike a partition swap, rows pass through the target's triggers and rules here,
        so the day is counted in the same transaction: readers never see a day that is
        short, and the load fails instead of leaving it to the blocking check.
        """
        cols = column_list(self.target.row_columns)
        day_column = quote_ident(self.target.partition_column)
        await conn.execute(f"DELETE FROM {self.target.sql_name} WHERE {day_column} = $1", self.day)
        await conn.execute(
            f"INSERT INTO {self.target.sql_name} ({cols}) SELECT {cols} FROM {self.staging_sql}"
        )
        in_table = await conn.fetchval(
            f"SELECT count(*) FROM {self.target.sql_name} WHERE {day_column} = $1", self.day
        )
        if in_table != staged:
            raise LoadIntegrityError(
                f"{self.key}: after publishing {staged} staged rows "
                f"the table holds {in_table} for the day (a trigger or rule changed them); "
                "not publishing"
            )
        await conn.execute(f"DROP TABLE {self.staging_sql}")
