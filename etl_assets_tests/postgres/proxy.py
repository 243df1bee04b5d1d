"""A TCP proxy between the writer and Postgres that injects real network faults.

Faults: cut a link right after a chunk reached the server (``cut_after``, e.g. the
n-th COMMIT), cut a link after a byte budget drawn per connection (``byte_budget``),
stall every link once it has carried ``stall_at`` bytes (``stall_s``), refuse new
connections for a while (``refuse_for``). ``upstream`` may be changed at any time
(a restarted server on a new port): new links go there.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable


class FaultProxy:
    """Forwards 127.0.0.1:<port> to the server; ``cut_after`` decides when to drop a link.

    ``cut_after(chunk)`` sees each client->server chunk; returning True forwards that chunk
    to the server and then closes both sides before any reply can reach the client: the
    server executes what it received, the client never learns the outcome.
    """

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.cut_after: Callable[[bytes], bool] = lambda chunk: False
        self.byte_budget: Callable[[], int | None] = lambda: None
        self.stall_at: int | None = None
        self.stall_s = 0.0
        self.stall_links: int | None = None  # how many links stall at most (None: every one)
        self.cuts = 0
        self.stalls = 0
        self.refused = 0
        self._refuse_until = 0.0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def cut_on_commits(self, *numbers: int) -> None:
        """Cut the link right after the n-th COMMIT (1-based) for each n in ``numbers``."""
        seen = 0

        def rule(chunk: bytes) -> bool:
            nonlocal seen
            if b"COMMIT" not in chunk:
                return False
            seen += 1
            return seen in numbers

        self.cut_after = rule

    def refuse_for(self, seconds: float) -> None:
        """New connections are closed at once for ``seconds`` (a server that is not there)."""
        self._refuse_until = time.monotonic() + seconds

    async def __aenter__(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def dsn(self, dsn: str) -> str:
        host_port = f"{self.upstream[0]}:{self.upstream[1]}"
        return dsn.replace(host_port, f"127.0.0.1:{self.port}")

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if time.monotonic() < self._refuse_until:
            self.refused += 1
            client_w.close()
            return
        try:
            server_r, server_w = await asyncio.open_connection(*self.upstream)
        except OSError:  # the server is down (restarting): the client sees a dropped link
            client_w.close()
            return
        cut = asyncio.Event()
        budget = self.byte_budget()
        sent = 0
        stalled = False

        blackhole = asyncio.Event()

        async def upstream() -> None:
            nonlocal sent, stalled
            while data := await client_r.read(65536):
                sent += len(data)
                if budget is not None and sent > budget:  # the link dies mid-stream
                    self.cuts += 1
                    cut.set()
                    return
                if (
                    self.stall_at is not None
                    and sent > self.stall_at
                    and not stalled
                    and (self.stall_links is None or self.stalls < self.stall_links)
                ):
                    stalled = True
                    self.stalls += 1
                    await asyncio.sleep(self.stall_s)
                trigger = self.cut_after(data)
                if trigger:
                    blackhole.set()  # from now on, no reply reaches the client
                server_w.write(data)
                await server_w.drain()
                if trigger:
                    self.cuts += 1
                    await asyncio.sleep(0.2)  # let the server act on what it received
                    cut.set()
                    return

        async def downstream() -> None:
            while data := await server_r.read(65536):
                if blackhole.is_set():
                    return
                client_w.write(data)
                await client_w.drain()

        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        try:
            up = asyncio.create_task(upstream())
            down = asyncio.create_task(downstream())
            await asyncio.wait(
                {up, down, asyncio.create_task(cut.wait())}, return_when=asyncio.FIRST_COMPLETED
            )
            for t in (up, down):
                t.cancel()
        finally:
            for w in (client_w, server_w):
                w.close()
            self._tasks.discard(task)  # type: ignore[arg-type]
