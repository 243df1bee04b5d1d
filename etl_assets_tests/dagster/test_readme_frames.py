"""The README's DataFrame example runs as written: its code, materialized for one day."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import dagster as dg

README = Path(__file__).parents[2] / "README.md"


def readme_block(heading: str) -> str:
    """The first python block under ``heading``."""
    section = README.read_text().split(f"\n## {heading}\n", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_dataframe_example_runs_as_written(resources: dict[str, Any]) -> None:
    """orders (a DataFrame) lands 3 rows; the pandas and stream readers see them."""
    module = types.ModuleType("readme_frames")  # importable: the model travels by import path
    sys.modules[module.__name__] = module
    code = compile(readme_block("DataFrames and Arrow"), "README.md", "exec", dont_inherit=True)
    exec(code, module.__dict__)
    namespace = module.__dict__

    result = dg.materialize(
        [namespace["orders"], namespace["order_totals"], namespace["order_count"]],
        partition_key="2024-03-05",
        resources=resources,
    )

    assert result.success
    assert result.output_for_node("order_totals") == 9.5 + 20.0 + 5.0
    assert result.output_for_node("order_count") == 3
