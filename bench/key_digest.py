"""Micro-benchmark of the key digest (client side), per row, in 25,000-row batches.

    .venv/bin/python bench/key_digest.py

What the writer adds per batch: ``KeyDigester.cells(rows)`` (hash every key, sum into
256 cells). Keys are shaped as the package's targets have them: ``bench/run.py``'s
``(data_date, event_id bigint)``, a log's ``(data_date, source_file text, line_no int)``
with few distinct files, and a unique text id. The record path hashes row tuples (what
``RecordShaper`` hands the writer); the Arrow path an ``ArrowRows`` batch. The machine
is shared: the best of 5 repeats is reported, with the load average, next to the cost of
building the batch's row tuples with a C-level itemgetter (what raw COPY spends per row
before it sends anything), as a yardstick measured in the same process.
"""

from __future__ import annotations

import datetime as dt
import operator
import os
import timeit
from typing import Any

import pyarrow as pa

from etl_assets.postgres.arrow_copy import ArrowRows
from etl_assets.postgres.key_digest import KeyDigester
from etl_assets.postgres.target import Column, TableTarget

DAY = dt.date(2024, 3, 1)
BATCH = 25_000
BATCHES = 8


def target(columns: tuple[Column, ...], key: tuple[str, ...]) -> TableTarget:
    return TableTarget("s", "t", columns, primary_key=("data_date", *key))


CASES: dict[str, tuple[TableTarget, Any]] = {
    "bigint id": (
        target((Column("event_id", "bigint"), Column("kind", "text")), ("event_id",)),
        lambda i: (i * 7919, f"k{i % 5}", DAY),
    ),
    "(file text, line int)": (
        target(
            (Column("source_file", "text"), Column("line_no", "integer")),
            ("source_file", "line_no"),
        ),
        lambda i: (f"/var/log/app/{i % 40}.log", i, DAY),
    ),
    "unique text id": (
        target((Column("uid", "text"), Column("kind", "text")), ("uid",)),
        lambda i: (f"evt-{i:012d}", "k", DAY),
    ),
}


def per_row(fn: Any, rows: int) -> float:
    return min(timeit.repeat(fn, number=1, repeat=5)) / rows * 1e6


def measure(tgt: TableTarget, make: Any) -> tuple[float, float, float]:
    """us/row: digest of row tuples, digest of Arrow batches, building the tuples."""
    n = BATCH * BATCHES
    rows = [make(i) for i in range(n)]
    batches = [rows[i : i + BATCH] for i in range(0, n, BATCH)]
    digester = KeyDigester.for_target(tgt, {c.name: c.pg_type for c in tgt.columns}, "l")
    assert digester is not None
    dicts = [dict(zip(tgt.row_columns, r, strict=True)) for r in rows]
    getter = operator.itemgetter(*tgt.data_columns)
    arrow = [
        ArrowRows(
            pa.RecordBatch.from_arrays(
                [pa.array(col) for col in zip(*b, strict=True)], names=list(tgt.row_columns)
            )
        )
        for b in batches
    ]
    return (
        per_row(lambda: [digester.cells(b) for b in batches], n),
        per_row(lambda: [digester.cells(b) for b in arrow], n),
        per_row(lambda: [getter(d) for d in dicts], n),
    )


def main() -> None:
    print(f"load average before: {os.getloadavg()}")
    print("| key | record path | Arrow path | itemgetter tuples (yardstick) |")
    for name, (tgt, make) in CASES.items():
        records, columnar, tuples = measure(tgt, make)
        print(f"| {name} | {records:.3f} | {columnar:.3f} | {tuples:.3f} |")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
