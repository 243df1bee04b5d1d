"""`dg` as a user runs it: the Component listed and scaffolded, the definitions checked."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from dagster.components.testing import DefsFolderSandbox, create_defs_folder_sandbox

PROJECT = Path(__file__).resolve().parents[1]
DG = str(Path(sys.executable).with_name("dg"))
DEFINITIONS_PY = """\
from pathlib import Path

import dagster as dg


@dg.definitions
def defs() -> dg.Definitions:
    return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
"""


def dg(
    *args: str, cwd: Path, home: Path, src: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``dg ARGS`` in ``cwd``, with an empty instance (DAGSTER_HOME) of its own."""
    env = {**os.environ, "DAGSTER_HOME": str(home), "NO_COLOR": "1", "COLUMNS": "200"}
    if src is not None:
        env["PYTHONPATH"] = str(src)
    return subprocess.run(
        [DG, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=170, check=False
    )


@pytest.fixture
def project() -> Iterator[DefsFolderSandbox]:
    """A fresh dg project (``dg.toml``, ``src/<name>/defs``) with a definitions.py."""
    with create_defs_folder_sandbox() as sandbox:
        (sandbox.defs_folder_path.parent / "definitions.py").write_text(DEFINITIONS_PY)
        yield sandbox


def test_dg_list_components_shows_the_component(tmp_path: Path) -> None:
    """`dg list components` in the checkout lists etl_assets.PostgresLoadComponent."""
    result = dg("list", "components", cwd=PROJECT, home=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "etl_assets.PostgresLoadComponent" in result.stdout


def test_dg_check_defs_passes_in_the_checkout(tmp_path: Path) -> None:
    """`dg check defs` loads the example's Python and YAML definitions without error."""
    result = dg("check", "defs", cwd=PROJECT, home=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "All definitions loaded successfully." in result.stdout + result.stderr


def test_dg_scaffold_then_check_then_a_mistake_named(
    project: DefsFolderSandbox, tmp_path: Path
) -> None:
    """`dg scaffold defs` writes a load `dg check defs` accepts; a wrong mode is named and fixed."""
    root, src = project.project_root, project.project_root / "src"
    scaffolded = dg(
        "scaffold", "defs", "etl_assets.PostgresLoadComponent", "orders", cwd=root, home=tmp_path
    )
    assert scaffolded.returncode == 0, scaffolded.stderr[-2000:]
    orders = project.defs_folder_path / "orders"
    assert sorted(p.name for p in orders.iterdir()) == ["defs.yaml", "source.py"]
    document = yaml.safe_load((orders / "defs.yaml").read_text())
    assert document["type"] == "etl_assets.PostgresLoadComponent"

    checked = dg("check", "defs", cwd=root, home=tmp_path, src=src)
    assert checked.returncode == 0, checked.stderr[-2000:]

    document["attributes"]["table"]["mode"] = "merge"
    (orders / "defs.yaml").write_text(yaml.safe_dump(document))
    refused = dg("check", "defs", cwd=root, home=tmp_path, src=src)
    assert refused.returncode == 1
    assert (
        f"{orders / 'defs.yaml'}: attributes.table.mode: 'merge' is not a write mode; "
        "write one of replace, upsert"
    ) in refused.stdout + refused.stderr
