"""The multi-GPU configs through torchrun: two CPU processes with the gloo backend take the real code path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pengwin_xray.datalist import build_datalist

from helpers import BUNDLE_ROOT, TINY_SYNTHETIC, free_port


def torchrun(config_files: list[str], *args: str) -> subprocess.CompletedProcess:
    command = [
        str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node=2", f"--master_port={free_port()}",
        "-m", "monai.bundle", "run", "--config_file", str(config_files), *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=BUNDLE_ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_two_process_training_and_evaluation_finish_on_both_ranks_with_one_set_of_files(tmp_path):
    common = ["--bundle_root", str(tmp_path), "--synthetic", TINY_SYNTHETIC, "--num_workers", "0", "--batch_size", "1"]
    train = torchrun(["configs/train.json", "configs/multi_gpu_train.json"], *common, "--max_epochs", "1")
    assert train.returncode == 0, train.stderr[-3000:]
    log = train.stdout + train.stderr
    assert log.count("SupervisedTrainer - INFO - Epoch[1] Complete") == 2  # both ranks trained
    files = sorted(path.name for path in (tmp_path / "models").iterdir())
    assert files == [".training.lock", "checkpoint.pt", "model.pt", "postprocessing.json"]  # one set, no temporary
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert not any(key.startswith("module.") for key in state)  # saved unwrapped from DistributedDataParallel
    assert len(list((tmp_path / "eval" / "configs").iterdir())) == 1  # only rank 0 keeps the run's configs
    validation = build_datalist(tmp_path / "data" / "synthetic")["validation"]
    choice = json.loads((tmp_path / "models" / "postprocessing.json").read_text())
    assert len(validation) == 2 and choice["num_validation"] == 2  # chosen on the whole split, not one rank's half

    evaluate = torchrun(["configs/train.json", "configs/evaluate.json", "configs/multi_gpu_evaluate.json"], *common)
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    summary = json.loads((tmp_path / "eval" / "evaluation" / "summary.json").read_text())
    assert summary["num_images"] == 2  # the two test images, one per rank, gathered
