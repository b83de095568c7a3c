"""Benchmark: ``pengwin_xray.metrics.score_image`` against a straightforward all-pairs scorer, same rules, same run.

The baseline follows the organisers' evaluator step by step: whole-image morphology per fragment, the same
surface sub-sampling, one ``scipy.spatial.distance.cdist`` matrix per matched pair (the organisers build it twice,
so the baseline is already the faster of the two), per-pair IoU loops. Cases are 448 x 448: the real Mask R-CNN
bit maps against each other and against shifted and eroded copies of themselves (when
``../shared/data/pengwin_real`` exists), and a synthetic case whose surfaces exceed 10,000 points.

Run: ``.venv/bin/python bench/metrics.py [--repeats 3]``. Both scorers must give the same numbers (to 1e-6).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy.ndimage import binary_dilation, binary_erosion, generate_binary_structure
from scipy.spatial.distance import cdist

from custom_transforms.io import read_fragment_label
from pengwin_xray.metrics import METRICS, score_image

REAL_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pengwin_real"
CROSS = generate_binary_structure(2, 1)


def baseline_surface(mask: np.ndarray) -> np.ndarray:
    points = np.argwhere(binary_dilation(mask, CROSS) & ~binary_erosion(mask, CROSS))
    if len(points) > 10_000:
        points = points[np.random.RandomState(2024).randint(0, len(points), size=(10_000,))]
    return points


def baseline_hd95_assd(mask: np.ndarray, other: np.ndarray) -> tuple:
    distances = cdist(baseline_surface(mask), baseline_surface(other)).astype(np.float32)
    forward, backward = distances.min(axis=1), distances.min(axis=0)
    return max(np.percentile(forward, 95), np.percentile(backward, 95)), (forward.mean() + backward.mean()) / 2


def baseline_radius(mask: np.ndarray) -> np.float64:
    points = np.argwhere(mask)
    return np.max(np.linalg.norm(points - points.mean(axis=0), axis=1))


def baseline_mean(values: list) -> float:
    total = 0
    for value in values:
        total += value
    return float(total / len(values))


def baseline_score(prediction: np.ndarray, label: np.ndarray) -> dict[str, float]:
    """The official six numbers with all-pairs distances (no Hungarian extra)."""

    def fragments(bitmap: np.ndarray) -> list[tuple[np.ndarray, int]]:
        masks = [(((bitmap >> bit) & 1).astype(bool), (bit - 1) // 10 + 1) for bit in range(1, 31)]
        return [(mask, category) for mask, category in masks if mask.any()]

    def iou(a: np.ndarray, b: np.ndarray) -> np.float64:
        return np.logical_and(a, b).sum() / np.logical_or(a, b).sum()

    gt, pred = fragments(label), fragments(prediction)
    fragment_scores = []
    for g, _ in gt:
        ious = [iou(g, p) for p, _ in pred]
        best = int(np.argmax(ious))
        if ious[best] > 0:
            fragment_scores.append((ious[best], *baseline_hd95_assd(g, pred[best][0])))
        else:
            radius = baseline_radius(g)
            fragment_scores.append((ious[best], 2 * radius, radius))
    bone_scores = []
    for category in (1, 2, 3):
        empty = np.zeros(label.shape, bool)
        g = np.logical_or.reduce([empty] + [mask for mask, c in gt if c == category])
        p = np.logical_or.reduce([empty] + [mask for mask, c in pred if c == category])
        if g.any():
            if p.any():
                bone_scores.append((iou(g, p), *baseline_hd95_assd(g, p)))
            else:
                radius = baseline_radius(g)
                bone_scores.append((iou(g, p), 2 * radius, radius))
    scores = {}
    for k, name in enumerate(("iou", "hd95", "assd")):
        scores[f"fracture_{name}"] = baseline_mean([s[k] for s in fragment_scores])
        scores[f"anatomical_{name}"] = baseline_mean([s[k] for s in bone_scores])
    return scores


def erode_fragments(bitmap: np.ndarray, iterations: int) -> np.ndarray:
    eroded = np.zeros_like(bitmap)
    for bit in range(1, 31):
        mask = ((bitmap >> bit) & 1).astype(bool)
        if mask.any():
            eroded |= binary_erosion(mask, CROSS, iterations=iterations).astype(bitmap.dtype) << bit
    return eroded


def cases() -> list[tuple[str, np.ndarray, np.ndarray]]:
    found = []
    if REAL_DIR.is_dir():
        first = read_fragment_label(REAL_DIR / "081_0000_maskrcnn_pred.tif")
        second = read_fragment_label(REAL_DIR / "081_0025_maskrcnn_pred.tif")
        found += [
            ("real 0025 vs 0000", second, first),
            ("real 0000 shifted (3, 5)", np.roll(first, (3, 5), axis=(0, 1)), first),
            ("real 0000 eroded x3", erode_fragments(first, 3), first),
            ("real 0025 eroded x2 vs 0025", erode_fragments(second, 2), second),
        ]
    else:
        print(f"real files not found at {REAL_DIR}: synthetic cases only")
    stripes = np.zeros((448, 448), np.int32)
    stripes[40:400, 40:400:2] = 1 << 1  # ~130,000 surface points: sub-sampled to 10,000
    stripes[60:380, 60:100] |= 1 << 11
    found.append(("synthetic > 10,000 surface points", np.roll(stripes, 4, axis=0), stripes))
    return found


def best_time(function: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case (the best is kept)")
    repeats = parser.parse_args().repeats
    total_fast = total_baseline = 0.0
    print(f"{'case':36s} {'all-pairs ms':>12s} {'kd-tree ms':>11s} {'ratio':>7s}")
    for name, prediction, label in cases():
        fast, baseline = score_image(prediction, label), baseline_score(prediction, label)
        for key in METRICS[:6]:
            assert abs(fast[key] - baseline[key]) <= 1e-6, (name, key, fast[key], baseline[key])
        baseline_s = best_time(lambda: baseline_score(prediction, label), repeats)
        fast_s = best_time(lambda: score_image(prediction, label), repeats)
        total_fast, total_baseline = total_fast + fast_s, total_baseline + baseline_s
        print(f"{name:36s} {baseline_s * 1e3:12.1f} {fast_s * 1e3:11.1f} {baseline_s / fast_s:6.1f}x")
    ratio = total_baseline / total_fast
    print(f"{'all cases':36s} {total_baseline * 1e3:12.1f} {total_fast * 1e3:11.1f} {ratio:6.1f}x")
    print("same numbers: yes (every official metric within 1e-6)")


if __name__ == "__main__":
    main()
