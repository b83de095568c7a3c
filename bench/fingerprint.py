"""Benchmark of the dataset fingerprint (``pengwin-fingerprint``) on 448 px PENGWIN pairs.

Prints, in one run:

1. per-file cost of the fingerprint's measurements (one process) against a naive baseline that decodes every
   label bit by bit (30 bit planes, as a first version would) and bins the neg-log image with ``np.histogram``,
   on the same files, with their agreement;
2. the whole ``fingerprint`` of a root of ``--pairs`` pairs (hard links to a generated 448 dataset, so that the
   files are real PENGWIN-format pairs) with one process and with one per core, and the time this projects for
   the 50,000 pairs of the real training set.

Run: ``.venv/bin/python bench/fingerprint.py`` (about 3 minutes; ``--pairs`` sets the root size). Worker processes
spend seconds importing torch and MONAI, so they pay off only on large roots.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from custom_transforms import NegLogWindow, read_fragment_label, read_xray_image
from pengwin_xray.datalist import IMAGE_SUBDIR, LABEL_SUBDIR
from pengwin_xray.fingerprint import fingerprint, measure_image, measure_label
from pengwin_xray.synthetic import generate_dataset


def naive_label(path: Path) -> dict:
    """Baseline: coverage, overlap and fragment areas from 30 decoded bit planes."""
    bitmap = read_fragment_label(path).astype(np.int64)
    planes = np.stack([(bitmap >> bit) & 1 for bit in range(1, 31)])
    per_pixel = planes.sum(0)
    areas = planes.reshape(30, -1).mean(1)
    return {"coverage": float((per_pixel > 0).mean()), "overlap": float((per_pixel > 1).mean()),
            "areas": areas[areas > 0]}


def naive_image(path: Path) -> np.ndarray:
    """Baseline: neg-log window binned with ``np.histogram``, 2,000 pixels sampled without replacement."""
    image = read_xray_image(path)
    window = np.asarray(NegLogWindow()(image))
    np.random.default_rng(0).choice(image.ravel(), 2000, replace=False)
    return np.histogram(window, bins=10, range=(0.0, 1.0))[0] / image.size


def _timed(function: Callable[[Path], object], files: list[Path]) -> tuple[float, list]:
    function(files[0])  # warm-up
    start = time.perf_counter()
    results = [function(f) for f in files]
    return (time.perf_counter() - start) / len(files), results


def per_file(images: list[Path], labels: list[Path]) -> None:
    image_fast, _ = _timed(measure_image, images)
    image_naive, _ = _timed(naive_image, images)
    label_fast, fast = _timed(measure_label, labels)
    label_naive, naive = _timed(naive_label, labels)
    agree = all(
        abs(a["coverage"] - b["coverage"]) < 1e-12 and abs(a["overlap"] - b["overlap"]) < 1e-12
        and np.allclose(sorted(a["fragment_areas"].values()), sorted(b["areas"]), rtol=0, atol=1e-12)
        for a, b in zip(fast, naive)
    )
    print(f"per file, one process, {len(images)} images and {len(labels)} labels of 448 px (ms):")
    print(f"  image: fingerprint {1e3 * image_fast:.2f}, naive {1e3 * image_naive:.2f} "
          f"({image_naive / image_fast:.1f}x)")
    print(f"  label: fingerprint {1e3 * label_fast:.2f}, naive {1e3 * label_naive:.2f} "
          f"({label_naive / label_fast:.1f}x); label statistics agree to 1e-12: {agree}")


def whole_root(source: Path, pairs: int) -> None:
    images = sorted((source / "train" / IMAGE_SUBDIR).glob("*.tif"))
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for sub in (IMAGE_SUBDIR, LABEL_SUBDIR):
            (root / "train" / sub).mkdir(parents=True)
        for index in range(pairs):
            original = images[index % len(images)].name
            name = f"{index // 500 + 1:03d}_{index % 500:04d}.tif"
            for sub in (IMAGE_SUBDIR, LABEL_SUBDIR):
                os.link(source / "train" / sub / original, root / "train" / sub / name)
        fingerprint(root, max_images=8, workers=1, progress=False)  # warm the page cache
        for workers in (1, None):
            start = time.perf_counter()
            fingerprint(root, workers=workers, progress=False)
            seconds = time.perf_counter() - start
            label = "one process" if workers == 1 else f"one per core ({os.cpu_count()})"
            print(f"fingerprint of {pairs} pairs, {label}: {seconds:.1f} s, {2 * pairs / seconds:.0f} files/s; "
                  f"50,000 pairs would take {50_000 * seconds / pairs / 60:.1f} min")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=10000, help="pairs in the timed root (default 10000)")
    args = parser.parse_args()
    print(f"load average before the run: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as folder:
        source = generate_dataset(folder, patients=4, projections=8, size=448, seed=0, progress=False)
        per_file(sorted((source / "train" / IMAGE_SUBDIR).glob("*.tif")),
                 sorted((source / "train" / LABEL_SUBDIR).glob("*.tif")))
        whole_root(source, args.pairs)


if __name__ == "__main__":
    main()
