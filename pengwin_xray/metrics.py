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
* Both bit maps are first cropped to the bounding box of their fragments plus one pixel, each surface band is
  computed by OpenCV's cross-shaped erosion and dilation on its mask's own bounding box plus one pixel, and
  nearest distances come from an exact k-d tree query instead of all-pairs distance matrices: same points in the
  same order, same distances, far less time and memory (``bench/metrics.py``).
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
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from typing import TYPE_CHECKING, NamedTuple

import cv2
import numpy as np
from pykdtree.kdtree import KDTree
from scipy.optimize import linear_sum_assignment
from threadpoolctl import threadpool_limits

from custom_transforms.constants import MAX_FRAGMENTS, NUM_CATEGORIES, NUM_CHANNELS
from custom_transforms.io import as_bitmap, read_fragment_label, tiffs_by_stem

from .atomic import atomic_open, write_json_atomic
from .masks import Box, bounding_boxes, grow_box, overlap_box, union_box

if TYPE_CHECKING:  # only for annotations: the scorer runs without torch and MONAI, and starts in about a second
    from monai.config import NdarrayOrTensor

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
    "score_ious",
    "FRAGMENT_SIZE_BINS",
    "fragment_best_ious",
    "fracture_iou_by_size",
    "summarise",
    "check_score_folders",
    "paired_files",
    "check_workers",
    "score_pairs",
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

#: points per leaf of the k-d tree of :func:`nearest_distances` (the fastest on ``bench/metrics.py``'s cases)
_TREE_LEAF_SIZE = 8
#: the 4-connected 3x3 cross of the official surface band
_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))


def _decoded_fragments(bitmap: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[Box]]:
    """:func:`fragment_masks` of an already checked ``[H, W]`` bit map (:func:`as_bitmap`), and each mask's box.

    The boxes come from the OR of the map along its rows and its columns (one pass over the map, not one per bit),
    and each mask is decoded on its box only.
    """
    array = bitmap.astype(np.int32, copy=False)  # exact: bits 1..30 only
    present = int(np.bitwise_or.reduce(array, axis=None)) if array.size else 0
    bits = [bit for bit in range(1, NUM_CHANNELS + 1) if present >> bit & 1]
    rows, cols = np.bitwise_or.reduce(array, axis=1), np.bitwise_or.reduce(array, axis=0)
    masks = np.zeros((len(bits), *array.shape), dtype=bool)
    boxes = []
    for mask, bit in zip(masks, bits):
        set_rows, set_cols = np.flatnonzero(rows & (1 << bit)), np.flatnonzero(cols & (1 << bit))
        box = (slice(int(set_rows[0]), int(set_rows[-1]) + 1), slice(int(set_cols[0]), int(set_cols[-1]) + 1))
        mask[box] = (array[box] & (1 << bit)) != 0
        boxes.append(box)
    categories = (np.array(bits, dtype=np.int64) - 1) // MAX_FRAGMENTS + 1
    return masks, categories, boxes


def fragment_masks(bitmap: NdarrayOrTensor, source: str = "bit map") -> tuple[np.ndarray, np.ndarray]:
    """Non-empty fragment masks of an integer bit map ``[H, W]`` (or ``[1, H, W]``), in bit order.

    Only the bits the map sets are decoded.

    Returns:
        ``(masks, categories)``: bool ``[N, H, W]`` and the category (1..3) of each mask, int ``[N]``.
    """
    masks, categories, _ = _decoded_fragments(as_bitmap(bitmap, source))
    return masks, categories


def surface_band(mask: np.ndarray) -> np.ndarray:
    """``dilation(mask) & ~erosion(mask)`` with the 4-connected cross: the band the official surfaces come from.

    Outside the image counts as background, as for ``scipy.ndimage.binary_erosion``; OpenCV gives the same band
    more than ten times faster (its default border would count the outside as foreground for the erosion).
    """
    pixels = np.asarray(mask, dtype=bool).view(np.uint8)
    dilated = cv2.dilate(pixels, _CROSS, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    eroded = cv2.erode(pixels, _CROSS, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return dilated > eroded


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


def surface_points(mask: np.ndarray, box: Box | None = None) -> np.ndarray:
    """Row-major ``(row, col)`` coordinates of the surface band of a non-empty mask, sub-sampled above 10,000.

    The band is computed on the bounding box (``box``, found when not given) plus one pixel: outside it the band
    is empty, and at an image edge the crop edge is the image edge, so the points and their order equal those of
    the whole-image band.
    """
    mask = np.asarray(mask, dtype=bool)
    grown = grow_box(bounding_boxes(mask[None])[0] if box is None else box, 1, mask.shape)
    points = np.argwhere(surface_band(mask[grown])) + np.array([grown[0].start, grown[1].start])
    return subsample_points(points)


def nearest_distances(from_points: np.ndarray, to_points: np.ndarray) -> np.ndarray:
    """float32 distance from each of ``from_points`` to the nearest of ``to_points`` (both ``[K, 2]``, integer).

    An exact query of pykdtree's k-d tree of ``to_points`` in float64: the square roots of the exact integer squared
    distances, rounded to float32, which is the reference's all-pairs ``cdist`` minimum to the last bit. pykdtree
    rather than scipy's ``cKDTree`` or OpenCV's exact distance transform: on ``bench/metrics.py``'s cases it takes
    less than half the time of either (the transform's cost grows with the pair's box, surfaces are thin rings).
    """
    tree = KDTree(np.asarray(to_points, dtype=np.float64), leafsize=_TREE_LEAF_SIZE)
    return tree.query(np.asarray(from_points, dtype=np.float64), k=1)[0].astype(np.float32)


def _percentile_95(distances: np.ndarray) -> np.float32:
    """``np.percentile(distances, 95)`` of non-empty float32 distances, to the last bit (linear method: numpy's
    virtual index, partition and float32 interpolation), without numpy's general-purpose overhead, which is most of
    its cost on arrays of a few thousand values."""
    position = (len(distances) - 1) * 0.95
    lower = int(position)
    if lower >= len(distances) - 1:
        return distances.max()
    ordered = np.partition(distances, (lower, lower + 1))
    below, above = ordered[lower], ordered[lower + 1]
    weight, difference = position - lower, above - below
    return above - difference * (1 - weight) if weight >= 0.5 else below + difference * weight


def hd95_assd(points: np.ndarray, other_points: np.ndarray) -> tuple[np.float32, np.float32]:
    """HD95 (max of the directed 95th percentiles) and ASSD (mean of the directed means) of two point sets."""
    forward = nearest_distances(points, other_points)
    backward = nearest_distances(other_points, points)
    hd95 = max(_percentile_95(forward), _percentile_95(backward))
    assd = (np.mean(forward) + np.mean(backward)) / 2
    return hd95, assd


def miss_radius(mask: np.ndarray, origin: tuple[int, int] = (0, 0)) -> np.float64:
    """R of the miss penalty: the largest distance from the pixel centroid of a non-empty mask to its pixels.

    ``origin`` is the image position of ``mask[0, 0]`` when ``mask`` is a crop: R is computed on image coordinates,
    as in the reference, so that its float rounding is the same.
    """
    points = np.argwhere(np.asarray(mask, dtype=bool)) + np.asarray(origin)
    return np.max(np.linalg.norm(points - points.mean(axis=0), axis=1))


def _reference_mean(values: Sequence[float | np.floating]) -> float:
    """Mean accumulated left to right from ``0`` as the reference does, keeping its float32/float64 promotions."""
    total = 0
    for value in values:
        total += value
    return float(total / len(values))


class _Fragments(NamedTuple):
    """The non-empty fragments of one bit map, cropped: masks ``[N, h, w]``, categories ``[N]``, boxes and areas."""

    masks: np.ndarray
    categories: np.ndarray
    boxes: list[Box]
    areas: np.ndarray

    @classmethod
    def of(cls, bitmap: np.ndarray) -> _Fragments:
        """The fragments of an already checked ``[H, W]`` bit map (:func:`as_bitmap`)."""
        masks, categories, boxes = _decoded_fragments(bitmap)
        areas = np.array([np.count_nonzero(mask[box]) for mask, box in zip(masks, boxes)], dtype=np.int64)
        return cls(masks, categories, boxes, areas)

    def bone(self, category: int) -> tuple[np.ndarray, Box | None]:
        """The OR of this category's fragments and its bounding box (``None`` when the bone is empty)."""
        members = np.flatnonzero(self.categories == category)
        if not len(members):
            return np.zeros(self.masks.shape[1:], dtype=bool), None
        return np.logical_or.reduce(self.masks[members]), union_box([self.boxes[i] for i in members])


def _iou_matrix(first: _Fragments, second: _Fragments) -> np.ndarray:
    """IoU float64 ``[N, M]`` between two sets of fragments.

    Intersections are counted only where bounding boxes overlap (most fragment pairs do not); no BLAS matrix
    product, whose threads would compete with parallel scoring processes.
    """
    intersection = np.zeros((len(first.masks), len(second.masks)), dtype=np.int64)
    for row, (mask, box) in enumerate(zip(first.masks, first.boxes)):
        for column, (other, other_box) in enumerate(zip(second.masks, second.boxes)):
            overlap = overlap_box(box, other_box)
            if overlap is not None:
                intersection[row, column] = np.count_nonzero(mask[overlap] & other[overlap])
    # the division matches the reference's int64 / int64
    return intersection / (first.areas[:, None] + second.areas[None] - intersection)


def _fragments_and_ious(
    prediction_bitmap: NdarrayOrTensor, label_bitmap: NdarrayOrTensor, name: str, scored: bool = False
) -> tuple[_Fragments, _Fragments, np.ndarray, tuple[int, int]]:
    """Label and prediction fragments and their IoU matrix ``[label, prediction]``.

    The masks are cropped to the bounding box of both maps' fragments plus one pixel (outside it every mask and
    every surface band is empty); the last item is the image position of the crop's first pixel.
    An empty prediction acts as one empty predicted fragment (an IoU column of zeros): every label fragment is
    then missed. ``scored``: the label must have a fragment (the image scores are means over them).
    """
    label = as_bitmap(label_bitmap, source=f"{name} (label)")
    prediction = as_bitmap(prediction_bitmap, source=f"{name} (prediction)")
    if label.shape != prediction.shape:
        raise ValueError(f"{name}: prediction shape {prediction.shape} != label shape {label.shape}")
    foreground = (label != 0) | (prediction != 0)
    everything = (slice(0, None), slice(0, None))
    crop = grow_box(bounding_boxes(foreground[None])[0], 1, label.shape) if foreground.any() else everything
    label_fragments, pred_fragments = _Fragments.of(label[crop]), _Fragments.of(prediction[crop])
    if scored and not len(label_fragments.masks):
        raise ValueError(f"{name}: the label has no fragment, so there is nothing to score against")
    if len(pred_fragments.masks):
        iou = _iou_matrix(label_fragments, pred_fragments)
    else:
        iou = np.zeros((len(label_fragments.masks), 1))
    return label_fragments, pred_fragments, iou, (crop[0].start, crop[1].start)


def _bone_iou(label_bone: np.ndarray, pred_bone: np.ndarray) -> np.float64:
    """IoU of two bone masks, divided as the reference divides (int64 / int64)."""
    intersection = np.count_nonzero(label_bone & pred_bone)
    return np.int64(intersection) / np.int64(np.count_nonzero(label_bone | pred_bone))


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
    label, prediction, iou, origin = _fragments_and_ious(prediction_bitmap, label_bitmap, name, scored=True)
    best = iou.argmax(axis=1)  # first maximum: ties go to the lowest predicted index, as in the reference
    rows, cols = linear_sum_assignment(iou, maximize=True)
    hungarian_total = iou[rows, cols].sum()

    pred_surfaces: dict[int, np.ndarray] = {}
    fragment_iou, fragment_hd95, fragment_assd = [], [], []
    for index, (label_mask, label_box) in enumerate(zip(label.masks, label.boxes)):
        pred_index = int(best[index])
        match_iou = iou[index, pred_index]
        if match_iou > 0:
            if pred_index not in pred_surfaces:
                pred_surfaces[pred_index] = surface_points(prediction.masks[pred_index], prediction.boxes[pred_index])
            hd95, assd = hd95_assd(surface_points(label_mask, label_box), pred_surfaces[pred_index])
        else:
            radius = miss_radius(label_mask, origin)
            hd95, assd = 2 * radius, radius
        fragment_iou.append(match_iou)
        fragment_hd95.append(hd95)
        fragment_assd.append(assd)

    bone_iou, bone_hd95, bone_assd = [], [], []
    for category in range(1, NUM_CATEGORIES + 1):
        label_bone, label_box = label.bone(category)
        if label_box is None:
            continue
        pred_bone, pred_box = prediction.bone(category)
        bone_iou.append(_bone_iou(label_bone, pred_bone))
        if pred_box is not None:
            hd95, assd = hd95_assd(surface_points(label_bone, label_box), surface_points(pred_bone, pred_box))
        else:
            radius = miss_radius(label_bone, origin)
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
        "fracture_iou_hungarian": float(hungarian_total / len(label.masks)),
    }


def score_ious(
    prediction_bitmap: NdarrayOrTensor, label_bitmap: NdarrayOrTensor, name: str = "image"
) -> dict[str, float]:
    """The two official IoUs of :func:`score_image`, to the last bit, without its surface distances.

    What choosing a threshold on validation needs (``scripts.tuning``), at a fraction of the cost.

    Returns:
        ``fracture_iou`` and ``anatomical_iou``.

    Raises:
        ValueError: as :func:`score_image`.
    """
    label, prediction, iou, _ = _fragments_and_ious(prediction_bitmap, label_bitmap, name, scored=True)
    bone_iou = [
        _bone_iou(label.bone(category)[0], prediction.bone(category)[0])
        for category in range(1, NUM_CATEGORIES + 1)
        if np.any(label.categories == category)
    ]
    return {"fracture_iou": _reference_mean(iou.max(axis=1)), "anatomical_iou": _reference_mean(bone_iou)}


#: what :func:`write_results` writes: the per-image table and the summary
RESULT_FILES: tuple[str, str] = ("metrics.csv", "summary.json")
#: upper edges of the fragment-size bins of :func:`fracture_iou_by_size`, as fractions of the image area
FRAGMENT_SIZE_BINS: tuple[float, ...] = (0.005, 0.01, 0.05)
#: folders score in one process below this many images per process (a spawned one imports for about a second)
_MIN_IMAGES_PER_WORKER = 32


def fragment_best_ious(
    prediction_bitmap: NdarrayOrTensor, label_bitmap: NdarrayOrTensor, name: str = "image"
) -> tuple[np.ndarray, np.ndarray]:
    """Area (fraction of the image) and official best-match IoU of each ground-truth fragment, in bit order.

    The IoU is the one :func:`score_image` averages into ``fracture_iou``; an empty prediction gives zeros.

    Raises:
        ValueError: for mismatched shapes or invalid bit maps.
    """
    label = as_bitmap(label_bitmap, source=f"{name} (label)")
    fragments, _, iou, _ = _fragments_and_ious(prediction_bitmap, label, name)
    areas = fragments.areas / label.size
    return areas, iou.max(axis=1)


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


def _one_thread_per_process() -> None:
    """Start of a scoring process: OpenCV and OpenMP (pykdtree's queries) on one thread, so that the processes do
    not oversubscribe the cores."""
    cv2.setNumThreads(1)
    threadpool_limits(1, user_api="openmp")


def _score_files(task: tuple[Path, Path]) -> dict[str, float | str]:
    """One row of :func:`evaluate_folders`: the prediction file ``task[0]`` scored against the label ``task[1]``."""
    prediction_path, label_path = task
    prediction, label = read_fragment_label(prediction_path), read_fragment_label(label_path)
    return {"name": label_path.name, **score_image(prediction, label, name=label_path.name)}


def check_score_folders(predictions_dir: str | Path, labels_dir: str | Path) -> None:
    """Refuse a missing folder, or one folder given for both (every label would score as a perfect prediction).

    Raises:
        FileNotFoundError: a folder is missing (or no folder).
        ValueError: both are one folder.
    """
    for folder, role in ((predictions_dir, "predictions"), (labels_dir, "labels")):
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"{folder}: {role} folder not found")
    if Path(predictions_dir).resolve() == Path(labels_dir).resolve():
        raise ValueError(f"{predictions_dir}: the predictions folder is the labels folder (every label would score "
                         "as a perfect prediction of itself)")


def paired_files(predictions_dir: str | Path, labels_dir: str | Path) -> list[tuple[Path, Path]]:
    """``(prediction, label)`` for every TIFF label and the prediction of the same stem (``.tif``/``.tiff``, any
    case), in label name order.

    Raises:
        FileNotFoundError, ValueError: as :func:`check_score_folders`, or (``ValueError``) when a label has no
            prediction or a prediction no label (all such names listed), or the labels folder holds no TIFF.
    """
    check_score_folders(predictions_dir, labels_dir)
    predictions_dir, labels_dir = Path(predictions_dir), Path(labels_dir)
    predictions, labels = tiffs_by_stem(predictions_dir), tiffs_by_stem(labels_dir)
    problems = []
    if missing := sorted(labels[stem].name for stem in labels.keys() - predictions.keys()):
        problems.append(f"no prediction in {predictions_dir} for {missing}")
    if extra := sorted(predictions[stem].name for stem in predictions.keys() - labels.keys()):
        problems.append(f"no label in {labels_dir} for {extra}")
    if problems:
        raise ValueError("; ".join(problems))
    if not labels:
        raise ValueError(f"{labels_dir}: no .tif/.tiff label to evaluate")
    return [(predictions[stem], path) for stem, path in sorted(labels.items(), key=lambda item: item[1].name)]


def check_workers(workers: int | None) -> int | None:
    """``workers`` (``None``: one per CPU), checked to be at least 1."""
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    return workers


def score_pairs(
    pairs: Sequence[tuple[Path, Path]], workers: int | None = None
) -> tuple[list[dict[str, float | str]], dict[str, float | int]]:
    """Score each ``(prediction, label)`` file pair of :func:`paired_files`.

    Args:
        pairs: the file pairs.
        workers: scoring processes; by default one per usable CPU, at most one per 32 images (a started process
            spends about a second on imports).

    Returns:
        per-image rows (``"name"``, the label's file name, plus :data:`METRICS`) in the pairs' order, and the
        summary: the mean of each metric over images plus ``"num_images"``.

    Raises:
        ValueError: when a file is not a valid bit map (named), or for ``workers`` under 1.
    """
    check_workers(workers)
    tasks = list(pairs)
    if workers is None:
        usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        workers = min(usable, len(tasks) // _MIN_IMAGES_PER_WORKER)
    workers = max(1, min(workers, len(tasks)))
    if workers == 1:
        rows = [_score_files(task) for task in tasks]
    else:
        # spawned, not forked: a caller's torch threads would make forked workers deadlock-prone; a killed worker
        # fails the run (BrokenProcessPool) instead of hanging it
        with ProcessPoolExecutor(workers, get_context("spawn"), initializer=_one_thread_per_process) as pool:
            rows = list(pool.map(_score_files, tasks, chunksize=max(1, len(tasks) // (4 * workers))))
    return rows, summarise(rows)


def evaluate_folders(
    predictions_dir: str | Path, labels_dir: str | Path, workers: int | None = None
) -> tuple[list[dict[str, float | str]], dict[str, float | int]]:
    """:func:`score_pairs` of :func:`paired_files`: every TIFF label of ``labels_dir`` scored against the prediction
    of the same stem in ``predictions_dir``; raises what they raise."""
    return score_pairs(paired_files(predictions_dir, labels_dir), workers)


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
    parser.add_argument(
        "--workers", type=int, help="scoring processes (default: one per CPU, at most one per 32 images)"
    )
    args = parser.parse_args(argv)
    if args.out.exists() and not args.out.is_dir():
        raise SystemExit(f"pengwin-eval: {args.out}: --out must be a folder, and this is a file")
    try:
        # what the user typed is checked before any earlier result goes; then a scoring that fails (e.g. on the
        # folders' files) leaves no earlier results to pass for its own
        workers = check_workers(args.workers)
        check_score_folders(args.predictions_dir, args.labels_dir)
        remove_results(args.out)
        rows, summary = score_pairs(paired_files(args.predictions_dir, args.labels_dir), workers)
        csv_path, json_path = write_results(rows, summary, args.out)
    except (OSError, ValueError) as err:
        raise SystemExit(f"pengwin-eval: {err}") from None
    print(json.dumps(summary, indent=2))
    print(f"written: {json_path} and {csv_path}", file=sys.stderr)  # stdout stays one JSON document
