"""Benchmark: a model on views larger than those it was trained on, brought to its image size or run as they are.

Data: the phantoms of ``train.json``'s synthetic preset (``--patients``, ``--views``, seed 0) generated again at
``--size`` (448) px; the datalist's test split (phantoms no training or validation image came from). Model: the
trained ``model.pt`` of ``--ckpt_dir`` with its chosen post-processing and the ``image_size`` recorded with it.

Rows, each scored with the official metrics (``pengwin_xray.metrics.score_image``, mean over the test views), with
the median milliseconds of ``Segmenter.segment`` (eager float32, flip TTA):

1. the baseline: the same test views at the size the model was trained on (``--native_root``, the bundle's
   generated preset by default);
2. the larger views as ``configs/inference.json`` runs them: brought to ``image_size``, decoded there, the
   probabilities resized back to the view;
3. the larger views with the network at their own size (``image_size`` null).

Run: ``.venv/bin/python bench/image_size.py`` after the README's training command, on a quiet machine.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from pengwin_xray.datalist import build_datalist
from pengwin_xray.metrics import OFFICIAL_METRICS, read_fragment_label, score_image
from pengwin_xray.segment import load_segmenter
from pengwin_xray.synthetic import generate_dataset

BUNDLE_ROOT = Path(__file__).resolve().parents[1] / "bundle"


def score_test_split(root: Path, ckpt_dir: Path, **overrides: object) -> tuple[dict[str, float], float]:
    """Mean official metrics over the test split of the PENGWIN root ``root``, and median ms per ``segment`` call."""
    segmenter = load_segmenter(BUNDLE_ROOT, ckpt_dir=str(ckpt_dir), **overrides)
    test = build_datalist(root)["test"]
    segmenter.segment(test[0]["image"])  # warm-up
    scores, milliseconds = [], []
    for item in test:
        start = time.perf_counter()
        bitmap = segmenter.segment(item["image"]).bitmap
        milliseconds.append((time.perf_counter() - start) * 1e3)
        scores.append(score_image(bitmap, read_fragment_label(item["label"])))
    means = {name: float(np.mean([score[name] for score in scores])) for name in OFFICIAL_METRICS}
    return means, statistics.median(milliseconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt_dir", type=Path, default=BUNDLE_ROOT / "models", help="folder of model.pt")
    parser.add_argument("--native_root", type=Path, default=BUNDLE_ROOT / "data" / "synthetic",
                        help="the PENGWIN root the model was trained on")  # fmt: skip
    parser.add_argument("--patients", type=int, default=12)
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--size", type=int, default=448)
    args = parser.parse_args()
    if not (args.ckpt_dir / "model.pt").is_file():
        raise SystemExit(f"{args.ckpt_dir / 'model.pt'}: no trained model; train first or pass --ckpt_dir")
    print(f"model {args.ckpt_dir}; test split of {args.patients} phantoms x {args.views} views, seed 0")
    print(f"{'views, network':46s} {'ms/image':>8s}  " + "  ".join(f"{name:>15s}" for name in OFFICIAL_METRICS))
    with tempfile.TemporaryDirectory() as tmp:
        generate_dataset(tmp, args.patients, args.views, args.size, seed=0, progress=False)
        rows = {
            "native size (baseline)": (args.native_root, {}),
            f"{args.size} px, brought to image_size (inference)": (Path(tmp), {}),
            f"{args.size} px, network at {args.size} px": (Path(tmp), {"image_size": None}),
        }
        for name, (root, overrides) in rows.items():
            means, milliseconds = score_test_split(root, args.ckpt_dir, **overrides)
            print(f"{name:46s} {milliseconds:8.0f}  " + "  ".join(f"{means[m]:15.3f}" for m in OFFICIAL_METRICS))


if __name__ == "__main__":
    main()
