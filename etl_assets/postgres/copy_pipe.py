"""A bounded pipe from a ``COPY ... TO STDOUT`` on an event loop to a synchronous reader.

:class:`~etl_assets.postgres.reader.PartitionStream` lets pyarrow's streaming CSV reader
parse the server's COPY output as it arrives: the COPY runs on the stream's own event
loop thread and puts each chunk here; pyarrow reads this as a file. At most ``depth``
chunks wait, so a slow consumer stops the COPY (the server then waits on its socket)
instead of filling memory; a consumer that leaves early closes the pipe, which stops
the producer at its next chunk.
"""

from __future__ import annotations

import io
import queue
import threading

__all__ = ["CopyPipe", "PipeClosed"]

_END = b""


class PipeClosed(Exception):
    """The reader closed the pipe: the producer stops copying."""


class CopyPipe(io.RawIOBase):
    """Chunks in (``put``, ``end``: the producer's thread), bytes out (``readinto``)."""

    def __init__(self, depth: int = 16) -> None:
        super().__init__()
        self._chunks: queue.Queue[bytes | BaseException] = queue.Queue(depth)
        self._current = memoryview(_END)
        self._reader_gone = threading.Event()
        self._ended = False

    async def put(self, chunk: bytes) -> None:
        """asyncpg's ``output`` callback. It blocks the loop while the pipe is full: the
        loop is the stream's own, and the server waiting on its socket is the point."""
        if chunk:
            self._offer(chunk)

    def end(self, error: BaseException | None = None) -> None:
        """The COPY is over: the reader sees the end of the file, or ``error``."""
        self._offer(_END if error is None else error)

    def _offer(self, item: bytes | BaseException) -> None:
        while not self._reader_gone.is_set():
            try:
                self._chunks.put(item, timeout=0.1)
            except queue.Full:  # the reader is busy: wait, unless it has gone
                continue
            return
        raise PipeClosed("the stream's reader closed it")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._current:
            if self._ended:
                return 0
            item = self._chunks.get()
            if isinstance(item, BaseException):
                self._ended = True
                raise item
            if item is _END:
                self._ended = True
                return 0
            self._current = memoryview(item)
        n = min(len(buffer), len(self._current))
        buffer[:n] = self._current[:n]
        self._current = self._current[n:]
        return n

    def close(self) -> None:
        self._reader_gone.set()
        super().close()
