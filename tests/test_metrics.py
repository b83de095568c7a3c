"""Tests for the official PENGWIN X-ray metrics (pengwin_xray.metrics) against hand-derived answers and an all-pairs
reference written here from the organisers' published rules."""

from __future__ import annotations

import csv
import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy.spatial.distance import cdist
from sklearn.utils import resample

from custom_transforms.constants import fragment_bit
from custom_transforms.io import read_fragment_label
from pengwin_xray.metrics import (
    METRICS,
    OFFICIAL_METRICS,
    evaluate_folders,
    fracture_iou_by_size,
    fragment_best_ious,
    hd95_assd,
    main,
    miss_radius,
    nearest_distances,
    score_image,
    score_ious,
    surface_points,
    write_results,
)

REAL_FILES = ("081_0000_maskrcnn_pred.tif", "081_0025_maskrcnn_pred.tif")


# ---------------------------------------------------------------- all-pairs reference, from the published rules
def _band_by_hand(mask: np.ndarray) -> np.ndarray:
    """dilation & ~erosion with the 4-connected cross, outside the image counting as background."""
    padded = np.pad(mask, 1)
    neighbours = [padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]]
    dilated = mask | np.logical_or.reduce(neighbours)
    eroded = mask & np.logical_and.reduce(neighbours)
    return dilated & ~eroded


def _ref_surface(mask: np.ndarray) -> np.ndarray:
    points = np.argwhere(_band_by_hand(mask))
    if len(points) > 10_000:
        points = points[np.random.RandomState(2024).randint(0, len(points), size=(10_000,))]
    return points


def _ref_directed(points: np.ndarray, other: np.ndarray) -> np.ndarray:
    """All-pairs nearest distances in float32, in row chunks so that 10,000 x 10,000 fits in memory."""
    return np.concatenate(
        [cdist(points[i : i + 1000], other).astype(np.float32).min(axis=1) for i in range(0, len(points), 1000)]
    )


def _ref_hd95_assd(mask: np.ndarray, other_mask: np.ndarray) -> tuple:
    a, b = _ref_surface(mask), _ref_surface(other_mask)
    forward, backward = _ref_directed(a, b), _ref_directed(b, a)
    return max(np.percentile(forward, 95), np.percentile(backward, 95)), (forward.mean() + backward.mean()) / 2


def _ref_radius(mask: np.ndarray) -> np.float64:
    points = np.argwhere(mask)
    return np.max(np.linalg.norm(points - points.mean(axis=0), axis=1))


def _ref_fragments(bitmap: np.ndarray) -> tuple[list[np.ndarray], list[int]]:
    masks, categories = [], []
    for bit in range(1, 31):
        mask = ((bitmap.astype(np.int64) >> bit) & 1).astype(bool)
        if mask.any():
            masks.append(mask)
            categories.append((bit - 1) // 10 + 1)
    return masks, categories


def _ref_iou(a: np.ndarray, b: np.ndarray) -> np.float64:
    return np.logical_and(a, b).sum() / np.logical_or(a, b).sum()


def _ref_sum_then_mean(values: list) -> float:
    total = 0
    for value in values:
        total += value
    return float(total / len(values))


def _ref_best_one_to_one(iou: np.ndarray) -> float:
    """Best total IoU over every one-to-one assignment, by enumeration (small cases only)."""
    n_gt, n_pred = iou.shape
    if n_gt <= n_pred:
        return max(sum(iou[i, j] for i, j in enumerate(perm)) for perm in itertools.permutations(range(n_pred), n_gt))
    return max(sum(iou[i, j] for j, i in enumerate(perm)) for perm in itertools.permutations(range(n_gt), n_pred))


def reference_score(prediction: np.ndarray, label: np.ndarray) -> dict[str, float]:
    gt, gt_categories = _ref_fragments(label)
    pred, pred_categories = _ref_fragments(prediction)
    iou = np.array([[_ref_iou(g, p) for p in pred] for g in gt])
    fragments = []
    for index, g in enumerate(gt):
        best = max(range(len(pred)), key=lambda j: iou[index, j])  # first maximum
        if iou[index, best] > 0:
            fragments.append((iou[index, best], *_ref_hd95_assd(g, pred[best])))
        else:
            radius = _ref_radius(g)
            fragments.append((iou[index, best], 2 * radius, radius))
    bones = []
    for category in (1, 2, 3):
        g = np.logical_or.reduce([m for m, c in zip(gt, gt_categories) if c == category] or [np.zeros_like(gt[0])])
        p = np.logical_or.reduce([m for m, c in zip(pred, pred_categories) if c == category] or [np.zeros_like(g)])
        if not g.any():
            continue
        if p.any():
            bones.append((_ref_iou(g, p), *_ref_hd95_assd(g, p)))
        else:
            radius = _ref_radius(g)
            bones.append((_ref_iou(g, p), 2 * radius, radius))
    names = ("iou", "hd95", "assd")
    scores = {f"fracture_{n}": _ref_sum_then_mean([f[k] for f in fragments]) for k, n in enumerate(names)}
    scores.update({f"anatomical_{n}": _ref_sum_then_mean([b[k] for b in bones]) for k, n in enumerate(names)})
    scores["fracture_iou_hungarian"] = _ref_best_one_to_one(iou) / len(gt)
    return scores


# ---------------------------------------------------------------- helpers to build bit maps
def _bitmap(shape: tuple[int, int], *fragments: tuple[int, int, np.ndarray]) -> np.ndarray:
    """uint32 bit map from ``(category, fragment, bool mask)`` triples."""
    bitmap = np.zeros(shape, dtype=np.uint32)
    for category, fragment, mask in fragments:
        bitmap |= mask.astype(np.uint32) << np.uint32(fragment_bit(category, fragment))
    return bitmap


def _rect(shape: tuple[int, int], top: int, left: int, height: int, width: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + height, left : left + width] = True
    return mask


def _random_case(seed: int, shape: tuple[int, int] = (48, 48)) -> tuple[np.ndarray, np.ndarray]:
    """A label of 1..4 random rectangles and a prediction of shifted/resized/re-labelled/dropped copies plus
    spurious fragments."""
    rng = np.random.default_rng(seed)
    bits = rng.choice(np.arange(1, 31), size=rng.integers(1, 5), replace=False)
    label, prediction = np.zeros(shape, np.uint32), np.zeros(shape, np.uint32)
    for bit in bits:
        top, left = rng.integers(0, shape[0] - 8, size=2)
        height, width = rng.integers(3, 20, size=2)
        label |= _rect(shape, top, left, height, width).astype(np.uint32) << np.uint32(bit)
        if rng.random() < 0.2:
            continue  # dropped: this fragment may be missed
        pred_bit = bit if rng.random() < 0.7 else rng.integers(1, 31)
        dy, dx, dh, dw = rng.integers(-4, 5, size=4)
        moved = _rect(shape, max(top + dy, 0), max(left + dx, 0), max(height + dh, 1), max(width + dw, 1))
        prediction |= moved.astype(np.uint32) << np.uint32(pred_bit)
    for bit in rng.integers(1, 31, size=rng.integers(0, 3)):
        top, left = rng.integers(0, shape[0] - 4, size=2)
        prediction |= _rect(shape, top, left, 3, 4).astype(np.uint32) << np.uint32(bit)
    if not prediction.any():
        prediction |= _rect(shape, 0, 0, 2, 2).astype(np.uint32) << np.uint32(30)
    return prediction, label


def _assert_scores_equal(actual: dict[str, float], expected: dict[str, float]) -> None:
    """The official six to the last bit; the one-to-one IoU (summed in another order here) to 1e-12."""
    assert set(actual) == set(METRICS)
    for key in OFFICIAL_METRICS:
        assert actual[key] == expected[key], key
    assert actual["fracture_iou_hungarian"] == pytest.approx(expected["fracture_iou_hungarian"], abs=1e-12)


SHAPE = (40, 40)


# ---------------------------------------------------------------- behaviour
@pytest.mark.parametrize(
    "label",
    [
        _bitmap(SHAPE, (1, 1, _rect(SHAPE, 5, 5, 10, 12))),
        _bitmap(
            SHAPE,
            (1, 1, _rect(SHAPE, 0, 0, 10, 40)),
            (2, 3, _rect(SHAPE, 8, 8, 20, 5)),
            (3, 1, _rect(SHAPE, 30, 2, 10, 30)),
        ),
    ],
    ids=["one-fragment", "overlapping-three-bones"],
)
def test_identical_masks_score_perfect(label: np.ndarray) -> None:
    scores = score_image(label, label)
    assert scores == {
        "fracture_iou": 1.0,
        "fracture_hd95": 0.0,
        "fracture_assd": 0.0,
        "anatomical_iou": 1.0,
        "anatomical_hd95": 0.0,
        "anatomical_assd": 0.0,
        "fracture_iou_hungarian": 1.0,
    }


@pytest.mark.parametrize("k", [1, 2, 4])
def test_shifted_line_distances_match_hand_derivation(k: int) -> None:
    # a 1-pixel line of length L: its band is 3 rows of L pixels plus the two end pixels (3L + 2 points). Shifted
    # by k along itself, the points left behind are, for j = 1..k, one on the line's row at distance j and two
    # on the side rows at distance sqrt(1 + (j - 1)^2) (the nearest being on the other line's row); the rest
    # lie in the other band. Both directions give the same multiset by symmetry.
    length, shape = 20, (11, 40)
    line = _rect(shape, 5, 5, 1, length)
    moved = _rect(shape, 5, 5 + k, 1, length)
    left_behind = [d for j in range(1, k + 1) for d in (j, math.sqrt(1 + (j - 1) ** 2), math.sqrt(1 + (j - 1) ** 2))]
    distances = np.array(left_behind + [0.0] * (3 * length + 2 - 3 * k), dtype=np.float32)
    scores = score_image(_bitmap(shape, (1, 1, moved)), _bitmap(shape, (1, 1, line)))
    assert scores["fracture_iou"] == pytest.approx((length - k) / (length + k))
    assert scores["fracture_hd95"] == pytest.approx(float(np.percentile(distances, 95)), abs=1e-6)
    assert scores["fracture_assd"] == pytest.approx(float(distances.mean()), abs=1e-6)


@pytest.mark.parametrize("offset", [(0, 1), (3, 0), (2, 5), (-4, 3)])
def test_shifted_square_distances_match_brute_force_on_bands(offset: tuple[int, int]) -> None:
    square = _rect(SHAPE, 12, 12, 10, 10)
    moved = np.roll(square, offset, axis=(0, 1))
    a, b = np.argwhere(_band_by_hand(square)), np.argwhere(_band_by_hand(moved))
    pairwise = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=-1))
    forward, backward = pairwise.min(axis=1), pairwise.min(axis=0)
    scores = score_image(_bitmap(SHAPE, (2, 1, moved)), _bitmap(SHAPE, (2, 1, square)))
    expected_hd95 = max(np.percentile(forward, 95), np.percentile(backward, 95))
    assert scores["fracture_hd95"] == pytest.approx(expected_hd95, abs=1e-5)
    assert scores["fracture_assd"] == pytest.approx((forward.mean() + backward.mean()) / 2, abs=1e-5)
    assert scores["fracture_hd95"] > 0
    assert scores["anatomical_hd95"] == scores["fracture_hd95"]


@pytest.mark.parametrize(
    "fragment, radius",
    [
        (_rect(SHAPE, 3, 3, 7, 7), 3 * math.sqrt(2)),  # centre to corner of a 7 x 7 square
        (_rect(SHAPE, 3, 3, 1, 9), 4.0),  # centre to end of a 9-pixel line
        (_rect(SHAPE, 3, 3, 2, 6), math.sqrt(0.5**2 + 2.5**2)),  # centroid (0.5, 2.5) of a 2 x 6 block
    ],
    ids=["square", "line", "block"],
)
def test_missed_fragment_scores_2r_and_r(fragment: np.ndarray, radius: float) -> None:
    assert miss_radius(fragment) == pytest.approx(radius)
    elsewhere = _rect(SHAPE, 25, 25, 5, 5)
    scores = score_image(_bitmap(SHAPE, (1, 1, elsewhere)), _bitmap(SHAPE, (1, 1, fragment)))
    assert scores["fracture_iou"] == 0.0
    assert scores["fracture_hd95"] == pytest.approx(2 * radius)
    assert scores["fracture_assd"] == pytest.approx(radius)
    # the predicted bone is not empty, so the anatomy gets real distances, not the penalty
    assert scores["anatomical_iou"] == 0.0
    expected_hd95, expected_assd = _ref_hd95_assd(fragment, elsewhere)
    assert scores["anatomical_hd95"] == pytest.approx(float(expected_hd95), abs=1e-6)
    assert scores["anatomical_assd"] == pytest.approx(float(expected_assd), abs=1e-6)


def test_two_ground_truth_fragments_may_match_the_same_prediction() -> None:
    left, right = _rect(SHAPE, 10, 10, 10, 10), _rect(SHAPE, 10, 20, 10, 10)
    label = _bitmap(SHAPE, (1, 1, left), (1, 2, right))
    prediction = _bitmap(SHAPE, (1, 1, left | right), (1, 2, _rect(SHAPE, 35, 35, 2, 2)))
    scores = score_image(prediction, label)
    assert scores["fracture_iou"] == pytest.approx(0.5)  # both take the whole block, IoU 100 / 200 each
    assert scores["fracture_iou_hungarian"] == pytest.approx(0.25)  # one takes the block, the other a miss
    _assert_scores_equal(scores, reference_score(prediction, label))


def test_wrong_category_matches_fragment_but_not_anatomy() -> None:
    square = _rect(SHAPE, 5, 5, 9, 9)
    scores = score_image(_bitmap(SHAPE, (2, 1, square)), _bitmap(SHAPE, (1, 1, square)))
    assert (scores["fracture_iou"], scores["fracture_hd95"], scores["fracture_assd"]) == (1.0, 0.0, 0.0)
    radius = 4 * math.sqrt(2)
    assert scores["anatomical_iou"] == 0.0
    assert scores["anatomical_hd95"] == pytest.approx(2 * radius)
    assert scores["anatomical_assd"] == pytest.approx(radius)


@pytest.mark.parametrize("far_block_first", [True, False])
def test_equal_iou_tie_goes_to_lowest_index(far_block_first: bool) -> None:
    square = _rect(SHAPE, 5, 5, 10, 10)
    with_far_block = square | _rect(SHAPE, 28, 28, 10, 10)  # IoU 100 / 200
    left_half = _rect(SHAPE, 5, 5, 10, 5)  # IoU 50 / 100
    first, second = (with_far_block, left_half) if far_block_first else (left_half, with_far_block)
    scores = score_image(_bitmap(SHAPE, (3, 1, first), (3, 2, second)), _bitmap(SHAPE, (1, 1, square)))
    expected_hd95, expected_assd = _ref_hd95_assd(square, first)
    other_hd95, _ = _ref_hd95_assd(square, second)
    assert scores["fracture_iou"] == pytest.approx(0.5)
    assert scores["fracture_hd95"] == pytest.approx(float(expected_hd95), abs=1e-6)
    assert scores["fracture_assd"] == pytest.approx(float(expected_assd), abs=1e-6)
    assert abs(other_hd95 - expected_hd95) > 1


def test_empty_prediction_scores_every_fragment_and_bone_as_missed() -> None:
    square, line = _rect(SHAPE, 3, 3, 7, 7), _rect(SHAPE, 20, 3, 1, 9)
    label = _bitmap(SHAPE, (1, 1, square), (2, 1, line))
    scores = score_image(np.zeros(SHAPE, np.uint32), label)
    radii = (3 * math.sqrt(2), 4.0)
    for prefix in ("fracture", "anatomical"):
        assert scores[f"{prefix}_iou"] == 0.0
        assert scores[f"{prefix}_hd95"] == pytest.approx(float(np.mean([2 * r for r in radii])))
        assert scores[f"{prefix}_assd"] == pytest.approx(float(np.mean(radii)))
    assert scores["fracture_iou_hungarian"] == 0.0


@pytest.mark.parametrize(
    "prediction, label, message",
    [
        (np.zeros(SHAPE, np.uint32), np.zeros(SHAPE, np.uint32), "no fragment"),
        (np.zeros((8, 8), np.uint32), _bitmap(SHAPE, (1, 1, _rect(SHAPE, 1, 1, 3, 3))), "shape"),
        (np.ones(SHAPE, np.uint32), _bitmap(SHAPE, (1, 1, _rect(SHAPE, 1, 1, 3, 3))), r"case-7 \(prediction\).*\[0\]"),
        (np.zeros(SHAPE, np.float32), _bitmap(SHAPE, (1, 1, _rect(SHAPE, 1, 1, 3, 3))), "integer dtype"),
    ],
    ids=["empty-label", "shape-mismatch", "bit-zero", "float-prediction"],
)
def test_bad_input_is_a_clear_error(prediction: np.ndarray, label: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        score_image(prediction, label, name="case-7")


@pytest.mark.parametrize("seed", range(8))
def test_matches_all_pairs_reference_on_random_cases(seed: int) -> None:
    prediction, label = _random_case(seed)
    _assert_scores_equal(score_image(prediction, label), reference_score(prediction, label))


@pytest.mark.parametrize("seed", range(8))
def test_score_ious_are_score_images_ious_to_the_last_bit(seed: int) -> None:
    prediction, label = _random_case(seed)
    full = score_image(prediction, label)
    assert score_ious(prediction, label) == {key: full[key] for key in ("fracture_iou", "anatomical_iou")}


def test_score_ious_of_an_empty_prediction_are_zero_and_an_empty_label_is_an_error() -> None:
    label = _bitmap(SHAPE, (1, 1, _rect(SHAPE, 2, 2, 6, 6)), (3, 2, _rect(SHAPE, 20, 20, 5, 5)))
    assert score_ious(np.zeros(SHAPE, np.uint32), label) == {"fracture_iou": 0.0, "anatomical_iou": 0.0}
    with pytest.raises(ValueError, match="case-3: the label has no fragment"):
        score_ious(label, np.zeros(SHAPE, np.uint32), name="case-3")


def test_large_surface_is_subsampled_deterministically_as_the_reference() -> None:
    shape = (160, 160)
    stripes = np.zeros(shape, dtype=bool)
    stripes[10:150, 10:150:2] = True  # every pixel of [9:151, 9:151] is surface: ~19,900 points
    label = _bitmap(shape, (1, 1, stripes))
    prediction = _bitmap(shape, (1, 1, np.roll(stripes, 3, axis=0)))
    assert len(np.argwhere(_band_by_hand(stripes))) > 10_000
    assert surface_points(stripes).shape == (10_000, 2)
    first, second = score_image(prediction, label), score_image(prediction, label)
    assert first == second
    _assert_scores_equal(first, reference_score(prediction, label))


@pytest.mark.parametrize("seed", range(4))
def test_fragment_best_ious_average_to_the_official_fracture_iou(seed: int) -> None:
    prediction, label = _random_case(seed)
    areas, ious = fragment_best_ious(prediction, label)
    gt, _ = _ref_fragments(label)
    np.testing.assert_allclose(areas, [mask.mean() for mask in gt])
    assert float(np.mean(ious)) == pytest.approx(score_image(prediction, label)["fracture_iou"])


def test_fragment_best_ious_of_an_empty_prediction_are_zero() -> None:
    label = _bitmap((20, 20), (1, 1, _rect((20, 20), 0, 0, 5, 5)), (2, 3, _rect((20, 20), 9, 9, 2, 2)))
    areas, ious = fragment_best_ious(np.zeros((20, 20), np.uint32), label)
    np.testing.assert_allclose(areas, [25 / 400, 4 / 400])
    np.testing.assert_array_equal(ious, [0.0, 0.0])


def test_fracture_iou_by_size_bins_fragments_by_image_fraction() -> None:
    areas = [0.001, 0.004, 0.007, 0.02, 0.3, 0.05]
    ious = [0.0, 0.2, 0.5, 0.6, 0.9, 0.7]
    by_size = fracture_iou_by_size(areas, ious)
    assert by_size["fracture_iou_under_0.5pct"] == pytest.approx(0.1)
    assert by_size["fracture_iou_0.5_1pct"] == pytest.approx(0.5)
    assert by_size["fracture_iou_1_5pct"] == pytest.approx(0.6)
    assert by_size["fracture_iou_over_5pct"] == pytest.approx(0.8)  # 0.05 is in the top bin: bins are [lower, upper)
    assert [by_size[key] for key in by_size if key.startswith("num_")] == [2, 1, 1, 2]


def test_fracture_iou_by_size_marks_empty_bins_as_none() -> None:
    by_size = fracture_iou_by_size([0.2], [1.0])
    assert by_size["fracture_iou_under_0.5pct"] is None and by_size["num_fragments_under_0.5pct"] == 0
    assert by_size["fracture_iou_over_5pct"] == 1.0


def test_subsampling_draws_what_sklearn_resample_draws() -> None:
    mask = np.zeros((160, 160), dtype=bool)
    mask[10:150, 10:150:2] = True
    points = np.argwhere(_band_by_hand(mask))
    np.testing.assert_array_equal(surface_points(mask), resample(points, n_samples=10_000, random_state=2024))


@pytest.mark.parametrize(
    "size, spread, offset",
    [(50, 40, 0), (400, 200, 0), (30, 5, 430), (2000, 448, 0), (5, 2, 200), (300, 800, 0), (200, 6000, 0)],
)
def test_nearest_distances_equal_all_pairs_cdist_in_float32(size: int, spread: int, offset: int) -> None:
    """Every nearest distance exactly as the reference's float32 ``cdist`` minimum, also for far-apart sets and in
    images far larger than PENGWIN's, whose squared distances exceed float32's exact integers."""
    rng = np.random.default_rng(size + spread)
    points = rng.integers(0, spread, size=(size, 2))
    other = rng.integers(0, spread, size=(size // 2 + 1, 2)) + offset
    np.testing.assert_array_equal(nearest_distances(points, other), _ref_directed(points, other))
    np.testing.assert_array_equal(nearest_distances(other, points), _ref_directed(other, points))


def test_nearest_distances_between_surface_bands_equal_cdist() -> None:
    """Dense sets (the bands of a large and of a small fragment, one inside the other)."""
    shape = (300, 300)
    large, small = _rect(shape, 20, 30, 250, 240), _rect(shape, 140, 150, 9, 14)
    for points, other in itertools.permutations((_ref_surface(large), _ref_surface(small))):
        np.testing.assert_array_equal(nearest_distances(points, other), _ref_directed(points, other))


@pytest.mark.parametrize("size, other_size", [(1, 1), (2, 7), (21, 5), (40, 33), (997, 400), (3000, 1)])
def test_hd95_assd_equal_numpy_percentile_and_mean_to_the_last_bit(size: int, other_size: int) -> None:
    """Set sizes whose 95th-percentile positions fall on an element, below and above half-way between two, and on a
    single distance: the same float32 numbers as ``np.percentile(..., 95)`` of the reference's distances."""
    rng = np.random.default_rng(size * 31 + other_size)
    points, other = rng.integers(0, 448, size=(size, 2)), rng.integers(0, 448, size=(other_size, 2))
    forward, backward = _ref_directed(points, other), _ref_directed(other, points)
    hd95, assd = hd95_assd(points, other)
    expected = max(np.percentile(forward, 95), np.percentile(backward, 95))
    assert hd95 == expected and type(hd95) is type(expected)
    assert assd == (np.mean(forward) + np.mean(backward)) / 2


def test_hd95_assd_of_identical_point_sets_is_zero() -> None:
    points = np.argwhere(_band_by_hand(_rect(SHAPE, 4, 4, 6, 9)))
    assert hd95_assd(points, points) == (0.0, 0.0)


def test_real_predictions_score_perfect_against_themselves_and_finite_against_each_other(real_data: Path) -> None:
    first, second = (read_fragment_label(real_data / name) for name in REAL_FILES)
    for bitmap in (first, second):
        scores = score_image(bitmap, bitmap)
        assert [scores[key] for key in METRICS] == [1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0]
    cross = score_image(second, first)
    assert all(math.isfinite(value) for value in cross.values())
    assert 0 < cross["fracture_iou"] < 1 and 0 < cross["anatomical_iou"] < 1
    assert cross["fracture_hd95"] > 0 and cross["anatomical_assd"] > 0
    _assert_scores_equal(cross, reference_score(second, first))


# ---------------------------------------------------------------- folders, files and the command
@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    predictions, labels = tmp_path / "pred", tmp_path / "labels"
    predictions.mkdir()
    labels.mkdir()
    for seed, name in zip((21, 22, 23), ("b.tif", "a.tif", "c.tif")):
        prediction, label = _random_case(seed)
        tifffile.imwrite(predictions / name, prediction.astype(np.uint32))
        tifffile.imwrite(labels / name, label.astype(np.uint32))
    return predictions, labels


def test_evaluate_folders_rows_and_summary(folders: tuple[Path, Path]) -> None:
    predictions, labels = folders
    rows, summary = evaluate_folders(predictions, labels)
    assert [row["name"] for row in rows] == ["a.tif", "b.tif", "c.tif"]
    for row in rows:
        label = tifffile.imread(labels / row["name"])
        prediction = tifffile.imread(predictions / row["name"])
        _assert_scores_equal({k: row[k] for k in METRICS}, reference_score(prediction, label))
    assert set(summary) == set(METRICS) | {"num_images"}
    assert summary["num_images"] == 3
    for key in OFFICIAL_METRICS:
        assert summary[key] == pytest.approx(np.mean([row[key] for row in rows]))


def test_write_results_and_cli_write_csv_and_summary(folders: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    predictions, labels = folders
    rows, summary = evaluate_folders(predictions, labels)
    csv_path, json_path = write_results(rows, summary, tmp_path / "out")
    with open(csv_path, newline="") as file:
        written = list(csv.DictReader(file))
    assert [row["name"] for row in written] == ["a.tif", "b.tif", "c.tif"]
    assert list(written[0]) == ["name", *METRICS]
    assert float(written[1]["fracture_hd95"]) == pytest.approx(rows[1]["fracture_hd95"])
    assert json.loads(json_path.read_text()) == summary
    assert sorted(p.name for p in json_path.parent.iterdir()) == ["metrics.csv", "summary.json"]  # no temp left

    main([str(predictions), str(labels), "--out", str(tmp_path / "cli")])
    printed = json.loads(capsys.readouterr().out)
    assert printed == summary
    assert json.loads((tmp_path / "cli" / "summary.json").read_text()) == summary


def test_folders_score_the_same_in_parallel_processes(folders: tuple[Path, Path]) -> None:
    predictions, labels = folders
    assert evaluate_folders(predictions, labels, workers=2) == evaluate_folders(predictions, labels, workers=1)
    with pytest.raises(ValueError, match="workers must be at least 1"):
        evaluate_folders(predictions, labels, workers=0)


def test_scorer_imports_neither_torch_nor_monai() -> None:
    """pengwin-eval starts in about a second: torch and MONAI alone take several."""
    code = "import sys, pengwin_xray.metrics; print(sorted({'torch', 'monai'} & set(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_tiff_and_upper_case_labels_pair_with_predictions_by_stem(folders: tuple[Path, Path]) -> None:
    """`.TIF` and `.tiff` labels are scored against `<stem>.tif` predictions, not skipped."""
    predictions, labels = folders
    expected, _ = evaluate_folders(predictions, labels)
    (labels / "a.tif").rename(labels / "a.TIF")
    (labels / "c.tif").rename(labels / "c.tiff")
    (predictions / "b.tif").rename(predictions / "b.TIFF")
    rows, summary = evaluate_folders(predictions, labels)
    assert [row["name"] for row in rows] == ["a.TIF", "b.tif", "c.tiff"] and summary["num_images"] == 3
    assert [{k: row[k] for k in METRICS} for row in rows] == [{k: row[k] for k in METRICS} for row in expected]


def test_missing_pairs_are_a_clear_error_listing_the_names(folders: tuple[Path, Path], tmp_path: Path) -> None:
    predictions, labels = folders
    (predictions / "a.tif").unlink()
    (predictions / "extra.tif").write_bytes((predictions / "b.tif").read_bytes())
    with pytest.raises(ValueError, match=r"no prediction .*\['a.tif'\].*no label .*\['extra.tif'\]"):
        evaluate_folders(predictions, labels)
    with pytest.raises(SystemExit, match="pengwin-eval: no prediction"):
        main([str(predictions), str(labels), "--out", str(tmp_path / "cli")])
    assert not (tmp_path / "cli").exists()


def test_two_labels_of_one_stem_are_an_error_naming_both(folders: tuple[Path, Path]) -> None:
    predictions, labels = folders
    (labels / "a.TIFF").write_bytes((labels / "b.tif").read_bytes())
    with pytest.raises(ValueError, match=r"labels: a.TIFF and a.tif have the same name stem; keep one"):
        evaluate_folders(predictions, labels)


def test_cli_out_that_is_a_file_is_one_line_before_scoring(folders: tuple[Path, Path], tmp_path: Path) -> None:
    predictions, labels = folders
    (tmp_path / "outfile").write_text("mine")
    with pytest.raises(SystemExit, match=r"^pengwin-eval: .*outfile: --out must be a folder, and this is a file$"):
        main([str(predictions), str(labels), "--out", str(tmp_path / "outfile")])
    assert (tmp_path / "outfile").read_text() == "mine"


def test_cli_failed_scoring_leaves_no_earlier_results_behind(folders: tuple[Path, Path], tmp_path: Path) -> None:
    predictions, labels = folders
    out = tmp_path / "cli"
    main([str(predictions), str(labels), "--out", str(out)])
    (out / "notes.txt").write_text("mine")
    (predictions / "a.tif").unlink()
    with pytest.raises(SystemExit, match="pengwin-eval: no prediction"):
        main([str(predictions), str(labels), "--out", str(out)])
    assert sorted(path.name for path in out.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize(
    "typed, message",
    [
        ({"labels": "misspelt"}, r"misspelt: labels folder not found"),
        ({"predictions": "misspelt"}, r"misspelt: predictions folder not found"),
        ({"workers": "0"}, r"workers must be at least 1, got 0"),
        ({"labels": "pred"}, r"pred: the predictions folder is the labels folder"),
    ],
)
def test_cli_refuses_a_mistyped_argument_keeping_the_earlier_results(
    folders: tuple[Path, Path], tmp_path: Path, typed: dict[str, str], message: str
) -> None:
    predictions, labels = folders
    out = tmp_path / "cli"
    main([str(predictions), str(labels), "--out", str(out)])
    earlier = {path.name: path.read_bytes() for path in out.iterdir()}
    given = {"predictions": str(predictions), "labels": str(labels), "workers": "1"}
    given.update({key: str(tmp_path / value) if key != "workers" else value for key, value in typed.items()})
    with pytest.raises(SystemExit, match=f"^pengwin-eval: .*{message}"):
        main([given["predictions"], given["labels"], "--out", str(out), "--workers", given["workers"]])
    assert {path.name: path.read_bytes() for path in out.iterdir()} == earlier
