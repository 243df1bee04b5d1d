"""The embedded server never outlives the processes that use it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from etl_assets.postgres.embedded import EmbeddedPostgres

ENGINE_SCRIPT = """
import asyncio, sys
from etl_assets import PostgresResource

async def main() -> None:
    async with PostgresResource(embedded_data_dir=sys.argv[1]).pool() as pool:
        print(await pool.fetchval("SELECT 40 + 2"), flush=True)
        if sys.argv[2] == "hang":
            await asyncio.sleep(600)

asyncio.run(main())
"""


def run_script(data_dir: Path, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(ENGINE_SCRIPT), str(data_dir), mode],
        stdout=subprocess.PIPE,
        text=True,
    )


def wait_until_stopped(server: EmbeddedPostgres, seconds: float) -> float:
    started = time.monotonic()
    while server._running_port() is not None:
        if time.monotonic() - started > seconds:
            pytest.fail(f"the embedded server still runs {seconds} s after its holder died")
        time.sleep(0.2)
    return time.monotonic() - started


def test_the_engine_api_releases_the_server_it_leased(tmp_path: Path) -> None:
    """A script using PostgresResource().pool() with no DSN leaves no server behind."""
    data_dir = tmp_path / "pgdata"
    script = run_script(data_dir, "exit")
    out, _ = script.communicate(timeout=120)

    assert (script.returncode, out.strip()) == (0, "42")
    server = EmbeddedPostgres(data_dir)
    assert server._running_port() is None
    assert server._read_leases() == []


def test_a_killed_holder_leaves_no_server_running(tmp_path: Path) -> None:
    """SIGKILL skips every release; the watchdog stops the abandoned server within seconds."""
    data_dir = tmp_path / "pgdata"
    script = run_script(data_dir, "hang")
    assert script.stdout is not None
    assert script.stdout.readline().strip() == "42"
    server = EmbeddedPostgres(data_dir)
    assert server._running_port() is not None

    os.kill(script.pid, signal.SIGKILL)
    script.wait(timeout=10)

    wait_until_stopped(server, 20)
    assert server._read_leases() == []


def test_a_live_holder_keeps_its_server(tmp_path: Path) -> None:
    """The watchdog never stops a server somebody still holds."""
    server = EmbeddedPostgres(tmp_path / "pgdata")
    with server.leased():
        time.sleep(5)  # two and a half watchdog rounds
        assert server._running_port() is not None
    assert server._running_port() is None
