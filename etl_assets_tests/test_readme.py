"""README.md's commands and programs, run as written (or, for set-up lines, checked)."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import os
import re
import subprocess
import sys
import tomllib
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from etl_assets.example.devserver import write_env_file
from etl_assets.example.landing import write_sample_day
from etl_assets_tests.postgres.helpers import execute, fetch

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"^```(\w+)\n(.*?)^```", README, flags=re.S | re.M)
BASH = [body for lang, body in BLOCKS if lang == "bash"]
PYTHON = [body for lang, body in BLOCKS if lang == "python"]
VENV_BIN = Path(sys.executable).parent


def only(blocks: list[str], marker: str) -> str:
    [block] = [b for b in blocks if marker in b]
    return block


def test_every_runnable_block_is_covered_here() -> None:
    """Each bash and python block of the README is one this module runs or checks."""
    markers = [
        "etl-assets-dev\n", ".venv/bin/pytest", "etl-assets-sample-data", "env.sh",
        "dl=.venv/bin/etl-assets-dead-letters", "grants etl_loader",
    ]  # fmt: skip
    assert sorted(sum(m in b for m in markers) for b in BASH) == [1, 1, 1, 1, 1, 1]
    assert len(BASH) == 6
    assert len(PYTHON) == 3


def test_setup_lines_are_what_ci_runs_and_what_pyproject_installs() -> None:
    """The test command is .ci/run's (PgBouncer first); the dev command installs the same."""
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert only(BASH, ".venv/bin/pytest").strip() == ci
    install = "python3 -m venv .venv && .venv/bin/pip install -q -e '.[dev]'"
    assert only(BASH, "etl-assets-dev\n").strip() == f"{install} && .venv/bin/etl-assets-dev"
    system = (
        "{ { { command -v pgbouncer || test -x /usr/sbin/pgbouncer; } && command -v "
        "redis-server; } || { apt-get update -q && apt-get install -y -q pgbouncer "
        "redis-server; }; } >/dev/null"
    )  # Debian's packages the tests need, installed only when missing
    assert ci.startswith(f"{system} && {install} && ")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["etl-assets-dev"] == "etl_assets.example.devserver:main"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A working folder like a fresh clone's: the venv at .venv, state in .etl_assets."""
    (tmp_path / ".venv").symlink_to(VENV_BIN.parent)
    return tmp_path


def run_bash(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )


def test_sample_data_command_writes_february(project: Path) -> None:
    """The sample-data line writes one folder per day of February 2024."""
    done = run_bash(only(BASH, "etl-assets-sample-data"), project, {})
    assert done.returncode == 0, done.stderr
    landing = project / ".etl_assets" / "landing"
    assert sorted(p.name for p in landing.iterdir()) == [
        (dt.date(2024, 2, 1) + dt.timedelta(days=n)).isoformat() for n in range(28)
    ]


@pytest.fixture
def dagster_db(pg_dsn: str) -> Iterator[str]:
    """A database for Dagster's own storage, as etl-assets-dev creates one."""
    name = f"dagster_{uuid.uuid4().hex[:8]}"
    asyncio.run(execute(pg_dsn, f'CREATE DATABASE "{name}"'))
    yield (
        urllib.parse.urlsplit(pg_dsn)
        ._replace(scheme="postgresql+psycopg2", path=f"/{name}")
        .geturl()
    )
    asyncio.run(execute(pg_dsn, f'DROP DATABASE "{name}" WITH (FORCE)'))


def test_cli_command_with_the_env_file_materializes_the_newest_sample_day(
    project: Path, db_dsn: str, dagster_db: str
) -> None:
    """`. .etl_assets/env.sh && dg check defs ... && dg launch ...` loads that day, exit code 0;
    then the dead-letter tour fixes one letter by hand and replays it, with the output
    the README shows."""
    state = project / ".etl_assets"
    day = dt.date(2024, 1, 14)
    sample = write_sample_day(state / "landing", day)
    write_env_file(
        state / "env.sh",
        {
            "DAGSTER_HOME": str(ROOT),
            "ETL_ASSETS_HOME": str(state),
            "ETL_ASSETS_PG_DSN": db_dsn,
            "DAGSTER_PG_URL": dagster_db,
            "ETL_ASSETS_DAGSTER_DIR": str(state / "dagster"),
            "ETL_ASSETS_COMPUTE_LOGS_DIR": str(state / "dagster" / "logs"),
            "ETL_ASSETS_SAMPLE_FIRST": day.isoformat(),
            "ETL_ASSETS_SAMPLE_LAST": day.isoformat(),
        },
    )
    # dg runs in the checkout (the dg project); the env file is this test's.
    dg_block = only(BASH, "env.sh").replace(". .etl_assets/env.sh", f". {state / 'env.sh'}")
    done = run_bash(dg_block.replace(".venv/bin/", f"{VENV_BIN}/"), ROOT, {})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "All definitions loaded successfully." in done.stdout + done.stderr
    rows = asyncio.run(fetch(db_dsn, "SELECT data_date, count(*) FROM public.logs GROUP BY 1"))
    assert [tuple(r) for r in rows] == [(day, 2_000 - sample.malformed)]

    tour_block = only(BASH, "dl=.venv/bin/etl-assets-dead-letters")
    tour = run_bash(". .etl_assets/env.sh\n" + tour_block, project, {})
    assert tour.returncode == 0, tour.stderr[-3000:]
    [shown] = re.findall(r"^```text\n(raw_logs .*?)^```", README, flags=re.S | re.M)
    assert _normalized(tour.stdout, day) == _normalized(shown, dt.date(2024, 1, 14))
    assert "replayed 1 dead letter(s): 1 written, 0 failed again" in tour.stdout
    rows = asyncio.run(
        fetch(
            db_dsn,
            "SELECT count(*) FROM public.logs WHERE severity = 'ERROR' "
            "AND line_no = ANY(SELECT (payload->>'line_no')::int "
            "FROM etl.dead_letters WHERE status = 'replayed')",
        )
    )
    assert rows[0][0] == 1
    letters = asyncio.run(
        fetch(db_dsn, "SELECT status, count(*) FROM etl.dead_letters GROUP BY 1 ORDER BY 1")
    )
    assert [tuple(r) for r in letters] == [("open", 2), ("replayed", 1)]


def test_yaml_load_shown_is_the_examples() -> None:
    """The README's defs.yaml is the example's, byte for byte (what dg check defs checks)."""
    [shown] = [body for lang, body in BLOCKS if lang == "yaml" and "PostgresLoadComponent" in body]
    example = ROOT / "etl_assets" / "example" / "defs" / "shop_orders" / "defs.yaml"
    assert shown == example.read_text()


def _normalized(output: str, day: dt.date) -> list[str]:
    """The tour's lines with what differs per run (ids, line numbers, the day) masked."""
    masks = [
        (r"\(load [0-9a-f-]+\)", "(load ID)"),
        (r"\[replay:cli-[0-9T]+-[0-9a-f]+\]", "[REPLAY]"),
        (r"line \d+ is malformed: .*", "line N is malformed: ..."),
        (re.escape(day.isoformat()), "DAY"),
    ]
    lines = []
    for line in output.strip().splitlines():
        for pattern, mask in masks:
            line = re.sub(pattern, mask, line)
        lines.append(line.rstrip())
    return lines


def run_python(source: str, cwd: Path, db_dsn: str) -> subprocess.CompletedProcess[str]:
    path = cwd / "snippet.py"
    path.write_text(source)
    return subprocess.run(
        [sys.executable, str(path)],
        cwd=cwd,
        env={**os.environ, "ETL_ASSETS_PG_DSN": db_dsn},
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )


RANGE_RUN = """
range_tags = {{
    "dagster/asset_partition_range_start": "2024-01-08",
    "dagster/asset_partition_range_end": "2024-01-11",
}}
ranged = dg.materialize(
    [{asset}, *partition_checks({asset})], resources=resources, tags=range_tags
)
print("range", ranged.success, sorted(
    (e.partition, e.metadata["written"].value)
    for e in ranged.asset_materializations_for_node("{asset}")
))
print("checks", sorted({{(e.check_name, e.passed) for e in ranged.get_asset_check_evaluations()}}))
"""
RANGE_DAYS = [dt.date(2024, 1, d) for d in range(8, 12)]
CHECKS_PASSED = "checks [('dead_letter_rate', True), ('no_duplicate_keys', True), " + (
    "('written_equals_enqueued', True)]"
)


def no_dagster_warning(stderr: str) -> None:
    """A README snippet runs without a Dagster warning (beta notes, mixed policies)."""
    assert "Warning" not in stderr, stderr[-3000:]


def test_writing_your_own_asset_runs_and_loads_three_orders(project: Path, db_dsn: str) -> None:
    """The orders example, run as `python orders.py`, loads and checks one partition, and
    a range of four (a backfill chunk); no Dagster warning."""
    snippet = only(PYTHON, "def orders(") + RANGE_RUN.format(asset="orders")
    done = run_python(snippet, project, db_dsn)
    assert done.returncode == 0, done.stderr[-3000:]
    no_dagster_warning(done.stderr)
    first, ranged, checks = done.stdout.splitlines()[-3:]
    assert first == "True 3"
    assert ranged == f"range True {[(d.isoformat(), 3) for d in RANGE_DAYS]}"
    assert checks == CHECKS_PASSED
    rows = asyncio.run(
        fetch(db_dsn, "SELECT data_date, order_id, amount FROM public.orders ORDER BY 2")
    )
    assert [tuple(r) for r in rows if r[0] == dt.date(2024, 1, 2)] == [
        (dt.date(2024, 1, 2), 1, decimal.Decimal("2.50")),
        (dt.date(2024, 1, 2), 2, decimal.Decimal("4.50")),
        (dt.date(2024, 1, 2), 3, decimal.Decimal("6.50")),
    ]
    assert len(rows) == 3 + 3 * len(RANGE_DAYS)


def test_using_the_engine_runs_and_loads_a_thousand_events(project: Path, db_dsn: str) -> None:
    """The engine example loads its 1,000 records into public.events, nothing lost."""
    done = run_python(only(PYTHON, "load_partition("), project, db_dsn)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "enqueued=1000" in done.stdout
    assert "written=1000" in done.stdout
    rows = asyncio.run(
        fetch(
            db_dsn, "SELECT data_date, count(*), count(DISTINCT id) FROM public.events GROUP BY 1"
        )
    )
    assert [tuple(r) for r in rows] == [(dt.date(2024, 1, 2), 1_000, 1_000)]


def test_the_dataframe_example_runs_and_reads_back_three_sales(project: Path, db_dsn: str) -> None:
    """sales.py: a DataFrame lands its 3 rows; the pandas and stream inputs read them back;
    a range of four days loads as one run; no Dagster warning."""
    snippet = only(PYTHON, "def sales(") + RANGE_RUN.format(asset="sales")
    done = run_python(snippet, project, db_dsn)
    assert done.returncode == 0, done.stderr[-3000:]
    no_dagster_warning(done.stderr)
    first, ranged, checks = done.stdout.splitlines()[-3:]
    assert first == "34.5 3"  # 9.5 + 20.0 + 5.0 (the 5th), 3 rows
    assert ranged == f"range True {[(d.isoformat(), 3) for d in RANGE_DAYS]}"
    assert checks == CHECKS_PASSED
    rows = asyncio.run(fetch(db_dsn, "SELECT data_date, sale_id FROM public.sales ORDER BY 1, 2"))
    days = [dt.date(2024, 1, 5), *RANGE_DAYS]
    assert [tuple(r) for r in rows] == [(d, n) for d in days for n in (1, 2, 3)]


def test_the_grants_command_prints_the_readme_statements(project: Path) -> None:
    """The Production PostgreSQL section's GRANTs are what the command prints."""
    block = only(BASH, "grants etl_loader")
    result = run_bash(block, project, {})
    assert result.returncode == 0, result.stderr
    [shown] = [b for lang, b in BLOCKS if lang == "text" and "GRANT USAGE, CREATE" in b]
    assert result.stdout == shown
