"""The paced read of a load's source: the same batches as before, and the loop runs meanwhile."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from etl_assets.batch_bytes import record_chunks
from etl_assets.paced_source import SLICE, paced_chunks


def source(n: int, width: int = 1) -> Iterator[dict[str, Any]]:
    for i in range(n):
        yield {"id": i, "text": "x" * (width * (1 + i % 7))}


async def collect(n: int, max_records: int, max_bytes: int, width: int) -> list[list[Any]]:
    return [chunk async for chunk in paced_chunks(source(n, width), max_records, max_bytes)]


@pytest.mark.parametrize(
    ("n", "max_records", "max_bytes", "width"),
    [
        (0, 25_000, 2**25, 1),
        (1, 25_000, 2**25, 1),
        (SLICE, 25_000, 2**25, 1),
        (SLICE + 1, 25_000, 2**25, 1),
        (60_001, 25_000, 2**25, 1),
        (10_000, 3, 2**25, 1),
        (7_000, 25_000, 2**20, 400),  # cut by bytes: chunks of a few hundred records
    ],
)
def test_the_batches_are_record_chunks_own(
    n: int, max_records: int, max_bytes: int, width: int
) -> None:
    """Same records, same order, same cuts: a resumed load must cut the same batches."""
    paced = asyncio.run(collect(n, max_records, max_bytes, width))
    assert paced == list(record_chunks(source(n, width), max_records, max_bytes))
    assert sum(map(len, paced)) == n


def test_the_event_loop_runs_while_a_batch_is_read() -> None:
    """A writer's round trip (here a task that ticks) is not held back a whole batch."""
    ticks_seen: list[int] = []
    ticks = 0

    def watched(n: int) -> Iterator[int]:
        for i in range(n):
            if i % SLICE == 0:
                ticks_seen.append(ticks)
            yield i

    async def ticker(stop: asyncio.Event) -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0)

    async def scenario() -> list[int]:
        stop = asyncio.Event()
        task = asyncio.create_task(ticker(stop))
        await asyncio.sleep(0)
        sizes = [len(chunk) async for chunk in paced_chunks(watched(50_000), 25_000, 2**25)]
        stop.set()
        await task
        return sizes

    assert asyncio.run(scenario()) == [25_000, 25_000]
    # The second batch is read ahead slice by slice: the ticker ran between its slices.
    second = ticks_seen[25_000 // SLICE + 1 :]
    assert len(set(second)) == len(second), second


def test_a_slow_source_is_never_read_past_the_next_batch() -> None:
    """A batch of 100 is written after 100 records, not after a whole slice of them."""
    read: list[int] = []

    def counted(n: int) -> Iterator[int]:
        for i in range(n):
            read.append(i)
            yield i

    async def scenario() -> list[int]:
        seen = []
        async for chunk in paced_chunks(counted(800), 100, 2**25):
            seen.append(len(read))  # records read when this chunk is handed out
            assert len(chunk) == 100
        return seen

    assert asyncio.run(scenario()) == [100, 200, 300, 400, 500, 600, 700, 800]
