"""Stops an embedded PostgreSQL whose every lease holder is gone.

Leases are released by the processes that hold them (Dagster's resource teardown, the
engine API's ``pool()``, ``atexit``), but a process that is SIGKILLed or crashes releases
nothing, and its server would run on forever. The server's start spawns this watchdog,
detached; every ``interval`` seconds it prunes dead holders and stops the server when
none is left, then exits. It also exits when the server was stopped by someone else.

    python -m etl_assets.postgres.watchdog DATA_DIR [INTERVAL_S]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from etl_assets.errors import ConfigurationError
from etl_assets.postgres.embedded import EmbeddedPostgres

__all__ = ["watch"]

DEFAULT_INTERVAL_S = 2.0


def watch(data_dir: Path, interval_s: float = DEFAULT_INTERVAL_S) -> None:
    server = EmbeddedPostgres(data_dir)
    while True:
        time.sleep(interval_s)
        try:
            if server.stop_if_abandoned():
                return
        except ConfigurationError:  # pg_ctl failed (data directory gone): nothing to watch
            return


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print(__doc__, file=sys.stderr)
        return 2
    watch(Path(args[0]), float(args[1]) if len(args) > 1 else DEFAULT_INTERVAL_S)
    return 0


if __name__ == "__main__":
    sys.exit(main())
