"""A load's records read ahead in small slices, so the event loop runs between them.

The producer reads the source on the event loop, where the writers' round trips run
too (BEGIN, the ledger lookup, COPY, the ledger row, COMMIT: five per batch). Read a
whole batch at once (25,000 records of a Python generator take ~25 ms) and every one of
those round trips waits behind it: the server idles while the client reads, then the
client waits on the server. Read in slices of :data:`SLICE` records with the loop let
run between them, and a writer's next message leaves within about a millisecond, so
the server ingests one batch while the client reads the next (docs/PERFORMANCE.md,
"The record path").

Batches are cut exactly as :func:`etl_assets.batch_bytes.record_chunks` cuts them (the
tests compare the two), from a list the slices are read into: no Python step per record
on the way. The read-ahead holds about one batch, so memory stays bounded in bytes.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterable
from typing import Any

from etl_assets.batch_bytes import SAMPLE, chunk_size

__all__ = ["SLICE", "paced_chunks"]

SLICE = 1_000


class _ReadAhead:
    """The source, read ahead into a list by :meth:`fill`; chunks are taken off its front."""

    def __init__(self, records: Iterable[Any]) -> None:
        self._source = iter(records)
        self._buffer: list[Any] = []
        self._exhausted = False

    async def fill(self, records: int) -> None:
        """Read ahead until ``records`` are buffered, letting the loop run after each slice."""
        while not self._exhausted and len(self._buffer) < records:
            self._read(min(SLICE, records - len(self._buffer)))  # never past the next batch
            await asyncio.sleep(0)

    def head(self, records: int) -> list[Any]:
        """The first ``records`` buffered (fewer at the source's end), read now if need be."""
        if len(self._buffer) < records and not self._exhausted:
            self._read(records - len(self._buffer))
        return self._buffer[:records]

    def take(self, records: int) -> list[Any]:
        chunk = self.head(records)
        del self._buffer[: len(chunk)]
        return chunk

    def _read(self, wanted: int) -> None:
        piece = list(itertools.islice(self._source, wanted))
        self._exhausted = len(piece) < wanted
        self._buffer.extend(piece)


async def paced_chunks(
    records: Iterable[Any], max_records: int, max_bytes: int
) -> AsyncIterator[list[Any]]:
    """The chunks :func:`record_chunks` cuts from ``records``, each read ahead in slices.

    The same rule: a chunk holds at most ``max_records`` records and is sized from its
    own first :data:`SAMPLE` records (:func:`chunk_size`), so the cuts depend on the
    records only.
    """
    ahead = _ReadAhead(records)
    sample_size = min(SAMPLE, max_records)
    expected = sample_size
    while True:
        await ahead.fill(expected)
        sample = ahead.head(sample_size)
        if not sample:
            return
        size = chunk_size(sample, max_records, max_bytes)
        expected = size  # chunks are sized from their records: the next one is alike
        yield ahead.take(size)
