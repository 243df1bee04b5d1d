"""A load's records read ahead in small slices, so the event loop runs between them.

The producer reads the source on the event loop, where the writers' round trips run
too (BEGIN, the ledger lookup, COPY, the ledger row, COMMIT: five per batch). Read a
whole batch at once (25,000 records of a Python generator take ~25 ms) and every one of
those round trips waits behind it: the server idles while the client reads, then the
client waits on the server. Read in slices of :data:`SLICE` records with the loop let
run between them, and a writer's next message leaves within about a millisecond, so
the server ingests one batch while the client reads the next (docs/PERFORMANCE.md,
"The record path").

Batches are still cut by :func:`etl_assets.batch_bytes.record_chunks` from the same
records in the same order; the read-ahead holds at most about one batch, so memory
stays bounded in bytes as before.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

from etl_assets.batch_bytes import SAMPLE, record_chunks

__all__ = ["SLICE", "paced_chunks"]

SLICE = 1_000


class _ReadAhead:
    """The source, with records read ahead into a buffer by :meth:`fill`.

    Iterating yields the buffer first and reads the source directly only when the buffer
    is empty: the order is the source's whatever was read ahead.
    """

    def __init__(self, records: Iterable[Any]) -> None:
        self._source = iter(records)
        self._buffer: collections.deque[Any] = collections.deque()
        self._exhausted = False

    def __iter__(self) -> Iterator[Any]:
        buffer, source = self._buffer, self._source
        while True:
            if buffer:
                yield buffer.popleft()
                continue
            try:
                yield next(source)
            except StopIteration:
                return

    async def fill(self, records: int) -> None:
        """Read ahead until ``records`` are buffered, letting the loop run after each slice."""
        while not self._exhausted and len(self._buffer) < records:
            wanted = min(SLICE, records - len(self._buffer))  # never past the next batch
            piece = list(itertools.islice(self._source, wanted))
            self._exhausted = len(piece) < wanted
            self._buffer.extend(piece)
            await asyncio.sleep(0)


async def paced_chunks(
    records: Iterable[Any], max_records: int, max_bytes: int
) -> AsyncIterator[list[Any]]:
    """:func:`record_chunks` of ``records``, each read ahead in slices first."""
    ahead = _ReadAhead(records)
    chunks = record_chunks(ahead, max_records, max_bytes)
    expected = min(SAMPLE, max_records)
    while True:
        await ahead.fill(expected)
        chunk = next(chunks, None)
        if chunk is None:
            return
        expected = len(chunk)  # chunks are sized from their records: the next is alike
        yield chunk
