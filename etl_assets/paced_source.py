"""A load's records read ahead on a thread of their own, a batch at a time.

The writers' round trips run on the event loop (BEGIN, the ledger lookup, COPY, the
ledger row, COMMIT: five per batch). Read on the loop, a synchronous source that pauses
(a slow API, a file still arriving, one second per hundred records) stops every writer
for as long as it pauses, in the middle of its transaction: the batch's transaction
stays open on the server (a bad neighbour: its locks and snapshot held), its statements
outlive ``command_timeout`` and are retried for nothing, and before the lease had its
own thread, the lease lapsed. Read here on the source's own thread, the loop runs
whatever the source does: the writers finish their batch and wait, outside any
transaction, for the next.

Batches are cut exactly as :func:`etl_assets.batch_bytes.record_chunks` cuts them (the
tests compare the two), from a list the source is read into: no Python step per record
on the way, one hand-over per batch. The read-ahead never goes past the next batch, so
memory stays bounded in bytes and a slow source's first batch is written after
``batch_size`` records.

The source runs on another thread than the one that made it: an iterator bound to its
thread (a ``sqlite3`` cursor made with ``check_same_thread=True``) fails loudly there.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import queue
import threading
from collections.abc import AsyncIterator, Iterable
from typing import Any

from etl_assets.batch_bytes import SAMPLE, chunk_size

__all__ = ["paced_chunks"]

_Request = tuple[int, asyncio.AbstractEventLoop, "asyncio.Future[list[Any]]"]


class _SourceThread:
    """Reads the source on request, on a daemon thread: a source that never returns
    cannot hold the process at exit (the load has failed or stopped by then)."""

    def __init__(self, records: Iterable[Any]) -> None:
        self._records = records
        self._requests: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._failed: BaseException | None = None  # the source raised: no read after it

    async def read(self, wanted: int) -> list[Any]:
        """Up to ``wanted`` records (fewer only at the source's end)."""
        if self._failed is not None:
            raise self._failed
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="etl-source", daemon=True)
            self._thread.start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        self._requests.put((wanted, loop, future))
        return await future

    def close(self) -> None:
        """The thread ends after the read it is doing (if any)."""
        self._requests.put(None)

    def _serve(self) -> None:
        source = iter(self._records)
        while (request := self._requests.get()) is not None:
            wanted, loop, future = request
            try:
                piece = list(itertools.islice(source, wanted))
            except BaseException as exc:  # noqa: BLE001 - raised in the load, at its await
                self._failed = exc
                _settle(loop, future, exc)
                return
            _settle(loop, future, piece)


def _settle(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future[list[Any]], outcome: Any
) -> None:
    def settle() -> None:
        if future.done():  # the load was cancelled meanwhile
            return
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)

    with contextlib.suppress(RuntimeError):  # the load's loop is closed: nobody waits
        loop.call_soon_threadsafe(settle)


class _ReadAhead:
    """The source, read ahead into a list by :meth:`fill`; chunks are taken off its front."""

    def __init__(self, reader: _SourceThread) -> None:
        self._reader = reader
        self._buffer: list[Any] = []
        self._exhausted = False

    async def fill(self, records: int) -> None:
        """Read ahead until ``records`` are buffered (never past them) or the source ends."""
        if not self._exhausted and len(self._buffer) < records:
            wanted = records - len(self._buffer)
            piece = await self._reader.read(wanted)
            self._exhausted = len(piece) < wanted
            self._buffer.extend(piece)

    async def take(self, records: int) -> list[Any]:
        await self.fill(records)
        chunk = self._buffer[:records]
        del self._buffer[: len(chunk)]
        return chunk

    def head(self, records: int) -> list[Any]:
        return self._buffer[:records]


async def paced_chunks(
    records: Iterable[Any], max_records: int, max_bytes: int
) -> AsyncIterator[list[Any]]:
    """The chunks :func:`record_chunks` cuts from ``records``, read on the source's thread.

    The same rule: a chunk holds at most ``max_records`` records and is sized from its
    own first :data:`SAMPLE` records (:func:`chunk_size`), so the cuts depend on the
    records only.
    """
    reader = _SourceThread(records)
    ahead = _ReadAhead(reader)
    sample_size = min(SAMPLE, max_records)
    expected = sample_size
    try:
        while True:
            await ahead.fill(max(expected, sample_size))
            sample = ahead.head(sample_size)
            if not sample:
                return
            size = chunk_size(sample, max_records, max_bytes)
            expected = size  # chunks are sized from their records: the next one is alike
            yield await ahead.take(size)
    finally:
        reader.close()
