"""A load in a process of its own, with the source a neighbour test needs.

    python -m etl_assets_tests.postgres.neighbour '{"dsn": ..., "schema": ..., "n": ...}'

Prints the load's report as one JSON line and exits 0, or prints the error's class and
message and exits 1. The source: ``n`` records of the helpers' ``Event``, validated by
it, with, as asked:

* ``bad``: record numbers whose ``amount`` is not a number (dead letters at the edge);
* ``gate`` / ``gate_after``: past that record, each record waits 20 ms while the gate
  file does not exist (the loop still runs between slices, so batches commit, slowly);
* ``pause_every`` / ``pause_s``: a pause of ``pause_s`` after every ``pause_every`` records;
* ``pause_at`` / ``pause_s``: one pause, before that record.

``start`` runs it in a new process, ``outcome`` waits for what it printed (and adds
what it logged, as ``stderr``). ``lease_ttl_s``, ``lock_timeout_s`` and
``lock_wait_budget_s`` are passed on to ``LoadSettings`` when given.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from etl_assets.errors import EtlError
from etl_assets.postgres.loader import LoadSettings, load_partition
from etl_assets.postgres.resource import PostgresResource
from etl_assets.postgres.target import TableTarget, WriteMode, columns_from_model
from etl_assets_tests.postgres.helpers import DAY, Event


def target(schema: str, mode: WriteMode = WriteMode.REPLACE) -> TableTarget:
    """``events`` with the columns of the helpers' ``Event`` (validated at the edge)."""
    return TableTarget(
        schema=schema,
        table="events",
        columns=columns_from_model(Event),
        mode=mode,
        primary_key=("data_date", "event_id"),
    )


def source(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    bad = set(spec.get("bad", ()))
    gate = Path(spec["gate"]) if spec.get("gate") else None
    every, at, pause = spec.get("pause_every"), spec.get("pause_at"), spec.get("pause_s", 0.0)
    tag = spec.get("tag", "u")
    for i in range(spec["n"]):
        if gate is not None and i >= spec.get("gate_after", 0) and not gate.exists():
            time.sleep(0.02)
        if (every and i and i % every == 0) or i == at:
            time.sleep(pause)
        yield {"event_id": i, "user_name": f"{tag}{i}", "amount": "n/a" if i in bad else i / 2}


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    settings = LoadSettings(
        ledger_schema=spec["schema"],
        batch_size=spec.get("batch_size", 100),
        max_dead_letter_ratio=0.5,
        **{
            k: spec[k] for k in ("lease_ttl_s", "lock_timeout_s", "lock_wait_budget_s") if k in spec
        },
    )
    day = dt.date.fromisoformat(spec["day"]) if "day" in spec else DAY
    async with PostgresResource(dsn=spec["dsn"]).pool() as pool:
        report = await load_partition(
            pool, target(spec["schema"], WriteMode(spec.get("mode", "replace"))), day,
            source(spec), load_id=spec["load_id"], model=Event,
            settings=settings,
        )  # fmt: skip
    return dataclasses.asdict(report)


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    try:
        report = asyncio.run(run(spec))
    except EtlError as exc:
        print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
        return 1
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


def start(**spec: Any) -> subprocess.Popen[str]:
    """This module's load in a new process (``spec`` as documented above)."""
    return subprocess.Popen(
        [sys.executable, "-m", "etl_assets_tests.postgres.neighbour", json.dumps(spec)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def outcome(process: subprocess.Popen[str], timeout: float = 120) -> dict[str, Any]:
    """The load's report (or error) once its process ended; its stderr if it crashed."""
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        process.kill()
    lines = out.strip().splitlines()
    assert process.returncode in (0, 1), f"rc {process.returncode}: {err[-3000:]}"
    assert lines, f"no output: {err[-3000:]}"
    result: dict[str, Any] = json.loads(lines[-1])
    return {**result, "stderr": err}
