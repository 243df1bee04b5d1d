"""``etl-assets-dev``: ``dagster dev`` on the embedded PostgreSQL, started and stopped for you.

With ``ETL_ASSETS_PG_DSN`` set, that server is used instead and nothing is started.
Dagster's own storage (runs, events, schedules) lives in the same server, in database
``dagster``, unless ``DAGSTER_PG_URL`` says otherwise.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import urllib.parse
from pathlib import Path

import asyncpg

from etl_assets.postgres.embedded import EmbeddedPostgres, default_data_dir

DAGSTER_DB = "dagster"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    project = Path.cwd()
    os.environ.setdefault("DAGSTER_HOME", str(project))  # dagster.yaml lives here
    server: EmbeddedPostgres | None = None
    if not os.environ.get("ETL_ASSETS_PG_DSN"):
        server = EmbeddedPostgres(default_data_dir())
        os.environ["ETL_ASSETS_PG_DSN"] = server.acquire()
        print(f"etl-assets-dev: embedded PostgreSQL, data in {server.data_dir}", flush=True)
    try:
        dsn = os.environ["ETL_ASSETS_PG_DSN"]
        if not os.environ.get("DAGSTER_PG_URL"):
            asyncio.run(_ensure_database(dsn, DAGSTER_DB))
            os.environ["DAGSTER_PG_URL"] = _with_database(dsn, DAGSTER_DB)
        dagster = str(Path(sys.executable).with_name("dagster"))  # this venv's, whatever PATH says
        return _run_until_stopped([dagster, "dev", *args])
    finally:
        if server is not None:
            server.release()


def _run_until_stopped(command: list[str]) -> int:
    """Run ``command``; forward Ctrl-C/SIGTERM to it and wait, so teardown always happens."""
    child = subprocess.Popen(command)

    def forward(signum: int, _frame: object) -> None:
        child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    return child.wait()


async def _ensure_database(dsn: str, name: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def _with_database(dsn: str, name: str) -> str:
    parts = urllib.parse.urlsplit(dsn)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))


if __name__ == "__main__":
    raise SystemExit(main())
