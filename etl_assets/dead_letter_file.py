"""Open dead letters as JSON lines: export them, fix them in any editor, replay them.

One object per line: ``{"id", "target", "partition", "error_class", "error",
"replay_attempts", "payload"}``. Only ``id`` and ``payload`` are read back: the id
names the letter the corrected payload replaces (it must still be open), the rest is
there for the person fixing it. The corrected records go through the same ledgered
replay as any other (revalidated, written once, accounted by the blocking check).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from etl_assets.errors import ConfigurationError
from etl_assets.postgres.replay import ReplayFilter, Transform

__all__ = [
    "latest_error",
    "letter_line",
    "load_transform",
    "read_corrections",
    "replay_filter",
    "write_letters",
]


def latest_error(row: Any) -> tuple[str, str]:
    """(class, message) of the letter's latest failure: its last replay's, else the first."""
    return (
        row["last_error_class"] or row["error_class"],
        row["last_error_message"] or row["error_message"],
    )


def letter_line(row: Any) -> str:
    """One open letter as one JSON line (``row``: a record of ``Ledger.open_letters``)."""
    error_class, error = latest_error(row)
    return json.dumps(
        {
            "id": row["id"],
            "error_class": error_class,
            "error": error,
            "replay_attempts": row["replay_attempts"],
            "payload": json.loads(row["payload"]),
        },
        ensure_ascii=False,
    )


def write_letters(rows: Iterable[Any], out: TextIO) -> int:
    count = 0
    for row in rows:
        out.write(letter_line(row) + "\n")
        count += 1
    return count


def read_corrections(path: str | Path) -> dict[int, dict[str, Any]]:
    """Letter id -> corrected payload, from an exported (and edited) file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"cannot read the corrections file {path}: {exc}") from exc
    return dict(_corrections(str(path), text.splitlines()))


def _corrections(path: str, lines: list[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    seen: set[int] = set()
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigurationError(f"{path} line {n}: not JSON ({exc})") from None
        letter_id, payload = (
            (entry.get("id"), entry.get("payload")) if isinstance(entry, dict) else (None, None)
        )
        if not isinstance(letter_id, int) or not isinstance(payload, dict):
            raise ConfigurationError(
                f'{path} line {n}: expected an object with an integer "id" and an object '
                '"payload" (as `etl-assets-dead-letters export` writes)'
            )
        if letter_id in seen:
            raise ConfigurationError(f"{path} line {n}: letter {letter_id} appears twice")
        seen.add(letter_id)
        yield letter_id, payload


def load_transform(spec: str) -> Transform:
    """``"package.module:function"`` -> the function (payload dict -> payload dict)."""
    module_name, _, name = spec.partition(":")
    if not module_name or not name:
        raise ConfigurationError(f"transform {spec!r}: expected 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"transform {spec!r}: cannot import {module_name}: {exc}") from exc
    function = getattr(module, name, None)
    if not callable(function):
        raise ConfigurationError(f"transform {spec!r}: {module_name} has no function {name!r}")
    transform: Transform = function
    return transform


def replay_filter(
    error_classes: Sequence[str],
    ids: Sequence[int],
    transform: str | None,
    fixes_file: str | None,
) -> ReplayFilter:
    """A replay's filter and fix from user input (job config or command line)."""
    return ReplayFilter(
        error_classes=error_classes,
        ids=ids,
        transform=load_transform(transform) if transform else None,
        corrected=read_corrections(fixes_file) if fixes_file else {},
    )
