"""The dead-letter CLI's answers: a message and exit code 2 for user mistakes, no traceback;
exit 1 when letters failed again; quiet on a closed pipe; listings."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest

from etl_assets.dead_letter_cli import main
from etl_assets.dead_letter_file import read_corrections
from etl_assets.errors import CircuitBreakerOpenError, ConfigurationError
from etl_assets.example.sample_events import SAMPLE_EVENTS, SampleEvent
from etl_assets.postgres.loader import load_partition
from etl_assets.postgres.resource import PostgresResource


def test_an_unknown_asset_names_the_replayable_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "nope", "2024-01-02"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("etl-assets-dead-letters: no asset 'nope'")
    assert "replayable assets: daily_metrics, module_hourly, raw_logs, sample_events_table" in err


def test_a_partition_that_is_not_a_date_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["list", "raw_logs", "yesterday"])
    assert exit_.value.code == 2
    assert "'yesterday' is not a date" in capsys.readouterr().err


def test_an_unknown_code_location_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-m", "no_such_module", "list", "raw_logs", "2024-01-02"]) == 2
    assert "cannot import code location 'no_such_module'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"id": 1, "payload": {}}\nnot json\n', "line 2: not JSON"),
        ('{"id": "1", "payload": {}}\n', 'line 1: expected an object with an integer "id"'),
        ('{"id": 1, "payload": {}}\n{"id": 1, "payload": {}}\n', "line 2: letter 1 appears twice"),
    ],
)
def test_a_broken_fixes_file_names_its_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "fixes.jsonl"
    path.write_text(text)
    with pytest.raises(ConfigurationError, match=message):
        read_corrections(path)


def test_a_missing_fixes_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read the corrections file"):
        read_corrections(tmp_path / "missing.jsonl")


def test_a_closed_pipe_ends_the_cli_quietly(db_dsn: str) -> None:
    """`... list | head`: exit 141 like any Unix tool, no BrokenPipeError traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line
    try:
        done = subprocess.run(
            [str(Path(sys.executable).with_name("etl-assets-dead-letters")), "list", "raw_logs",
             "2024-01-02"],
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120, check=False,
            env={**os.environ, "ETL_ASSETS_PG_DSN": db_dsn},
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (141, "")


def test_a_replay_whose_letters_fail_again_exits_1(
    db_dsn: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The three malformed lines of a day, replayed unfixed: reported, still open, exit 1."""
    from etl_assets.example.landing import write_sample_day
    from etl_assets.example.logs import LOGS
    from etl_assets.postgres.loader import load_partition
    from etl_assets.postgres.resource import PostgresResource

    day = dt.date(2024, 1, 2)
    landing = tmp_path / "landing"
    write_sample_day(landing, day, 200)

    async def load() -> None:
        from etl_assets.example.landing import read_landing_day

        async with PostgresResource(dsn=db_dsn).pool() as pool:
            await load_partition(
                pool, LOGS.target(), day, read_landing_day(landing, day), load_id="cli-1",
                model=LOGS.model,
            )  # fmt: skip

    asyncio.run(load())
    monkeypatch.setenv("ETL_ASSETS_PG_DSN", db_dsn)

    assert main(["replay", "raw_logs", day.isoformat()]) == 1
    out, err = capsys.readouterr()
    assert "replayed 3 dead letter(s): 0 written, 3 failed again (still open)" in out
    assert err.startswith("3 letter(s) failed again and stay open")


def test_list_shows_the_pending_letters_of_a_failed_load(
    db_dsn: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A load whose 100 records were all dead-lettered failed; list names its 100 letters."""
    day = dt.date(2024, 3, 1)
    rows = ({"event_id": i, "kind": "view", "amount": "x"} for i in range(100))

    async def failing_load() -> None:
        async with PostgresResource(dsn=db_dsn).pool() as pool:
            await load_partition(
                pool, SAMPLE_EVENTS.target(), day, rows, load_id="run-1", model=SampleEvent
            )

    with pytest.raises(CircuitBreakerOpenError, match=r"See etl\.dead_letters"):
        asyncio.run(failing_load())
    monkeypatch.setenv("ETL_ASSETS_PG_DSN", db_dsn)
    assert main(["list", "sample_events_table", "2024-03-01"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == [
        "sample_events_table 2024-03-01: never published, no open dead letters",
        "sample_events_table 2024-03-01: 100 pending dead letter(s) of the failed load run-1 "
        "(not replayable: they open if that load is resumed and publishes; the partition's "
        "next load supersedes them)",
    ]
    assert len(lines) == 102
    assert all(" ValidationError  replays 0  amount: " in line for line in lines[2:])
