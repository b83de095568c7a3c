"""First run on a GPU machine: train the default recipe at full PENGWIN size for a few minutes, then score it.

What it does, in one process: builds ``bundle/configs/train.json`` (the default recipe, plus any ``--overlay``)
with ``monai.bundle``'s ``ConfigWorkflow`` on the built-in synthetic data generated at ``--size`` (448, the
PENGWIN size, by default) into ``--work``; trains with the recipe's own settings (AMP and 4 loader workers on
CUDA) until ``--minutes`` have passed (ignite's ``TimeLimit`` through the recipe's ``max_minutes``); then
scores the best checkpoint on the test split with ``configs/evaluate.json`` and the official metrics.

It prints: the device, training images/s (``pengwin_xray.compare.ThroughputMeter``: images over the time from each
``GET_BATCH_STARTED`` to its ``ITERATION_COMPLETED``, validation excluded), the share of that time spent waiting
for the data loader (``GET_BATCH_STARTED`` to ``GET_BATCH_COMPLETED``, ignite ``Timer``), peak GPU memory
(``torch.cuda.max_memory_allocated``) and the six official metrics with the fracture IoU by fragment size.
A data-wait share above about 10% means the loader, not the GPU, sets the pace: raise ``--num_workers``.

Run: ``.venv/bin/python bench/gpu_check.py`` on a GPU machine (about 5 minutes plus data generation). On a CPU
it runs too, with the same code path, which is how it is tested: ``--size 64 --patients 3 --minutes 0.2``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from ignite.engine import Events
from ignite.handlers import Timer
from monai.bundle import ConfigWorkflow

from pengwin_xray.compare import ThroughputMeter

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE_ROOT = REPO_ROOT / "bundle"
#: the configs import the bundle's ``scripts``, importable from the bundle folder only (as ``python -m monai.bundle``
#: runs them), and this script builds the workflows in its own process
sys.path.insert(0, str(BUNDLE_ROOT))


def workflow(config_files: list[str], workflow_type: str, overrides: dict) -> ConfigWorkflow:
    flow = ConfigWorkflow(
        config_file=config_files,
        meta_file=str(BUNDLE_ROOT / "configs" / "metadata.json"),
        logging_file=str(BUNDLE_ROOT / "configs" / "logging.conf"),
        workflow_type=workflow_type,
        **overrides,
    )
    flow.initialize()
    return flow


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="training wall time (default 5)")
    parser.add_argument("--size", type=int, default=448, help="synthetic image size (default 448, as PENGWIN)")
    parser.add_argument("--patients", type=int, default=24, help="synthetic phantoms (8 views each)")
    parser.add_argument("--overlay", action="append", default=[], help="config merged after train.json")
    parser.add_argument("--work", type=Path, default=REPO_ROOT / "bench" / "work" / "gpu_check")
    args = parser.parse_args(argv)
    configs = BUNDLE_ROOT / "configs"
    overlays = [str(Path(name).resolve()) for name in args.overlay]
    overrides = {
        "bundle_root": str(args.work),
        "synthetic_dir": str(args.work / "data"),
        "synthetic#patients": args.patients,
        "synthetic#size": args.size,
        "max_epochs": 10_000,
        "max_minutes": args.minutes,
    }
    device = "cuda: " + torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (no CUDA device)"
    print(f"device {device}; torch {torch.__version__}; {args.size} px, {args.minutes} min", flush=True)

    train = workflow([str(configs / "train.json"), *overlays], "train", overrides)
    trainer = train.trainer
    meter = ThroughputMeter()  # batch loading + iterations, as pengwin-compare reports them
    meter.attach(trainer)
    data_wait = Timer(average=False)
    data_wait.attach(trainer, start=Events.STARTED, resume=Events.GET_BATCH_STARTED, pause=Events.GET_BATCH_COMPLETED)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    train.run()
    amp = bool(train.parser.get_parsed_content("amp"))
    num_workers = int(train.parser.get_parsed_content("num_workers"))
    train.finalize()

    evaluate = workflow([str(configs / "train.json"), str(configs / "evaluate.json"), *overlays], "eval", overrides)
    evaluate.run()
    evaluate.finalize()
    summary = json.loads((args.work / "eval" / "evaluation" / "summary.json").read_text())

    figures = {
        "device": device,
        "amp": amp,
        "num_workers": num_workers,
        "iterations": trainer.state.iteration,
        "images_per_s": meter.images_per_second,
        "data_wait_share": data_wait.value() / meter.seconds,
        "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
        **summary,
    }
    print(f"\ntraining: {trainer.state.iteration} iterations, {meter.images} images, "
          f"{meter.images_per_second:.1f} images/s, data-loader wait {100 * figures['data_wait_share']:.1f}% of the loop (num_workers {num_workers}), "
          f"AMP {amp}, peak GPU memory "
          + (f"{figures['peak_gpu_memory_gib']:.2f} GiB" if figures["peak_gpu_memory_gib"] is not None else "n/a"))
    print(f"test split ({summary['num_images']} images): " + ", ".join(
        f"{key} {summary[key]:.3f}" for key in ("fracture_iou", "fracture_hd95", "fracture_assd", "anatomical_iou",
                                                "anatomical_hd95", "anatomical_assd")))
    print("fracture IoU by fragment size: " + ", ".join(
        f"{key.removeprefix('fracture_iou_')} " + ("n/a" if summary[key] is None else f"{summary[key]:.3f}")
        for key in summary if key.startswith("fracture_iou_") and key != "fracture_iou_hungarian"))
    return figures


if __name__ == "__main__":
    main()
