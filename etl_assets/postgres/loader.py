"""Load one partition: stream records into bounded batches, write them concurrently,
account for every record, and (replace mode) audit and publish.

Memory is bounded by ``batch_size * (writers + queue_depth + 1)`` records, and by
``batch_bytes`` per batch of estimated size (wide rows, ``etl_assets.batch_bytes``),
whatever the partition size: the producer cuts the iterator into materialized batches (a batch must
be replayable on retry, so never a generator consumed once) and blocks on a bounded
queue. Writers run under one ``asyncio.TaskGroup``: one failure cancels the others and
reaches the caller; no task can die quietly.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Iterable,
    Iterator,
    Sequence,
    Sized,
)
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg
import pydantic

from etl_assets import collector, frames
from etl_assets.arrow_shaper import ArrowShaper
from etl_assets.batch_bytes import DEFAULT_BATCH_BYTES
from etl_assets.breaker import DEFAULT_CONFIDENCE, reject_share_exceeded
from etl_assets.columnar_records import ColumnarRecords
from etl_assets.errors import (
    CircuitBreakerOpenError,
    ConfigurationError,
    EtlError,
    FatalError,
    PublishRefusedError,
    RecordError,
)
from etl_assets.paced_source import paced_chunks
from etl_assets.postgres.arrow_copy import ArrowRows, column_types
from etl_assets.postgres.conversions import ConversionPlan, conversion_plan
from etl_assets.postgres.housekeeping import abandon_dead_loads
from etl_assets.postgres.key_digest import KeyDigester
from etl_assets.postgres.lease import DEFAULT_LEASE_TTL_S, load_lease
from etl_assets.postgres.ledger import DDL_LOCK, Ledger, LoadKey, LoadStatus, PartitionTotals
from etl_assets.postgres.lock_wait import (
    DEFAULT_LOCK_TIMEOUT_S,
    DEFAULT_LOCK_WAIT_BUDGET_S,
    LockWait,
    behind_readers,
    lock_holders,
    set_lock_timeout,
)
from etl_assets.postgres.privileges import (
    Missing,
    create_schema_if_missing,
    explained,
    missing_on_table,
    operation_needs,
    require,
    table_use,
)
from etl_assets.postgres.publish import (
    StagedPublisher,
    TargetKind,
    audit,
    inspect_target,
    refuse_default_partition_rows,
    refuse_unkeyed_referenced,
)
from etl_assets.postgres.retry import RetryPolicy, with_retries
from etl_assets.postgres.schema_drift import add_missing_columns
from etl_assets.postgres.target import TableTarget, WriteMode
from etl_assets.postgres.writer import (
    BatchResult,
    BatchWriter,
    Log,
    PreparedBatch,
    batch_digest,
    refuse_unencodable_columns,
)
from etl_assets.records import (
    DeadLetter,
    RecordShaper,
    ShapedChunk,
    payload_json,
    sorted_letters,
)

__all__ = [
    "LoadReport",
    "LoadSettings",
    "load_partition",
    "mark_load_failed",
    "resolve_load_id",
]

Row = tuple[Any, ...]


class Shaper(Protocol):
    """Validates one chunk (records or an Arrow batch) into rows and dead letters."""

    def shape(self, first_record_no: int, chunk: Any) -> ShapedChunk: ...


_SAMPLE = 10


@dataclass(frozen=True, slots=True)
class LoadSettings:
    """Knobs of one load, with defaults that suit a 2-core machine and a local server."""

    batch_size: int = 25_000  # per-batch overhead vs memory: see docs/PERFORMANCE.md
    batch_bytes: int = DEFAULT_BATCH_BYTES  # and at most ~this many bytes: etl_assets.batch_bytes
    writers: int = 3
    queue_depth: int = 2
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_dead_letter_ratio: float = 0.05  # bound on the true reject share: etl_assets.breaker
    breaker_confidence: float = DEFAULT_CONFIDENCE
    min_sample: int = 1_000  # floor of the per-batch budget of rows Postgres may reject
    key_digest: bool = True  # per-batch digest of the primary keys: etl_assets.postgres.key_digest
    ledger_schema: str = "etl"
    lease_ttl_s: float = DEFAULT_LEASE_TTL_S  # a live load's lease lapses this long unrenewed
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S  # per request of a publish's table lock
    lock_wait_budget_s: float = DEFAULT_LOCK_WAIT_BUDGET_S  # all of a publish's lock waits

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.writers < 1 or self.queue_depth < 0 or self.batch_bytes < 1:
            raise ConfigurationError(
                "batch_size, batch_bytes and writers must be >= 1, queue_depth >= 0"
            )
        if not 0 <= self.max_dead_letter_ratio <= 1:
            raise ConfigurationError("max_dead_letter_ratio is a share between 0 and 1")
        if not 0.5 <= self.breaker_confidence < 1:
            raise ConfigurationError("breaker_confidence is a probability in [0.5, 1)")
        if self.lease_ttl_s <= 0 or self.lock_timeout_s <= 0 or self.lock_wait_budget_s < 0:
            raise ConfigurationError(
                "lease_ttl_s and lock_timeout_s must be > 0, lock_wait_budget_s >= 0"
            )


@dataclass(frozen=True, slots=True)
class LoadReport:
    """What a load did, from the ledger's point of view."""

    target: str
    partition_key: str
    load_id: str
    mode: str
    enqueued: int
    written: int
    dead_lettered: int
    batches: int
    batches_resumed: int
    retries: int
    elapsed_s: float
    rows_per_s: float
    published: bool
    publish_s: float = 0.0  # audit + swap/merge, the part that makes it visible
    dead_letter_sample: tuple[int, ...] = ()
    columns_added: tuple[str, ...] = ()  # on_schema_change="add_columns": added at prepare

    @classmethod
    def published_load(
        cls,
        key: LoadKey,
        mode: str,
        totals: PartitionTotals,
        *,
        batches_resumed: int,
        retries: int = 0,
        elapsed_s: float = 0.0,
        publish_s: float = 0.0,
        dead_letter_sample: tuple[int, ...] = (),
        columns_added: tuple[str, ...] = (),
    ) -> LoadReport:
        """The report of a load that published, its numbers from the ledger's totals."""
        return cls(
            target=key.target,
            partition_key=key.partition_key,
            load_id=key.load_id,
            mode=mode,
            enqueued=totals.enqueued,
            written=totals.written,
            dead_lettered=totals.dead_lettered,
            batches=totals.batches,
            batches_resumed=batches_resumed,
            retries=retries,
            elapsed_s=elapsed_s,
            rows_per_s=totals.written / elapsed_s if elapsed_s else 0.0,
            published=True,
            publish_s=publish_s,
            dead_letter_sample=dead_letter_sample,
            columns_added=columns_added,
        )


@dataclass(slots=True)
class _Progress:
    """Running totals; checked against the ledger at the end, never trusted alone."""

    enqueued: int = 0
    batches_cut: int = 0
    written: int = 0
    dead_lettered: int = 0
    batches: int = 0
    resumed: int = 0
    retries: int = 0
    sample: list[int] = field(default_factory=list)

    def add(self, result: BatchResult) -> None:
        self.written += result.written
        self.dead_lettered += result.dead_lettered
        self.batches += 1
        self.resumed += result.already_committed
        self.retries += result.attempts - 1 if not result.already_committed else 0
        for letter in result.dead_letters[: _SAMPLE - len(self.sample)]:
            self.sample.append(letter.record_no)


async def resolve_load_id(
    pool: asyncpg.Pool,
    target: TableTarget,
    day: dt.date,
    root_id: str,
    fresh_id: str,
    ledger_schema: str = "etl",
) -> str:
    """Resume ``root_id``'s load if it did not finish; otherwise start ``fresh_id``.

    Dagster re-execution keeps the root run id, so a failed run re-executed resumes
    where it stopped, while re-executing a successful run loads the partition anew.
    """
    ledger = Ledger(ledger_schema)

    async def status_of_root(conn: asyncpg.Connection) -> LoadStatus | None:
        await ledger.ensure(conn)
        return await ledger.status(conn, LoadKey(target.name, day.isoformat(), root_id))

    status = await with_retries(pool, RetryPolicy(), status_of_root)
    # A finished load is not loaded twice; an abandoned one (cleaned up) cannot resume.
    if status is None or status.resumable:
        return root_id
    return fresh_id


async def finished_report(
    pool: asyncpg.Pool,
    target: TableTarget,
    day: dt.date,
    load_id: str,
    ledger_schema: str = "etl",
    retry: RetryPolicy | None = None,
) -> LoadReport | None:
    """The report of load ``load_id`` of ``day`` if it finished (published or merged).

    A re-executed failed run asks this first for each partition: a partition that the
    failed run already published is reported from the ledger, not loaded again. A step
    that is stopped asks it of the partition it was loading (``partition_outcomes``).
    """
    ledger = Ledger(ledger_schema)
    key = LoadKey(target.name, day.isoformat(), load_id)

    async def read(conn: asyncpg.Connection) -> tuple[LoadStatus | None, PartitionTotals]:
        await ledger.ensure(conn)
        return await ledger.status(conn, key), await ledger.totals(conn, key)

    status, totals = await with_retries(pool, retry or RetryPolicy(), read)
    if status is None or not status.finished:
        return None
    return LoadReport.published_load(key, target.mode.value, totals, batches_resumed=totals.batches)


async def load_partition(
    pool: asyncpg.Pool,
    target: TableTarget,
    day: dt.date,
    records: Iterable[Any],
    *,
    load_id: str,
    model: type[pydantic.BaseModel] | None = None,
    settings: LoadSettings | None = None,
    log: Log | None = None,
) -> LoadReport:
    """Load ``records`` as partition ``day`` of ``target`` and prove none was lost."""
    with collector.frozen_heap():
        return await _load_partition(pool, target, day, records, load_id, model, settings, log)


async def _load_partition(
    pool: asyncpg.Pool,
    target: TableTarget,
    day: dt.date,
    records: Iterable[Any],
    load_id: str,
    model: type[pydantic.BaseModel] | None,
    settings: LoadSettings | None,
    log: Log | None,
) -> LoadReport:
    settings = settings or LoadSettings()
    log = log or logging.getLogger(__name__)
    ledger = Ledger(settings.ledger_schema)
    key = LoadKey(target.name, day.isoformat(), load_id)
    # Classified here too (the IO manager already did), before any ledger row exists: the
    # engine API refuses a Series or a string just as an asset's output is refused.
    records = frames.classify_output(records, str(key))
    async with load_lease(pool, ledger, key, settings.retry, settings.lease_ttl_s):
        return await _locked_load(pool, ledger, target, day, key, records, model, settings, log)


async def _locked_load(
    pool: asyncpg.Pool,
    ledger: Ledger,
    target: TableTarget,
    day: dt.date,
    key: LoadKey,
    records: Iterable[Any],
    model: type[pydantic.BaseModel] | None,
    settings: LoadSettings,
    log: Log,
) -> LoadReport:
    started = time.perf_counter()
    publisher = StagedPublisher(target, ledger, day, key.load_id)
    kind, types, plan, added = await _prepare(
        pool, ledger, target, publisher, key, model, settings, log
    )
    writer = BatchWriter(
        pool,
        target,
        ledger,
        key=key,
        destination=publisher.staging,
        retry=settings.retry,
        max_dead_letters_per_batch=_poison_limit(settings),
        log=log,
        partition_default=day,  # the staging table's DEFAULT: row tuples leave it out
        keys=KeyDigester.for_target(target, types) if settings.key_digest else None,
    )
    chunks, shaper = _chunks_and_shaper(records, target, day, model, types, plan, settings)
    progress = _Progress()
    try:
        await _pipeline(chunks, shaper, writer, target, day, settings, progress, log, key, started)
        publishing = time.perf_counter()
        totals = await _finish(pool, ledger, target, publisher, kind, key, progress, settings, log)
        publish_s = time.perf_counter() - publishing
    except BaseException as exc:
        await mark_load_failed(pool, ledger, key, log)
        if isinstance(exc, BaseExceptionGroup):
            raise _first_cause(exc) from exc
        raise
    elapsed = time.perf_counter() - started
    rows_per_s = totals.written / elapsed if elapsed else 0.0
    log.info(
        "%s: %d/%d rows written, %d dead-lettered, %d batches (%d resumed), "
        "%d retries, %.1fs, %.0f rows/s",
        key,
        totals.written,
        totals.enqueued,
        totals.dead_lettered,
        totals.batches,
        progress.resumed,
        progress.retries,
        elapsed,
        rows_per_s,
    )
    return LoadReport.published_load(
        key,
        target.mode.value,
        totals,
        batches_resumed=progress.resumed,
        retries=progress.retries,
        elapsed_s=elapsed,
        publish_s=publish_s,
        dead_letter_sample=tuple(progress.sample),
        columns_added=added,
    )


def _chunks_and_shaper(
    records: Iterable[Any],
    target: TableTarget,
    day: dt.date,
    model: type[pydantic.BaseModel] | None,
    column_types: dict[str, str],
    plan: ConversionPlan,
    settings: LoadSettings,
) -> tuple[AsyncIterator[Sized], Shaper]:
    """Bounded chunks of the source, and what validates them: columnar or record by record."""
    if frames.is_columnar(records):
        shaper: Shaper = ArrowShaper(
            column_types,
            target.data_columns,
            target.partition_column,
            day,
            model,
            partition_from_table=True,
            plan=plan,
            table_sql=target.sql_name,
        )
        batches = frames.arrow_batches(records, settings.batch_size, settings.batch_bytes)
        return _each(batches), shaper
    chunks = paced_chunks(records, settings.batch_size, settings.batch_bytes)
    shaper = RecordShaper(
        target.data_columns,
        target.partition_column,
        day,
        model,
        partition_from_table=True,
        checks=plan.checks,
        encodings=plan.encodings,
        columnar=ColumnarRecords.for_load(
            column_types, target.data_columns, target.partition_column, day
        ),
    )
    return chunks, shaper


async def _prepare(
    pool: asyncpg.Pool,
    ledger: Ledger,
    target: TableTarget,
    publisher: StagedPublisher,
    key: LoadKey,
    model: type[pydantic.BaseModel] | None,
    settings: LoadSettings,
    log: Log,
) -> tuple[TargetKind, dict[str, str], ConversionPlan, tuple[str, ...]]:
    """DDL (idempotent, serialized), dead loads of the partition cleaned up, and the
    load's ``loading`` row; safe to retry.

    Schema drift is refused here, before a batch (``schema_drift``); with
    ``add_columns``, the model's new fields become nullable columns first, in this
    transaction (their names are returned). Also reads the staging table's column types:
    a columnar load casts to what the table really holds, which may predate the model;
    and each model field is judged against its column's real type
    (``etl_assets.postgres.conversions``): a pair that would change values is refused
    here, before the load is recorded or a row moves.

    Privileges: the target table's (ownership, for a partition swap) are asked first, so
    a load never writes a partition it may not publish; any other 42501 is explained
    with the GRANTs the load lacks (``etl_assets.postgres.privileges``).

    Its DDL (``add_columns``' ALTER TABLE takes ACCESS EXCLUSIVE) asks for its locks
    under ``lock_timeout_s``, like a publish, so it never queues the table's readers.
    """
    doing = f"load {target.sql_name}"

    def needs(conn: asyncpg.Connection) -> Awaitable[list[Missing]]:
        return operation_needs(conn, target, ledger.schema, "load")

    async def prepare(
        conn: asyncpg.Connection,
    ) -> tuple[TargetKind, dict[str, str], ConversionPlan, tuple[str, ...]]:
        await ledger.ensure(conn)
        await require(conn, doing, await missing_on_table(conn, table_use(target, "load")))
        try:
            async with explained(conn, doing, needs):
                return await prepare_locked(conn)
        except asyncpg.LockNotAvailableError as exc:  # rolled back: ask who holds the lock
            raise LockWait(await lock_holders(conn, target, "AccessExclusiveLock")) from exc

    async def prepare_locked(
        conn: asyncpg.Connection,
    ) -> tuple[TargetKind, dict[str, str], ConversionPlan, tuple[str, ...]]:
        async with conn.transaction():
            await set_lock_timeout(conn, settings.lock_timeout_s)
            await conn.execute("SELECT pg_advisory_xact_lock($1)", DDL_LOCK)
            await create_schema_if_missing(conn, target.schema)
            await conn.execute(target.create_table_sql())
            added = await add_missing_columns(conn, target)
            kind = await inspect_target(conn, target)
            if kind is TargetKind.PARTITIONED and target.mode is WriteMode.REPLACE:
                await refuse_default_partition_rows(conn, target, publisher.day)
            await refuse_unkeyed_referenced(conn, target)
            status = await ledger.status(conn, key)
            if status is not None and not status.resumable:
                raise FatalError(
                    f"{key}: load {key.load_id!r} already ended ({status}); "
                    "a new load needs a new load id (see resolve_load_id)"
                )
            for dead in await abandon_dead_loads(
                conn, ledger, target=key.target, partition_key=key.partition_key,
                exclude_load_id=key.load_id,
            ):  # fmt: skip
                log.warning("%s: abandoned dead load %r (%s)", key, dead.key.load_id, dead.status)
            await publisher.prepare(conn)
            await refuse_unencodable_columns(
                conn, publisher.staging, target.data_columns, target.name
            )
            types = await column_types(conn, *publisher.staging)
            plan = conversion_plan(model, types, target.data_columns, target.sql_name)
            await ledger.begin_load(conn, key, target.mode.value, publisher.staging_table)
            return kind, types, plan, added

    kind, types, plan, added = await behind_readers(
        key, target.name, lambda: with_retries(pool, settings.retry, prepare),
        doing="prepare", lock_timeout_s=settings.lock_timeout_s,
        budget_s=settings.lock_wait_budget_s, log=log,
    )  # fmt: skip
    if added:
        log.warning(
            "%s: added column(s) %s to %s (on_schema_change='add_columns'); "
            "rows loaded before read NULL there",
            key, ", ".join(added), target.name,
        )  # fmt: skip
    return kind, types, plan, added


async def _each(batches: Iterator[Sized]) -> AsyncIterator[Sized]:
    """Arrow batches are sliced from data already in memory: nothing to pace."""
    for batch in batches:
        yield batch


async def _pipeline(
    chunks: AsyncIterator[Sized],
    shaper: Shaper,
    writer: BatchWriter,
    target: TableTarget,
    day: dt.date,
    settings: LoadSettings,
    progress: _Progress,
    log: Log,
    key: LoadKey,
    started: float,
) -> None:
    queue: asyncio.Queue[PreparedBatch | None] = asyncio.Queue(
        maxsize=max(settings.queue_depth, 1)  # 0 would mean unbounded to asyncio
    )

    async def produce() -> None:
        async for chunk in chunks:
            batch_no, first = progress.batches_cut, progress.enqueued
            progress.enqueued += len(chunk)
            progress.batches_cut += 1
            await queue.put(_prepare_batch(batch_no, first, chunk, shaper, target, day))
        for _ in range(settings.writers):
            await queue.put(None)

    async def consume() -> None:
        while (batch := await queue.get()) is not None:
            result = await writer.write(batch)
            progress.add(result)
            _check_breaker(progress, settings, key)
            elapsed = time.perf_counter() - started
            log.info(
                "%s: %d/%d rows written (lag %d), %d dead-lettered, %.0f rows/s",
                key,
                progress.written,
                progress.enqueued,
                progress.enqueued - progress.written - progress.dead_lettered,
                progress.dead_lettered,
                progress.written / elapsed if elapsed else 0.0,
            )

    async with asyncio.TaskGroup() as group:
        group.create_task(produce(), name="etl-producer")
        for i in range(settings.writers):
            group.create_task(consume(), name=f"etl-writer-{i}")


def _prepare_batch(
    batch_no: int, first: int, chunk: Sized, shaper: Shaper, target: TableTarget, day: dt.date
) -> PreparedBatch:
    shaped = shaper.shape(first, chunk)
    rows, record_nos, rejected = shaped.rows, shaped.record_nos, shaped.rejected
    if target.mode is WriteMode.UPSERT:
        rows, record_nos, duplicates = _first_per_key(rows, record_nos, target, day)
        rejected = sorted_letters([*rejected, *duplicates])
    return PreparedBatch(
        batch_no=batch_no,
        enqueued=len(chunk),
        rows=rows,
        record_nos=record_nos,
        rejected=rejected,
        digest=batch_digest(rows, rejected),
    )


def _first_per_key(
    rows: Sequence[Row], record_nos: list[int], target: TableTarget, day: dt.date
) -> tuple[Sequence[Row], list[int], list[DeadLetter]]:
    """One row per primary key in a batch: the first occurrence is written.

    The same rule as across batches, where the staging table's key rejects the later
    record: later repeats are dead-lettered as ``DuplicateKey`` (cheaper here than
    bisecting them out of a COPY), never silently dropped or double-counted. Row tuples
    come without the partition column (the staging table fills it with ``day``).
    """
    positions = [target.row_columns.index(k) for k in target.primary_key]
    day_at = len(target.row_columns) - 1  # the partition column: last, absent from tuples
    first: dict[tuple[Any, ...], int] = {}
    superseded = []

    def full(row: Row) -> Row:
        return row if isinstance(rows, ArrowRows) else (*row, day)

    keys: Iterable[tuple[Any, ...]] = (
        zip(*(rows.column_values(p) for p in positions), strict=True)
        if isinstance(rows, ArrowRows)
        else (tuple(day if p == day_at else row[p] for p in positions) for row in rows)
    )
    for i, key in enumerate(keys):
        if key not in first:
            first[key] = i
            continue
        superseded.append(
            DeadLetter(
                record_nos[i],
                payload_json(dict(zip(target.row_columns, full(rows[i]), strict=True))),
                "DuplicateKey",
                f"primary key {dict(zip(target.primary_key, key, strict=True))} was already "
                f"written by record {record_nos[first[key]]} of this load",
            )
        )
    if not superseded:
        return rows, record_nos, []
    kept = sorted(first.values())
    kept_rows = rows.take(kept) if isinstance(rows, ArrowRows) else [rows[i] for i in kept]
    return kept_rows, [record_nos[i] for i in kept], superseded


def _poison_limit(settings: LoadSettings) -> int | None:
    if settings.max_dead_letter_ratio >= 1:
        return None
    return math.ceil(max(settings.batch_size, settings.min_sample) * settings.max_dead_letter_ratio)


def _check_breaker(progress: _Progress, settings: LoadSettings, key: LoadKey) -> None:
    """Trip when the dead letters so far rule out a reject share within the limit.

    One rule for every size (``etl_assets.breaker``): 3 of 3 records trips, 1 of 3 does
    not, and millions converge to the plain share.
    """
    handled = progress.written + progress.dead_lettered
    dead, limit = progress.dead_lettered, settings.max_dead_letter_ratio
    if not reject_share_exceeded(dead, handled, limit, settings.breaker_confidence):
        return
    why = (
        "every record was dead-lettered"
        if dead == handled
        else f"that many cannot come from a source rejecting at most {limit:.1%} "
        f"({settings.breaker_confidence:.0%} confidence)"
    )
    raise CircuitBreakerOpenError(
        f"{key}: circuit breaker open: {dead} of {handled} records "
        f"({dead / handled:.1%}) were dead-lettered, above the {limit:.1%} limit: {why}. "
        "That is a systemic failure (source format, schema, server, or an object that is not "
        "a stream of records), not a few bad records; the partition was not published. "
        f"See {settings.ledger_schema}.dead_letters for the errors (pending letters of load "
        f"{key.load_id!r}: `etl-assets-dead-letters list` shows them)."
    )


async def _finish(
    pool: asyncpg.Pool,
    ledger: Ledger,
    target: TableTarget,
    publisher: StagedPublisher,
    kind: TargetKind,
    key: LoadKey,
    progress: _Progress,
    settings: LoadSettings,
    log: Log,
) -> PartitionTotals:
    """Audit against the ledger, then publish (replace) or mark complete (upsert)."""

    async def finish(conn: asyncpg.Connection) -> PartitionTotals:
        totals = await audit(
            conn,
            ledger,
            key,
            expected_enqueued=progress.enqueued,
            expected_batches=progress.batches_cut,
        )
        try:
            await publisher.publish(conn, kind, totals, settings.lock_timeout_s)
        except asyncpg.LockNotAvailableError as exc:  # rolled back: ask who holds the lock
            raise LockWait(await publisher.blockers(conn, kind)) from exc
        return totals

    try:
        return await behind_readers(
            key, publisher.target.name, lambda: with_retries(pool, settings.retry, finish),
            doing="publish", lock_timeout_s=settings.lock_timeout_s,
            budget_s=settings.lock_wait_budget_s, log=log,
        )  # fmt: skip
    except RecordError as exc:  # class 22/23 at publish: no record to isolate any more
        raise PublishRefusedError(
            f"{key}: the server refused to publish the staged partition ({exc}); nothing "
            "was published and the last good partition is untouched. The rows met a rule "
            "of the target table (a constraint, a trigger, a foreign key) that staging "
            "does not have: see the detail, fix the table or the data, and load again",
            sqlstate=exc.sqlstate,
        ) from exc


MARK_FAILED_BUDGET_S = 30.0


async def mark_load_failed(pool: asyncpg.Pool, ledger: Ledger, key: LoadKey, log: Log) -> None:
    """Best effort, retried for a while: a load that failed because the server went away
    is marked ``failed`` once it is back, not left ``loading``. The original error wins.
    """
    policy = RetryPolicy(timeout_s=MARK_FAILED_BUDGET_S, wait_max_s=2.0)
    try:
        async with asyncio.timeout(MARK_FAILED_BUDGET_S + 5):
            await with_retries(pool, policy, lambda conn: ledger.fail_load(conn, key))
    except (EtlError, TimeoutError, asyncio.CancelledError) as exc:
        log.warning("%s: could not mark the load failed: %r", key, exc)


def _first_cause(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error that started it: TaskGroup wraps it, with the cancellations it caused."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first_cause(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return group.exceptions[0]
