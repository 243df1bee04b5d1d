"""The dead-letter CLI's answers to user mistakes: a message and exit code 2, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from etl_assets.dead_letter_cli import main
from etl_assets.dead_letter_file import read_corrections
from etl_assets.errors import ConfigurationError


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
