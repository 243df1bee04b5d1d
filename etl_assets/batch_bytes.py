"""Batches cut by bytes as well as by records: memory does not grow with a row's width.

A batch of 25,000 records is ~10 MB of three-column dicts, but ~500 MB of 300-column
ones, and a load holds ``writers + queue_depth + 1`` batches at once (each also as its
row tuples): a 200,000 x 300 partition peaked at 1.6-4.2 GB. So a batch is cut at
``batch_size`` records or at ``batch_bytes`` of estimated size, whichever comes first:

* records: the Python size of a sample of a chunk's records (the record, its values;
  ``sys.getsizeof``, shallow: strings and numbers are what a wide row holds), which
  sizes the next chunk. The estimate depends only on the records, so a resumed load
  cuts the same batches as the attempt it resumes (``writer.batch_digest``);
* Arrow: a batch's own ``nbytes``, split into equal slices under a quarter of the
  bound (:data:`ARROW_COPIES`): Arrow bytes are the data itself, not Python objects
  around it, and a columnar batch is held about four times over while it is written
  (the source's slice, the columns cast to the table's types, pgpq's COPY bytes, the
  driver's send buffer). Measured: docs/PERFORMANCE.md, "Wide rows".
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = [
    "ARROW_COPIES",
    "DEFAULT_BATCH_BYTES",
    "SAMPLE",
    "chunk_size",
    "record_chunks",
    "record_size",
    "split_by_bytes",
]

DEFAULT_BATCH_BYTES = 32 * 2**20
"""Estimated bytes of one batch's records: ~6 batches in flight, each also held as rows,
keep a 300-column load within ~400 MB (docs/PERFORMANCE.md); a narrow record (~300 B)
never reaches it before 25,000 records."""

SAMPLE = 64
ARROW_COPIES = 4


def record_size(record: Any) -> int:
    """The estimated Python size of one record: the object, its values (one level)."""
    values = getattr(record, "__dict__", None) if not isinstance(record, dict) else record
    size = sys.getsizeof(record)
    if isinstance(values, dict):
        size += sys.getsizeof(values) if values is not record else 0
        return size + sum(map(sys.getsizeof, values.values()))
    if isinstance(record, tuple | list):
        return size + sum(map(sys.getsizeof, record))
    return size


def chunk_size(sample: list[Any], max_records: int, max_bytes: int) -> int:
    """How many records the chunk that starts with ``sample`` (its first records) holds."""
    if not sample:
        return max_records
    per_record = max(1, sum(map(record_size, sample)) // len(sample))
    return max(1, min(max_records, max_bytes // per_record))


def record_chunks(records: Iterable[Any], max_records: int, max_bytes: int) -> Iterator[list[Any]]:
    """``records`` as lists of at most ``max_records`` records and about ``max_bytes``.

    Each chunk is sized from its own first :data:`SAMPLE` records, read before the rest.
    """
    iterator = iter(records)
    pending = list(itertools.islice(iterator, min(SAMPLE, max_records)))
    while pending:
        size = chunk_size(pending[:SAMPLE], max_records, max_bytes)
        chunk, pending = pending[:size], pending[size:]
        if len(chunk) < size:
            chunk.extend(itertools.islice(iterator, size - len(chunk)))
        yield chunk
        if not pending:
            pending = list(itertools.islice(iterator, min(SAMPLE, max_records)))


def split_by_bytes(batch: Any, max_bytes: int) -> Iterator[Any]:
    """An Arrow batch as equal slices of at most about ``max_bytes`` (its ``nbytes``)."""
    n, nbytes = int(batch.num_rows), int(batch.nbytes)
    if nbytes <= max_bytes or n <= 1:
        yield batch
        return
    rows = max(1, n * max_bytes // nbytes)
    for offset in range(0, n, rows):
        yield batch.slice(offset, rows)
