"""Where etl_assets keeps local state: ``$ETL_ASSETS_HOME``, by default ``./.etl_assets``."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["home"]


def home() -> Path:
    """The local state folder (embedded server data, sample landing files); git-ignored."""
    return Path(os.environ.get("ETL_ASSETS_HOME") or Path.cwd() / ".etl_assets").resolve()
