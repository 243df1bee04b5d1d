"""An order-independent digest of a partition's keys: count-preserving corruption is caught.

Counts cannot tell a partition that lost key 17 and gained a foreign key 900001 from a
correct one. So every batch also records a digest of the keys it wrote, in the same
transaction as its rows and ledger row, and the blocking check recomputes the digest
from the table and compares.

The digest (all arithmetic mod 2^64, identical in numpy, Python and SQL; the SQL side
builds it from bigint operations that cannot overflow):

* a key value becomes 64-bit words without any text form that depends on the session:
  integers as themselves, dates as days since 1970-01-01, timestamps as microseconds
  since 1970-01-01 (UTC for ``timestamptz``, the wall clock for ``timestamp``; only
  without a precision modifier, which would round what was sent), a uuid as its two
  64-bit halves, text as the first 8 bytes of the MD5 of its UTF-8 bytes (MD5 is the fast
  hash both sides have built in; it runs once per distinct value in a batch);
* a key's hash folds its words through the splitmix64 finaliser,
  ``h = mix(h + word)`` from ``h = 0``; the finaliser is a bijection, so for a key of
  one integer (or date) column the key can be recovered from its hash;
* the partition column is left out (constant within a partition);
* each key is added to one cell in each of two tables of 256 cells (by the hash's top
  byte, and by its next byte); a cell keeps the count, the sum of the hashes and the
  sum of their squares. Sums are order-independent and, unlike XOR, see a duplicate.

The check's side (the same hash in SQL, comparing, naming keys) is
``etl_assets.postgres.key_audit``.

Naming the keys: a cell that differs by exactly one key (count differs by one and the
square-sum difference is the square of the sum difference: a false "pure" verdict has a
chance of about 2^-60) holds the hash of that key; the key is then taken out of its
other cell too, which may leave that one pure (peeling, as in an invertible Bloom lookup
table; it names every difference with high probability up to some 100-200 of them). A
foreign key is looked up in the table by its hash. A missing key is no longer anywhere
the check can read: it is named when the key is a single integer or date column (the
hash is inverted), otherwise reported by its hash. What peeling cannot separate is
reported as cells that still differ, unnamed.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from etl_assets.postgres.arrow_copy import ArrowRows
from etl_assets.postgres.target import TableTarget

__all__ = [
    "CELLS",
    "MASK64",
    "MIX_C1",
    "MIX_C2",
    "MIX_S1",
    "MIX_S2",
    "MIX_S3",
    "ODD_VALUE",
    "homes",
    "KeyCells",
    "KeyDigester",
    "KeyKind",
    "KeySpec",
    "mix",
    "unmix",
]

U64 = npt.NDArray[np.uint64]
Row = tuple[Any, ...]

CELLS = 256
MASK64 = (1 << 64) - 1
MIX_C1, MIX_C2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
MIX_S1, MIX_S2, MIX_S3 = 30, 27, 31
_EPOCH = dt.date(1970, 1, 1).toordinal()
# A value no column of that kind can hold (None, a str in an integer column): the server
# refuses the row, which then leaves the digest again as a dead letter. Any constant works
# as long as the batch and the per-row functions agree.
ODD_VALUE = 0x6F64645F76616C75


class KeyKind(enum.Enum):
    """How a key column becomes a 64-bit word."""

    INT = "int"
    DATE = "date"
    TEXT = "text"
    UUID = "uuid"
    TIMESTAMPTZ = "timestamptz"  # microseconds since the epoch, UTC
    TIMESTAMP = "timestamp"  # microseconds since 1970-01-01 00:00 on the wall clock


_KINDS = {  # format_type spellings (what the catalog says), and the usual aliases
    "bigint": KeyKind.INT,
    "int8": KeyKind.INT,
    "int4": KeyKind.INT,
    "int2": KeyKind.INT,
    "varchar": KeyKind.TEXT,
    "integer": KeyKind.INT,
    "smallint": KeyKind.INT,
    "date": KeyKind.DATE,
    "text": KeyKind.TEXT,
    "character varying": KeyKind.TEXT,
    "uuid": KeyKind.UUID,
    "timestamp with time zone": KeyKind.TIMESTAMPTZ,
    "timestamptz": KeyKind.TIMESTAMPTZ,
    "timestamp without time zone": KeyKind.TIMESTAMP,
    "timestamp": KeyKind.TIMESTAMP,
}
_STAMPS = (KeyKind.TIMESTAMPTZ, KeyKind.TIMESTAMP)
_UTC_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_WALL_EPOCH = dt.datetime(1970, 1, 1)
_MICROSECOND = dt.timedelta(microseconds=1)
_INT_RANGE = {"bigint": 63, "int8": 63, "integer": 31, "int4": 31, "smallint": 15, "int2": 15}


# --- the hash ------------------------------------------------------------------------


def mix(x: U64) -> U64:
    """splitmix64's finaliser on a uint64 array (wraps mod 2^64, as the SQL does)."""
    x = x ^ (x >> np.uint64(MIX_S1))
    x = x * np.uint64(MIX_C1)
    x = x ^ (x >> np.uint64(MIX_S2))
    x = x * np.uint64(MIX_C2)
    return x ^ (x >> np.uint64(MIX_S3))


def mix_int(x: int) -> int:
    """:func:`mix` of one value (Python int in [0, 2^64))."""
    x ^= x >> MIX_S1
    x = (x * MIX_C1) & MASK64
    x ^= x >> MIX_S2
    x = (x * MIX_C2) & MASK64
    return x ^ (x >> MIX_S3)


def unmix(h: int) -> int:
    """The inverse of :func:`mix_int`: each step (xorshift, odd multiply) is a bijection."""
    h = _unshift(h, MIX_S3)
    h = (h * pow(MIX_C2, -1, 1 << 64)) & MASK64
    h = _unshift(h, MIX_S2)
    h = (h * pow(MIX_C1, -1, 1 << 64)) & MASK64
    return _unshift(h, MIX_S1)


def _unshift(y: int, s: int) -> int:
    x = y
    for _ in range(64 // s + 1):
        x = y ^ (x >> s)
    return x


def _text_word(value: str) -> int:
    try:
        data = value.encode()
    except UnicodeEncodeError:  # lone surrogates: asyncpg cannot send it, the row is refused
        return ODD_VALUE
    return int.from_bytes(hashlib.md5(data).digest()[:8], "big")


def _words(kind: KeyKind, value: Any) -> tuple[int, ...]:
    """One key value as 64-bit words: the reference the vectorised paths must match.

    A uuid is two words (its 128 bits); every other kind is one.
    """
    if kind is KeyKind.UUID:
        try:
            bits = value.int if isinstance(value, uuid.UUID) else uuid.UUID(str(value)).int
        except ValueError:  # not a uuid: the server refuses it too
            return ODD_VALUE, ODD_VALUE
        return bits >> 64, bits & MASK64
    if kind is KeyKind.INT and isinstance(value, int | np.integer):
        return (int(value) & MASK64,)
    if kind is KeyKind.DATE and isinstance(value, dt.date):
        return ((value.toordinal() - _EPOCH) & MASK64,)
    if kind is KeyKind.TEXT and isinstance(value, str):
        return (_text_word(value),)
    if kind in _STAMPS and isinstance(value, dt.datetime):
        naive = value.utcoffset() is None
        if naive != (kind is KeyKind.TIMESTAMP):  # refused by the conversion check anyway
            return (ODD_VALUE,)
        since = value - (_WALL_EPOCH if naive else _UTC_EPOCH)
        return ((since // _MICROSECOND) & MASK64,)
    return (ODD_VALUE,)


# --- which columns ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeySpec:
    """The key columns a digest covers (the primary key minus the partition column)."""

    columns: tuple[str, ...]
    positions: tuple[int, ...]  # in the target's row tuples
    kinds: tuple[KeyKind, ...]
    int_bits: tuple[int, ...]  # value bits of integer columns (63, 31, 15), 0 otherwise

    @classmethod
    def for_target(cls, target: TableTarget, types: Mapping[str, str]) -> KeySpec | str:
        """The spec from the table's real column types, or why there is no digest."""
        columns = tuple(c for c in target.primary_key if c != target.partition_column)
        if not columns:
            return f"{target.name} has no primary key besides the partition column"
        kinds, bits = [], []
        for column in columns:
            base = re.sub(r"\(.*?\)", "", types.get(column, "")).strip()
            if _KINDS.get(base) in _STAMPS and "(" in types.get(column, ""):
                return (
                    f"key column {column!r} has type {types[column]!r}: its precision rounds "
                    "the microseconds sent, so the key digest cannot hash what was stored"
                )
            if base not in _KINDS:
                return (
                    f"key column {column!r} has type {types.get(column, 'unknown')!r}, "
                    "which the key digest cannot hash identically in Python and SQL (it "
                    "covers integer, date, timestamp, text, varchar and uuid key columns)"
                )
            kinds.append(_KINDS[base])
            bits.append(_INT_RANGE.get(base, 0))
        positions = tuple(target.row_columns.index(c) for c in columns)
        return cls(columns, positions, tuple(kinds), tuple(bits))

    def row_hash(self, row: Row) -> int:
        """The hash of one row's key (the reference; used for the few dead-lettered rows)."""
        h = 0
        for position, kind in zip(self.positions, self.kinds, strict=True):
            for word in _words(kind, row[position]):
                h = mix_int((h + word) & MASK64)
        return h

    def hashes(self, rows: Sequence[Row]) -> U64:
        """Hashes of every row's key, vectorised over columns."""
        h = np.zeros(len(rows), dtype=np.uint64)
        for position, kind in zip(self.positions, self.kinds, strict=True):
            for words in _column_words(rows, position, kind):
                h = mix(h + words)
        return h

    def name(self, values: Sequence[Any]) -> str:
        return ", ".join(f"{c}={v!r}" for c, v in zip(self.columns, values, strict=True))

    def invert(self, h: int) -> str | None:
        """The key whose hash is ``h``, if one integer or date column makes the key."""
        if len(self.kinds) != 1 or self.kinds[0] not in (KeyKind.INT, KeyKind.DATE):
            return None
        word = unmix(h)
        value = word - (1 << 64) if word >> 63 else word
        if self.kinds[0] is KeyKind.DATE:
            try:
                return self.name([dt.date.fromordinal(value + _EPOCH)])
            except (ValueError, OverflowError):  # outside the date range: not a real key
                return None
        if not -(1 << self.int_bits[0]) <= value < 1 << self.int_bits[0]:
            return None
        return self.name([value])


def _column_words(rows: Sequence[Row], position: int, kind: KeyKind) -> list[U64]:
    """The column's words, one array per word of the kind (a uuid has two)."""
    if isinstance(rows, ArrowRows):
        return _arrow_words(rows, position, kind)
    values = [row[position] for row in rows]
    fast = _fast_words(values, kind)
    if fast is not None:
        return fast
    width = 2 if kind is KeyKind.UUID else 1
    flat = np.fromiter(
        (w for v in values for w in _words(kind, v)), dtype=np.uint64, count=width * len(values)
    )
    return [flat[i::width] for i in range(width)]


def _fast_words(values: list[Any], kind: KeyKind) -> list[U64] | None:
    """Vectorised words of well-typed values; None sends the column to the reference."""
    if kind is KeyKind.INT:
        try:
            array = np.array(values) if values else np.zeros(0, dtype=np.int64)
        except (ValueError, TypeError, OverflowError):  # ragged lists and the like: refused
            return None
        if array.ndim != 1:  # a list or tuple in the column (refused by the server)
            return None
        if array.dtype.kind in "ib" or (array.dtype.kind == "u" and array.dtype.itemsize < 8):
            return [array.astype(np.int64).view(np.uint64)]
        return None
    if kind is KeyKind.TEXT:
        return [_distinct_text_words(values)]
    if kind in _STAMPS:  # the reference, value by value
        return None
    try:
        if kind is KeyKind.DATE:
            days = np.fromiter((v.toordinal() for v in values), dtype=np.int64, count=len(values))
            return [(days - _EPOCH).view(np.uint64)]
        pairs = np.frombuffer(b"".join(v.bytes for v in values), dtype=">u8").astype(np.uint64)
    except (AttributeError, TypeError):  # None, a str in a uuid or date column: row by row
        return None
    return [pairs[0::2], pairs[1::2]]


def _distinct_text_words(values: list[Any]) -> U64:
    """Through Arrow: its dictionary encoding finds the distinct values in C."""
    import pyarrow as pa

    try:
        column = pa.array(values, type=pa.string())
    except (pa.ArrowException, UnicodeEncodeError):  # not all str: row by row
        column = None
    if column is None or column.null_count:
        return np.fromiter((_words(KeyKind.TEXT, v)[0] for v in values), dtype=np.uint64)
    return _text_column_words(column)


def _text_column_words(column: Any) -> U64:
    """MD5 once per distinct value: text key parts repeat (a file name, a module)."""
    import pyarrow.compute as pc

    encoded = pc.dictionary_encode(column)
    distinct = encoded.dictionary.to_pylist()
    digests = b"".join([hashlib.md5(v.encode()).digest() for v in distinct])
    table = np.frombuffer(digests, dtype=">u8")[::2].astype(np.uint64)
    words: U64 = table[encoded.indices.to_numpy()]
    return words


def _arrow_words(rows: ArrowRows, position: int, kind: KeyKind) -> list[U64]:
    import pyarrow as pa

    column = rows.batch.column(position)
    if column.null_count or not (
        (kind is KeyKind.INT and pa.types.is_integer(column.type))
        or (kind is KeyKind.DATE and pa.types.is_date32(column.type))
        or (kind is KeyKind.TEXT and pa.types.is_string(column.type))
        or (
            kind in _STAMPS
            and pa.types.is_timestamp(column.type)
            and column.type.unit == "us"
            and (column.type.tz is None) == (kind is KeyKind.TIMESTAMP)
        )
    ):  # nulls (refused by the server) or a type this path does not see: row by row
        return _column_words([(v,) for v in column.to_pylist()], 0, kind)
    if kind is KeyKind.TEXT:
        return [_text_column_words(column)]
    if kind is KeyKind.DATE:
        column = column.cast(pa.int32())
    elif kind in _STAMPS:  # Arrow holds microseconds since the epoch (UTC when zoned)
        column = column.cast(pa.int64())
    return [column.to_numpy().astype(np.int64).view(np.uint64)]


# --- cells -----------------------------------------------------------------------------


def homes(h: int) -> tuple[int, int]:
    """The key's cell in each of the two tables: the hash's top byte, and its next byte."""
    return h >> 56, CELLS + (h >> 48 & 0xFF)


@dataclass(frozen=True, slots=True)
class KeyCells:
    """Two tables of 256 cells; a key is counted in one cell of each (its :func:`homes`).

    Per cell, mod 2^64: the count, the sum of hashes and the sum of their squares. Two
    tables instead of one let the check peel differences (an invertible Bloom lookup
    table): a key named from a cell where it differs alone is taken out of its other
    cell, which may then hold one difference only.
    """

    counts: U64
    sums: U64
    squares: U64

    @classmethod
    def empty(cls) -> KeyCells:
        return cls(*(np.zeros(2 * CELLS, dtype=np.uint64) for _ in range(3)))

    @classmethod
    def of(cls, hashes: U64) -> KeyCells:
        first = (hashes >> np.uint64(56)).astype(np.intp)
        second = (hashes >> np.uint64(48) & np.uint64(0xFF)).astype(np.intp)
        squared = hashes * hashes
        tables = []
        for cell in (first, second):  # np.add.at wraps mod 2^64, as the SQL side reduces
            sums, squares = np.zeros(CELLS, dtype=np.uint64), np.zeros(CELLS, dtype=np.uint64)
            np.add.at(sums, cell, hashes)
            np.add.at(squares, cell, squared)
            tables.append((np.bincount(cell, minlength=CELLS).astype(np.uint64), sums, squares))
        return cls(*(np.concatenate([one, two]) for one, two in zip(*tables, strict=True)))

    def __add__(self, other: KeyCells) -> KeyCells:
        return KeyCells(
            self.counts + other.counts, self.sums + other.sums, self.squares + other.squares
        )

    def __sub__(self, other: KeyCells) -> KeyCells:
        return KeyCells(
            self.counts - other.counts, self.sums - other.sums, self.squares - other.squares
        )

    def to_db(self) -> list[int]:
        """``bigint[]`` of 3 * 512 words (counts, sums, squares), two's complement."""
        words = np.concatenate([self.counts, self.sums, self.squares])
        return [int(w) for w in words.view(np.int64)]

    @classmethod
    def from_db(cls, words: Sequence[int]) -> KeyCells:
        array = np.array(words, dtype=np.int64).view(np.uint64)
        n = 2 * CELLS
        if len(array) != 3 * n:
            raise ValueError(f"a key digest has {3 * n} words, not {len(array)}")
        return cls(array[:n], array[n : 2 * n], array[2 * n :])

    @property
    def keys(self) -> int:
        return int(self.counts[:CELLS].sum())  # each key is in both tables: count one


class KeyDigester:
    """What the writer needs: the cells of a batch's rows, minus rows Postgres refused."""

    __slots__ = ("spec",)

    def __init__(self, spec: KeySpec) -> None:
        self.spec = spec

    @classmethod
    def for_target(cls, target: TableTarget, types: Mapping[str, str]) -> KeyDigester | None:
        spec = KeySpec.for_target(target, types)
        return cls(spec) if isinstance(spec, KeySpec) else None

    def cells(self, rows: Sequence[Row]) -> KeyCells:
        return KeyCells.of(self.spec.hashes(rows)) if len(rows) else KeyCells.empty()

    def without(self, cells: KeyCells, refused: Sequence[Row]) -> KeyCells:
        """``cells`` minus the rows the server refused (dead letters: few, row by row)."""
        if not refused:
            return cells
        hashes = np.array([self.spec.row_hash(row) for row in refused], dtype=np.uint64)
        return cells - KeyCells.of(hashes)


def refused_rows(
    rows: Sequence[Row], record_nos: Sequence[int], letters: Sequence[Any]
) -> list[Row]:
    """The rows of ``letters`` (dead letters the server refused), found by record number."""
    if not letters:
        return []
    index = {no: i for i, no in enumerate(record_nos)}
    return [rows[index[letter.record_no]] for letter in letters]
