"""Shared fixtures: the real PENGWIN files beside the repository and small hand-made PENGWIN roots."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import REAL_DATA, write_pair


@pytest.fixture
def real_data() -> Path:
    """The folder of real PENGWIN files; tests using it are skipped, visibly, where it is absent."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"real PENGWIN files not found at {REAL_DATA}")
    return REAL_DATA


@pytest.fixture
def pengwin_root(tmp_path: Path) -> Path:
    """A labelled PENGWIN root of 10 patients with 2 projections each (32 px)."""
    for patient in range(1, 11):
        for projection in (0, 250):
            write_pair(tmp_path, f"{patient:03d}_{projection:04d}.tif", seed=patient * 1000 + projection)
    return tmp_path
