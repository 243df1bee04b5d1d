"""Loads among neighbours: a second load of the same day, each in a process of its own."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg
import pytest

from etl_assets.postgres.ledger import Ledger, LoadKey
from etl_assets.postgres.sql import qualified
from etl_assets_tests.postgres import neighbour
from etl_assets_tests.postgres.helpers import DAY, fetch, partition_audit

BAD = [3, 17, 42, 61, 99]  # all in the first batch of 100: committed while the load runs


def wait_for_letters(dsn: str, schema: str, load_id: str, count: int) -> None:
    """Until ``count`` letters of the load are committed (60 s at most)."""
    deadline = time.monotonic() + 60
    letters = qualified(schema, "dead_letters")
    while time.monotonic() < deadline:
        if asyncio.run(fetch(dsn, "SELECT to_regclass($1) IS NOT NULL", letters))[0][0]:
            sql = f"SELECT count(*) FROM {letters} WHERE load_id = $1"
            if asyncio.run(fetch(dsn, sql, load_id))[0][0] >= count:
                return
        time.sleep(0.2)
    raise AssertionError(f"load {load_id} committed fewer than {count} letters in 60 s")


def letter_states(dsn: str, schema: str) -> dict[str, list[tuple[int, str]]]:
    rows = asyncio.run(
        fetch(
            dsn,
            f"SELECT load_id, record_no, status FROM {qualified(schema, 'dead_letters')} "
            "ORDER BY load_id, record_no",
        )
    )
    states: dict[str, list[tuple[int, str]]] = {}
    for load_id, record_no, status in rows:
        states.setdefault(load_id, []).append((record_no, status))
    return states


def load_status(dsn: str, schema: str, load_id: str) -> str:
    sql = f"SELECT status FROM {qualified(schema, 'partition_loads')} WHERE load_id = $1"
    status: str = asyncio.run(fetch(dsn, sql, load_id))[0][0]
    return status


def listed(dsn: str, schema: str) -> tuple[str, list[int]]:
    """What ``etl-assets-dead-letters list`` shows: the current load's open letters."""

    async def read() -> tuple[str, list[int]]:
        ledger, name = Ledger(schema), neighbour.target(schema).name
        conn = await asyncpg.connect(dsn)
        try:
            load = await ledger.current_load(conn, name, DAY.isoformat())
            key = LoadKey(name, DAY.isoformat(), load["load_id"])
            letters = await ledger.open_letters(conn, key, after_id=0, limit=100)
        finally:
            await conn.close()
        ids = [r["id"] for r in letters]
        nos = await fetch(
            dsn,
            f"SELECT record_no FROM {qualified(schema, 'dead_letters')} "
            "WHERE id = ANY($1::bigint[]) ORDER BY record_no",
            ids,
        )
        return key.load_id, [r[0] for r in nos]

    return asyncio.run(read())


@pytest.mark.parametrize(
    "last_started_first", [True, False], ids=["last-started-first", "last-started-second"]
)
@pytest.mark.parametrize("through", ["direct", "transaction-pgbouncer"])
def test_overlapping_loads_of_one_day_keep_every_rejected_record_of_the_published_load(
    request: pytest.FixtureRequest,
    pg_dsn: str,
    schema: str,
    tmp_path: Path,
    through: str,
    last_started_first: bool,
) -> None:
    """Two loads of one day with 5 bad records each overlap; the first to publish leaves
    the running load's letters alone, so the last publisher's 5 are open and listed."""
    dsn = pg_dsn if through == "direct" else request.getfixturevalue("bouncer_transaction")
    gates = {name: tmp_path / f"{name}.go" for name in ("first", "last")}

    def begin(name: str) -> neighbour.subprocess.Popen[str]:
        return neighbour.start(
            dsn=dsn, schema=schema, load_id=name, tag=name, n=3_000, bad=BAD,
            gate=str(gates[name]), gate_after=100,
        )  # fmt: skip

    order = ["last", "first"] if last_started_first else ["first", "last"]
    processes = {}
    try:
        for name in order:
            processes[name] = begin(name)
            wait_for_letters(pg_dsn, schema, name, len(BAD))
        gates["first"].touch()
        first = neighbour.outcome(processes["first"])
        assert "error" not in first, first.get("message")
        assert (first["written"], first["dead_lettered"]) == (2995, 5)
        assert load_status(pg_dsn, schema, "last") == "loading"  # the overlap really happened
        assert letter_states(pg_dsn, schema)["last"] == [(no, "pending") for no in BAD]
        gates["last"].touch()
        last = neighbour.outcome(processes["last"])
    finally:
        for process in processes.values():
            process.kill()
    assert "error" not in last, last.get("message")
    assert (last["written"], last["dead_lettered"]) == (2995, 5)
    assert letter_states(pg_dsn, schema) == {
        "first": [(no, "superseded") for no in BAD],  # its rows were replaced
        "last": [(no, "open") for no in BAD],
    }
    assert listed(pg_dsn, schema) == ("last", BAD)
    audit = asyncio.run(partition_audit(pg_dsn, neighbour.target(schema), DAY, schema))
    assert (audit.problems, audit.load_id, audit.in_table) == ((), "last", 2995)
    assert (audit.letters_open, audit.letters_unfindable) == (5, 0)
    tags = asyncio.run(
        fetch(
            pg_dsn, f"SELECT DISTINCT left(user_name, 4) FROM {neighbour.target(schema).sql_name}"
        )
    )
    assert [r[0] for r in tags] == ["last"]


def test_the_blocking_check_fails_when_the_published_load_has_letters_no_one_can_find(
    pg_dsn: str, schema: str
) -> None:
    """The old symptom (the published load's letters superseded) fails the check, by status."""
    done = neighbour.outcome(
        neighbour.start(dsn=pg_dsn, schema=schema, load_id="only", n=300, bad=BAD)
    )
    assert (done["written"], done["dead_lettered"]) == (295, 5)
    letters = qualified(schema, "dead_letters")
    asyncio.run(
        fetch(pg_dsn, f"UPDATE {letters} SET status = 'superseded' WHERE record_no IN (3, 17, 42)")
    )
    audit = asyncio.run(partition_audit(pg_dsn, neighbour.target(schema), DAY, schema))
    assert (audit.letters_open, audit.letters_unfindable, audit.dead_letter_rows) == (2, 3, 5)
    assert audit.problems == (
        "3 dead letter(s) of load only are pending or superseded although its rows are the "
        "table's: rejected records that neither the table nor the open queue holds (list, "
        "export and replay cannot see them)",
    )
