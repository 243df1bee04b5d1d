"""Batches cut by estimated bytes as well as by records (pure: no database)."""

from __future__ import annotations

import pyarrow as pa

from etl_assets.batch_bytes import record_chunks, record_size, split_by_bytes


def wide(i: int) -> dict[str, object]:
    return {f"c{k}": f"value {i} {k}" for k in range(300)}


def test_narrow_records_are_cut_by_count_alone() -> None:
    """Three-column records never reach the byte bound before batch_size."""
    records = ({"id": i, "name": "x", "amount": 1.5} for i in range(25_050))
    sizes = [len(c) for c in record_chunks(records, 10_000, 32 * 2**20)]
    assert sizes == [10_000, 10_000, 5_050]


def test_wide_records_are_cut_by_bytes_and_none_is_lost_or_repeated() -> None:
    """300-column records: each batch within the byte bound, every record once, in order."""
    bound = 2 * 2**20
    chunks = list(record_chunks((wide(i) for i in range(2_000)), 25_000, bound))
    assert len(chunks) > 1
    assert all(sum(map(record_size, c)) <= bound * 1.1 for c in chunks)
    assert [r["c0"] for c in chunks for r in c] == [f"value {i} 0" for i in range(2_000)]


def test_the_same_records_are_cut_the_same_way() -> None:
    """The cut depends on the records only: a resumed load cuts the same batches."""
    first = [len(c) for c in record_chunks((wide(i) for i in range(500)), 100, 2**20)]
    again = [len(c) for c in record_chunks([wide(i) for i in range(500)], 100, 2**20)]
    assert first == again


def test_an_arrow_batch_is_split_under_the_bound() -> None:
    """Equal zero-copy slices, each within the bound, rows in order."""
    batch = pa.RecordBatch.from_pydict({f"c{k}": list(range(10_000)) for k in range(30)})
    parts = list(split_by_bytes(batch, batch.nbytes // 4))
    assert [p.num_rows for p in parts] == [2_500] * 4
    assert pa.Table.from_batches(parts).equals(pa.Table.from_batches([batch]))
