from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.golden.record import BEAUTY, record

FIGURES = Path(__file__).with_name("figures.json")


def test_golden_figures_unchanged(tmp_path: Path) -> None:
    """The fixed tiny pipeline gives exactly the recorded figures (a refactor moves nothing)."""
    if not BEAUTY.is_dir():
        pytest.skip(f"shared data not found at {BEAUTY}")
    expected = json.loads(FIGURES.read_text())
    assert record(tmp_path) == expected
