"""Replay: re-drive a partition's dead letters after a fix, idempotently.

A replay is a load of its own (mode ``replay`` in ``partition_loads``, its own ledger
rows), so the partition's accounting still adds up afterwards: the blocking check
counts the rows replays wrote since the partition's last load.

Which letters: the open ones of the partition's latest finished load, and of replays
since. Letters of older loads were superseded when the partition was loaded again (the
new load read the same source; replaying them would duplicate rows). ``DuplicateKey``
letters are never replayed: the record that won is already in the table.

Each batch claims its letters (``replayed = true``) first thing in the transaction that
writes their rows, so a letter is re-driven exactly once even if two replays race: the
loser finds them claimed and fails loudly without writing. A letter that fails again
becomes a new dead letter of the replay load, with the new error.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from dataclasses import dataclass
from typing import Any

import asyncpg
import pydantic

from etl_assets.errors import ConfigurationError, FatalError, LoadIntegrityError
from etl_assets.postgres.arrow_copy import column_types
from etl_assets.postgres.key_digest import KeyDigester
from etl_assets.postgres.ledger import LedgerTables
from etl_assets.postgres.loader import LoadSettings, ensure_ledger, mark_load_failed
from etl_assets.postgres.retry import classified, connection, retrying, with_retries
from etl_assets.postgres.target import TableTarget, WriteMode
from etl_assets.postgres.verify import REPLAY_MODE, latest_load
from etl_assets.postgres.writer import BatchWriter, Claim, Log, PreparedBatch, batch_digest
from etl_assets.records import RecordShaper

__all__ = ["ReplayReport", "replay_dead_letters"]

NOT_REPLAYED = ("DuplicateKey",)


@dataclass(frozen=True, slots=True)
class ReplayReport:
    """What a replay re-drove: ``replayed == written + dead_lettered``."""

    target: str
    partition_key: str
    load_id: str
    replayed: int
    written: int
    dead_lettered: int
    batches: int


@dataclass(frozen=True, slots=True)
class _Base:
    load_id: str
    finished_at: dt.datetime


async def replay_dead_letters(
    pool: asyncpg.Pool,
    target: TableTarget,
    day: dt.date,
    *,
    load_id: str,
    model: type[pydantic.BaseModel] | None,
    settings: LoadSettings | None = None,
    log: Log | None = None,
) -> ReplayReport:
    """Write the partition's replayable dead letters into ``target`` (a new ``load_id``)."""
    settings = settings or LoadSettings()
    log = log or logging.getLogger(__name__)
    ledger = LedgerTables(settings.ledger_schema)
    key = (target.name, day.isoformat(), load_id)
    base = await _begin(pool, ledger, key, settings)
    types = await with_retries(
        pool, settings.retry, lambda conn: column_types(conn, target.schema, target.table)
    )
    writer = BatchWriter(
        pool,
        target,
        ledger,
        partition_key=key[1],
        load_id=load_id,
        destination=(target.schema, target.table),
        retry=settings.retry,
        log=log,
        claim=_claim(ledger, load_id),
        upsert=target.mode is WriteMode.UPSERT,
        keys=KeyDigester.for_target(target, types, ledger.ledger),
    )
    shaper = RecordShaper(target.data_columns, target.partition_column, day, model)
    replayed = written = dead = batches = 0
    try:
        after = 0
        while page := await _page(pool, ledger, key, base, after, settings):
            ids = [row["id"] for row in page]
            batch = _batch(batches, ids, [json.loads(row["payload"]) for row in page], shaper)
            result = await writer.write(batch)
            replayed, written = replayed + result.enqueued, written + result.written
            dead, batches, after = dead + result.dead_lettered, batches + 1, ids[-1]
            log.info(
                "%s partition %s: replayed %d dead letters, %d written, %d failed again",
                *key[:2], replayed, written, dead,
            )  # fmt: skip
        await _finish(pool, ledger, key, (replayed, written, dead), settings)
    except BaseException:
        await mark_load_failed(pool, ledger, key, log)
        raise
    return ReplayReport(*key, replayed, written, dead, batches)


async def _begin(
    pool: asyncpg.Pool, ledger: LedgerTables, key: tuple[str, str, str], settings: LoadSettings
) -> _Base:

    async def begin(conn: asyncpg.Connection) -> _Base:
        await ensure_ledger(conn, ledger)
        base = await latest_load(conn, ledger, key[0], key[1])
        if base is None:
            raise ConfigurationError(
                f"{key[0]} partition {key[1]} has no finished load to replay into; "
                "materialize the partition first (its dead letters come with it)"
            )
        await conn.execute(ledger.begin_load(), *key, REPLAY_MODE, None)
        return _Base(base["load_id"], base["finished_at"])

    return await with_retries(pool, settings.retry, begin)


async def _page(
    pool: asyncpg.Pool,
    ledger: LedgerTables,
    key: tuple[str, str, str],
    base: _Base,
    after: int,
    settings: LoadSettings,
) -> list[asyncpg.Record]:
    sql = f"""
        SELECT d.id, d.payload::text AS payload
        FROM {ledger.dead_letters} AS d
        JOIN {ledger.loads} AS l USING (target, partition_key, load_id)
        WHERE d.target = $1 AND d.partition_key = $2 AND NOT d.replayed
          AND d.error_class <> ALL($3::text[]) AND d.id > $4 AND d.load_id <> $5
          AND (d.load_id = $6 OR (l.mode = $7 AND l.started_at > $8))
        ORDER BY d.id LIMIT $9"""
    args = (
        key[0], key[1], list(NOT_REPLAYED), after, key[2],
        base.load_id, REPLAY_MODE, base.finished_at, settings.batch_size,
    )  # fmt: skip
    rows: list[asyncpg.Record] = await with_retries(
        pool, settings.retry, lambda conn: conn.fetch(sql, *args)
    )
    return rows


def _batch(
    batch_no: int, ids: list[int], records: list[Any], shaper: RecordShaper
) -> PreparedBatch:
    """Shape the payloads again; record numbers become the dead letters' ids."""
    shaped = shaper.shape(0, records)
    rejected = [dataclasses.replace(d, record_no=ids[d.record_no]) for d in shaped.rejected]
    return PreparedBatch(
        batch_no=batch_no,
        enqueued=len(ids),
        rows=shaped.rows,
        record_nos=[ids[i] for i in shaped.record_nos],
        rejected=rejected,
        digest=batch_digest(shaped.rows, rejected),
    )


def _claim(ledger: LedgerTables, load_id: str) -> Claim:
    async def claim(conn: asyncpg.Connection, batch: PreparedBatch) -> None:
        ids = [*batch.record_nos, *(d.record_no for d in batch.rejected)]
        taken = await conn.fetchval(
            f"WITH taken AS (UPDATE {ledger.dead_letters} SET replayed = true, "
            f"replayed_at = clock_timestamp(), replayed_by = $1 "
            f"WHERE id = ANY($2::bigint[]) AND NOT replayed RETURNING 1) "
            f"SELECT count(*) FROM taken",
            load_id,
            ids,
        )
        if taken != len(ids):
            raise FatalError(
                f"{len(ids) - taken} of {len(ids)} dead letters of replay batch "
                f"{batch.batch_no} were replayed concurrently by another run; nothing of "
                "this batch was written. Run the replay again to pick up what is left."
            )

    return claim


async def _finish(
    pool: asyncpg.Pool,
    ledger: LedgerTables,
    key: tuple[str, str, str],
    totals: tuple[int, int, int],
    settings: LoadSettings,
) -> None:
    async for attempt in retrying(settings.retry):
        with attempt, classified():
            async with connection(pool) as conn, conn.transaction():
                _, *ledgered = await conn.fetchrow(ledger.sum_batches(), *key)
                if tuple(ledgered) != totals:
                    raise LoadIntegrityError(
                        f"{key[0]} partition {key[1]} replay {key[2]}: the ledger holds "
                        f"(replayed, written, dead) = {tuple(ledgered)}, the run counted {totals}"
                    )
                await conn.execute(ledger.finish_load(), *key, "complete", *totals)
                return
