"""Shared fixtures: the real PENGWIN files beside the repository and small hand-made PENGWIN roots."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import REAL_DATA, write_pair


@pytest.fixture(autouse=True)
def seeded_global_generators() -> Iterator[None]:
    """Every test starts from the same global torch, NumPy and ``random`` states, so that a test drawing from them
    (untrained weights, ``torch.rand``) is repeatable, and leaves them as it found them."""
    states = torch.get_rng_state(), np.random.get_state(), random.getstate()
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    yield
    torch.set_rng_state(states[0])
    np.random.set_state(states[1])
    random.setstate(states[2])


@pytest.fixture
def real_data() -> Path:
    """The folder of real PENGWIN files; tests using it are skipped, visibly, where it is absent, and fail on CI
    (``CI`` set), which has it beside the repository."""
    if not REAL_DATA.is_dir():
        message = f"real PENGWIN files not found at {REAL_DATA}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return REAL_DATA


@pytest.fixture
def pengwin_root(tmp_path: Path) -> Path:
    """A labelled PENGWIN root of 10 patients with 2 projections each (32 px)."""
    for patient in range(1, 11):
        for projection in (0, 250):
            write_pair(tmp_path, f"{patient:03d}_{projection:04d}.tif", seed=patient * 1000 + projection)
    return tmp_path
