"""A Celery deployment for real: redis-server, a Dagster instance on PostgreSQL, 2 workers.

Started once per module (workers take seconds to import Dagster) and stopped on
teardown, every process group killed: nothing is left running after the tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
import redis
from dagster_celery.make_app import make_app

from etl_assets_tests.celery import location
from etl_assets_tests.postgres.helpers import execute

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
WORKERS = 2
PROCESSES_PER_WORKER = 2  # 4 step slots in all, so the pool (2 slots) is what bounds
POOL_SLOTS = 2


@dataclass(frozen=True, slots=True)
class Deployment:
    """What a test needs: the instance, the data database, the broker, the shared folder."""

    instance: dg.DagsterInstance
    db_dsn: str
    broker: str
    folder: Path
    workers: tuple[str, ...]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def stop(process: subprocess.Popen[bytes], timeout_s: float = 15) -> None:
    """SIGTERM the process group, SIGKILL it if it lingers; reap the leader."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout_s)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):  # pool children outliving their parent
        os.killpg(process.pid, signal.SIGKILL)


@contextlib.contextmanager
def redis_server(log: Path) -> Iterator[str]:
    """Debian's redis-server on a free port, no persistence; its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is missing: the README's test command installs it (apt-get)")
    port = free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    with log.open("wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=out, start_new_session=True)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.05)
        client.close()
        yield url
    finally:
        stop(process)


@contextlib.contextmanager
def database(pg_dsn: str, prefix: str) -> Iterator[str]:
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    asyncio.run(execute(pg_dsn, f'CREATE DATABASE "{name}"'))
    try:
        yield urllib.parse.urlsplit(pg_dsn)._replace(path=f"/{name}").geturl()
    finally:
        asyncio.run(execute(pg_dsn, f'DROP DATABASE "{name}" WITH (FORCE)'))


def dagster_yaml(storage_url: str, folder: Path) -> str:
    """The instance the run and the workers share: the package's storage, pool of 2."""
    return f"""\
storage:
  custom:
    module: etl_assets.storage
    class: ExplainedPostgresStorage
    config:
      postgres_url: {storage_url}
local_artifact_storage:
  module: dagster._core.storage.root
  class: LocalArtifactStorage
  config:
    base_dir: {folder / "artifacts"}
concurrency:
  pools:
    default_limit: {POOL_SLOTS}
    granularity: op
telemetry:
  enabled: false
"""


def celery_yaml(broker: str) -> str:
    """The executor's config block; the workers read the same file (-y)."""
    return f"execution:\n  config:\n    broker: {broker}\n    backend: {broker}\n"


@contextlib.contextmanager
def celery_workers(env: dict[str, str], config: Path, folder: Path) -> Iterator[tuple[str, ...]]:
    """WORKERS x `dagster-celery worker start`, each in a process group of its own."""
    names = tuple(f"etl-w{n}" for n in range(1, WORKERS + 1))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for name in names:
            command = [
                str(VENV_BIN / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app",
                "-y", str(config), "-n", name, "--loglevel", "WARNING",
                "--", f"--concurrency={PROCESSES_PER_WORKER}",
            ]  # fmt: skip
            with (folder / f"{name}.log").open("wb") as out:
                processes.append(
                    subprocess.Popen(
                        command, cwd=ROOT, env=env, stdout=out, stderr=out, start_new_session=True
                    )
                )
        wait_for_workers(env[location.BROKER_ENV], names, processes, folder)
        yield names
    finally:
        for process in processes:
            stop(process)


def wait_for_workers(
    broker: str, names: tuple[str, ...], processes: list[subprocess.Popen[bytes]], folder: Path
) -> None:
    """Until every worker answers a ping on the broker (or one died: its log in the error)."""
    app = make_app({"broker": broker, "backend": broker})
    deadline = time.monotonic() + 120
    try:
        while True:
            replies = app.control.ping(timeout=1.0) or []
            answered = {name.split("@")[0] for reply in replies for name in reply}
            if answered >= set(names):
                return
            dead = [p for p in processes if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                logs = "\n".join(p.read_text()[-2000:] for p in folder.glob("*.log"))
                pytest.fail(f"Celery workers did not come up (answered: {answered}):\n{logs}")
    finally:
        app.close()


@pytest.fixture(scope="module")
def deployment(pg_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """Broker, databases, instance and workers, for the whole module."""
    folder = tmp_path_factory.mktemp("celery")
    with contextlib.ExitStack() as stack:
        broker = stack.enter_context(redis_server(folder / "redis.log"))
        db_dsn = stack.enter_context(database(pg_dsn, "celery_data"))
        dagster_dsn = stack.enter_context(database(pg_dsn, "celery_dagster"))
        home = folder / "dagster_home"
        home.mkdir()
        storage_url = (
            urllib.parse.urlsplit(dagster_dsn)._replace(scheme="postgresql+psycopg2").geturl()
        )
        (home / "dagster.yaml").write_text(dagster_yaml(storage_url, folder))
        config = folder / "celery.yaml"
        config.write_text(celery_yaml(broker))
        env = {
            location.BROKER_ENV: broker,
            location.DIR_ENV: str(folder),
            "ETL_ASSETS_PG_DSN": db_dsn,
            "DAGSTER_HOME": str(home),
        }
        patch = stack.enter_context(pytest.MonkeyPatch.context())
        for key, value in env.items():  # the run's process (this one) needs them too
            patch.setenv(key, value)
        worker_env = {
            **os.environ,
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # `celery` itself
            "PYTHONPATH": str(ROOT),  # the test code location
        }
        # The instance first: it creates Dagster's tables, which two workers starting at once
        # on an empty database would both try to create (CI: type "job_ticks" already exists).
        instance = stack.enter_context(dg.DagsterInstance.from_config(str(home)))
        names = stack.enter_context(celery_workers(worker_env, config, folder))
        yield Deployment(instance, db_dsn, broker, folder, names)
