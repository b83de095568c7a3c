"""Shared fixtures: the real PENGWIN files beside the repository and small hand-made PENGWIN roots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE_ROOT = REPO_ROOT / "bundle"
REAL_DATA = REPO_ROOT.parent / "shared" / "data" / "pengwin_real"


@pytest.fixture
def real_data() -> Path:
    """The folder of real PENGWIN files; tests using it are skipped, visibly, where it is absent."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"real PENGWIN files not found at {REAL_DATA}")
    return REAL_DATA


def write_pair(root: Path, name: str, size: int = 32, seed: int = 0, split: str = "train", label: bool = True):
    """Write one raw float32 image (and a uint32 label with bits 1, 11, 21) in the PENGWIN layout."""
    rng = np.random.default_rng(seed)
    image_dir = root / split / "input" / "images" / "x-ray"
    label_dir = root / split / "output" / "images" / "x-ray"
    image_dir.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(image_dir / name, rng.uniform(0.2, 56.0, (size, size)).astype(np.float32))
    if label:
        label_dir.mkdir(parents=True, exist_ok=True)
        bitmap = np.zeros((size, size), np.uint32)
        bitmap[: size // 2] |= 1 << 1
        bitmap[:, : size // 2] |= 1 << 11
        bitmap[size // 4 :, size // 4 :] |= 1 << 21
        tifffile.imwrite(label_dir / name, bitmap)


@pytest.fixture
def pengwin_root(tmp_path: Path) -> Path:
    """A labelled PENGWIN root of 10 patients with 2 projections each (32 px)."""
    for patient in range(1, 11):
        for projection in (0, 250):
            write_pair(tmp_path, f"{patient:03d}_{projection:04d}.tif", seed=patient * 1000 + projection)
    return tmp_path
