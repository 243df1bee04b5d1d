"""``etl-assets-dev``: ``dagster dev`` on the embedded PostgreSQL, started and stopped for you.

With ``ETL_ASSETS_PG_DSN`` set, that server is used instead and nothing is started.
Dagster's own storage (runs, events, schedules) lives in the same server, in database
``dagster``, unless ``DAGSTER_PG_URL`` says otherwise.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import subprocess
import sys
import urllib.parse
from pathlib import Path

import asyncpg

from etl_assets.landing import default_landing_dir, write_sample_day
from etl_assets.paths import home
from etl_assets.postgres.embedded import EmbeddedPostgres, default_data_dir

DAGSTER_DB = "dagster"
SAMPLE_START = dt.date(2024, 1, 1)  # the first partition
SAMPLE_DAYS = 14


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    project = Path.cwd()
    os.environ.setdefault("DAGSTER_HOME", str(project))  # dagster.yaml lives here
    os.environ.setdefault("ETL_ASSETS_DAGSTER_DIR", str(home() / "dagster"))
    os.environ.setdefault("ETL_ASSETS_COMPUTE_LOGS_DIR", str(home() / "dagster" / "logs"))
    _ensure_sample_landing()
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


def _ensure_sample_landing() -> None:
    """First start: two sample weeks of logs, so every asset can be materialized at once."""
    landing = default_landing_dir()
    if landing.exists():
        return
    for offset in range(SAMPLE_DAYS):
        write_sample_day(landing, SAMPLE_START + dt.timedelta(days=offset))
    print(
        f"etl-assets-dev: sample logs for {SAMPLE_START} .. "
        f"{SAMPLE_START + dt.timedelta(days=SAMPLE_DAYS - 1)} written to {landing}",
        flush=True,
    )


def _run_until_stopped(command: list[str], grace_s: float = 30.0) -> int:
    """Run ``command`` until it exits or we are told to stop (Ctrl-C or SIGTERM).

    ``dagster dev`` shuts down cleanly on SIGINT only, so a SIGTERM is passed on as
    SIGINT; past ``grace_s`` it is killed, so the embedded server is always released.
    The child gets SIGINT back at its default even when we were started with it
    ignored (a background job), or it could not be stopped gracefully at all.
    """
    child = subprocess.Popen(command, preexec_fn=_default_sigint)
    stopping: list[bool] = []

    def stop(_signum: int, _frame: object) -> None:
        stopping.append(True)
        child.send_signal(signal.SIGINT)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while True:
        try:
            return child.wait(timeout=grace_s if stopping else None)
        except subprocess.TimeoutExpired:
            child.kill()


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


async def _ensure_database(dsn: str, name: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def _with_database(dsn: str, name: str) -> str:
    """The same server, database ``name``, with the driver dagster-postgres ships (psycopg2):
    SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3, which is not installed."""
    parts = urllib.parse.urlsplit(dsn)
    return urllib.parse.urlunsplit(parts._replace(scheme="postgresql+psycopg2", path=f"/{name}"))


if __name__ == "__main__":
    raise SystemExit(main())
