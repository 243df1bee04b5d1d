"""Loads among neighbours: a second load of the same day, each in a process of its own."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import threading
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from etl_assets.postgres.ledger import Ledger, LoadKey
from etl_assets.postgres.sql import qualified
from etl_assets.postgres.target import SchemaChange, columns_from_model
from etl_assets_tests.postgres import neighbour
from etl_assets_tests.postgres.helpers import DAY, Event, fetch, load, partition_audit
from etl_assets_tests.postgres.test_lease import abandoned_by_cleanup

STATS: dict[str, float] = {}  # the figures of the neighbour tests, printed with -s
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


@dataclasses.dataclass
class Probe:
    """A reader of the whole table every second, each read bounded by statement_timeout."""

    dsn: str
    table: str
    timeout_s: float = 3.0
    reads: list[tuple[float, float, bool]] = dataclasses.field(default_factory=list)
    stop: threading.Event = dataclasses.field(default_factory=threading.Event)

    def run(self) -> None:
        asyncio.run(self._read())

    async def _read(self) -> None:
        conn = await asyncpg.connect(
            self.dsn, server_settings={"statement_timeout": f"{int(self.timeout_s * 1000)}"}
        )
        try:
            while not self.stop.is_set():
                began = time.monotonic()
                try:
                    await conn.fetchval(f"SELECT count(*) FROM {self.table}")
                    timed_out = False
                except asyncpg.QueryCanceledError:
                    timed_out = True
                self.reads.append((began, time.monotonic() - began, timed_out))
                await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - began)))
        finally:
            await conn.close()

    def during(self, start: float, end: float) -> list[tuple[float, float, bool]]:
        return [read for read in self.reads if start <= read[0] <= end]


class Reader(threading.Thread):
    """A BI session: BEGIN; SELECT count(*) FROM the table; then idle in transaction."""

    def __init__(self, dsn: str, table: str, hold_s: float) -> None:
        super().__init__(daemon=True)
        self.dsn, self.table, self.hold_s = dsn, table, hold_s
        self.pid: int | None = None
        self.ready = threading.Event()

    def run(self) -> None:
        asyncio.run(self._hold())

    async def _hold(self) -> None:
        conn = await asyncpg.connect(self.dsn, server_settings={"application_name": "bi-reader"})
        try:
            async with conn.transaction():
                self.pid = conn.get_server_pid()
                await conn.fetchval(f"SELECT count(*) FROM {self.table}")
                self.ready.set()
                await asyncio.sleep(self.hold_s)
        finally:
            await conn.close()


def started(thread: threading.Thread) -> threading.Thread:
    thread.start()
    return thread


@pytest.mark.timeout(300)
def test_a_publish_behind_a_long_reader_keeps_the_table_readable(pg_dsn: str, schema: str) -> None:
    """A reader holds its transaction open for 60 s: a new day attaches at once, a reload
    asks for its lock 2 s at a time and publishes when the reader ends; a probe reading
    every second (3 s statement timeout) is never timed out."""
    day2 = DAY + dt.timedelta(days=1)
    first = neighbour.outcome(neighbour.start(dsn=pg_dsn, schema=schema, load_id="d1", n=2_000))
    assert first["written"] == 2_000
    table = neighbour.target(schema).sql_name
    probe = Probe(pg_dsn, table)
    probing = started(threading.Thread(target=probe.run, daemon=True))
    reader = Reader(pg_dsn, table, hold_s=60)
    reader.start()
    assert reader.ready.wait(30)
    held_from = time.monotonic()
    try:
        new_day = neighbour.outcome(
            neighbour.start(dsn=pg_dsn, schema=schema, load_id="d2", n=2_000, day=day2.isoformat())
        )
        attached = time.monotonic()
        reload = neighbour.start(dsn=pg_dsn, schema=schema, load_id="d1-again", n=3_000, tag="r")
        reloaded = neighbour.outcome(reload, timeout=200)
        published = time.monotonic()
        reader.join(30)
    finally:
        probe.stop.set()
        probing.join(30)
    assert "error" not in new_day, new_day.get("message")
    assert new_day["written"] == 2_000
    assert attached - held_from < 30  # not behind the 60 s reader
    assert "error" not in reloaded, reloaded.get("message")
    assert reloaded["written"] == 3_000
    assert published - held_from >= 59  # it waited the reader out, no longer
    waits = [line for line in reloaded["stderr"].splitlines() if "publish waited" in line]
    assert waits, reloaded["stderr"][-2000:]
    assert (
        f"held by pid {reader.pid} (application_name 'bi-reader', state idle in transaction"
        in waits[0]
    )
    assert [read for read in probe.reads if read[2]] == []  # no probe ever timed out
    assert max(d for _, d, _ in probe.during(held_from, attached)) < 1.0
    slow = [d for _, d, _ in probe.during(attached, published) if d > 2.0 + 0.25]
    assert len(slow) <= 1, slow
    rows = asyncio.run(
        fetch(pg_dsn, f"SELECT data_date, count(*) FROM {table} GROUP BY 1 ORDER BY 1")
    )
    assert [tuple(r) for r in rows] == [(DAY, 3_000), (day2, 2_000)]
    STATS.update(
        probes=len(probe.reads),
        probe_max_s=max(d for _, d, _ in probe.reads),
        probes_over_lock_timeout=len(slow),
        attach_s=attached - held_from,
        reload_waited_s=published - held_from,
        waits_logged=len(waits),
    )
    print(f"\nreader-neighbour figures: {STATS}")


def test_a_publish_whose_lock_budget_runs_out_behind_a_reader_fails_naming_it(
    pg_dsn: str, schema: str
) -> None:
    """Budget spent behind a reader: the load fails naming the reader's pid and the fix;
    nothing published, the last published rows untouched, the staged rows kept."""
    first = neighbour.outcome(neighbour.start(dsn=pg_dsn, schema=schema, load_id="d1", n=500))
    assert first["written"] == 500
    table = neighbour.target(schema).sql_name
    reader = Reader(pg_dsn, table, hold_s=30)
    reader.start()
    assert reader.ready.wait(30)
    blocked = neighbour.outcome(
        neighbour.start(
            dsn=pg_dsn, schema=schema, load_id="d1-again", n=700, tag="r",
            lock_timeout_s=1, lock_wait_budget_s=4,
        )
    )  # fmt: skip
    assert blocked["error"] == "PublishBlockedError"
    assert f"behind pid {reader.pid} (application_name 'bi-reader'" in blocked["message"]
    assert "lock_wait_budget_s=4" in blocked["message"]
    assert "Nothing was published" in blocked["message"]
    assert load_status(pg_dsn, schema, "d1-again") == "failed"
    rows = asyncio.run(fetch(pg_dsn, f"SELECT count(*), min(user_name) FROM {table}"))
    assert tuple(rows[0]) == (500, "u0")
    staged = asyncio.run(
        fetch(
            pg_dsn,
            f"SELECT staging_table FROM {qualified(schema, 'partition_loads')} "
            "WHERE load_id = 'd1-again'",
        )
    )[0][0]
    kept = asyncio.run(fetch(pg_dsn, f"SELECT count(*) FROM {qualified(schema, staged)}"))
    assert kept[0][0] == 700


@pytest.mark.timeout(480)
def test_slow_sources_keep_their_leases_while_cleanup_runs_every_10_s(
    pg_dsn: str, bouncer_transaction: str, schema: str
) -> None:
    """A source pausing 1 s per 100 records for over 3 minutes (direct), and one pausing
    150 s at once (transaction PgBouncer), with a cleanup every 10 s and a second load of
    the pausing day meanwhile: nothing is abandoned, all three publish exactly."""
    day2 = (DAY + dt.timedelta(days=1)).isoformat()
    steady = neighbour.start(
        dsn=pg_dsn, schema=schema, load_id="steady", n=18_500, pause_every=100, pause_s=1.0
    )
    sleeper = neighbour.start(
        dsn=bouncer_transaction, schema=schema, load_id="sleeper", day=day2, n=1_000,
        pause_at=500, pause_s=150.0,
    )  # fmt: skip
    began = time.monotonic()
    abandoned: list[str] = []
    second: dict[str, object] = {}
    try:
        while steady.poll() is None or sleeper.poll() is None:
            assert time.monotonic() - began < 420, "the slow loads did not end in 7 minutes"
            abandoned += abandoned_by_cleanup(pg_dsn, schema)
            if not second and time.monotonic() - began > 30:  # inside the sleeper's pause
                assert load_status(pg_dsn, schema, "sleeper") == "loading"
                second = neighbour.outcome(
                    neighbour.start(dsn=pg_dsn, schema=schema, load_id="second", day=day2, n=300)
                )
            time.sleep(10)
        steady_done, sleeper_done = neighbour.outcome(steady), neighbour.outcome(sleeper)
    finally:
        steady.kill()
        sleeper.kill()
    elapsed = time.monotonic() - began
    assert abandoned == []
    assert "error" not in steady_done, steady_done.get("message")
    assert "error" not in sleeper_done, sleeper_done.get("message")
    assert (second.get("error"), second.get("written")) == (None, 300)
    assert (steady_done["written"], sleeper_done["written"]) == (18_500, 1_000)
    assert steady_done["elapsed_s"] > 180  # it really was slow for over 3 minutes
    target = neighbour.target(schema)
    for day, load_id, rows in (
        (DAY, "steady", 18_500),
        (dt.date.fromisoformat(day2), "sleeper", 1_000),
    ):
        audit = asyncio.run(partition_audit(pg_dsn, target, day, schema))
        assert (audit.problems, audit.load_id, audit.in_table) == ((), load_id, rows)
    STATS.update(slow_wall_s=elapsed, steady_elapsed_s=steady_done["elapsed_s"])
    print(f"\nslow-source figures: {STATS}")


class EventPlus(Event):
    """The model of a change deployed mid-backfill: one more field."""

    extra4: str | None = None


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_running_load_publishes_after_another_load_and_a_dba_add_columns(
    pg_dsn: str, schema: str, tmp_path: Path
) -> None:
    """A 1M-row replace load runs while another day's load adds ``extra4`` (add_columns)
    and a DBA adds a nullable column and one with a DEFAULT: it publishes every row, the
    new columns NULL (or the default) for its day, and both days' checks pass."""
    gate = tmp_path / "go"
    big = neighbour.start(
        dsn=pg_dsn, schema=schema, load_id="big", n=1_000_000, bad=[3], batch_size=25_000,
        gate=str(gate), gate_after=200_000,
    )  # fmt: skip
    try:
        wait_for_letters(pg_dsn, schema, "big", 1)
        table = neighbour.target(schema)
        plus = dataclasses.replace(
            table, columns=columns_from_model(EventPlus), on_schema_change=SchemaChange.ADD_COLUMNS
        )
        day2 = DAY + dt.timedelta(days=1)
        rows = [
            EventPlus(event_id=i, user_name=f"n{i}", amount=i, extra4=f"e{i}") for i in range(500)
        ]
        other = asyncio.run(load(pg_dsn, plus, rows, load_id="other", day=day2, model=EventPlus))
        assert (other.written, other.columns_added) == (500, ("extra4",))
        asyncio.run(
            fetch(
                pg_dsn,
                f"ALTER TABLE {table.sql_name} ADD COLUMN dba_note text, "
                "ADD COLUMN dba_flag boolean NOT NULL DEFAULT false",
            )
        )
        assert load_status(pg_dsn, schema, "big") == "loading"
        gate.touch()
        done = neighbour.outcome(big, timeout=300)
    finally:
        big.kill()
    assert "error" not in done, done.get("message")
    assert (done["written"], done["dead_lettered"]) == (999_999, 1)
    counts = asyncio.run(
        fetch(
            pg_dsn,
            f"SELECT data_date, count(*), count(extra4), count(dba_note), "
            f"count(*) FILTER (WHERE NOT dba_flag) FROM {table.sql_name} GROUP BY 1 ORDER BY 1",
        )
    )
    assert [tuple(r) for r in counts] == [(DAY, 999_999, 0, 0, 999_999), (day2, 500, 500, 0, 500)]
    for day, load_id in ((DAY, "big"), (day2, "other")):
        audit = asyncio.run(partition_audit(pg_dsn, table, day, schema))
        assert (audit.problems, audit.load_id) == ((), load_id)


def test_a_concurrent_change_staging_cannot_follow_is_refused_by_name(
    pg_dsn: str, schema: str, tmp_path: Path
) -> None:
    """A NOT NULL column without a DEFAULT added while a load runs: the publish is refused
    naming it and the fix, nothing published, the staged rows kept."""
    gate = tmp_path / "go"
    running = neighbour.start(
        dsn=pg_dsn, schema=schema, load_id="run", n=600, bad=[3], gate=str(gate), gate_after=100
    )
    try:
        wait_for_letters(pg_dsn, schema, "run", 1)
        table = neighbour.target(schema).sql_name
        asyncio.run(fetch(pg_dsn, f"ALTER TABLE {table} ADD COLUMN must integer NOT NULL"))
        gate.touch()
        done = neighbour.outcome(running)
    finally:
        running.kill()
    assert done["error"] == "SchemaChangedError"
    assert (
        f"{neighbour.target(schema).name} changed while this load ran, in a way its staged "
        'rows cannot follow: column "must" (integer) was added NOT NULL without a DEFAULT. '
        "Nothing was published"
    ) in done["message"]
    assert load_status(pg_dsn, schema, "run") == "failed"
    assert asyncio.run(fetch(pg_dsn, f"SELECT count(*) FROM {table}"))[0][0] == 0


def test_a_publish_behind_another_publish_of_the_partition_names_it(
    pg_dsn: str, schema: str
) -> None:
    """A publish that cannot get the partition's publish lock (another publish of the day
    still running) names the session holding it when its budget runs out."""
    first = neighbour.outcome(neighbour.start(dsn=pg_dsn, schema=schema, load_id="d1", n=200))
    assert first["written"] == 200
    target = neighbour.target(schema)
    lock = Ledger(schema).publish_lock(LoadKey(target.name, DAY.isoformat(), "any"))

    async def blocked_behind_a_publish() -> tuple[int, dict[str, Any]]:
        conn = await asyncpg.connect(pg_dsn)
        try:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", *lock)
                again = neighbour.start(
                    dsn=pg_dsn, schema=schema, load_id="d1-again", n=300,
                    lock_timeout_s=0.5, lock_wait_budget_s=2,
                )  # fmt: skip
                done = await asyncio.to_thread(neighbour.outcome, again)
            return conn.get_server_pid(), done
        finally:
            await conn.close()

    holder, done = asyncio.run(blocked_behind_a_publish())
    assert done["error"] == "PublishBlockedError"
    assert f"behind pid {holder} (application_name ''" in done["message"]
    rows = asyncio.run(fetch(pg_dsn, f"SELECT count(*) FROM {target.sql_name}"))
    assert rows[0][0] == 200
