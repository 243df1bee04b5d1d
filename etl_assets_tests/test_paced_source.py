"""The read of a load's source: the same batches as before, and the loop runs meanwhile."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from etl_assets.batch_bytes import record_chunks
from etl_assets.paced_source import paced_chunks

SLICE = 1_000


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


def test_the_event_loop_runs_while_the_source_blocks() -> None:
    """A source that blocks (0.5 s in time.sleep) holds up no writer: a task on the loop
    (here a ticker, as a writer's round trips) runs all the while."""
    ticks: list[float] = []

    def blocking(n: int) -> Iterator[int]:
        for i in range(n):
            if i == 150:
                time.sleep(0.5)
            yield i

    async def ticker(stop: asyncio.Event) -> None:
        while not stop.is_set():
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    async def scenario() -> list[int]:
        stop = asyncio.Event()
        task = asyncio.create_task(ticker(stop))
        sizes = [len(chunk) async for chunk in paced_chunks(blocking(300), 100, 2**25)]
        stop.set()
        await task
        return sizes

    assert asyncio.run(scenario()) == [100, 100, 100]
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert len(ticks) > 30  # it ticked through the 0.5 s
    assert max(gaps) < 0.2, max(gaps)


def test_an_error_of_the_source_is_raised_by_the_load_and_ends_its_thread() -> None:
    """The source's own exception, with its message, at the load's await; no thread left."""

    def broken() -> Iterator[int]:
        yield from range(150)
        raise OSError("landing file vanished mid-read")

    async def scenario() -> list[int]:
        return [len(chunk) async for chunk in paced_chunks(broken(), 100, 2**25)]

    with pytest.raises(OSError, match="landing file vanished mid-read"):
        asyncio.run(scenario())
    deadline = time.monotonic() + 5
    while any(t.name == "etl-source" for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the source's thread did not end"
        time.sleep(0.01)


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
