"""The official PENGWIN Task 2 (X-ray) metrics and the ``pengwin-eval`` command.

The numbers follow the organisers' public evaluator (``evaluation_Xray_core.py`` in
YzzLiu/PENGWIN-example-algorithm, MIT; its later revision, which scores an empty predicted bone 2R / R instead
of infinity) rule for rule:

* Both bit maps are decoded into their non-empty fragment masks, in bit order (SA-1..SA-10, LI-1.., RI-1..).
* Matching: each ground-truth fragment takes the predicted fragment of ANY category with the highest IoU; ties
  go to the lowest index. Not one-to-one: several ground-truth fragments may take the same prediction, and
  unmatched predictions (false positives) cost nothing.
* A matched fragment (IoU > 0) scores HD95 and ASSD between surface point sets, in pixels. The surface is the
  band ``dilation(mask) & ~erosion(mask)`` with the 4-connected 3x3 cross (about 2 px wide). A surface of more
  than 10,000 points is replaced by 10,000 points drawn with replacement by ``RandomState(2024).randint``, a
  fresh generator for every surface: what ``sklearn.utils.resample(points, n_samples=10000, random_state=2024)``
  draws, without depending on scikit-learn. Nearest distances are rounded to float32 before the reductions, as
  in the reference. HD95 is the larger of the two directed 95th percentiles (numpy's linear method), ASSD the
  mean of the two directed means.
* A missed fragment (IoU == 0) scores HD95 = 2R and ASSD = R, R being the largest distance from the fragment's
  pixel centroid to any of its pixels.
* Anatomy: the fragments of each category are OR-ed into SA/LI/RI bones, the prediction grouped by its own
  predicted categories. Each bone present in the ground truth scores IoU, HD95 and ASSD; an empty predicted
  bone scores 2R / R of the ground-truth bone, a non-empty one with IoU 0 still gets real distances.
* The image scores are the means over ground-truth fragments and over ground-truth bones, accumulated in the
  same order and dtypes as the reference so that the numbers agree to the last bit.

Deliberate differences from the reference:

* An EMPTY prediction crashes the reference (division by zero, nothing is matched). Here every ground-truth
  fragment of an empty prediction counts as missed: IoU 0, HD95 2R, ASSD R, which is the reference's own miss
  rule; the anatomy scores are the reference's (every predicted bone empty: IoU 0, 2R, R).
* A label without any fragment is a ``ValueError`` (the reference has nothing to average and crashes).
* Nearest distances come from a k-d tree (``scipy.spatial.cKDTree``) instead of all-pairs distance matrices,
  and the surface band is computed on the mask's bounding box plus one pixel instead of the whole image: same
  points in the same order, same distances, far less time and memory.
* MONAI's ``HausdorffDistanceMetric`` / ``SurfaceDistanceMetric`` are not used: their surfaces are the inner edge
  ``mask ^ erosion(mask)`` without the outer ring and without sub-sampling, so they cannot give the challenge's
  numbers.
* The extra ``fracture_iou_hungarian`` is not an official metric: one-to-one matching of fragments by
  ``scipy.optimize.linear_sum_assignment`` on IoU, unmatched ground-truth fragments scoring 0, mean over
  ground-truth fragments.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from monai.config import NdarrayOrTensor
from scipy.ndimage import binary_dilation, binary_erosion, generate_binary_structure
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree

from custom_transforms.bits import decode_fragment_bits
from custom_transforms.constants import NUM_CATEGORIES, channel_category_fragment
from custom_transforms.io import read_fragment_label, tiffs_by_stem

from .atomic import atomic_open, write_json_atomic

__all__ = [
    "OFFICIAL_METRICS",
    "METRICS",
    "MAX_SURFACE_POINTS",
    "SURFACE_SEED",
    "fragment_masks",
    "surface_band",
    "subsample_points",
    "surface_points",
    "nearest_distances",
    "hd95_assd",
    "miss_radius",
    "score_image",
    "FRAGMENT_SIZE_BINS",
    "fragment_best_ious",
    "fracture_iou_by_size",
    "summarise",
    "evaluate_folders",
    "RESULT_FILES",
    "remove_results",
    "write_results",
    "main",
]

#: the six per-image numbers of the challenge, named as the organisers' evaluator names them
OFFICIAL_METRICS: tuple[str, ...] = (
    "fracture_iou",
    "fracture_hd95",
    "fracture_assd",
    "anatomical_iou",
    "anatomical_hd95",
    "anatomical_assd",
)
#: every number :func:`score_image` returns: the official six plus the one-to-one fragment IoU
METRICS: tuple[str, ...] = OFFICIAL_METRICS + ("fracture_iou_hungarian",)
MAX_SURFACE_POINTS: int = 10_000
SURFACE_SEED: int = 2024

_CROSS = generate_binary_structure(2, 1)


def fragment_masks(bitmap: NdarrayOrTensor, source: str = "bit map") -> tuple[np.ndarray, np.ndarray]:
    """Non-empty fragment masks of an integer bit map ``[H, W]`` (or ``[1, H, W]``), in bit order.

    Returns:
        ``(masks, categories)``: bool ``[N, H, W]`` and the category (1..3) of each mask, int ``[N]``.
    """
    channels = decode_fragment_bits(bitmap, source=source).numpy().astype(bool)
    present = np.flatnonzero(channels.any(axis=(1, 2)))
    categories = np.array([channel_category_fragment(int(channel))[0] for channel in present], dtype=np.int64)
    return channels[present], categories


def surface_band(mask: np.ndarray) -> np.ndarray:
    """``dilation(mask) & ~erosion(mask)`` with the 4-connected cross: the band the official surfaces come from."""
    mask = np.asarray(mask, dtype=bool)
    return binary_dilation(mask, structure=_CROSS) & ~binary_erosion(mask, structure=_CROSS)


def subsample_points(
    points: np.ndarray, max_points: int = MAX_SURFACE_POINTS, seed: int = SURFACE_SEED
) -> np.ndarray:
    """Keep ``points`` if at most ``max_points``, else draw ``max_points`` with replacement as the reference does.

    A fresh ``RandomState(seed)`` per call, so the same number of points always gives the same indices.
    """
    if len(points) <= max_points:
        return points
    indices = np.random.RandomState(seed).randint(0, len(points), size=(max_points,))
    return points[indices]


def _crop_to_box(mask: np.ndarray, margin: int) -> tuple[np.ndarray, tuple[slice, slice]]:
    """The crop of ``mask`` to its bounding box grown by ``margin`` (clipped to the image), and that box."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    box = (
        slice(max(rows[0] - margin, 0), rows[-1] + margin + 1),
        slice(max(cols[0] - margin, 0), cols[-1] + margin + 1),
    )
    return mask[box], box


def surface_points(mask: np.ndarray) -> np.ndarray:
    """Row-major ``(row, col)`` coordinates of the surface band of a non-empty mask, sub-sampled above 10,000.

    The band is computed on the bounding box plus one pixel: outside it the band is empty, and at an image edge
    the crop edge is the image edge, so the points and their order equal those of the whole-image band.
    """
    crop, box = _crop_to_box(np.asarray(mask, dtype=bool), margin=1)
    points = np.argwhere(surface_band(crop)) + np.array([box[0].start, box[1].start])
    return subsample_points(points)


def nearest_distances(from_points: np.ndarray, to_points: np.ndarray) -> np.ndarray:
    """float32 distance from each of ``from_points`` to the nearest of ``to_points`` (both ``[K, 2]`` integer)."""
    _, nearest = cKDTree(to_points).query(from_points, k=1)
    # recomputed from the integer offsets so that each value is the correctly rounded sqrt, as all-pairs gives
    offsets = (from_points - to_points[nearest]).astype(np.float64)
    return np.sqrt((offsets * offsets).sum(axis=1)).astype(np.float32)


def hd95_assd(points: np.ndarray, other_points: np.ndarray) -> tuple[np.float32, np.float32]:
    """HD95 (max of the directed 95th percentiles) and ASSD (mean of the directed means) of two point sets."""
    forward = nearest_distances(points, other_points)
    backward = nearest_distances(other_points, points)
    hd95 = max(np.percentile(forward, 95), np.percentile(backward, 95))
    assd = (np.mean(forward) + np.mean(backward)) / 2
    return hd95, assd


def miss_radius(mask: np.ndarray) -> np.float64:
    """R of the miss penalty: the largest distance from the pixel centroid of a non-empty mask to its pixels."""
    crop, box = _crop_to_box(np.asarray(mask, dtype=bool), margin=0)
    points = np.argwhere(crop) + np.array([box[0].start, box[1].start])
    return np.max(np.linalg.norm(points - points.mean(axis=0), axis=1))


def _reference_mean(values: Sequence[float | np.floating]) -> float:
    """Mean accumulated left to right from ``0`` as the reference does, keeping its float32/float64 promotions."""
    total = 0
    for value in values:
        total += value
    return float(total / len(values))


def _iou_matrix(masks: np.ndarray, other_masks: np.ndarray) -> np.ndarray:
    """IoU float64 ``[N, M]`` between two stacks of bool masks (one matrix product for all intersections)."""
    flat = masks.reshape(len(masks), -1).astype(np.float64)
    other_flat = other_masks.reshape(len(other_masks), -1).astype(np.float64)
    # float64 counts are exact far beyond any image size; the division matches the reference's int64 / int64
    intersection = (flat @ other_flat.T).astype(np.int64)
    union = flat.sum(axis=1).astype(np.int64)[:, None] + other_flat.sum(axis=1).astype(np.int64)[None] - intersection
    return intersection / union


def _bones(masks: np.ndarray, categories: np.ndarray) -> np.ndarray:
    """bool ``[3, H, W]``: the OR of the fragments of each category (SA, LI, RI)."""
    bones = np.zeros((NUM_CATEGORIES, *masks.shape[1:]), dtype=bool)
    for mask, category in zip(masks, categories):
        bones[category - 1] |= mask
    return bones


def _fragments_and_ious(
    prediction_bitmap: NdarrayOrTensor, label_bitmap: NdarrayOrTensor, name: str
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray], np.ndarray]:
    """Label and prediction fragments (:func:`fragment_masks`) and their IoU matrix ``[label, prediction]``.

    An empty prediction acts as one empty predicted fragment (an IoU column of zeros): every label fragment is
    then missed.
    """
    label = fragment_masks(label_bitmap, source=f"{name} (label)")
    prediction = fragment_masks(prediction_bitmap, source=f"{name} (prediction)")
    label_masks, pred_masks = label[0], prediction[0]
    if label_masks.shape[1:] != pred_masks.shape[1:]:
        raise ValueError(f"{name}: prediction shape {pred_masks.shape[1:]} != label shape {label_masks.shape[1:]}")
    iou = _iou_matrix(label_masks, pred_masks) if len(pred_masks) else np.zeros((len(label_masks), 1))
    return label, prediction, iou


def score_image(
    prediction_bitmap: NdarrayOrTensor, label_bitmap: NdarrayOrTensor, name: str = "image"
) -> dict[str, float]:
    """Score one predicted bit map against its label bit map with the official PENGWIN X-ray metrics.

    Args:
        prediction_bitmap: integer bit map ``[H, W]`` or ``[1, H, W]`` (numpy or torch); may be empty.
        label_bitmap: the ground-truth bit map, same shape, with at least one fragment.
        name: what error messages call this image.

    Returns:
        the six official numbers (see :data:`OFFICIAL_METRICS`) and ``fracture_iou_hungarian``.

    Raises:
        ValueError: for a label without fragments, mismatched shapes or invalid bit maps.
    """
    (label_masks, label_categories), (pred_masks, pred_categories), iou = _fragments_and_ious(
        prediction_bitmap, label_bitmap, name
    )
    if len(label_masks) == 0:
        raise ValueError(f"{name}: the label has no fragment, so there is nothing to score against")
    best = iou.argmax(axis=1)  # first maximum: ties go to the lowest predicted index, as in the reference
    rows, cols = linear_sum_assignment(iou, maximize=True)
    hungarian_total = iou[rows, cols].sum()

    pred_surfaces: dict[int, np.ndarray] = {}
    fragment_iou, fragment_hd95, fragment_assd = [], [], []
    for index, label_mask in enumerate(label_masks):
        pred_index = int(best[index])
        match_iou = iou[index, pred_index]
        if match_iou > 0:
            if pred_index not in pred_surfaces:
                pred_surfaces[pred_index] = surface_points(pred_masks[pred_index])
            hd95, assd = hd95_assd(surface_points(label_mask), pred_surfaces[pred_index])
        else:
            radius = miss_radius(label_mask)
            hd95, assd = 2 * radius, radius
        fragment_iou.append(match_iou)
        fragment_hd95.append(hd95)
        fragment_assd.append(assd)

    label_bones = _bones(label_masks, label_categories)
    pred_bones = _bones(pred_masks, pred_categories)
    bone_iou, bone_hd95, bone_assd = [], [], []
    for label_bone, pred_bone in zip(label_bones, pred_bones):
        if not label_bone.any():
            continue
        intersection = np.count_nonzero(label_bone & pred_bone)
        bone_iou.append(np.int64(intersection) / np.int64(np.count_nonzero(label_bone | pred_bone)))
        if pred_bone.any():
            hd95, assd = hd95_assd(surface_points(label_bone), surface_points(pred_bone))
        else:
            radius = miss_radius(label_bone)
            hd95, assd = 2 * radius, radius
        bone_hd95.append(hd95)
        bone_assd.append(assd)

    return {
        "fracture_iou": _reference_mean(fragment_iou),
        "fracture_hd95": _reference_mean(fragment_hd95),
        "fracture_assd": _reference_mean(fragment_assd),
        "anatomical_iou": _reference_mean(bone_iou),
        "anatomical_hd95": _reference_mean(bone_hd95),
        "anatomical_assd": _reference_mean(bone_assd),
        "fracture_iou_hungarian": float(hungarian_total / len(label_masks)),
    }


#: upper edges of the fragment-size bins of :func:`fracture_iou_by_size`, as fractions of the image area
#: what :func:`write_results` writes: the per-image table and the summary
RESULT_FILES: tuple[str, str] = ("metrics.csv", "summary.json")

FRAGMENT_SIZE_BINS: tuple[float, ...] = (0.005, 0.01, 0.05)


def fragment_best_ious(
    prediction_bitmap: NdarrayOrTensor, label_bitmap: NdarrayOrTensor, name: str = "image"
) -> tuple[np.ndarray, np.ndarray]:
    """Area (fraction of the image) and official best-match IoU of each ground-truth fragment, in bit order.

    The IoU is the one :func:`score_image` averages into ``fracture_iou``; an empty prediction gives zeros.

    Raises:
        ValueError: for mismatched shapes or invalid bit maps.
    """
    (label_masks, _), _, iou = _fragments_and_ious(prediction_bitmap, label_bitmap, name)
    return label_masks.reshape(len(label_masks), -1).mean(axis=1), iou.max(axis=1)


def _size_bin_name(lower: float, upper: float) -> str:
    if lower == 0:
        return f"fracture_iou_under_{100 * upper:g}pct"
    if upper == np.inf:
        return f"fracture_iou_over_{100 * lower:g}pct"
    return f"fracture_iou_{100 * lower:g}_{100 * upper:g}pct"


def fracture_iou_by_size(areas: Sequence[float], ious: Sequence[float]) -> dict[str, float | int | None]:
    """Mean best IoU of the ground-truth fragments in each :data:`FRAGMENT_SIZE_BINS` bin, and their count.

    ``areas`` and ``ious`` list fragments of any number of images (from :func:`fragment_best_ious`); a fragment
    then weighs the same wherever it lies, which shows how well small fragments are found. Keys such as
    ``fracture_iou_under_0.5pct`` (``None`` for an empty bin) and ``num_fragments_under_0.5pct``.
    """
    areas, ious = np.asarray(areas, dtype=np.float64), np.asarray(ious, dtype=np.float64)
    edges = (0.0, *FRAGMENT_SIZE_BINS, np.inf)
    result: dict[str, float | int | None] = {}
    for lower, upper in zip(edges[:-1], edges[1:]):
        inside = (areas >= lower) & (areas < upper)
        key = _size_bin_name(lower, upper)
        result[key] = float(ious[inside].mean()) if inside.any() else None
        result[key.replace("fracture_iou", "num_fragments")] = int(inside.sum())
    return result


def _tiffs_by_stem(folder: Path, role: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: {role} folder not found")
    return tiffs_by_stem(folder)


def summarise(rows: Sequence[dict]) -> dict[str, float | int]:
    """The summary of per-image rows: the mean of each of :data:`METRICS` over images, and ``num_images``.

    Raises:
        ValueError: when there is no row (nothing was scored).
    """
    if not rows:
        raise ValueError("no image was scored")
    summary: dict[str, float | int] = {key: float(np.mean([row[key] for row in rows])) for key in METRICS}
    summary["num_images"] = len(rows)
    return summary


def evaluate_folders(
    predictions_dir: str | Path, labels_dir: str | Path
) -> tuple[list[dict[str, float | str]], dict[str, float | int]]:
    """Score every TIFF label against the prediction of the same stem (``.tif``/``.tiff``, any case).

    Returns:
        per-image rows (``"name"``, the label's file name, plus :data:`METRICS`) in name order, and the
        summary: the mean of each metric over images plus ``"num_images"``.

    Raises:
        ValueError: when a label has no prediction or a prediction no label (all such names listed), when the
            labels folder holds no TIFF, or when a file is not a valid bit map (named).
    """
    predictions_dir, labels_dir = Path(predictions_dir), Path(labels_dir)
    predictions = _tiffs_by_stem(predictions_dir, "predictions")
    labels = _tiffs_by_stem(labels_dir, "labels")
    problems = []
    if missing := sorted(labels[stem].name for stem in labels.keys() - predictions.keys()):
        problems.append(f"no prediction in {predictions_dir} for {missing}")
    if extra := sorted(predictions[stem].name for stem in predictions.keys() - labels.keys()):
        problems.append(f"no label in {labels_dir} for {extra}")
    if problems:
        raise ValueError("; ".join(problems))
    if not labels:
        raise ValueError(f"{labels_dir}: no .tif/.tiff label to evaluate")

    rows: list[dict[str, float | str]] = []
    for stem, label_path in sorted(labels.items(), key=lambda item: item[1].name):
        prediction = read_fragment_label(predictions[stem])
        label = read_fragment_label(label_path)
        rows.append({"name": label_path.name, **score_image(prediction, label, name=label_path.name)})
    return rows, summarise(rows)


def remove_results(out_dir: str | Path) -> None:
    """Delete the :data:`RESULT_FILES` of an earlier scoring in ``out_dir``, so that none passes for a new one's."""
    for name in RESULT_FILES:
        Path(out_dir, name).unlink(missing_ok=True)


def write_results(rows: Sequence[dict], summary: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """Write the per-image ``metrics.csv`` and the ``summary.json`` into ``out_dir`` (created if needed).

    Returns:
        the paths of the CSV and the JSON file.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = (out_dir / name for name in RESULT_FILES)

    def write_csv(file) -> None:
        writer = csv.DictWriter(file, fieldnames=["name", *METRICS])
        writer.writeheader()
        writer.writerows(rows)

    with atomic_open(csv_path, "w") as file:
        write_csv(file)
    write_json_atomic(json_path, summary)
    return csv_path, json_path


def main(argv: Sequence[str] | None = None) -> None:
    """``pengwin-eval PREDICTIONS_DIR LABELS_DIR --out DIR``: score a folder of predictions, print the summary."""
    parser = argparse.ArgumentParser(
        prog="pengwin-eval",
        description="Score PENGWIN X-ray bit-map predictions (*.tif) against labels of the same file names "
        "with the official challenge metrics.",
    )
    parser.add_argument("predictions_dir", type=Path, help="folder of predicted bit maps (*.tif)")
    parser.add_argument("labels_dir", type=Path, help="folder of ground-truth bit maps (*.tif)")
    parser.add_argument("--out", type=Path, required=True, help="folder for metrics.csv and summary.json")
    args = parser.parse_args(argv)
    try:
        rows, summary = evaluate_folders(args.predictions_dir, args.labels_dir)
    except (OSError, ValueError) as err:
        raise SystemExit(f"pengwin-eval: {err}") from None
    csv_path, json_path = write_results(rows, summary, args.out)
    print(json.dumps(summary, indent=2))
    print(f"written: {json_path} and {csv_path}", file=sys.stderr)  # stdout stays one JSON document
