"""Benchmark: the scorer of ``pengwin_xray.metrics`` against the organisers' evaluator algorithm, same run.

1. Per image, on one core (the process is pinned to one CPU): ``score_image`` (bit maps in, decoding included)
   against ``reference_evaluate`` (decoded masks in), which follows the organisers' ``evaluate_2d_single_case``
   (``evaluation_Xray_core.py`` in YzzLiu/PENGWIN-example-algorithm) step by step: an IoU dictionary per
   ground-truth fragment, whole-image morphology for every surface, ``sklearn.utils.resample`` above 10,000
   points, one all-pairs ``cdist`` for HD95 and another for ASSD, float64 bone merging. Every official number
   must be identical (``==``). Cases: 448 x 448 labels of the default synthetic generator, each against four
   predictions a model could make (shifted by (3, 5) px, eroded twice, one fragment dropped with another split
   off, the next view's label), and the real Mask R-CNN bit maps of ``../shared/data/pengwin_real`` if present.
2. A folder: ``evaluate_folders`` with one scoring process against one per CPU (images/s).
3. ``pengwin-eval``'s start: wall time of ``pengwin-eval --help`` and of a one-image folder, against a bare
   ``python -c pass``.

Run: ``.venv/bin/python bench/metrics.py [--patients 3 --views 4 --repeats 3]`` (``sklearn`` for the reference's
resampling comes with ``mlflow``, a requirement).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import tifffile
from scipy.ndimage import binary_dilation, binary_erosion, generate_binary_structure
from scipy.spatial.distance import cdist
from sklearn.utils import resample
from threadpoolctl import threadpool_limits

from custom_transforms.io import list_tiffs, read_fragment_label
from pengwin_xray.datalist import LABEL_SUBDIR
from pengwin_xray.metrics import OFFICIAL_METRICS, evaluate_folders, fragment_masks, score_image
from pengwin_xray.synthetic import generate_dataset

REAL_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pengwin_real"
CROSS = generate_binary_structure(2, 1)


# --- the organisers' algorithm, step by step (numbers and cost both) -------------------------------------------
def reference_iou(first: np.ndarray, second: np.ndarray) -> float:
    union = np.logical_or(first, second).sum()
    return 0 if union == 0 else np.logical_and(first, second).sum() / union


def reference_surface(mask: np.ndarray) -> np.ndarray:
    band = binary_dilation(mask, structure=CROSS) & ~binary_erosion(mask, structure=CROSS)
    points = np.argwhere(band)
    if points.shape[0] > 10_000:
        points = resample(points, n_samples=10_000, random_state=2024)
    return points


def reference_hd95(points: np.ndarray, other: np.ndarray) -> float:
    distances = cdist(points, other, metric="euclidean").astype(np.float32)
    return max(np.percentile(np.min(distances, axis=1), 95), np.percentile(np.min(distances, axis=0), 95))


def reference_assd(points: np.ndarray, other: np.ndarray) -> float:
    distances = cdist(points, other, metric="euclidean").astype(np.float32)
    return (np.mean(np.min(distances, axis=1)) + np.mean(np.min(distances, axis=0))) / 2


def reference_radius(mask: np.ndarray) -> float:
    points = np.argwhere(mask)
    return np.max(np.linalg.norm(points - np.mean(points, axis=0), axis=1))


def reference_bones(masks: np.ndarray, categories: list[int]) -> np.ndarray:
    bones = np.zeros([3, masks.shape[1], masks.shape[2]])
    for bone in range(3):
        for index in range(len(categories)):
            if categories[index] == bone + 1:
                bones[bone] += masks[index]
    bones[bones > 0] = 1
    return bones


def reference_evaluate(gt: tuple[np.ndarray, list[int]], pred: tuple[np.ndarray, list[int]]) -> dict[str, float]:
    """The six numbers as ``evaluate_2d_single_case(gt, pred)`` computes them (masks uint8 ``[N, H, W]``)."""
    matches = {}
    for label in range(len(gt[0])):
        if gt[0][label].any():
            scores = {p: reference_iou(gt[0][label], pred[0][p]) for p in range(len(pred[0])) if pred[0][p].any()}
            if scores:
                best = max(scores, key=scores.get)
                matches[label] = (best, scores[best])
    fracture = []
    for label, (best, iou) in matches.items():
        if iou > 0:
            fracture.append((iou, reference_hd95(reference_surface(gt[0][label]), reference_surface(pred[0][best])),
                             reference_assd(reference_surface(gt[0][label]), reference_surface(pred[0][best]))))
        else:
            radius = reference_radius(gt[0][label])
            fracture.append((iou, 2 * radius, radius))
    gt_bones, pred_bones = reference_bones(*gt), reference_bones(*pred)
    anatomy = []
    for bone in range(3):
        if gt_bones[bone].any():
            iou = reference_iou(gt_bones[bone], pred_bones[bone])
            gt_points, pred_points = reference_surface(gt_bones[bone]), reference_surface(pred_bones[bone])
            if pred_points.size:
                anatomy.append((iou, reference_hd95(gt_points, pred_points), reference_assd(gt_points, pred_points)))
            else:
                radius = reference_radius(gt_bones[bone])
                anatomy.append((iou, 2 * radius, radius))
    result = {}
    for kind, rows in (("fracture", fracture), ("anatomical", anatomy)):
        for column, metric in enumerate(("iou", "hd95", "assd")):
            total = 0
            for row in rows:
                total += row[column]
            result[f"{kind}_{metric}"] = total / len(rows)
    return result


# --- cases -------------------------------------------------------------------------------------------------------
def erode_fragments(bitmap: np.ndarray, iterations: int) -> np.ndarray:
    eroded = np.zeros_like(bitmap)
    for bit in range(1, 31):
        mask = ((bitmap >> bit) & 1).astype(bool)
        if mask.any():
            eroded |= binary_erosion(mask, CROSS, iterations=iterations).astype(bitmap.dtype) << bit
    return eroded


def drop_and_split(bitmap: np.ndarray) -> np.ndarray:
    """The label with its smallest fragment dropped and the right half of its largest one moved to a free bit."""
    bits = [bit for bit in range(1, 31) if ((bitmap >> bit) & 1).any()]
    areas = {bit: int(((bitmap >> bit) & 1).sum()) for bit in bits}
    changed = bitmap.copy()
    if len(bits) > 1:
        changed &= ~np.int32(1 << min(areas, key=areas.get))
    largest = max(areas, key=areas.get)
    free = next((bit for bit in range(largest + 1, 10 * ((largest - 1) // 10) + 11) if bit not in areas), None)
    if free is not None:
        mask = (changed >> largest) & 1
        columns = np.flatnonzero(mask.any(axis=0))
        right = np.zeros_like(mask)
        right[:, columns[len(columns) // 2]:] = mask[:, columns[len(columns) // 2]:]
        changed = (changed & ~np.int32(right << largest)) | (right << free)
    return changed


def synthetic_cases(root: Path, patients: int, views: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    generate_dataset(root, patients=patients, projections=views, size=448, seed=0, split="bench", progress=False)
    labels = [read_fragment_label(path) for path in list_tiffs(root / "bench" / LABEL_SUBDIR)]
    cases = []
    for index, label in enumerate(labels):
        cases += [
            (f"synthetic {index} shifted (3, 5)", np.roll(label, (3, 5), axis=(0, 1)), label),
            (f"synthetic {index} eroded x2", erode_fragments(label, 2), label),
            (f"synthetic {index} dropped + split", drop_and_split(label), label),
            (f"synthetic {index} next view", labels[(index + 1) % len(labels)], label),
        ]
    return cases


def real_cases() -> list[tuple[str, np.ndarray, np.ndarray]]:
    if not REAL_DIR.is_dir():
        print(f"real files not found at {REAL_DIR}: synthetic cases only")
        return []
    first = read_fragment_label(REAL_DIR / "081_0000_maskrcnn_pred.tif")
    second = read_fragment_label(REAL_DIR / "081_0025_maskrcnn_pred.tif")
    return [
        ("real 0025 vs 0000", second, first),
        ("real 0000 shifted (3, 5)", np.roll(first, (3, 5), axis=(0, 1)), first),
        ("real 0000 eroded x3", erode_fragments(first, 3), first),
    ]


def best_time(function: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def wall_time(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=3, help="synthetic phantoms (448 px)")
    parser.add_argument("--views", type=int, default=4, help="views per phantom")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case (the best is kept)")
    parser.add_argument("--folder-copies", type=int, default=8, help="copies of the cases in the folder test")
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        cases = synthetic_cases(Path(tmp), args.patients, args.views) + real_cases()

        os.sched_setaffinity(0, {cpus[0]})  # per image on one core, both scorers
        cv2.setNumThreads(1)  # as in each scoring process of evaluate_folders
        threadpool_limits(1, user_api="openmp")  # pykdtree's queries too
        print(f"1. per image on one core (CPU {cpus[0]}), best of {args.repeats}; every official number identical")
        print(f"{'case':34s} {'fragments':>9s} {'reference ms':>12s} {'ours ms':>8s} {'ratio':>6s}")
        reference_total = ours_total = 0.0
        for name, prediction, label in cases:
            (gt_masks, gt_categories), (pred_masks, pred_categories) = fragment_masks(label), fragment_masks(prediction)
            gt = (gt_masks.astype(np.uint8), gt_categories.tolist())
            pred = (pred_masks.astype(np.uint8), pred_categories.tolist())
            ours, reference = score_image(prediction, label), reference_evaluate(gt, pred)
            for key in OFFICIAL_METRICS:
                assert ours[key] == reference[key], (name, key, ours[key], reference[key])
            reference_s = best_time(lambda: reference_evaluate(gt, pred), args.repeats)
            ours_s = best_time(lambda: score_image(prediction, label), args.repeats)
            reference_total, ours_total = reference_total + reference_s, ours_total + ours_s
            print(f"{name:34s} {len(gt[0]):9d} {reference_s * 1e3:12.1f} {ours_s * 1e3:8.1f} "
                  f"{reference_s / ours_s:5.1f}x")
        count = len(cases)
        print(f"{'mean per image':34s} {'':9s} {reference_total / count * 1e3:12.1f} {ours_total / count * 1e3:8.1f} "
              f"{reference_total / ours_total:5.1f}x   ({count} cases, all numbers identical)")
        os.sched_setaffinity(0, set(cpus))

        folder = Path(tmp, "folder")
        for kind in ("predictions", "labels"):
            (folder / kind).mkdir(parents=True)
        for copy in range(args.folder_copies):
            for index, (_, prediction, label) in enumerate(cases):
                tifffile.imwrite(folder / "predictions" / f"{copy:03d}_{index:03d}.tif", prediction.astype(np.uint32))
                tifffile.imwrite(folder / "labels" / f"{copy:03d}_{index:03d}.tif", label.astype(np.uint32))
        images = args.folder_copies * count
        print(f"\n2. evaluate_folders on {images} image pairs")
        timings = {}
        for workers in sorted({1, len(cpus)}):
            start = time.perf_counter()
            rows, _ = evaluate_folders(folder / "predictions", folder / "labels", workers=workers)
            timings[workers] = time.perf_counter() - start
            print(f"  {workers} process(es): {timings[workers]:6.2f} s, {images / timings[workers]:6.1f} images/s")
        print(f"  ratio: {timings[1] / timings[len(cpus)]:.2f}x with {len(cpus)} processes")

        executable = shutil.which("pengwin-eval") or str(Path(sys.executable).with_name("pengwin-eval"))
        one = Path(tmp, "one")
        for kind in ("predictions", "labels"):
            (one / kind).mkdir(parents=True)
            shutil.copy(next((folder / kind).iterdir()), one / kind)
        bare = [wall_time([sys.executable, "-c", "pass"]) for _ in range(3)]
        helps = [wall_time([executable, "--help"]) for _ in range(3)]
        runs = [wall_time([executable, str(one / "predictions"), str(one / "labels"), "--out", str(one / "out")])
                for _ in range(3)]
        print("\n3. pengwin-eval start (median of 3 wall times)")
        print(f"  python -c pass:             {statistics.median(bare):5.2f} s")
        print(f"  pengwin-eval --help:        {statistics.median(helps):5.2f} s")
        print(f"  pengwin-eval on one image:  {statistics.median(runs):5.2f} s")


if __name__ == "__main__":
    main()
