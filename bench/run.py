"""Benchmarks: the same records into the same table schema on the same PostgreSQL.

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python bench/run.py                      # 100k and 1M, 5 rounds (~15 minutes)
    .venv/bin/python bench/run.py --sizes 15193596 --paths raw_copy,etl_resilient,etl_validated
    .venv/bin/python bench/run.py --write docs/PERFORMANCE.md   # rewrite the results table

Each measurement runs in a fresh child process, so its peak RSS is its own and no
cache carries over. Rows/s count from the first record to the load being visible
(etl_assets: published, i.e. audited and swapped in), and every run is verified by a
``count(*)`` of the table afterwards: a path that loses rows is not a benchmark.
Ratios are against raw COPY measured in the same invocation (the machine is shared
and noisy; only ratios measured together compare). Up to 5M rows every size runs
``--rounds`` rounds (5 by default), each round every path once (interleaved, so a slow
minute of the machine hits all paths alike), and the figure is the median round;
above 5M rows one round.

Set ``ETL_ASSETS_BENCH_DSN`` to use an existing server; by default an embedded one is
started with its default settings in a temporary folder. ``BENCH_WRITERS`` and
``BENCH_BATCH_SIZE`` override the record paths' writers and batch size (by default the
package's own: ``LoadSettings()``). The frame paths always run the package's defaults.

    .venv/bin/python bench/run.py --sizes 1000000,15193596 \
        --paths source_only,raw_copy,etl_arrow,etl_pandas,polars_write_database,pandas_to_sql \
        --write docs/PERFORMANCE.md --block frames
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import operator
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from itertools import repeat
from pathlib import Path
from typing import Any

import asyncpg
import pydantic

DAY = dt.date(2024, 6, 1)
SCHEMA = "bench"
TABLE = "events"
COLUMNS = ("event_id", "kind", "amount", "created_at", "data_date")
KINDS = ("view", "click", "buy", "refund")
SEED_SCALE = 15_193_596
CREATE_PLAIN = f"""
    CREATE TABLE {SCHEMA}.{TABLE} (
        event_id bigint NOT NULL, kind text, amount double precision,
        created_at timestamptz, data_date date NOT NULL,
        PRIMARY KEY (data_date, event_id))"""


class Event(pydantic.BaseModel):
    event_id: int
    kind: str
    amount: float
    created_at: dt.datetime


def records(n: int) -> Iterator[dict[str, Any]]:
    """The records every path is handed: dicts, as an asset yields them (deterministic).

    Generating them is part of every path's cost; the ``source_only`` row shows it alone.
    """
    rng = random.Random(n)
    start = dt.datetime.combine(DAY, dt.time(), tzinfo=dt.UTC)
    step = dt.timedelta(microseconds=86_400_000_000 // max(n, 1))
    for i in range(n):
        yield {"event_id": i, "kind": KINDS[i & 3], "amount": rng.random() * 100,
               "created_at": start + step * i}  # fmt: skip


def tuples(n: int) -> Iterator[tuple[Any, ...]]:
    """The same records as row tuples, the cheapest way: a C-level itemgetter, the date added."""
    return map(operator.add, map(operator.itemgetter(*COLUMNS[:4]), records(n)), repeat((DAY,)))


# --- the paths ---------------------------------------------------------------------


async def source_only(dsn: str, n: int) -> dict[str, Any]:
    """Generating the records and nothing else: the floor under every path."""
    started = time.perf_counter()
    for _ in tuples(n):
        pass
    seconds = time.perf_counter() - started
    await raw_copy(dsn, 0)  # the table, so the row count check holds
    return {"seconds": seconds, "rows_checked": 0}


async def raw_copy(dsn: str, n: int) -> dict[str, Any]:
    """asyncpg COPY of the whole stream on one connection: no ledger, no retry, no audit."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(CREATE_PLAIN)
        started = time.perf_counter()
        await conn.copy_records_to_table(
            TABLE, schema_name=SCHEMA, records=tuples(n), columns=COLUMNS
        )
        return {"seconds": time.perf_counter() - started}
    finally:
        await conn.close()


async def executemany(dsn: str, n: int) -> dict[str, Any]:
    """What a naive writer does: INSERT ... VALUES per row, batched by executemany."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(CREATE_PLAIN)
        started = time.perf_counter()
        sql = f"INSERT INTO {SCHEMA}.{TABLE} VALUES ($1, $2, $3, $4, $5)"
        batch: list[tuple[Any, ...]] = []
        for row in tuples(n):
            batch.append(row)
            if len(batch) == 10_000:
                await conn.executemany(sql, batch)
                batch.clear()
        if batch:
            await conn.executemany(sql, batch)
        return {"seconds": time.perf_counter() - started}
    finally:
        await conn.close()


async def _etl(
    dsn: str, n: int, *, model: type[pydantic.BaseModel] | None, plain: bool, digest: bool = True
) -> dict[str, Any]:
    from etl_assets.postgres.loader import LoadSettings, load_partition
    from etl_assets.postgres.resource import PostgresResource
    from etl_assets.postgres.target import TableTarget, columns_from_model

    target = TableTarget(
        schema=SCHEMA, table=TABLE, columns=columns_from_model(Event),
        primary_key=("data_date", "event_id"),
    )  # fmt: skip
    quiet, defaults = _Quiet(), LoadSettings()
    _warm_pyarrow()
    async with PostgresResource(dsn=dsn).pool() as pool:
        if plain:  # an existing plain table: publish is DELETE + INSERT ... SELECT
            await pool.execute(CREATE_PLAIN)
        started = time.perf_counter()
        report = await load_partition(
            pool, target, DAY, records(n), load_id="bench", model=model,
            settings=LoadSettings(
                writers=int(os.environ.get("BENCH_WRITERS", defaults.writers)),
                batch_size=int(os.environ.get("BENCH_BATCH_SIZE", defaults.batch_size)),
                queue_depth=int(os.environ.get("BENCH_QUEUE_DEPTH", defaults.queue_depth)),
                key_digest=digest,
            ),
            log=quiet,
        )  # fmt: skip
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "publish_s": report.publish_s, "written": report.written}


def _warm_pyarrow() -> None:
    """pyarrow's first conversion of Python objects imports pandas when it is installed
    (~0.2 s, once per process). Done before the clock, like every other import of the
    process (etl_assets, Dagster) and like the columnar paths, which build their table
    before it: the record path converts its batches with pyarrow too."""
    try:
        import pyarrow as pa
    except ImportError:  # without the arrow extra the record path never uses it
        return
    pa.array([0])


async def etl_resilient(dsn: str, n: int) -> dict[str, Any]:
    """etl_assets, replace mode into a RANGE-partitioned table: ledger, retries, audit, swap."""
    return await _etl(dsn, n, model=None, plain=False)


async def etl_resilient_no_digest(dsn: str, n: int) -> dict[str, Any]:
    """etl_resilient with ``LoadSettings(key_digest=False)``: what the key digest costs."""
    return await _etl(dsn, n, model=None, plain=False, digest=False)


async def etl_validated(dsn: str, n: int) -> dict[str, Any]:
    """The same with pydantic validation of every record at the edge."""
    return await _etl(dsn, n, model=Event, plain=False)


async def etl_plain_table(dsn: str, n: int) -> dict[str, Any]:
    """etl_assets into an existing plain table: publish by DELETE + INSERT ... SELECT."""
    return await _etl(dsn, n, model=None, plain=True)


async def pandas_to_sql(dsn: str, n: int) -> dict[str, Any]:
    """What many Dagster users do: a DataFrame and ``to_sql`` via SQLAlchemy (psycopg2)."""
    import pandas as pd
    import sqlalchemy

    await _execute(dsn, CREATE_PLAIN)
    engine = sqlalchemy.create_engine(dsn.replace("postgresql://", "postgresql+psycopg2://", 1))
    try:
        started = time.perf_counter()
        frame = pd.DataFrame.from_records(tuples(n), columns=list(COLUMNS))
        frame.to_sql(
            TABLE, engine, schema=SCHEMA, if_exists="append", index=False, chunksize=10_000
        )
        return {"seconds": time.perf_counter() - started}
    finally:
        engine.dispose()


async def dlt_postgres(dsn: str, n: int) -> dict[str, Any]:
    """dlt's postgres destination, append: extract, normalize, load (its own COPY/INSERTs)."""
    import urllib.parse

    import dlt

    parts = urllib.parse.urlsplit(dsn)
    if parts.password is None:  # dlt insists on a password; trust auth ignores it
        dsn = parts._replace(
            netloc=f"{parts.username}:unused@{parts.hostname}:{parts.port}"
        ).geturl()
    pipelines_dir = tempfile.mkdtemp(prefix="bench-dlt-")
    pipeline = dlt.pipeline(
        pipeline_name="bench",
        destination=dlt.destinations.postgres(credentials=dsn),
        dataset_name=SCHEMA,
        pipelines_dir=pipelines_dir,
        progress=None,
    )
    rows = ({**d, "data_date": DAY} for d in records(n))  # dlt takes the date as a field
    started = time.perf_counter()
    pipeline.run(rows, table_name=TABLE, write_disposition="append")
    return {"seconds": time.perf_counter() - started}


def arrow_events(n: int) -> Any:
    """The same columns as ``records(n)`` built the columnar way (numpy), as an Arrow table.

    A DataFrame user's data is already columnar: building it is not part of loading it,
    so the frame paths build it before their clock starts. Amounts come from numpy's
    generator (same distribution, other values).
    """
    import numpy as np
    import pyarrow as pa

    ids = np.arange(n, dtype=np.int64)
    step_us = 86_400_000_000 // max(n, 1)
    start_us = int(dt.datetime.combine(DAY, dt.time(), tzinfo=dt.UTC).timestamp() * 1_000_000)
    kinds = pa.DictionaryArray.from_arrays(pa.array(ids & 3, pa.int8()), pa.array(KINDS))
    return pa.table({
        "event_id": ids,
        "kind": kinds.dictionary_decode(),
        "amount": np.random.default_rng(n).random(n) * 100,
        "created_at": pa.array(start_us + ids * step_us, pa.timestamp("us", tz="UTC")),
    })  # fmt: skip


def arrow_rows(n: int) -> Any:
    """``arrow_events(n)`` with the data date: the table's five columns, for the paths
    without a loader (which adds the date itself)."""
    import pyarrow as pa

    table = arrow_events(n)
    return table.append_column("data_date", pa.array([DAY] * n, pa.date32()))


def copy_binary(table: Any) -> bytes:
    """The table as one PostgreSQL binary COPY file, encoded by pgpq (the package's encoder)."""
    from pgpq import ArrowToPostgresBinaryEncoder

    encoder = ArrowToPostgresBinaryEncoder(table.schema)
    parts = [encoder.write_header()]
    parts += [encoder.write_batch(batch) for batch in table.to_batches(max_chunksize=100_000)]
    return b"".join([*parts, encoder.finish()])


async def _server_file_copy(dsn: str, n: int, backends: int) -> dict[str, Any]:
    """Server-side ``COPY ... FROM file (FORMAT binary)``: the server reads a file it can see,
    no client in the way. With 2 backends, each copies half: this machine's ingest ceiling."""
    with tempfile.TemporaryDirectory() as tmp:
        files = _copy_files(arrow_rows(n), Path(tmp), backends)  # encoded before the clock
        conns = [await asyncpg.connect(dsn) for _ in range(backends)]
        try:
            await conns[0].execute(CREATE_PLAIN)
            started = time.perf_counter()
            await asyncio.gather(*(
                conn.execute(f"COPY {SCHEMA}.{TABLE} FROM '{file}' (FORMAT binary)")
                for conn, file in zip(conns, files, strict=True)
            ))  # fmt: skip
            return {"seconds": time.perf_counter() - started}
        finally:
            for conn in conns:
                await conn.close()


def _copy_files(table: Any, folder: Path, parts: int) -> list[Path]:
    """The table in ``parts`` binary COPY files of about equal rows, readable by the
    server's user (the embedded server does not run as the bench's user)."""
    folder.chmod(0o755)
    files = []
    for i in range(parts):
        start, end = i * table.num_rows // parts, (i + 1) * table.num_rows // parts
        files.append(folder / f"part{i}.bin")
        files[-1].write_bytes(copy_binary(table.slice(start, end - start)))
        files[-1].chmod(0o644)
    return files


async def server_file_copy(dsn: str, n: int) -> dict[str, Any]:
    """Server-side binary COPY from a file, 1 backend: no client, no guarantees."""
    return await _server_file_copy(dsn, n, 1)


async def server_file_copy_2(dsn: str, n: int) -> dict[str, Any]:
    """The same over 2 backends at once (half each): the machine's ingest ceiling."""
    return await _server_file_copy(dsn, n, 2)


async def arrow_copy(dsn: str, n: int) -> dict[str, Any]:
    """A hand-written columnar COPY: the Arrow table pgpq-encoded (inside the clock), sent
    by binary COPY over one asyncpg connection. No ledger, retry, audit or key digest."""
    import io

    table = arrow_rows(n)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(CREATE_PLAIN)
        started = time.perf_counter()
        await conn.copy_to_table(
            TABLE, schema_name=SCHEMA, source=io.BytesIO(copy_binary(table)), format="binary"
        )
        return {"seconds": time.perf_counter() - started}
    finally:
        await conn.close()


async def adbc_ingest(dsn: str, n: int) -> dict[str, Any]:
    """ADBC's PostgreSQL driver ingesting the Arrow table (what polars' write_database uses)."""
    import adbc_driver_postgresql.dbapi as adbc

    table = arrow_rows(n)
    await raw_copy(dsn, 0)  # the table
    with adbc.connect(dsn) as conn, conn.cursor() as cursor:
        started = time.perf_counter()
        cursor.adbc_ingest(TABLE, table, mode="append", db_schema_name=SCHEMA)
        conn.commit()
        return {"seconds": time.perf_counter() - started}


class CheckedEvent(Event):
    """The same fields with a validator: the frame path must run pydantic on every row."""

    @pydantic.field_validator("amount")
    @classmethod
    def _not_negative(cls, value: float) -> float:
        if value < 0:
            raise ValueError("amount must not be negative")
        return value


async def _etl_frame(
    dsn: str, frame: Any, model: type[pydantic.BaseModel] = Event
) -> dict[str, Any]:
    from etl_assets.frames import classify_output
    from etl_assets.postgres.loader import LoadSettings, load_partition
    from etl_assets.postgres.resource import PostgresResource
    from etl_assets.postgres.target import TableTarget, columns_from_model

    target = TableTarget(
        schema=SCHEMA, table=TABLE, columns=columns_from_model(Event),
        primary_key=("data_date", "event_id"),
    )  # fmt: skip
    async with PostgresResource(dsn=dsn).pool() as pool:
        started = time.perf_counter()
        report = await load_partition(
            pool, target, DAY, classify_output(frame, "bench"), load_id="bench", model=model,
            settings=LoadSettings(), log=_Quiet(),
        )  # fmt: skip
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "publish_s": report.publish_s, "written": report.written}


async def etl_arrow(dsn: str, n: int) -> dict[str, Any]:
    """etl_assets handed a pyarrow.Table: vectorised validation, binary COPY, all guarantees."""
    return await _etl_frame(dsn, arrow_events(n))


async def etl_arrow_pydantic(dsn: str, n: int) -> dict[str, Any]:
    """The same table with a model validator: pydantic validates every row."""
    return await _etl_frame(dsn, arrow_events(n), CheckedEvent)


async def etl_pandas(dsn: str, n: int) -> dict[str, Any]:
    """etl_assets handed a pandas DataFrame (converted to Arrow inside the load)."""
    return await _etl_frame(dsn, arrow_events(n).to_pandas())


async def polars_write_database(dsn: str, n: int) -> dict[str, Any]:
    """polars ``write_database`` through ADBC (its fastest engine: a binary COPY)."""
    import polars as pl

    await _execute(dsn, CREATE_PLAIN)
    frame = pl.from_arrow(arrow_events(n)).with_columns(pl.lit(DAY).alias("data_date"))
    started = time.perf_counter()
    frame.write_database(f"{SCHEMA}.{TABLE}", dsn, engine="adbc", if_table_exists="append")
    return {"seconds": time.perf_counter() - started}


async def _filled(dsn: str, n: int) -> None:
    """A plain table of ``n`` rows for the read paths (raw COPY, not timed)."""
    await raw_copy(dsn, n)


def _events_target() -> Any:
    from etl_assets.postgres.target import TableTarget, columns_from_model

    return TableTarget(
        schema=SCHEMA, table=TABLE, columns=columns_from_model(Event),
        primary_key=("data_date", "event_id"),
    )  # fmt: skip


async def read_stream(dsn: str, n: int) -> dict[str, Any]:
    """PartitionStream: the partition as Arrow batches of 100k rows, in flat memory."""
    from etl_assets.postgres.reader import PartitionStream

    await _filled(dsn, n)
    started = time.perf_counter()
    rows = sum(b.num_rows for b in PartitionStream(dsn, _events_target(), [DAY], "bench"))
    if rows != n:
        raise SystemExit(f"read_stream: {rows} rows read of {n}")
    return {"seconds": time.perf_counter() - started}


async def read_pandas(dsn: str, n: int) -> dict[str, Any]:
    """The partition as one pandas DataFrame (COPY TO CSV, pyarrow's CSV reader)."""
    import pandas  # noqa: F401  imported before the clock, as pandas_read_sql does

    from etl_assets.input_shapes import InputShape, convert_table
    from etl_assets.postgres.reader import read_arrow
    from etl_assets.postgres.resource import PostgresResource

    await _filled(dsn, n)
    async with PostgresResource(dsn=dsn).pool() as pool:
        started = time.perf_counter()
        table = await read_arrow(pool, _events_target(), [DAY], "bench")
        frame = convert_table(table, InputShape.PANDAS)
        seconds = time.perf_counter() - started
    if len(frame) != n:
        raise SystemExit(f"read_pandas: {len(frame)} rows read of {n}")
    return {"seconds": seconds}


async def pandas_read_sql(dsn: str, n: int) -> dict[str, Any]:
    """``pandas.read_sql`` of the same query through SQLAlchemy (psycopg2)."""
    import pandas as pd
    import sqlalchemy

    await _filled(dsn, n)
    engine = sqlalchemy.create_engine(dsn.replace("postgresql://", "postgresql+psycopg2://", 1))
    try:
        started = time.perf_counter()
        frame = pd.read_sql(
            sqlalchemy.text(f"SELECT * FROM {SCHEMA}.{TABLE} WHERE data_date = :day"),
            engine, params={"day": DAY},
        )  # fmt: skip
        seconds = time.perf_counter() - started
    finally:
        engine.dispose()
    if len(frame) != n:
        raise SystemExit(f"pandas_read_sql: {len(frame)} rows read of {n}")
    return {"seconds": seconds}


PATHS: dict[str, Callable[[str, int], Any]] = {
    "source_only": source_only,
    "raw_copy": raw_copy,
    "etl_resilient": etl_resilient,
    "etl_resilient_no_digest": etl_resilient_no_digest,
    "etl_validated": etl_validated,
    "etl_plain_table": etl_plain_table,
    "executemany": executemany,
    "pandas_to_sql": pandas_to_sql,
    "dlt_postgres": dlt_postgres,
    "etl_arrow": etl_arrow,
    "etl_arrow_pydantic": etl_arrow_pydantic,
    "etl_pandas": etl_pandas,
    "polars_write_database": polars_write_database,
    "server_file_copy": server_file_copy,
    "server_file_copy_2": server_file_copy_2,
    "arrow_copy": arrow_copy,
    "adbc_ingest": adbc_ingest,
    "read_stream": read_stream,
    "read_pandas": read_pandas,
    "pandas_read_sql": pandas_read_sql,
}
LARGEST_FOR = {  # alternatives that would take far too long at seed scale stop earlier
    "executemany": 1_000_000,
    "pandas_to_sql": 1_000_000,
    "dlt_postgres": 1_000_000,
    "etl_plain_table": 1_000_000,
    "etl_pandas": 1_000_000,
    "polars_write_database": 1_000_000,
    "pandas_read_sql": 1_000_000,
}


class _Quiet:
    def info(self, msg: str, *args: Any) -> None:
        pass

    def warning(self, msg: str, *args: Any) -> None:
        print("warning: " + msg % args, file=sys.stderr)


async def _execute(dsn: str, sql: str) -> Any:
    conn = await asyncpg.connect(dsn)
    try:
        return (
            await conn.fetchval(sql)
            if sql.lstrip().upper().startswith("SELECT")
            else await conn.execute(sql)
        )
    finally:
        await conn.close()


# --- child: one measurement ----------------------------------------------------------


def child(path: str, n: int, dsn: str) -> None:
    import etl_assets  # noqa: F401  every path runs in a process with Dagster loaded, as a step would

    asyncio.run(
        _execute(dsn, f"DROP SCHEMA IF EXISTS {SCHEMA}, etl CASCADE; CREATE SCHEMA {SCHEMA}")
    )
    result = asyncio.run(PATHS[path](dsn, n))
    rows = asyncio.run(_execute(dsn, f"SELECT count(*) FROM {SCHEMA}.{TABLE}"))
    if rows != result.pop("rows_checked", n):
        raise SystemExit(f"{path}: {rows} rows in the table after loading {n}")
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["rows"] = n
    print(json.dumps(result))


# --- parent: orchestration, table ---------------------------------------------------


def measure(path: str, n: int, dsn: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", path, "--rows", str(n), "--dsn", dsn],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median time (its other figures come with it); any failure wins."""
    failed = [r for r in runs if "error" in r]
    if failed:
        return failed[0]
    ordered = sorted(runs, key=lambda r: r["seconds"])
    chosen = dict(ordered[len(ordered) // 2])
    chosen["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    return chosen


def server_facts(dsn: str) -> dict[str, str]:
    async def facts() -> dict[str, str]:
        conn = await asyncpg.connect(dsn)
        try:
            out = {"version": await conn.fetchval("SHOW server_version")}
            for name in (
                "shared_buffers",
                "max_wal_size",
                "fsync",
                "synchronous_commit",
                "wal_level",
            ):
                out[name] = await conn.fetchval(f"SHOW {name}")
            return out
        finally:
            await conn.close()

    return asyncio.run(facts())


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {memory:.0f} GiB, Python {platform.python_version()}"


def render(results: list[dict[str, Any]], facts: dict[str, str], took: float) -> str:
    lines = [
        f"Measured {dt.datetime.now(dt.UTC):%Y-%m-%d} on {machine()}; PostgreSQL "
        f"{facts['version']} ("
        + ", ".join(f"{k}={v}" for k, v in facts.items() if k != "version")
        + f"), on the same machine. The whole run took {took / 60:.1f} min.",
        "",
        "Each figure is the median of the runs shown (paths interleaved per round).",
        "",
        "| rows | path | runs | seconds | rows/s | vs raw COPY | vs ingest ceiling "
        "| publish share | peak RSS MB |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def rates(path: str) -> dict[int, float]:
        return {r["rows"]: r["rows"] / r["seconds"] for r in results if r["path"] == path
                and "seconds" in r}  # fmt: skip

    # raw COPY of tuples: the record path's yardstick; the server-side file COPY over 2
    # backends: what this server can ingest at all (the columnar paths' yardstick)
    raw, ceiling = rates("raw_copy"), rates("server_file_copy_2")
    for r in results:
        if "error" in r:
            lines.append(f"| {r['rows']:,} | {r['path']} | | failed: {r['error']} | | | | | |")
            continue
        rate = r["rows"] / r["seconds"]
        ratios = [
            f"{rate / base[r['rows']]:.2f}x" if r["rows"] in base else "n/a"
            for base in (raw, ceiling)
        ]
        share = f"{r['publish_s'] / r['seconds']:.1%}" if "publish_s" in r else ""
        lines.append(
            f"| {r['rows']:,} | {r['path']} | {r['runs']} | {r['seconds']:.1f} | {rate:,.0f} | "
            f"{ratios[0]} | {ratios[1]} | {share} | {r['peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def start_embedded() -> tuple[str, Any]:
    from etl_assets.postgres.embedded import EmbeddedPostgres

    server = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="bench-pg-")) / "pgdata")
    return server.acquire(), server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated row counts")
    parser.add_argument(
        "--paths", default=",".join(PATHS), help="comma-separated, of: " + ", ".join(PATHS)
    )
    parser.add_argument("--dsn", default=os.environ.get("ETL_ASSETS_BENCH_DSN"))
    parser.add_argument(
        "--rounds",
        "--repeat",
        dest="rounds",
        type=int,
        default=5,
        help="interleaved rounds per size up to 5M rows (the median is reported); 1 above",
    )
    parser.add_argument(
        "--write", type=Path, help="replace the results block of this markdown file"
    )
    parser.add_argument(
        "--block", default="bench", help="with --write: which <!-- NAME:begin --> block"
    )
    parser.add_argument(
        "--checks",
        action="store_true",
        help="instead of the paths: the three partition checks against the columnar load, "
        "at each size (bench/checks.py)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.rows, args.dsn)
        return 0
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    unknown = [p for p in paths if p not in PATHS]
    if unknown:
        parser.error(f"unknown path(s) {unknown}; choose from {', '.join(PATHS)}")
    try:
        sizes = [int(s.replace("_", "")) for s in args.sizes.split(",")]
    except ValueError:
        parser.error("--sizes takes whole numbers, e.g. 100000,1000000")
    dsn, server = (args.dsn, None) if args.dsn else start_embedded()
    started = time.perf_counter()
    if args.checks:
        import checks  # bench/checks.py

        try:
            for n in sizes:
                asyncio.run(checks.main(n, args.rounds, dsn))
        finally:
            if server is not None:
                server.release()
        return 0
    try:
        facts = server_facts(dsn)
        results = []
        for n in sizes:
            chosen = [p for p in paths if n <= LARGEST_FOR.get(p, SEED_SCALE)]
            repeat = 1 if n > 5_000_000 else args.rounds
            rounds = [[measure(p, n, dsn) for p in chosen] for _ in range(repeat)]
            for i, path in enumerate(chosen):
                result = {"path": path, "rows": n, "runs": repeat, **median([r[i] for r in rounds])}
                print(json.dumps(result), flush=True)
                results.append(result)
        table = render(results, facts, time.perf_counter() - started)
    finally:
        if server is not None:
            server.release()
    print(table)
    if args.write:
        _replace_block(args.write, table, args.block)
    return 0


def _replace_block(path: Path, table: str, block: str) -> None:
    begin, end = f"<!-- {block}:begin -->", f"<!-- {block}:end -->"
    text = path.read_text() if path.exists() else f"{begin}\n{end}\n"
    if begin not in text:
        text += f"\n{begin}\n{end}\n"
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{begin}\n{table}{end}{tail}")


if __name__ == "__main__":
    sys.exit(main())
