"""What every fault scenario shares: a seeded poisoned source, the exact verdict, the report.

The verdict compares record keys, not counts: the table must hold exactly the source's
keys minus the dead-lettered ones, each once; the dead letters must be exactly the
poison records, each with an error; a run that succeeded must pass the partition audit
(the blocking check's logic); a run that failed must have failed with an EtlError or a
driver error, not hung; and no connection of ours may be left open.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from etl_assets.postgres.key_audit import KeyAudit, verify_keys
from etl_assets.postgres.ledger import Ledger
from etl_assets.postgres.resource import APPLICATION_NAME
from etl_assets.postgres.target import TableTarget
from etl_assets_tests.postgres.helpers import DAY, fetch, partition_audit

SOAK = os.environ.get("ETL_ASSETS_SOAK") == "1"
REPORT_ENV = "ETL_ASSETS_RELIABILITY_REPORT"


@dataclass(frozen=True, slots=True)
class Outcome:
    """One row of docs/RELIABILITY.md."""

    scenario: str
    faults: str
    records: int
    lost: int
    duplicated: int
    dead_lettered: int
    outcome: str
    recover_s: float
    seed: int


OUTCOMES: list[Outcome] = []


def seeded(name: str) -> tuple[int, random.Random]:
    """A seed per run (ETL_ASSETS_FAULT_SEED replays one), printed for the failure report."""
    seed = int(os.environ.get("ETL_ASSETS_FAULT_SEED") or random.SystemRandom().randrange(2**32))
    print(f"\n[faults] {name}: seed {seed} (replay with ETL_ASSETS_FAULT_SEED={seed})")
    return seed, random.Random(seed)


class PoisonedSource:
    """``n`` records; a share of them poison: a NUL byte (the server rejects it, 22021) or a
    missing column (the loader rejects it). Knows exactly which keys are poison."""

    def __init__(self, n: int, poison_rate: float, rng: random.Random) -> None:
        self.n = n
        count = round(n * poison_rate)
        self.poison = set(rng.sample(range(n), count))
        self._missing = {k for k in self.poison if k % 2}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(self.n):
            if i in self._missing:
                yield {"event_id": i, "user name": f"u{i}"}  # no amount
            elif i in self.poison:
                yield {"event_id": i, "user name": f"bad\x00{i}", "amount": i * 0.5}
            else:
                yield {"event_id": i, "user name": f"u{i}", "amount": i * 0.5}


class PoisonedFrames(PoisonedSource):
    """The same keys as Arrow batches of 5,000 rows; the poison is what a DataFrame carries:
    NUL in a string (22021), an amount below the table's CHECK (23514), a name too long
    for its varchar(20) (22001). All three are refused by the server inside the binary
    COPY, so isolation runs on COPY line numbers under the faults.
    """

    TABLE_CONSTRAINTS = (
        'ALTER TABLE {table} ALTER COLUMN "user name" TYPE varchar(20), '
        "ADD CONSTRAINT positive_amount CHECK (amount >= 0)"
    )

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        import pyarrow as pa

        for start in range(0, self.n, 5_000):
            keys = range(start, min(start + 5_000, self.n))
            names = [self._name(i) for i in keys]
            amounts = [-1.0 if i in self.poison and i % 3 == 1 else i * 0.5 for i in keys]
            yield pa.record_batch({"event_id": list(keys), "user name": names, "amount": amounts})

    def _name(self, i: int) -> str:
        if i in self.poison and i % 3 == 0:
            return f"bad\x00{i}"
        if i in self.poison and i % 3 == 2:
            return f"far too long a name {i}"
        return f"u{i}"


async def our_connections(dsn: str, settle_s: float = 5.0) -> int:
    """The package's connections still on the server, once closed ones had time to go.

    A closed or terminated connection's backend exits after the client has moved on, so
    it can show in ``pg_stat_activity`` for a few milliseconds more (CI saw 1 once). A
    count that stays above 0 for ``settle_s`` is returned as it is: a leak.
    """
    deadline = time.monotonic() + settle_s
    while True:
        rows = await fetch(
            dsn,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 "
            "AND pid <> pg_backend_pid()",
            APPLICATION_NAME,
        )
        count = int(rows[0][0])
        if count == 0 or time.monotonic() > deadline:
            return count
        await asyncio.sleep(0.05)


async def verdict(
    dsn: str,
    target: TableTarget,
    source: PoisonedSource,
    *,
    error: BaseException | None,
    load_id: str | None,
) -> tuple[int, int, int]:
    """(lost, duplicated, dead-lettered), after asserting every invariant that must hold."""
    exists = (await fetch(dsn, "SELECT to_regclass($1) IS NOT NULL", target.sql_name))[0][0]
    assert exists or error is not None, "a load that succeeded left no table"
    ids = (
        [
            r[0]
            for r in await fetch(
                dsn, f'SELECT event_id FROM {target.sql_name} WHERE "data date" = $1', DAY
            )
        ]
        if exists
        else []  # a load that failed in its prepare, before the table was created
    )
    duplicated = len(ids) - len(set(ids))
    assert duplicated == 0, f"{duplicated} duplicated keys"
    assert await our_connections(dsn) == 0, "connections leaked"
    if error is not None:
        assert not ids, "a failed first load must leave the partition unpublished"
        return 0, 0, 0
    letters = await fetch(
        dsn,
        f"SELECT (payload->>'event_id')::bigint, error_message "
        f"FROM {Ledger(target.schema).dead_letters} WHERE load_id = $1",
        load_id,
    )
    dead = {r[0] for r in letters}
    assert all(r[1] for r in letters), "a dead letter without an error"
    assert dead == source.poison, f"dead letters {len(dead)} != poison {len(source.poison)}"
    lost = set(range(source.n)) - dead - set(ids)
    assert not lost, f"{len(lost)} records lost, e.g. {sorted(lost)[:5]}"
    assert set(ids) == set(range(source.n)) - dead
    problems = (await partition_audit(dsn, target, ledger_schema=target.schema)).problems
    assert problems == (), problems
    keys = await key_audit(dsn, target)  # retried, resumed, isolated batches digest right too
    assert (keys.status, keys.problems) == ("checked", ()), keys
    return len(lost), duplicated, len(dead)


async def key_audit(dsn: str, target: TableTarget) -> KeyAudit:
    """The key digest's verdict on the partition (the key half of the blocking check)."""
    conn = await asyncpg.connect(dsn)
    try:
        return await verify_keys(conn, Ledger(target.schema), target, DAY)
    finally:
        await conn.close()


def record(
    scenario: str,
    faults: str,
    source: PoisonedSource | int,
    counts: tuple[int, int, int],
    error: BaseException | None,
    started: float,
    seed: int,
) -> None:
    outcome = (
        "succeeded, check passed"
        if error is None
        else f"failed loudly: {type(error).__name__}: {str(error)[:90]}"
    )
    n = source if isinstance(source, int) else source.n
    OUTCOMES.append(
        Outcome(scenario, faults, n, *counts, outcome, time.monotonic() - started, seed)
    )


def write_report(path: Path) -> None:
    lines = [
        "| scenario | faults injected | records | lost | duplicated | dead-lettered | outcome "
        "| time to recover (s) | seed |",
        "|---|---|---:|---:|---:|---:|---|---:|---:|",
        *(
            f"| {o.scenario} | {o.faults} | {o.records:,} | {o.lost} | {o.duplicated} | "
            f"{o.dead_lettered:,} | {o.outcome} | {o.recover_s:.1f} | {o.seed} |"
            for o in OUTCOMES
        ),
    ]
    path.write_text("\n".join(lines) + "\n")
