"""Bounding boxes of stacks of binary masks: the crops that per-fragment work (scoring, post-processing, reports,
overlays) runs on, since a fragment covers a small part of the image. Plain numpy, no torch."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["Box", "bounding_boxes", "grow_box", "overlap_box", "scaled_side", "square_box", "square_crop_box", "union_box"]

#: ``(rows, columns)`` slices of an image region
Box = tuple[slice, slice]


def bounding_boxes(masks: np.ndarray) -> list[Box | None]:
    """The bounding box of each mask of a bool stack ``[N, H, W]`` (``None`` for an empty one; Python ints), from two
    reductions over the whole stack."""
    boxes: list[Box | None] = []
    for rows, cols in zip(masks.any(axis=2), masks.any(axis=1)):
        rows, cols = np.flatnonzero(rows), np.flatnonzero(cols)
        if not rows.size:
            boxes.append(None)
            continue
        boxes.append((slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)))
    return boxes


def grow_box(box: Box, margin: int, shape: Sequence[int]) -> Box:
    """``box`` grown by ``margin`` pixels on every side, clipped to an image of ``shape``."""
    return (
        slice(max(box[0].start - margin, 0), min(box[0].stop + margin, shape[0])),
        slice(max(box[1].start - margin, 0), min(box[1].stop + margin, shape[1])),
    )


def square_box(box: Box, margin: int, shape: Sequence[int]) -> Box:
    """The square around ``box`` grown by ``margin`` pixels on every side, moved (not clipped) to lie inside an image
    of ``shape``; its side is at most the image's shorter side. Resized to a fixed size, a square crop keeps the
    aspect ratio of what it shows."""
    side = min(max(box[0].stop - box[0].start, box[1].stop - box[1].start) + 2 * margin, *shape)
    starts = []
    for axis, size in zip(box, shape):
        centre = (axis.start + axis.stop) // 2
        starts.append(min(max(centre - side // 2, 0), size - side))
    return slice(starts[0], starts[0] + side), slice(starts[1], starts[1] + side)


def square_crop_box(mask: np.ndarray, margin: float) -> Box | None:
    """The :func:`square_box` around the pixels of a bool mask ``[H, W]``, grown by ``margin`` times the image's
    shorter side; ``None`` for an empty mask. The crop of the two-stage recipe, in training and in inference."""
    box = bounding_boxes(mask[None])[0]
    if box is None:
        return None
    return square_box(box, int(round(margin * min(mask.shape))), mask.shape)


def scaled_side(shape: Sequence[int], scale: float) -> int:
    """``scale`` times the shorter side of an image of ``shape``, rounded, at least 1: the side the two-stage recipe
    resizes its square crops to, in training and in inference."""
    return max(int(round(scale * min(shape))), 1)


def overlap_box(box: Box, other: Box) -> Box | None:
    """The region two boxes share, or ``None`` when they do not overlap."""
    rows = slice(max(box[0].start, other[0].start), min(box[0].stop, other[0].stop))
    cols = slice(max(box[1].start, other[1].start), min(box[1].stop, other[1].stop))
    return (rows, cols) if rows.start < rows.stop and cols.start < cols.stop else None


def union_box(boxes: Sequence[Box]) -> Box:
    """The smallest box holding every box of ``boxes`` (at least one)."""
    return (
        slice(min(box[0].start for box in boxes), max(box[0].stop for box in boxes)),
        slice(min(box[1].start for box in boxes), max(box[1].stop for box in boxes)),
    )
