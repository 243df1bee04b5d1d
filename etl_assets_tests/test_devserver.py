"""etl-assets-dev's environment for its `dagster dev` child."""

from __future__ import annotations

import os
import subprocess
import sys

from etl_assets.example.devserver import DEV_SUPERSESSION, _without_dev_supersession

WARN = (
    "import warnings, dagster\n"
    "warnings.warn('Function `{}` is superseded and its usage is discouraged.', "
    "dagster.SupersessionWarning)\n"
)


def warned(function: str, pythonwarnings: str) -> str:
    """stderr of a Python that warns as `dagster {function}` does, under PYTHONWARNINGS."""
    env = {**os.environ, "PYTHONWARNINGS": pythonwarnings}
    return subprocess.run(
        [sys.executable, "-c", WARN.format(function)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stderr


def test_dev_supersession_is_silenced_and_nothing_else() -> None:
    """`dagster dev`'s 'use dg dev' advice is filtered; another command's advice is not."""
    pythonwarnings = _without_dev_supersession(None)
    assert pythonwarnings == DEV_SUPERSESSION
    assert "SupersessionWarning" not in warned("dev_command", pythonwarnings)
    assert "SupersessionWarning" in warned("asset_materialize_command", pythonwarnings)


def test_the_users_own_filters_are_kept() -> None:
    """PYTHONWARNINGS already set is extended, not replaced."""
    assert _without_dev_supersession("error") == f"error,{DEV_SUPERSESSION}"
