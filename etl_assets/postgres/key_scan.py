"""The partition's key cells, hashed on the client from a binary COPY of the key words.

Hashing every key in SQL costs more than loading the rows did: splitmix64 in bigint
arithmetic that must never overflow takes some 80 operations per word, each a function
call in the executor. The server does what it is fast at instead: it scans the
partition and sends each key as fixed-width binary words (8 bytes per column, 16 for a
uuid) in ``COPY ... TO STDOUT (FORMAT binary)``; numpy parses the rows in place, folds
the words through the same :func:`~etl_assets.postgres.key_digest.mix` the writer used
and adds the hashes to the cells. The words are the SQL words of ``key_audit`` (the
foreign-key lookup hashes them there), or the column's own binary form where that is
cheaper than SQL and converts exactly: a timestamp is microseconds since 2000-01-01, a
uuid its 16 bytes.

The stream is processed in slices of whole rows, so memory stays bounded whatever the
partition's size; the number of rows hashed is the partition's row count, in the same
snapshot, so the count audit needs no scan of its own.
"""

from __future__ import annotations

import datetime as dt
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn

import asyncpg
import numpy as np
import numpy.typing as npt

from etl_assets.errors import FatalError
from etl_assets.postgres.key_digest import ODD_VALUE, KeyCells, KeyKind, KeySpec, mix
from etl_assets.postgres.sql import quote_ident
from etl_assets.postgres.target import TableTarget

__all__ = ["key_words_sql", "table_cells"]

U64 = npt.NDArray[np.uint64]

SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
TRAILER = b"\xff\xff"
SLICE_BYTES = 4 << 20
"""Stream bytes gathered before a slice of rows is hashed: bounds the client's memory."""
_EPOCH_2000_US = 946_684_800_000_000  # 2000-01-01 minus 1970-01-01, in microseconds
_INFINITE = (np.iinfo(np.int64).max, np.iinfo(np.int64).min)  # timestamp 'infinity' on the wire


def key_words_sql(kind: KeyKind, column: str) -> list[str]:
    """A key column as 64-bit words, from the stored value (no session-dependent text).

    Shared by the SQL hash (``key_audit.hash_query``) and, for the kinds whose words the
    wire does not carry as they are, by :func:`table_cells`.
    """
    if kind is KeyKind.INT:
        return [f"{column}::bigint"]
    if kind is KeyKind.DATE:
        return [f"({column} - DATE '1970-01-01')::bigint"]
    if kind in (KeyKind.TIMESTAMPTZ, KeyKind.TIMESTAMP):  # epoch is numeric: exact
        micros = f"(extract(epoch FROM {column}) * 1000000)::bigint"
        return [f"(CASE WHEN isfinite({column}) THEN {micros} ELSE {ODD_VALUE} END)"]
    if kind is KeyKind.UUID:  # uuid::text is canonical: 8-4-4-4-12 lower-case hex
        hexed = f"replace({column}::text, '-', '')"
        return [f"('x' || {part}({hexed}, 16))::bit(64)::bigint" for part in ("left", "right")]
    return [f"('x' || left(md5(convert_to({column}, 'UTF8')), 16))::bit(64)::bigint"]


@dataclass(frozen=True, slots=True)
class _WireColumn:
    """One key column on the wire: what the server sends, and its numpy form."""

    kind: KeyKind
    sql: str

    @classmethod
    def of(cls, kind: KeyKind, column: str) -> _WireColumn:
        if kind in (KeyKind.TIMESTAMPTZ, KeyKind.TIMESTAMP, KeyKind.UUID):
            return cls(kind, column)  # sent as stored
        [word] = key_words_sql(kind, column)
        return cls(kind, word)

    @property
    def dtype(self) -> np.dtype[np.generic]:
        return np.dtype((">u8", (2,))) if self.kind is KeyKind.UUID else np.dtype(">i8")

    def words(self, values: npt.NDArray[np.generic]) -> list[U64]:
        """The column's hash words, from its wire values."""
        if self.kind is KeyKind.UUID:
            return [values[:, 0].astype(np.uint64), values[:, 1].astype(np.uint64)]
        signed = values.astype(np.int64)
        if self.kind in (KeyKind.TIMESTAMPTZ, KeyKind.TIMESTAMP):
            finite = (signed != _INFINITE[0]) & (signed != _INFINITE[1])
            signed = np.where(finite, signed + _EPOCH_2000_US, np.int64(ODD_VALUE))
        return [signed.view(np.uint64)]


class _RowParser:
    """Whole rows of a binary COPY stream, hashed into cells slice by slice as they come."""

    def __init__(self, columns: Sequence[_WireColumn], where: str) -> None:
        self.columns = columns
        self.where = where
        fields: list[tuple[str, np.dtype[np.generic]]] = [("count", np.dtype(">i2"))]
        for i, column in enumerate(columns):
            fields += [(f"length{i}", np.dtype(">i4")), (f"value{i}", column.dtype)]
        self.row = np.dtype(fields)
        self.buffer = bytearray()
        self.in_rows = False  # the header is behind
        self.cells = KeyCells.empty()

    async def feed(self, chunk: bytes) -> None:
        self.buffer += chunk
        if not self.in_rows and not self._skip_header():
            return
        if len(self.buffer) >= SLICE_BYTES:
            self._hash_whole_rows()

    def finish(self) -> KeyCells:
        if not self.in_rows:
            self._refuse("the stream ended inside its header")
        self._hash_whole_rows()
        if bytes(self.buffer) != TRAILER:
            self._refuse(f"{len(self.buffer)} byte(s) after the last whole row")
        return self.cells

    def _skip_header(self) -> bool:
        if len(self.buffer) < len(SIGNATURE) + 8:
            return False
        if not self.buffer.startswith(SIGNATURE):
            self._refuse("no binary COPY signature")
        (extension,) = struct.unpack_from(">I", self.buffer, len(SIGNATURE) + 4)
        header = len(SIGNATURE) + 8 + extension
        if len(self.buffer) < header:
            return False
        del self.buffer[:header]
        self.in_rows = True
        return True

    def _hash_whole_rows(self) -> None:
        whole = (len(self.buffer) - len(TRAILER)) // self.row.itemsize
        if whole <= 0:
            return
        rows = np.frombuffer(self.buffer, dtype=self.row, count=whole).copy()  # frees the buffer
        del self.buffer[: whole * self.row.itemsize]
        self._require_fixed_width(rows)
        h = np.zeros(whole, dtype=np.uint64)
        for i, column in enumerate(self.columns):
            for word in column.words(rows[f"value{i}"]):
                h = mix(h + word)
        self.cells = self.cells + KeyCells.of(h)

    def _require_fixed_width(self, rows: npt.NDArray[np.void]) -> None:
        if np.any(rows["count"] != len(self.columns)):
            self._refuse("a row with another number of columns")
        for i, column in enumerate(self.columns):
            if np.any(rows[f"length{i}"] != column.dtype.itemsize):  # -1: a NULL key
                width = column.dtype.itemsize
                self._refuse(f"key column {i + 1} is not {width} bytes in every row")

    def _refuse(self, what: str) -> NoReturn:
        raise FatalError(f"key digest of {self.where}: unexpected COPY stream ({what})")


async def table_cells(
    conn: asyncpg.Connection, spec: KeySpec, target: TableTarget, day: dt.date
) -> KeyCells:
    """The cells of the keys the partition holds; ``.keys`` is its row count."""
    columns = [
        _WireColumn.of(kind, quote_ident(column))
        for column, kind in zip(spec.columns, spec.kinds, strict=True)
    ]
    query = (
        f"SELECT {', '.join(c.sql for c in columns)} FROM {target.sql_name} "
        f"WHERE {quote_ident(target.partition_column)} = $1"
    )
    parser = _RowParser(columns, f"{target.sql_name} partition {day.isoformat()}")
    await conn.copy_from_query(query, day, output=parser.feed, format="binary")
    return parser.finish()
