"""Helpers the test modules share: repository paths, PENGWIN file writers and ``monai.bundle`` runs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import json

import numpy as np
import tifffile
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE_ROOT = REPO_ROOT / "bundle"
REAL_DATA = REPO_ROOT.parent / "shared" / "data" / "pengwin_real"
#: a tiny built-in synthetic dataset (``--synthetic``): 3 phantoms x 2 views at 64 px
TINY_SYNTHETIC = "{'patients': 3, 'projections': 2, 'size': 64, 'seed': 0}"


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


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tiny_training_args(bundle_root: Path, max_epochs: int, batch_size: int) -> list[str]:
    """``monai.bundle run training`` arguments for a short run on a tiny synthetic dataset in ``bundle_root``."""
    return [
        "training", "--config_file", "configs/train.json", "--bundle_root", str(bundle_root),
        "--synthetic", TINY_SYNTHETIC, "--num_workers", "0",
        "--max_epochs", str(max_epochs), "--batch_size", str(batch_size),
    ]  # fmt: skip


def bundle_run(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run ARGS`` started in the bundle folder, as a user runs it; output captured."""
    return subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", *args],
        cwd=BUNDLE_ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_valid_submissions(images: Path, out: Path, size: int) -> None:
    """Every image of ``images`` has a PENGWIN bit map in ``out``: uint32, its size, not empty, bits 1..30 only,
    at most 10 fragments per bone in its report."""
    names = sorted(path.name for path in images.glob("*.tif"))
    assert names and sorted(path.name for path in out.glob("*.tif")) == names
    for name in names:
        bitmap = tifffile.imread(out / name)
        assert bitmap.dtype == np.uint32 and bitmap.shape == (size, size) and bitmap.any()
        assert not (bitmap & ~np.uint32(0x7FFFFFFE)).any()  # bits 1..30 only
        report = json.loads((out / name).with_suffix(".json").read_text())
        for category in (1, 2, 3):
            assert sum(f["category"] == category for f in report["fragments"]) <= 10


def run_epochs_with_time_limit(rank: int, world_size: int, init_file: str, results: str) -> None:
    """A distributed worker (gloo): for each rank in turn as the late one, 4 epochs under an ``EpochTimeLimit`` of one
    minute whose clock, on that rank only, started an hour ago; writes the epochs this rank ran, one line per turn,
    to ``<results>/<rank>``."""
    import time

    import torch.distributed as dist
    from ignite.engine import Engine, Events

    from scripts.handlers import EpochTimeLimit

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    epochs = []
    for late_rank in range(world_size):
        engine = Engine(lambda engine, batch: dist.all_reduce(torch.ones(1)))  # the collective every DDP step makes
        limit = EpochTimeLimit(1.0)
        limit.attach(engine)
        if rank == late_rank:
            late = lambda _, limit=limit: setattr(limit, "started", time.monotonic() - 3600)  # noqa: E731
            engine.add_event_handler(Events.STARTED, late)
        engine.run(range(2), max_epochs=4)
        epochs.append(str(engine.state.epoch))
    Path(results, str(rank)).write_text("\n".join(epochs))
    dist.destroy_process_group()
