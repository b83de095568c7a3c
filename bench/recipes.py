"""Benchmark: the training recipes at one budget on the same splits, scored with the official metrics on test.

Each recipe is ``bundle/configs/train.json`` with the config overlays a user merges after it (``pengwin_xray.compare
.RECIPES``: ``default`` = nothing (main/other formulation), ``seed`` = ``train_seed.json``, ``slots`` =
``train_slots.json`` (30 fixed slots, default loss), ``rims`` = ``train_rims.json`` (fragment rims),
``vgg16unet`` = ``train_vgg16.json``, ``two_stage`` = ``train_two_stage.json``: a fragment network on per-bone
crops, with the default recipe's model finding the bones, so the default runs first when the list lacks it).
``pengwin-compare`` runs them one after the other, each in its own child process, on the built-in synthetic dataset
(generated once, so the phantom-disjoint training, validation and test splits are the same for all) with the same
``--seed``, ``--epochs`` and optional ``--max-minutes``: training, then the best checkpoint (chosen on the
validation split) scored on the test split, which no recipe trained or selected on: the six official metrics, the
one-to-one fragment IoU and the fracture IoU by fragment size (mean best IoU of the test fragments under 0.5%, 0.5
to 1%, 1 to 5% and over 5% of the image). Training images/s counts batch loading and iterations only (validation
excluded; the two-stage fragment network counts its crops, up to three per view); training minutes add the
localiser's to the two-stage recipe's; peak memory is the child's maximum resident set (``os.wait4``). Every
recipe's validation results are echoed while it trains.

It prints the machine, load and budget, one markdown table, and each recipe's difference from the first; all
figures are in ``<work>/compare.json``.

Run: ``.venv/bin/python bench/recipes.py [--recipes seed,slots,default] [--epochs 40] [--max-minutes M] [--patients N]``
(``--patients``: a larger synthetic dataset, 8 views per phantom, split by phantom 70:15:15 like the preset's 12).
At the demo budget (``train.json``'s synthetic preset, 40 epochs) a recipe takes about 7 minutes on 2 idle CPU
cores. The epoch budget fixes the scores whatever else runs; the times and, with ``--max-minutes``, the epochs
reached need a quiet machine.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
from pathlib import Path

import torch

from pengwin_xray.compare import RECIPES, compare, format_table

REPO_ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default="seed,slots,default", help=f"comma-separated, of {', '.join(RECIPES)}")
    parser.add_argument("--epochs", type=int, default=40, help="max_epochs of every recipe (default 40, the demo)")
    parser.add_argument("--max-minutes", type=float, default=None, help="training wall-time limit per recipe")
    parser.add_argument("--seed", type=int, default=0, help="training seed (the synthetic data keep their own)")
    parser.add_argument(
        "--patients", type=int, default=None, help="phantoms of the synthetic dataset (default: train.json's preset, 12)"
    )
    parser.add_argument("--work", type=Path, default=REPO_ROOT / "bench" / "work" / "recipes")
    args = parser.parse_args()
    recipes = [name.strip() for name in args.recipes.split(",") if name.strip()]
    overrides: dict = {"seed": args.seed}
    if args.max_minutes is not None:
        overrides["max_minutes"] = args.max_minutes
    if args.patients is not None:
        # a larger dataset gets its own folder, so the preset's stays as it is
        overrides["synthetic#patients"] = args.patients
        overrides["synthetic_dir"] = str(args.work / f"synthetic-{args.patients}")
    started = datetime.datetime.now(datetime.timezone.utc)
    print(
        f"{started:%Y-%m-%d %H:%M} UTC; {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); load average before the run {os.getloadavg()[0]:.2f}; budget "
        f"{args.epochs} epochs" + (f" or {args.max_minutes} min" if args.max_minutes is not None else "")
        + f"; seed {args.seed}" + (f"; {args.patients} synthetic phantoms" if args.patients is not None else ""),
        flush=True,
    )
    try:
        report = compare(
            max_epochs=args.epochs, output_dir=args.work, bundle_root=REPO_ROOT / "bundle", overrides=overrides, recipes=recipes
        )
    except ValueError as error:
        raise SystemExit(f"bench/recipes.py: {error}") from None
    minutes = (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds() / 60
    print(f"\nsplit {report['split']}; {minutes:.0f} min in all; load average now {os.getloadavg()[0]:.2f}\n")
    print(format_table(report["rows"]))
    first, *others = report["rows"]
    for row in others:
        print(
            f"{row['recipe']} - {first['recipe']}: fracture IoU {row['fracture_iou'] - first['fracture_iou']:+.3f}, "
            f"anatomical IoU {row['anatomical_iou'] - first['anatomical_iou']:+.3f}, "
            f"fracture HD95 {row['fracture_hd95'] - first['fracture_hd95']:+.1f}, "
            f"anatomical HD95 {row['anatomical_hd95'] - first['anatomical_hd95']:+.1f}"
        )
    print(f"figures: {Path(report['output_dir']) / 'compare.json'}")


if __name__ == "__main__":
    main()
