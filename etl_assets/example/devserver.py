"""``etl-assets-dev``: ``dagster dev`` on the embedded PostgreSQL, started and stopped for you.

With ``ETL_ASSETS_PG_DSN`` set, that server is used instead and nothing is started.
Dagster's own storage (runs, events, schedules) lives in the same server, in database
``dagster``, unless ``DAGSTER_PG_URL`` says otherwise.

It prints both DSNs (password redacted) and writes ``.etl_assets/env.sh``: the one
``export`` line a second terminal needs for the Dagster CLI (``. .etl_assets/env.sh``).
The sample logs cover the last ``SAMPLE_DAYS`` complete days: the UI's Materialize
dialog (last 90 days by default) and the Partitions plot (the 120 latest partitions)
both show recent partitions, so older sample days would sit outside both.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shlex
import signal
import subprocess
import sys
import urllib.parse
from collections.abc import Mapping
from pathlib import Path

import asyncpg

from etl_assets.example.landing import default_landing_dir, write_sample_day
from etl_assets.paths import home
from etl_assets.postgres.embedded import EmbeddedPostgres, default_data_dir
from etl_assets.postgres.resource import redact_dsn

__all__ = ["ensure_database", "main", "sample_days", "with_database", "write_env_file"]

DAGSTER_DB = "dagster"
SAMPLE_DAYS = 14
ENV_FILE = "env.sh"
CLI_ENV = (
    "DAGSTER_HOME",
    "ETL_ASSETS_HOME",
    "ETL_ASSETS_PG_DSN",
    "DAGSTER_PG_URL",
    "ETL_ASSETS_DAGSTER_DIR",
    "ETL_ASSETS_COMPUTE_LOGS_DIR",
    "ETL_ASSETS_SAMPLE_FIRST",
    "ETL_ASSETS_SAMPLE_LAST",
)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    project = Path.cwd()
    os.environ.setdefault("DAGSTER_HOME", str(project))  # dagster.yaml lives here
    os.environ.setdefault("ETL_ASSETS_HOME", str(home()))
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
            asyncio.run(ensure_database(dsn, DAGSTER_DB))
            os.environ["DAGSTER_PG_URL"] = with_database(dsn, DAGSTER_DB)
        _announce(home() / ENV_FILE)
        dagster = str(Path(sys.executable).with_name("dagster"))  # this venv's, whatever PATH says
        os.environ["PYTHONWARNINGS"] = _without_dev_supersession(os.environ.get("PYTHONWARNINGS"))
        return _run_until_stopped([dagster, "dev", *args])
    finally:
        if server is not None:
            server.release()


DEV_SUPERSESSION = "ignore:Function `dev_command` is superseded:FutureWarning"
"""``dagster dev`` advises ``dg dev`` at start; etl-assets-dev is the supported way to start
this project's server (it also starts PostgreSQL), so that one warning is silenced (a
``SupersessionWarning`` is a ``FutureWarning``; the filter matches its message's start)."""


def _without_dev_supersession(current: str | None) -> str:
    """``PYTHONWARNINGS`` for the ``dagster dev`` child: yours, plus the one filter above."""
    return f"{current},{DEV_SUPERSESSION}" if current else DEV_SUPERSESSION


def sample_days(today: dt.date | None = None) -> list[dt.date]:
    """The last ``SAMPLE_DAYS`` complete days (UTC), oldest first."""
    last = (today or dt.datetime.now(dt.UTC).date()) - dt.timedelta(days=1)
    return [last - dt.timedelta(days=n) for n in reversed(range(SAMPLE_DAYS))]


def _ensure_sample_landing() -> None:
    """First start: two recent weeks of logs, so every asset can be materialized at once."""
    landing = default_landing_dir()
    if not landing.exists():
        days = sample_days()
        for day in days:
            write_sample_day(landing, day)
        print(f"etl-assets-dev: sample logs for {days[0]} .. {days[-1]} written to {landing}")
    present = sorted(p.name for p in landing.iterdir() if p.is_dir())
    if present:
        os.environ["ETL_ASSETS_SAMPLE_FIRST"], os.environ["ETL_ASSETS_SAMPLE_LAST"] = (
            present[0],
            present[-1],
        )
        print(
            f"etl-assets-dev: {len(present)} landed day(s); in the Materialize dialog, "
            f"select [{present[0]}...{present[-1]}]"
        )


def _announce(env_file: Path) -> None:
    """Print where everything is, and write the CLI's environment to ``env_file``.

    The file holds the DSNs as given (a password included, like any ``.env`` file:
    ``.etl_assets`` is git-ignored and the file is readable by its owner only); the
    terminal only ever shows them redacted.
    """
    data_dsn, dagster_url = os.environ["ETL_ASSETS_PG_DSN"], os.environ["DAGSTER_PG_URL"]
    print(f"etl-assets-dev: data     ETL_ASSETS_PG_DSN={redact_dsn(data_dsn)}")
    print(f"etl-assets-dev: dagster  DAGSTER_PG_URL={redact_dsn(dagster_url)}")
    write_env_file(env_file, os.environ)
    print(f"etl-assets-dev: for the Dagster CLI in another terminal: . {_relative(env_file)}")
    sys.stdout.flush()


def write_env_file(path: Path, environ: Mapping[str, str]) -> str:
    """Write the ``export`` line of the CLI's variables (those set in ``environ``)."""
    line = "export " + " ".join(
        f"{name}={shlex.quote(environ[name])}" for name in CLI_ENV if environ.get(name)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(line + "\n")
    return line


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:  # ETL_ASSETS_HOME outside the project
        return str(path)


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


async def ensure_database(dsn: str, name: str) -> None:
    """Create database ``name`` on the server of ``dsn`` unless it exists."""
    conn = await asyncpg.connect(dsn)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def with_database(dsn: str, name: str, driver: str | None = "psycopg2") -> str:
    """The same server, database ``name``; by default with the driver dagster-postgres
    ships (psycopg2): SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3, which is
    not installed. ``driver=None`` gives a plain ``postgresql://`` DSN (for asyncpg)."""
    parts = urllib.parse.urlsplit(dsn)
    scheme = f"postgresql+{driver}" if driver else "postgresql"
    return urllib.parse.urlunsplit(parts._replace(scheme=scheme, path=f"/{name}"))


if __name__ == "__main__":
    raise SystemExit(main())
