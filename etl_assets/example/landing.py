"""The landing folder of the log-ingestion example: JSON-lines files, one folder per date.

Layout: ``<landing>/<YYYY-MM-DD>/<host>.jsonl``, one log event per line. Reading never
drops a line: a line that is not a JSON object becomes a record carrying the raw text
and the parse error, which validation then dead-letters with its file and line number.

``etl-assets-sample-data`` writes realistic sample days, with a few malformed lines each.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from etl_assets.paths import home

__all__ = ["SampleDay", "default_landing_dir", "read_landing_day", "write_sample_day"]

SEVERITIES = ("INFO", "WARN", "ERROR")
MODULES = ("api", "auth", "billing", "db", "scheduler", "search")
HOSTS = ("app-1", "app-2")
MAX_RAW_LINE = 4_000  # what a dead letter keeps of a malformed line


def default_landing_dir() -> Path:
    """``$ETL_ASSETS_LANDING``, by default ``<ETL_ASSETS_HOME>/landing``."""
    configured = os.environ.get("ETL_ASSETS_LANDING")
    return Path(configured).resolve() if configured else home() / "landing"


def day_dir(landing: Path, day: dt.date) -> Path:
    return landing / day.isoformat()


def read_landing_day(landing: Path, day: dt.date) -> Iterator[dict[str, Any]]:
    """Every non-blank line of the day's files, in file and line order, as a record.

    Raises FileNotFoundError at the first record (before a batch is written) when the day
    has not landed, so a missing delivery fails its partition instead of loading it empty.
    A generator: in a run of many partitions the error belongs to this day alone.
    """
    folder = day_dir(landing, day)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"no landing data for {day.isoformat()}: {folder} does not exist. Generate "
            f"sample data with `etl-assets-sample-data --from {day} --to {day} "
            f"--landing {landing}`, or set ETL_ASSETS_LANDING / the landing_dir config"
        )
    files = sorted(folder.glob("*.jsonl"))
    yield from _records(folder, files)


def _records(folder: Path, files: list[Path]) -> Iterator[dict[str, Any]]:
    for path in files:
        source = path.relative_to(folder.parent).as_posix()
        with path.open(encoding="utf-8", errors="replace") as lines:
            for line_no, line in enumerate(lines, start=1):
                if line.strip():
                    yield parse_line(source, line_no, line)


def parse_line(source: str, line_no: int, line: str) -> dict[str, Any]:
    """One log line as a record; a malformed one keeps its text and the parse error."""
    line = line.rstrip("\r\n")
    try:
        event = json.loads(line)
    except json.JSONDecodeError as exc:
        return _malformed(source, line_no, line, f"invalid JSON: {exc}")
    if not isinstance(event, dict):
        return _malformed(source, line_no, line, f"a JSON {type(event).__name__}, not an object")
    return {**event, "source_file": source, "line_no": line_no}


def _malformed(source: str, line_no: int, line: str, error: str) -> dict[str, Any]:
    return {
        "source_file": source,
        "line_no": line_no,
        "raw_line": line[:MAX_RAW_LINE],
        "parse_error": error,
    }


@dataclass(frozen=True, slots=True)
class SampleDay:
    """What was written for one day: the counts tests and docs compare against."""

    day: dt.date
    lines: int
    malformed: int
    by_severity: dict[str, int]


def write_sample_day(landing: Path, day: dt.date, lines: int = 2_000) -> SampleDay:
    """Deterministic sample logs for ``day`` (seeded by the date, never by the clock).

    Three lines per day are broken the ways real logs break: a truncated line, an
    unknown severity, a missing module.
    """
    rng = random.Random(day.toordinal())
    folder = day_dir(landing, day)
    folder.mkdir(parents=True, exist_ok=True)
    kinds = ("truncated", "severity", "module")
    broken = dict(zip(rng.sample(range(lines), len(kinds)), kinds, strict=True))
    counts = dict.fromkeys(SEVERITIES, 0)
    start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
    outputs = {host: (folder / f"{host}.jsonl").open("w", encoding="utf-8") for host in HOSTS}
    try:
        for i in range(lines):
            severity = rng.choices(SEVERITIES, weights=(90, 8, 2))[0]
            event = {
                "timestamp": (start + dt.timedelta(seconds=86_400 * i / lines)).isoformat(),
                "severity": severity,
                "module": rng.choice(MODULES),
                "message": f"request {rng.getrandbits(32):08x} took {rng.randint(1, 900)} ms",
            }
            text = _break(event, broken.get(i))
            if i not in broken:
                counts[severity] += 1
            outputs[HOSTS[i % len(HOSTS)]].write(text + "\n")
    finally:
        for output in outputs.values():
            output.close()
    return SampleDay(day, lines, len(broken), counts)


def _break(event: dict[str, Any], how: str | None) -> str:
    if how == "severity":
        event["severity"] = "FATAL"
    elif how == "module":
        del event["module"]
    text = json.dumps(event)
    return text[: len(text) // 2] if how == "truncated" else text


def main(argv: list[str] | None = None) -> int:
    """``etl-assets-sample-data --from 2024-01-01 --to 2024-01-07``."""
    parser = argparse.ArgumentParser(
        prog="etl-assets-sample-data", description="Write sample JSON-lines logs per data date."
    )
    parser.add_argument("--from", dest="start", type=_date, required=True, help="YYYY-MM-DD")
    parser.add_argument("--to", dest="end", type=_date, required=True, help="YYYY-MM-DD")
    parser.add_argument("--landing", type=Path, default=None, help="default: ETL_ASSETS_LANDING")
    parser.add_argument("--lines", type=int, default=2_000, help="lines per day (>= 10)")
    args = parser.parse_args(argv)
    if args.end < args.start:
        parser.error("--to is before --from")
    if args.lines < 10:
        parser.error("--lines must be at least 10")
    landing: Path = args.landing or default_landing_dir()
    day = args.start
    while day <= args.end:
        sample = write_sample_day(landing, day, args.lines)
        print(f"{day}: {sample.lines} lines ({sample.malformed} malformed) -> {landing / str(day)}")
        day += dt.timedelta(days=1)
    return 0


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


if __name__ == "__main__":
    sys.exit(main())
