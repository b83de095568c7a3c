"""bench/gpu_check.py, the first run on a GPU machine, runs end to end on the CPU with a tiny budget."""

from __future__ import annotations

import subprocess
import sys

import pytest

from helpers import REPO_ROOT


@pytest.mark.slow
def test_gpu_check_trains_for_its_budget_and_prints_speed_memory_and_official_metrics(tmp_path):
    result = subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--size", "64", "--patients", "3", "--minutes", "0.1",
         "--work", str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "device cpu (no CUDA device)" in out
    speed = out.split("training: ", 1)[1].splitlines()[0]
    iterations = int(speed.split(" iterations")[0])
    images = int(speed.split(", ")[1].split(" images")[0])
    images_per_s = float(speed.split(", ")[2].split(" images/s")[0])
    wait = float(speed.split("data-loader wait ")[1].split("%")[0])
    assert iterations >= 1 and images == 8 * iterations and images_per_s > 0 and 0 <= wait <= 100
    assert "peak GPU memory n/a" in speed
    scores = out.split("test split (8 images): ", 1)[1].splitlines()[0]  # one phantom of 8 views
    assert scores.startswith("fracture_iou 0.") and "anatomical_assd" in scores
    assert "fracture IoU by fragment size: under_0.5pct" in out
    assert (tmp_path / "models" / "model.pt").is_file()
