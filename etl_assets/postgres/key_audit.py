"""The key digest's check: the table's cells compared with the ledger's, keys named.

``written_equals_enqueued`` runs :func:`verify_keys` in the snapshot of its count audit,
whose row count it also gives (``KeyAudit.rows_in_table``). The hash, the cells and what
the writer stores per batch are ``etl_assets.postgres.key_digest`` (the design is
described there); the table's cells are hashed on the client from a binary COPY of the
key words (``etl_assets.postgres.key_scan``). The same hash in SQL remains for one job:
finding a foreign key in the table by its hash.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import numpy as np

from etl_assets.postgres.arrow_copy import column_types
from etl_assets.postgres.key_digest import (
    CELLS,
    MASK64,
    MIX_C1,
    MIX_C2,
    MIX_S1,
    MIX_S2,
    MIX_S3,
    KeyCells,
    KeySpec,
    homes,
)
from etl_assets.postgres.key_scan import key_words_sql, table_cells
from etl_assets.postgres.ledger import Ledger, LoadKey
from etl_assets.postgres.sql import quote_ident
from etl_assets.postgres.target import TableTarget, WriteMode

__all__ = ["KeyAudit", "audit_keys", "hash_query", "verify_keys"]


# --- the same hash in SQL ----------------------------------------------------------------

_TWO64 = 1 << 64
_M32 = (1 << 32) - 1


def _mul(z: str, constant: int) -> str:
    """``z * constant mod 2^64`` in bigint arithmetic that never overflows.

    Postgres raises on a bigint overflow, so the product is built from 32-bit halves
    and 16-bit pieces of the constant: every partial product stays below 2^50, and only
    the final ``<<`` (which Postgres does not check) reaches the sign bit. About twice as
    fast as the same product in numeric.
    """
    c0, c1, c2, c3 = (constant >> shift & 0xFFFF for shift in (0, 16, 32, 48))
    lo, hi = f"({z} & {_M32})", f"(({z} >> 32) & {_M32})"
    p0, p1 = f"({lo} * {c0})", f"({lo} * {c1})"
    low = f"(({p0} & {_M32}) + (({p1} & 65535) << 16))"
    high = (
        f"((({p0} >> 32) + ({p1} >> 16) + ({low} >> 32) + {hi} * {c0} "
        f"+ ((({hi} * {c1}) & 65535) << 16) + {lo} * {c2} + ((({lo} * {c3}) & 65535) << 16)) "
        f"& {_M32})"
    )
    return f"(({high} << 32) | ({low} & {_M32}))"


def _add(a: str, b: str) -> str:
    """``a + b mod 2^64`` in bigint, by 32-bit halves (no overflow)."""
    low = f"(({a} & {_M32}) + ({b} & {_M32}))"
    high = f"((({a} >> 32) & {_M32}) + (({b} >> 32) & {_M32}) + ({low} >> 32))"
    return f"((({high} & {_M32}) << 32) | ({low} & {_M32}))"


def _xorshift(z: str, shift: int) -> str:
    """``z ^ (z >>> shift)``: bigint's ``>>`` is arithmetic, so mask the sign copies off."""
    return f"({z} # (({z} >> {shift}) & {(1 << (64 - shift)) - 1}))"


def hash_query(spec: KeySpec, target: TableTarget) -> str:
    """``SELECT h, k0, k1, ...`` over the partition ``$1``: the key hash of every row.

    Each step is a subquery fenced by ``OFFSET 0``: a step uses its input twice
    (``z # (z >> s)``), and without the fence the planner would inline the steps and
    evaluate the innermost expression 2^steps times.
    """
    keys = [f"k{i}" for i in range(len(spec.columns))]
    word_sql = [
        w for col, kind in zip(spec.columns, spec.kinds, strict=True)
        for w in key_words_sql(kind, quote_ident(col))
    ]  # fmt: skip
    words = [f"w{i}" for i in range(len(word_sql))]
    carried = ", ".join([*words, *keys])
    sql = (
        "SELECT "
        + ", ".join([*(f"{w} AS w{i}" for i, w in enumerate(word_sql))])
        + ", "
        + ", ".join(f"{quote_ident(col)} AS k{i}" for i, col in enumerate(spec.columns))
        + f" FROM {target.sql_name} WHERE {quote_ident(target.partition_column)} = $1"
    )
    for i, word in enumerate(words):
        steps = [
            word if i == 0 else _add("z", word),
            _xorshift("z", MIX_S1),
            _mul("z", MIX_C1),
            _xorshift("z", MIX_S2),
            _mul("z", MIX_C2),
            _xorshift("z", MIX_S3),
        ]
        for step in steps:
            sql = f"SELECT {step} AS z, {carried} FROM ({sql} OFFSET 0) AS q"
    return f"SELECT z AS h, {', '.join(keys)} FROM ({sql} OFFSET 0) AS hashed"


# --- the check ---------------------------------------------------------------------------

NAMED_LIMIT = 20


@dataclass(frozen=True, slots=True)
class KeyAudit:
    """The partition's keys against the ledger's digest, and what differs."""

    status: str  # "checked", or why only counts were checked
    keys_in_table: int = 0
    keys_in_ledger: int = 0
    missing: tuple[str, ...] = ()  # named (or, when not invertible, by hash)
    foreign: tuple[str, ...] = ()
    unresolved: int = 0  # cells that differ by more than one key
    problems: tuple[str, ...] = ()
    rows_in_table: int | None = None  # the partition's rows, when its keys were scanned

    def metadata(self) -> dict[str, int | str]:
        return {
            "key_digest": self.status,
            "keys_missing": len(self.missing),
            "keys_foreign": len(self.foreign),
            "key_cells_unresolved": self.unresolved,
        }


async def verify_keys(
    conn: asyncpg.Connection, ledger: Ledger, target: TableTarget, day: dt.date
) -> KeyAudit:
    """The key audit of the partition's latest finished load, in one snapshot.

    Found nothing to compare (no table, no finished load)? Then the count audit of
    ``written_equals_enqueued`` already fails the partition; this adds no second problem.
    """
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        for table in (target.sql_name, ledger.loads):
            if await conn.fetchval("SELECT to_regclass($1) IS NULL", table):
                return KeyAudit(f"not checked: {table} does not exist")
        load = await ledger.current_load(conn, target.name, day.isoformat())
        if load is None:
            return KeyAudit("not checked: the partition has no finished load")
        return await audit_keys(conn, ledger, target, day, load)


async def audit_keys(
    conn: asyncpg.Connection,
    ledger: Ledger,
    target: TableTarget,
    day: dt.date,
    load: Mapping[str, Any],
) -> KeyAudit:
    """Compare the digest of the partition's keys with the ledger's (load + later replays).

    Replays write rows into the partition with ledger rows of their own: their cells are
    added exactly where ``verify.audit_partition`` adds their ``written`` (``replayed_in``).
    Run it inside a snapshot (REPEATABLE READ) so table and ledger agree in time.
    """
    types = await column_types(conn, target.schema, target.table)
    spec = KeySpec.for_target(target, types)
    if isinstance(spec, str):
        return KeyAudit(f"counts only: {spec}")
    stored = await ledger.key_cells(conn, LoadKey(target.name, day.isoformat(), load["load_id"]))
    digests = [cells for cells in stored if cells is not None]
    if len(digests) < len(stored):
        return KeyAudit(
            f"counts only: {len(stored) - len(digests)} of {len(stored)} batch(es) have no "
            "key digest (written before key digests existed, or with key_digest=False)"
        )
    expected = KeyCells.empty()
    for cells in digests:
        expected = expected + KeyCells.from_db(cells)
    actual = await table_cells(conn, spec, target, day)
    audit = await _compare(conn, spec, target, day, expected, actual)
    return dataclasses.replace(audit, rows_in_table=actual.keys)


async def _compare(
    conn: asyncpg.Connection,
    spec: KeySpec,
    target: TableTarget,
    day: dt.date,
    expected: KeyCells,
    actual: KeyCells,
) -> KeyAudit:
    counts = (actual.keys, expected.keys)
    if target.mode is WriteMode.UPSERT and actual.keys != expected.keys:
        # An upsert partition may keep keys of earlier loads: the sums cannot tell them apart.
        return KeyAudit(
            f"counts only: the upsert partition holds {actual.keys} keys, this load and its "
            f"replays wrote {expected.keys} (keys of earlier loads stay)",
            *counts,
        )
    diff = actual - expected
    if not np.any((diff.counts | diff.sums | diff.squares) != 0):
        return KeyAudit("checked", *counts)
    foreign_hashes, missing_hashes, unresolved = _peel(diff)
    foreign = await _lookup(conn, spec, target, day, foreign_hashes)
    missing = tuple(spec.invert(h) or f"<key with hash {h:#018x}>" for h in missing_hashes)
    problems = []
    if missing:
        problems.append(
            f"{len(missing)} key(s) the ledger accounts for are not in the table: "
            + _listing(missing)
        )
    if foreign:
        problems.append(
            f"{len(foreign)} key(s) in the table were never written by a load: " + _listing(foreign)
        )
    if unresolved:
        problems.append(
            f"{unresolved} digest cell(s) still differ by more than one key after naming the "
            "others: those keys cannot be named (a mass change; compare with the source)"
        )
    return KeyAudit("checked", *counts, missing, foreign, unresolved, tuple(problems))


def _peel(diff: KeyCells) -> tuple[list[int], list[int], int]:
    """Hashes of the differing keys: (foreign, missing, first-table cells left unresolved).

    A cell whose difference is one key (count +-1, and the square-sum difference is the
    square of the sum difference) gives that key's hash; it is then taken out of both of
    its cells, which may leave another cell with a single difference. Stops when no cell
    is pure: what remains differs by several keys per cell.
    """
    counts = [int(c) for c in diff.counts.view(np.int64)]
    sums, squares = [int(v) for v in diff.sums], [int(v) for v in diff.squares]
    found: dict[int, list[int]] = {1: [], -1: []}
    progress = True
    while progress:
        progress = False
        for cell in range(2 * CELLS):
            sign = counts[cell]
            if sign not in (1, -1):
                continue
            h = sums[cell] * sign & MASK64
            if (h * h) & MASK64 != squares[cell] * sign & MASK64 or cell not in homes(h):
                continue
            found[sign].append(h)
            for home in homes(h):
                counts[home] -= sign
                sums[home] = (sums[home] - sign * h) & MASK64
                squares[home] = (squares[home] - sign * h * h) & MASK64
            progress = True
    unresolved = sum(1 for c in range(CELLS) if counts[c] or sums[c] or squares[c])
    return found[1], found[-1], unresolved


async def _lookup(
    conn: asyncpg.Connection, spec: KeySpec, target: TableTarget, day: dt.date, hashes: list[int]
) -> tuple[str, ...]:
    """The table's keys with these hashes (a foreign key is in the table: find it)."""
    if not hashes:
        return ()
    signed = [h - _TWO64 if h >> 63 else h for h in hashes]
    rows = await conn.fetch(
        f"SELECT * FROM ({hash_query(spec, target)}) AS k WHERE h = ANY($2::bigint[])", day, signed
    )
    found = {row["h"] & MASK64: spec.name(list(row)[1:]) for row in rows}
    return tuple(found.get(h, f"<key with hash {h:#018x}>") for h in hashes)


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(f"({n})" for n in names[:NAMED_LIMIT])
    return shown + (f" and {len(names) - NAMED_LIMIT} more" if len(names) > NAMED_LIMIT else "")
