"""The key digest: computed alike by client and server, and count-preserving corruption named."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import uuid
from typing import Any

import asyncpg
import numpy as np
import pyarrow as pa
import pytest

from etl_assets.postgres import key_scan
from etl_assets.postgres.arrow_copy import ArrowRows
from etl_assets.postgres.key_audit import KeyAudit, hash_query, verify_keys
from etl_assets.postgres.key_digest import CELLS, KeyCells, KeySpec, mix, mix_int, unmix
from etl_assets.postgres.key_scan import table_cells
from etl_assets.postgres.ledger import Ledger
from etl_assets.postgres.loader import LoadSettings
from etl_assets.postgres.replay import replay_dead_letters
from etl_assets.postgres.resource import PostgresResource
from etl_assets.postgres.sql import qualified, quote_ident
from etl_assets.postgres.target import Column, TableTarget, WriteMode, columns_from_model
from etl_assets_tests.postgres.helpers import (
    DAY,
    Event,
    events_target,
    execute,
    fetch,
    load,
    partition_audit,
    records,
)

M64 = (1 << 64) - 1
STAMP_ZERO_UTC = dt.datetime(1970, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=3)))


def spec_of(target: TableTarget) -> KeySpec:
    spec = KeySpec.for_target(target, {c.name: c.pg_type for c in target.columns})
    assert isinstance(spec, KeySpec), spec
    return spec


def all_kinds_target(schema: str, primary_key: tuple[str, ...]) -> TableTarget:
    return TableTarget(
        schema=schema,
        table="kinds",
        columns=(
            Column("id", "bigint"),
            Column("small", "smallint"),
            Column("name", "text"),
            Column("code", "varchar(40)"),
            Column("born", "date"),
            Column("uid", "uuid"),
            Column("at", "timestamptz"),
            Column("wall", "timestamp"),
        ),
        primary_key=("data_date", *primary_key),
    )


def all_kinds_rows(n: int, seed: int = 7) -> list[tuple[Any, ...]]:
    rng = random.Random(seed)
    return [
        (
            rng.randrange(-(2**63), 2**63),
            rng.randrange(-(2**15), 2**15),
            f"naïve-{rng.randrange(10**9)}-✓",
            f"c{i % 50}",  # repeats, like a file name in a (file, line) key
            dt.date(1900, 1, 1) + dt.timedelta(days=rng.randrange(0, 80_000)),
            uuid.UUID(int=rng.getrandbits(128)),
            STAMP_ZERO_UTC + dt.timedelta(microseconds=rng.randrange(-(2**55), 2**55)),
            dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=rng.randrange(-(2**55), 2**55)),
            DAY,
        )
        for i in range(n)
    ]


ALL_KEYS = ("id", "small", "name", "code", "born", "uid", "at", "wall")


# --- pure ---------------------------------------------------------------------------------


def test_unmix_inverts_mix_and_numpy_matches_python() -> None:
    """The finaliser is a bijection (so one-integer keys can be recovered) in both forms."""
    values = [0, 1, 17, M64, 1 << 63, *(random.Random(1).getrandbits(64) for _ in range(500))]
    vectorised = mix(np.array(values, dtype=np.uint64))
    assert [int(v) for v in vectorised] == [mix_int(v) for v in values]
    assert [unmix(mix_int(v)) for v in values] == values


def test_vectorised_hashes_match_the_row_by_row_reference() -> None:
    """Records, odd values (None, a str in an int column) and Arrow batches hash alike."""
    target = all_kinds_target("s", ALL_KEYS)
    spec = spec_of(target)
    rows = all_kinds_rows(2_000)
    odd = [
        (None, 1, "a", "b", DAY, uuid.uuid4(), None, None, DAY),
        ("7", 1, 5, None, None, "not a uuid", dt.datetime(2024, 1, 1), DAY, DAY),
        ([1, 2], (3,), ["x"], b"y", "2024-01-01", 42, "2024-01-01", 5, DAY),
        (np.int64(9), np.int16(2), "\udcff", "b", dt.datetime(2024, 1, 1, 5), str(uuid.uuid4()),
         dt.datetime(2024, 1, 1, tzinfo=dt.UTC), dt.datetime(2024, 1, 1, tzinfo=dt.UTC), DAY),
    ]  # fmt: skip
    for sample in (rows, [*rows, *odd], odd):
        assert [int(h) for h in spec.hashes(sample)] == [spec.row_hash(r) for r in sample]
    columns = list(zip(*rows, strict=True))
    batch = pa.RecordBatch.from_arrays(
        [
            pa.array(columns[0], pa.int64()),
            pa.array(columns[1], pa.int16()),
            pa.array(columns[2], pa.string()),
            pa.array([*columns[3][:-1], None], pa.string()),  # a null: the reference path
            pa.array(columns[4], pa.date32()),
            pa.array([str(u) for u in columns[5]], pa.string()),
            pa.array(columns[6], pa.timestamp("us", tz="UTC")),
            pa.array(columns[7], pa.timestamp("us")),
            pa.array(columns[8], pa.date32()),
        ],
        names=[*target.row_columns],
    )
    arrow = ArrowRows(batch)
    assert [int(h) for h in spec.hashes(arrow)] == [spec.row_hash(r) for r in arrow]


def test_cells_are_order_independent_and_see_a_duplicate() -> None:
    """Shuffled rows give the same cells; a key written twice does not cancel out (XOR would)."""
    spec = spec_of(events_target("s"))
    rows = [(i, "x", 0.5, DAY) for i in range(5_000)]
    cells = KeyCells.of(spec.hashes(rows))
    shuffled = rows[:]
    random.Random(3).shuffle(shuffled)
    again = KeyCells.of(spec.hashes(shuffled))
    assert again.to_db() == cells.to_db()
    doubled = KeyCells.of(spec.hashes([*rows, rows[17], rows[17]]))
    assert doubled.keys == 5_002
    assert doubled.to_db() != cells.to_db()
    assert KeyCells.from_db(cells.to_db()).to_db() == cells.to_db()
    assert len(cells.to_db()) == 3 * 2 * CELLS  # count, sum, squares; two tables of cells


def test_a_key_the_digest_cannot_hash_alike_means_counts_only() -> None:
    """numeric keys, timestamps of reduced precision, or no key at all: no digest, and the
    reason says so."""
    base = events_target("s")
    reason = KeySpec.for_target(base, {"event_id": "numeric(12,2)"})
    assert reason == (
        "key column 'event_id' has type 'numeric(12,2)', which the key digest cannot hash "
        "identically in Python and SQL (it covers integer, date, timestamp, text, varchar and "
        "uuid key columns)"
    )
    rounded = KeySpec.for_target(base, {"event_id": "timestamp(3) with time zone"})
    assert rounded == (
        "key column 'event_id' has type 'timestamp(3) with time zone': its precision rounds "
        "the microseconds sent, so the key digest cannot hash what was stored"
    )
    keyless = TableTarget("s", "t", base.columns, partition_column="data date")
    assert KeySpec.for_target(keyless, {}) == (
        "s.t has no primary key besides the partition column"
    )


# --- against the server ------------------------------------------------------------------


async def _verify(dsn: str, target: TableTarget, day: dt.date = DAY) -> KeyAudit:
    conn = await asyncpg.connect(dsn)
    try:
        return await verify_keys(conn, Ledger(target.schema), target, day)
    finally:
        await conn.close()


def test_the_table_scan_and_the_sql_hash_agree_with_the_writer(
    pg_dsn: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every supported kind (bigint, smallint, text, varchar, date, uuid, timestamptz,
    timestamp), alone and composite: the cells of the key scan (words COPYed, hashed by
    numpy) and the SQL hash (which finds foreign keys) are the writer's, and the scan
    counts the partition's rows."""

    async def scenario() -> None:
        target = all_kinds_target(schema, ALL_KEYS)
        rows = all_kinds_rows(3_000)
        await execute(pg_dsn, f"CREATE SCHEMA {quote_ident(schema)}")
        await execute(pg_dsn, target.create_table_sql().split(" PARTITION BY", 1)[0])
        conn = await asyncpg.connect(pg_dsn)
        try:
            await conn.copy_records_to_table(
                target.table, schema_name=schema, records=rows, columns=list(target.row_columns)
            )
            for key in [(c,) for c in ALL_KEYS] + [ALL_KEYS]:
                spec = spec_of(all_kinds_target(schema, key))
                client = KeyCells.of(spec.hashes(rows))
                server = await table_cells(conn, spec, target, DAY)
                assert server.to_db() == client.to_db(), key
                assert server.keys == len(rows)
                in_sql = await conn.fetch(hash_query(spec, target), DAY)
                assert sorted(r["h"] & M64 for r in in_sql) == sorted(map(int, spec.hashes(rows)))
            # Infinite timestamps (no Python value, so never written by a load) are hashed
            # alike on both sides, so a foreign one is found by its hash.
            await conn.execute(
                f"UPDATE {target.sql_name} SET at = 'infinity', wall = '-infinity' "
                "WHERE id IN (SELECT id FROM " + target.sql_name + " LIMIT 2)"
            )
            for key in [("at",), ("wall",)]:
                spec = spec_of(all_kinds_target(schema, key))
                hashes = [r["h"] & M64 for r in await conn.fetch(hash_query(spec, target), DAY)]
                expected = KeyCells.of(np.array(hashes, dtype=np.uint64))
                assert (await table_cells(conn, spec, target, DAY)).to_db() == expected.to_db()
        finally:
            await conn.close()

    monkeypatch.setattr(key_scan, "SLICE_BYTES", 97)  # many slices, rows cut across chunks
    asyncio.run(scenario())


def _swap_trigger(schema: str, target: TableTarget, drop: int, foreign: int) -> str:
    """A row trigger that swallows one row and inserts a foreign one: counts stay equal."""
    fn = qualified(schema, "swap_one")
    return f"""
        CREATE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
          IF NEW.event_id = {drop} THEN
            INSERT INTO {target.sql_name} (event_id, "user name", amount, "data date")
              VALUES ({foreign}, 'intruder', 0, NEW."data date");
            RETURN NULL;
          END IF;
          RETURN NEW;
        END $$;
        CREATE TRIGGER swap_one BEFORE INSERT ON {target.sql_name}
          FOR EACH ROW EXECUTE FUNCTION {fn}();"""


def test_a_row_trigger_that_swaps_a_row_during_the_load_is_named(pg_dsn: str, schema: str) -> None:
    """Plain table (publish passes rows through its triggers): counts agree, keys do not."""
    target = events_target(schema)
    plain = target.create_table_sql().split(" PARTITION BY", 1)[0]

    async def scenario() -> None:
        await execute(pg_dsn, f"CREATE SCHEMA {quote_ident(schema)}; {plain}")
        await execute(pg_dsn, _swap_trigger(schema, target, drop=17, foreign=900_001))
        report = await load(pg_dsn, target, records(5_000))
        assert (report.written, report.dead_lettered) == (5_000, 0)
        counted = await partition_audit(pg_dsn, target, ledger_schema=schema)
        assert counted.ok
        assert counted.in_table == 5_000
        keys = await _verify(pg_dsn, target)
        assert keys.problems == (
            "1 key(s) the ledger accounts for are not in the table: (event_id=17)",
            "1 key(s) in the table were never written by a load: (event_id=900001)",
        )
        assert keys.metadata() == {
            "key_digest": "checked",
            "keys_missing": 1,
            "keys_foreign": 1,
            "key_cells_unresolved": 0,
        }

    asyncio.run(scenario())


def test_an_out_of_band_delete_and_insert_after_the_load_is_named(pg_dsn: str, schema: str) -> None:
    """Partitioned target, DELETE of one row and INSERT of a foreign one after publishing."""
    target = events_target(schema)

    async def scenario() -> None:
        await load(pg_dsn, target, records(20_000), batch_size=3_000)
        assert (await _verify(pg_dsn, target)).problems == ()
        await execute(
            pg_dsn,
            f"DELETE FROM {target.sql_name} WHERE event_id = 4242; "
            f"INSERT INTO {target.sql_name} VALUES (-77, 'ghost', 1.5, '{DAY.isoformat()}')",
        )
        assert (await partition_audit(pg_dsn, target, ledger_schema=schema)).ok
        keys = await _verify(pg_dsn, target)
        assert keys.missing == ("event_id=4242",)
        assert keys.foreign == ("event_id=-77",)
        assert (keys.keys_in_table, keys.keys_in_ledger, keys.unresolved) == (20_000, 20_000, 0)

    asyncio.run(scenario())


def test_text_keys_name_the_foreign_key_and_give_the_missing_one_by_hash(
    pg_dsn: str, schema: str
) -> None:
    """A (file, line) key cannot be recovered from its hash: the missing one is given by hash."""
    target = TableTarget(
        schema=schema,
        table="lines",
        columns=(
            Column("source_file", "text"),
            Column("line_no", "integer"),
            Column("msg", "text"),
        ),
        primary_key=("data_date", "source_file", "line_no"),
    )
    rows = [{"source_file": f"f{i % 7}.log", "line_no": i, "msg": "m"} for i in range(3_000)]

    async def scenario() -> None:
        await load(pg_dsn, target, rows)
        await execute(
            pg_dsn,
            f"DELETE FROM {target.sql_name} WHERE source_file = 'f3.log' AND line_no = 10; "
            f"INSERT INTO {target.sql_name} VALUES ('other.log', 1, 'x', '{DAY.isoformat()}')",
        )
        keys = await _verify(pg_dsn, target)
        missing_hash = spec_of(target).row_hash(("f3.log", 10, "m", DAY))
        assert keys.foreign == ("source_file='other.log', line_no=1",)
        assert keys.missing == (f"<key with hash {missing_hash:#018x}>",)

    asyncio.run(scenario())


def test_a_load_without_digests_is_checked_by_counts_only_and_says_so(
    pg_dsn: str, schema: str
) -> None:
    """Ledger rows from before the digest (NULL) are not a false alarm, nor a claimed check."""
    target = events_target(schema)

    async def scenario() -> None:
        await load(pg_dsn, target, records(2_500))
        ledger = Ledger(schema)
        await execute(pg_dsn, f"UPDATE {ledger.ledger} SET key_cells = NULL WHERE batch_no = 1")
        await execute(pg_dsn, f"DELETE FROM {target.sql_name} WHERE event_id = 5")
        await execute(pg_dsn, f"INSERT INTO {target.sql_name} VALUES (-5, 'x', 0, '{DAY}')")
        keys = await _verify(pg_dsn, target)
        assert keys.problems == ()
        assert keys.status == (
            "counts only: 1 of 3 batch(es) have no key digest "
            "(written before key digests existed, or with key_digest=False)"
        )

    asyncio.run(scenario())


def test_rows_refused_by_the_server_and_replayed_are_accounted_like_the_counts(
    pg_dsn: str, schema: str
) -> None:
    """A refused row leaves the load's digest; its replay adds it back under the replay's."""
    target = TableTarget(
        schema=schema,
        table="events",
        columns=columns_from_model(Event),
        primary_key=("data_date", "event_id"),
    )
    source = [Event(event_id=i, user_name=f"u{i}", amount=i) for i in range(1_000)]
    source[300].amount = -1.0  # refused by a CHECK (23514), replayed once it is dropped

    async def scenario() -> None:
        await execute(pg_dsn, f"CREATE SCHEMA {quote_ident(schema)}; {target.create_table_sql()}")
        await execute(
            pg_dsn, f"ALTER TABLE {target.sql_name} ADD CONSTRAINT pos CHECK (amount >= 0)"
        )
        await load(pg_dsn, target, source, model=Event)
        before = await _verify(pg_dsn, target)
        assert (before.status, before.keys_in_table, before.problems) == ("checked", 999, ())
        await execute(pg_dsn, f"ALTER TABLE {target.sql_name} DROP CONSTRAINT pos")
        async with PostgresResource(dsn=pg_dsn).pool() as pool:
            report = await replay_dead_letters(
                pool, target, DAY, load_id="replay-1", model=Event,
                settings=LoadSettings(ledger_schema=schema),
            )  # fmt: skip
        assert (report.replayed, report.written) == (1, 1)
        after = await _verify(pg_dsn, target)
        assert (after.status, after.keys_in_table, after.problems) == ("checked", 1_000, ())
        await execute(
            pg_dsn, f"UPDATE {target.sql_name} SET event_id = 100300 WHERE event_id = 300"
        )
        moved = await _verify(pg_dsn, target)
        assert (moved.missing, moved.foreign) == (("event_id=300",), ("event_id=100300",))

    asyncio.run(scenario())


def test_a_row_trigger_on_a_partitioned_parent_swapping_a_replayed_row_is_named(
    pg_dsn: str, schema: str
) -> None:
    """The trigger is cloned to the day's partition; the replay's COPY passes through it.

    An AFTER trigger that rewrites the key leaves COPY's count whole (a BEFORE trigger
    that swallows the row is already stopped by the batch's COPY-tag audit), so only the
    key digest can tell."""
    target = TableTarget(
        schema=schema,
        table="events",
        columns=columns_from_model(Event),
        primary_key=("data_date", "event_id"),
    )
    source = [Event(event_id=i, user_name=f"u{i}", amount=i) for i in range(1_000)]
    source[300].amount = -1.0
    fn = qualified(schema, "swap_replayed")

    async def scenario() -> None:
        await execute(pg_dsn, f"CREATE SCHEMA {quote_ident(schema)}; {target.create_table_sql()}")
        await execute(
            pg_dsn, f"ALTER TABLE {target.sql_name} ADD CONSTRAINT pos CHECK (amount >= 0)"
        )
        await load(pg_dsn, target, source, model=Event)
        await execute(
            pg_dsn,
            f"""ALTER TABLE {target.sql_name} DROP CONSTRAINT pos;
            CREATE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
              IF NEW.event_id = 300 THEN
                UPDATE {target.sql_name} SET event_id = 900300, user_name = 'intruder'
                  WHERE event_id = 300 AND data_date = NEW.data_date;
              END IF;
              RETURN NULL;
            END $$;
            CREATE TRIGGER swap_replayed AFTER INSERT ON {target.sql_name}
              FOR EACH ROW EXECUTE FUNCTION {fn}();""",
        )
        async with PostgresResource(dsn=pg_dsn).pool() as pool:
            report = await replay_dead_letters(
                pool, target, DAY, load_id="replay-1", model=Event,
                settings=LoadSettings(ledger_schema=schema),
            )  # fmt: skip
        assert (report.replayed, report.written) == (1, 1)
        counted = await partition_audit(pg_dsn, target, ledger_schema=schema)
        assert counted.ok
        assert (counted.in_table, counted.written, counted.replayed_in) == (1_000, 999, 1)
        keys = await _verify(pg_dsn, target)
        assert (keys.missing, keys.foreign) == (("event_id=300",), ("event_id=900300",))

    asyncio.run(scenario())


def test_an_arrow_load_is_digested_and_a_swap_named(pg_dsn: str, schema: str) -> None:
    """The columnar path's vectorised digest matches what the server recomputes."""
    target = events_target(schema)
    n = 30_000
    batch = pa.RecordBatch.from_pydict(
        {
            "event_id": pa.array(range(n), pa.int64()),
            "user name": pa.array([f"u{i}" for i in range(n)]),
            "amount": pa.array([i * 0.5 for i in range(n)]),
        }
    )

    async def scenario() -> None:
        await load(pg_dsn, target, pa.Table.from_batches([batch]), batch_size=10_000)
        assert (await _verify(pg_dsn, target)).status == "checked"
        await execute(
            pg_dsn,
            f"UPDATE {target.sql_name} SET event_id = 99999999 WHERE event_id = 12345",
        )
        keys = await _verify(pg_dsn, target)
        assert (keys.missing, keys.foreign) == (("event_id=12345",), ("event_id=99999999",))

    asyncio.run(scenario())


def test_an_upsert_partition_holding_earlier_keys_is_checked_by_counts_only(
    pg_dsn: str, schema: str
) -> None:
    """Keys of earlier upserts stay in the partition: the sums cannot separate them, it says so."""
    target = events_target(schema, WriteMode.UPSERT)

    async def scenario() -> None:
        await load(pg_dsn, target, records(100), load_id="first")
        assert (await _verify(pg_dsn, target)).status == "checked"
        await load(pg_dsn, target, records(50), load_id="second")
        keys = await _verify(pg_dsn, target)
        assert keys.problems == ()
        assert keys.status.startswith("counts only: the upsert partition holds 100 keys")

    asyncio.run(scenario())


def test_forty_swapped_keys_are_all_named_by_peeling(pg_dsn: str, schema: str) -> None:
    """80 differences collide in single cells; peeling the two tables names every one."""
    target = events_target(schema)

    async def scenario() -> None:
        await load(pg_dsn, target, records(10_000))
        await execute(
            pg_dsn,
            f"UPDATE {target.sql_name} SET event_id = event_id + 1000000 WHERE event_id % 250 = 7",
        )
        keys = await _verify(pg_dsn, target)
        moved = range(7, 10_000, 250)
        assert sorted(keys.missing) == sorted(f"event_id={i}" for i in moved)
        assert sorted(keys.foreign) == sorted(f"event_id={i + 1_000_000}" for i in moved)
        assert keys.unresolved == 0

    asyncio.run(scenario())


def test_many_swaps_are_reported_as_unresolved_cells_never_passed(pg_dsn: str, schema: str) -> None:
    """600 keys shifted: cells with several differences are counted, none is left green."""
    target = events_target(schema)

    async def scenario() -> None:
        await load(pg_dsn, target, records(5_000))
        await execute(
            pg_dsn, f"UPDATE {target.sql_name} SET event_id = event_id + 5000 WHERE event_id < 600"
        )
        keys = await _verify(pg_dsn, target)
        named = len(keys.missing) + len(keys.foreign)
        assert keys.problems
        assert keys.unresolved > 0
        assert set(keys.missing) <= {f"event_id={i}" for i in range(600)}
        assert set(keys.foreign) <= {f"event_id={i + 5000}" for i in range(600)}
        assert named + 2 * keys.unresolved <= 1_200
        rows = await fetch(pg_dsn, f"SELECT count(*) FROM {target.sql_name}")
        assert rows[0][0] == 5_000

    asyncio.run(scenario())


def test_a_load_with_the_digest_turned_off_is_checked_by_counts_and_says_why(
    pg_dsn: str, schema: str
) -> None:
    """``LoadSettings(key_digest=False)`` (a cost choice): no digest, never a claimed check."""
    target = events_target(schema)

    async def scenario() -> None:
        await load(pg_dsn, target, records(2_500), key_digest=False)
        keys = await _verify(pg_dsn, target)
        assert keys.problems == ()
        assert keys.status == (
            "counts only: 3 of 3 batch(es) have no key digest "
            "(written before key digests existed, or with key_digest=False)"
        )

    asyncio.run(scenario())
