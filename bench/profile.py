"""Where a record path's time goes, per step, in microseconds per row (pyinstrument).

    .venv/bin/python bench/profile.py --rows 1000000 --path etl_resilient
    .venv/bin/python bench/profile.py --rows 1000000 --path etl_validated --html /tmp/p.html

Runs one ``bench/run.py`` path in this process under pyinstrument's wall-clock sampler
and sums the samples of each step (a frame's time includes what it calls). Wall clock,
so ``waiting`` is the event loop idle in ``select``: the one Python thread waiting for
the server. Shares are what to trust on a busy machine; us/row move with its speed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import run  # bench/run.py: the same paths, records and table

# step -> function names (pyinstrument frame function) whose inclusive time it is; the
# first match from the root down claims a sample, so order nested steps first.
STEPS: dict[str, tuple[str, ...]] = {
    "source (records generator)": ("records",),
    "validation (pydantic)": ("_validate", "_plain_dicts"),
    "shaping (rows for COPY)": ("shape",),
    "batch digest": ("batch_digest",),
    "key digest (cells)": ("cells",),
    "COPY (encode + send)": ("copy_records_to_table", "copy_arrow"),
    "audit + publish": ("_finish",),
    "waiting (event loop idle)": ("select", "_run_once_select"),
}


def classify(stack: list[str]) -> str:
    """The step a sample belongs to: the outermost frame that names one."""
    for step, names in STEPS.items():
        if any(name in names for name in stack):
            return step
    return "other (loop, ledger, batching, ...)"


def main(argv: list[str] | None = None) -> int:
    from pyinstrument import Profiler

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--path", default="etl_resilient", choices=sorted(run.PATHS))
    parser.add_argument("--dsn", help="default: an embedded server in a temporary folder")
    parser.add_argument("--html", type=Path, help="also write pyinstrument's HTML here")
    parser.add_argument(
        "--other", type=int, default=0, help="also list the N functions of 'other' with most time"
    )
    args = parser.parse_args(argv)
    import etl_assets  # noqa: F401  Dagster loaded, as in a step

    dsn, server = (args.dsn, None) if args.dsn else run.start_embedded()
    try:
        asyncio.run(
            run._execute(
                dsn, f"DROP SCHEMA IF EXISTS {run.SCHEMA}, etl CASCADE; CREATE SCHEMA {run.SCHEMA}"
            )
        )
        profiler = Profiler(interval=0.0005, async_mode="disabled")
        profiler.start()
        result = asyncio.run(run.PATHS[args.path](dsn, args.rows))
        profiler.stop()
    finally:
        if server is not None:
            server.release()
    others: dict[str, float] = {}
    totals = step_totals(profiler.last_session.root_frame(), others)
    print(f"{args.path}, {args.rows:,} rows, {result['seconds']:.2f} s timed")
    print("| step | s | us/row | share |")
    print("|---|---:|---:|---:|")
    whole = sum(totals.values())
    for step, seconds in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(
            f"| {step} | {seconds:.2f} | {seconds * 1e6 / args.rows:.2f} | {seconds / whole:.0%} |"
        )
    for name, seconds in sorted(others.items(), key=lambda kv: -kv[1])[: args.other]:
        print(f"  other: {name} {seconds * 1e6 / args.rows:.2f} us/row")
    if args.html:
        args.html.write_text(profiler.output_html())
    return 0


def step_totals(root: Any, others: dict[str, float] | None = None) -> dict[str, float]:
    """Self time of every frame, summed by the step its stack belongs to (and, in
    ``others``, the self time of each function that no step claims)."""
    totals: dict[str, float] = {}

    def walk(frame: Any, stack: list[str]) -> None:
        stack = [*stack, frame.function]
        own = frame.time - sum(child.time for child in frame.children)
        if own > 0:
            step = classify(stack)
            totals[step] = totals.get(step, 0.0) + own
            if others is not None and step.startswith("other"):
                name = f"{frame.function} ({Path(frame.file_path or '').name})"
                others[name] = others.get(name, 0.0) + own
        for child in frame.children:
            walk(child, stack)

    if root is not None:
        walk(root, [])
    return totals


if __name__ == "__main__":
    sys.exit(main())
