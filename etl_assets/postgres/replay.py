"""Replay: re-drive a partition's open dead letters after a fix, each at most once.

A replay is a load of its own (mode ``replay`` in ``partition_loads``, its own ledger
rows, ``base_load_id`` = the partition's current load), so the partition's accounting
still adds up afterwards: the blocking check counts the rows the replays of the current
load wrote, and checks them against the letters marked replayed.

Which letters: the open ones of the partition's current load (optionally only some
error classes or ids). Letters of older loads were superseded when the partition was
loaded again (the new load read the same source; replaying them would duplicate rows).
``DuplicateKey`` letters are never replayed: the record that won is already in the table.

Each letter is revalidated against the current model, after an optional fix: a
``transform`` (payload -> payload) or corrected payloads by letter id (see
``etl_assets.dead_letter_file``). Each batch claims its letters (row locks, status
``open``) first thing in the transaction that writes their rows and settles them in it:
``replayed``, or still ``open`` with the new error and one more replay attempt. A
concurrent replay waits and then finds them resolved; a load of the same partition
publishing meanwhile supersedes them under the same locks, so a replay batch either
commits before the swap (and its rows go with the old partition) or finds its letters
superseded and writes nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pydantic

from etl_assets.errors import ConfigurationError, FatalError, LoadIntegrityError
from etl_assets.postgres.arrow_copy import column_types
from etl_assets.postgres.conversions import conversion_plan
from etl_assets.postgres.key_digest import KeyDigester
from etl_assets.postgres.lease import load_lease
from etl_assets.postgres.ledger import REPLAY_MODE, Ledger, LoadKey, LoadStatus
from etl_assets.postgres.loader import LoadSettings, mark_load_failed
from etl_assets.postgres.privileges import operation_needs, require
from etl_assets.postgres.retry import with_retries
from etl_assets.postgres.schema_drift import refuse_drift
from etl_assets.postgres.target import TableTarget, WriteMode
from etl_assets.postgres.writer import BatchWriter, Log, PreparedBatch, batch_digest
from etl_assets.records import DeadLetter, RecordShaper

__all__ = ["ReplayFilter", "ReplayReport", "replay_dead_letters"]

NOT_REPLAYED = ("DuplicateKey",)
Transform = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True, slots=True)
class ReplayFilter:
    """Which open letters to re-drive (empty: all), and fixes to apply first."""

    error_classes: Sequence[str] = ()
    ids: Sequence[int] = ()
    transform: Transform | None = None
    corrected: Mapping[int, dict[str, Any]] = field(default_factory=dict)


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


async def replay_dead_letters(
    pool: asyncpg.Pool,
    target: TableTarget,
    day: dt.date,
    *,
    load_id: str,
    model: type[pydantic.BaseModel] | None,
    settings: LoadSettings | None = None,
    log: Log | None = None,
    only: ReplayFilter | None = None,
) -> ReplayReport:
    """Write the partition's open, replayable dead letters into ``target`` (a new load)."""
    settings = settings or LoadSettings()
    log = log or logging.getLogger(__name__)
    only = only or ReplayFilter()
    if only.corrected and not only.ids:
        only = dataclasses.replace(only, ids=sorted(only.corrected))
    ledger = Ledger(settings.ledger_schema)
    key = LoadKey(target.name, day.isoformat(), load_id)
    async with load_lease(pool, ledger, key, settings.retry, settings.lease_ttl_s):
        base = await _begin(pool, ledger, target, key, settings)
        types = await with_retries(
            pool, settings.retry, lambda conn: column_types(conn, target.schema, target.table)
        )
        writer = BatchWriter(
            pool,
            target,
            ledger,
            key=key,
            destination=(target.schema, target.table),
            retry=settings.retry,
            log=log,
            letters=_ReplayedLetters(ledger, base, key.load_id),
            upsert=target.mode is WriteMode.UPSERT,
            keys=KeyDigester.for_target(target, types) if settings.key_digest else None,
        )
        totals = [0, 0, 0, 0]  # replayed, written, failed again, batches
        try:
            plan = conversion_plan(model, types, target.data_columns, target.sql_name)
            shaper = RecordShaper(
                target.data_columns,
                target.partition_column,
                day,
                model,
                checks=plan.checks,
                encodings=plan.encodings,
            )
            after = 0
            while page := await _page(pool, ledger, base, only, after, settings):
                ids = [row["id"] for row in page]
                payloads = [_fixed(row, only, target.partition_column) for row in page]
                result = await writer.write(_batch(totals[3], ids, payloads, shaper))
                totals = [
                    totals[0] + result.enqueued,
                    totals[1] + result.written,
                    totals[2] + result.dead_lettered,
                    totals[3] + 1,
                ]
                after = ids[-1]
                log.info(
                    "%s: replayed %d dead letters, %d written, %d failed again",
                    key, *totals[:3],
                )  # fmt: skip
            await _finish(pool, ledger, key, tuple(totals[:3]), settings)
        except BaseException:
            await mark_load_failed(pool, ledger, key, log)
            raise
    return ReplayReport(*key, *totals)


def _fixed(row: asyncpg.Record, only: ReplayFilter, partition_column: str) -> Any:
    """The letter's payload, corrected or transformed when a fix was given.

    A payload is JSON: a date in it (the partition column of a row Postgres refused) is
    text again, and is read back as a date so a replay without a model compares dates.
    """
    payload = only.corrected.get(row["id"])
    if payload is None:
        payload = json.loads(row["payload"])
    if only.transform is not None:
        payload = _transformed(only.transform, payload, row["id"])
    day = payload.get(partition_column) if isinstance(payload, dict) else None
    if isinstance(day, str):
        with contextlib.suppress(ValueError):  # not a date: validation says so, not this
            payload = {**payload, partition_column: dt.date.fromisoformat(day)}
    return payload


def _transformed(transform: Transform, payload: dict[str, Any], letter_id: int) -> Any:
    """The user's fix; its failure stops the replay with the letter named (no batch half-done)."""
    try:
        return transform(payload)
    except Exception as exc:  # user code: any error is reported, never swallowed
        raise ConfigurationError(
            f"the replay's transform failed on dead letter {letter_id}: "
            f"{type(exc).__name__}: {exc}; letters of earlier batches stay replayed"
        ) from exc


async def _begin(
    pool: asyncpg.Pool, ledger: Ledger, target: TableTarget, key: LoadKey, settings: LoadSettings
) -> LoadKey:
    """The replay's ``loading`` row, naming the load whose letters it replays.

    Schema drift is refused first, named once, not as every letter failing again; and
    what the replay needs is asked first (a few catalog reads): a role that may not
    write the target is told the GRANT before a letter is claimed.
    """

    async def begin(conn: asyncpg.Connection) -> LoadKey:
        await ledger.ensure(conn)
        missing = await operation_needs(conn, target, ledger.schema, "replay")
        await require(conn, f"replay dead letters into {target.sql_name}", missing)
        base = await ledger.current_load(conn, key.target, key.partition_key)
        if base is None:
            raise ConfigurationError(
                f"{key} has no finished load to replay into; "
                "materialize the partition first (its dead letters come with it)"
            )
        await refuse_drift(conn, target)
        status = await ledger.status(conn, key)
        if status is not None and status is not LoadStatus.FAILED:
            raise FatalError(f"{key}: replay {key.load_id!r} already ran ({status})")
        await ledger.begin_load(conn, key, REPLAY_MODE, None, base["load_id"])
        return LoadKey(key.target, key.partition_key, base["load_id"])

    return await with_retries(pool, settings.retry, begin)


async def _page(
    pool: asyncpg.Pool,
    ledger: Ledger,
    base: LoadKey,
    only: ReplayFilter,
    after: int,
    settings: LoadSettings,
) -> list[asyncpg.Record]:
    async def page(conn: asyncpg.Connection) -> list[asyncpg.Record]:
        return await ledger.open_letters(
            conn,
            base,
            after_id=after,
            limit=settings.batch_size,
            error_classes=only.error_classes,
            ids=only.ids,
            exclude_classes=NOT_REPLAYED,
        )

    return await with_retries(pool, settings.retry, page)


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


class _ReplayedLetters:
    """A replay batch's letters: claimed first, settled in the same transaction."""

    def __init__(self, ledger: Ledger, base: LoadKey, load_id: str) -> None:
        self._ledger, self._base, self._load_id = ledger, base, load_id

    @staticmethod
    def _ids(batch: PreparedBatch) -> list[int]:
        return [*batch.record_nos, *(d.record_no for d in batch.rejected)]

    async def claim(self, conn: asyncpg.Connection, batch: PreparedBatch) -> None:
        ids = self._ids(batch)
        claimed = await self._ledger.claim_letters(conn, self._base, ids)
        if claimed != len(ids):
            raise FatalError(
                f"{len(ids) - claimed} of {len(ids)} dead letters of replay batch "
                f"{batch.batch_no} are no longer open: another replay resolved them, or a "
                "new load of the partition superseded them, meanwhile. Nothing of this batch "
                "was written; run the replay again to pick up what is still open."
            )

    async def settle(
        self,
        conn: asyncpg.Connection,
        batch: PreparedBatch,
        attempt_no: int,
        letters: Sequence[DeadLetter],
    ) -> None:
        failed = {d.record_no for d in letters}
        written = [i for i in self._ids(batch) if i not in failed]
        await self._ledger.mark_replayed(conn, written, self._load_id)
        await self._ledger.mark_failed_again(conn, letters)


async def _finish(
    pool: asyncpg.Pool,
    ledger: Ledger,
    key: LoadKey,
    totals: tuple[int, ...],
    settings: LoadSettings,
) -> None:
    async def finish(conn: asyncpg.Connection) -> None:
        async with conn.transaction():
            ledgered = await ledger.totals(conn, key)
            counted = (ledgered.enqueued, ledgered.written, ledgered.dead_lettered)
            if counted != totals:
                raise LoadIntegrityError(
                    f"{key} replay {key.load_id}: the ledger holds (replayed, written, "
                    f"failed again) = {counted}, the run counted {totals}"
                )
            await ledger.finish_load(conn, key, LoadStatus.COMPLETE, ledgered)

    await with_retries(pool, settings.retry, finish)
