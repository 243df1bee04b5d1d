"""Writer helpers without a server: the batch fingerprint and the rejected COPY row."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest

from etl_assets.postgres.arrow_copy import ArrowRows
from etl_assets.postgres.writer import DIGEST_STRIDE, _copy_line, batch_digest

DAY = dt.date(2024, 3, 1)
ROWS = [(i, f"u{i}", i * 0.5, DAY) for i in range(10_000)]


def test_same_rows_same_digest() -> None:
    assert batch_digest(ROWS, []) == batch_digest(list(ROWS), [])


def test_a_record_inserted_or_removed_anywhere_changes_the_digest() -> None:
    inserted = [(-1, "new", 0.0, DAY), *ROWS[:-1]]
    removed = [*ROWS[:5_000], *ROWS[5_001:], (10_000, "next", 1.0, DAY)]
    digests = {batch_digest(rows, []) for rows in (ROWS, inserted, removed, ROWS[:-1])}
    assert len(digests) == 4


def test_an_in_place_edit_between_samples_moves_no_boundary_and_is_not_flagged() -> None:
    edited = list(ROWS)
    edited[1] = (1, "edited", 0.5, DAY)  # not a multiple of the stride, not the last row
    assert 1 % DIGEST_STRIDE
    assert batch_digest(edited, []) == batch_digest(ROWS, [])


class _Context(Exception):
    def __init__(self, context: str | None) -> None:
        super().__init__("x")
        self.context = context


@pytest.mark.parametrize(
    ("context", "line"),
    [
        ("COPY t, line 2, column s", 2),
        ("COPY t, line 17", 17),
        ('COPY ev "log" x, line 3: "bad"', 3),
        ("PL/pgSQL function f() line 3 at RAISE\nCOPY t, line 9", 9),
        ("SQL statement", None),
        (None, None),
    ],
)
def test_the_rejected_copy_row_is_read_from_the_error_context(
    context: str | None, line: int | None
) -> None:
    """The server names the row a COPY failed on; the writer isolates it in two statements."""
    assert _copy_line(_Context(context)) == line


def arrow_rows(rows: list[tuple[int, str]]) -> ArrowRows:
    ids, names = zip(*rows, strict=True) if rows else ((), ())
    return ArrowRows(pa.record_batch({"id": list(ids), "name": list(names)}))


def test_a_columnar_batch_digest_catches_a_shifted_source_too() -> None:
    """Arrow batches are fingerprinted from their sampled bytes: same rows, same digest."""
    rows = [(i, f"r{i}") for i in range(1_000)]
    inserted = [*rows[:500], (-1, "new"), *rows[500:-1]]
    assert batch_digest(arrow_rows(rows), []) == batch_digest(arrow_rows(list(rows)), [])
    assert batch_digest(arrow_rows(inserted), []) != batch_digest(arrow_rows(rows), [])
    assert batch_digest(arrow_rows(rows[:-1]), []) != batch_digest(arrow_rows(rows), [])


def test_arrow_rows_index_and_slice_like_a_list_of_tuples() -> None:
    """The writer's poison isolation slices and indexes rows; ArrowRows answers as a list."""
    rows = [(i, f"r{i}") for i in range(10)]
    columnar = arrow_rows(rows)
    assert (len(columnar), columnar[3], columnar[-1]) == (10, (3, "r3"), (9, "r9"))
    assert list(columnar[2:5]) == rows[2:5]
    assert list(columnar[::4]) == rows[::4]
    assert list(columnar[7:2]) == []
