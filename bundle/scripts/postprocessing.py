"""Post-processing of sigmoid probabilities into clean ``[30, H, W]`` fragment masks, shared by inference and scoring.

Connected components are 8-connected everywhere (``custom_transforms.formulation.EIGHT_CONNECTED``).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from monai.config import NdarrayOrTensor
from monai.transforms import Resize
from monai.utils import InterpolateMode, convert_to_numpy, convert_to_tensor
from scipy import ndimage

from custom_transforms.bits import encode_fragment_bits
from custom_transforms.constants import (
    DEFAULT_MIN_COMPONENT_SIZE,
    DEFAULT_THRESHOLD,
    NUM_CHANNELS,
    check_min_component_size,
    check_threshold,
)
from custom_transforms.formulation import EIGHT_CONNECTED
from pengwin_xray.masks import bounding_boxes

__all__ = [
    "Segmentation",
    "PostprocessResult",
    "as_probabilities",
    "postprocess_fragments",
    "resize_probabilities",
    "segment_probabilities",
]

#: fraction of its own maximum at which the fallback channel is thresholded
_FALLBACK_RELATIVE_LEVEL = 0.5


class Segmentation(NamedTuple):
    """One image's result: fragment masks ``[30, H, W]`` (bool), their PENGWIN bit map ``[H, W]`` (uint32), the
    probabilities ``[30, H, W]`` at the image size (float32) and whether the never-empty fallback made the masks."""

    masks: np.ndarray
    bitmap: np.ndarray
    probabilities: np.ndarray
    fallback_used: bool


class PostprocessResult(NamedTuple):
    """Cleaned masks ``[30, H, W]`` (bool) and whether the never-empty fallback produced them."""

    masks: np.ndarray
    fallback_used: bool

def as_probabilities(probs: NdarrayOrTensor, source: str = "probabilities") -> np.ndarray:
    """Validate ``[30, H, W]`` probabilities in [0, 1] and return them as float32 numpy."""
    array = convert_to_numpy(probs, dtype=np.float32)
    if array.ndim != 3 or array.shape[0] != NUM_CHANNELS:
        raise ValueError(f"{source}: expected probabilities of shape [{NUM_CHANNELS}, H, W], got {array.shape}")
    if array.size and not (array.min() >= 0.0 and array.max() <= 1.0):  # also false for NaN and inf
        if not np.isfinite(array).all():
            raise ValueError(f"{source}: probabilities contain {np.count_nonzero(~np.isfinite(array))} NaN/inf values")
        raise ValueError(
            f"{source}: probabilities must lie in [0, 1], got [{array.min():g}, {array.max():g}] "
            "(logits? apply a sigmoid first)"
        )
    return array

def _remove_small_components(mask: np.ndarray, min_size: int) -> np.ndarray:
    """Drop 8-connected components of a 2D bool ``mask`` with fewer than ``min_size`` pixels."""
    labels, _ = ndimage.label(mask, structure=EIGHT_CONNECTED)
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_size
    keep[0] = False
    return keep[labels]

def _fallback_masks(probs: np.ndarray) -> np.ndarray:
    """The never-empty fallback: the argmax channel's pixels at or above half of that channel's maximum."""
    masks = np.zeros(probs.shape, dtype=bool)
    channel_max = probs.reshape(NUM_CHANNELS, -1).max(axis=1)
    channel = int(np.argmax(channel_max))
    peak = float(channel_max[channel])
    if peak > 0.0:
        masks[channel] = probs[channel] >= _FALLBACK_RELATIVE_LEVEL * peak
    else:  # all-zero probabilities: keep one pixel so that the bit map is still valid
        masks[(channel, *np.unravel_index(int(np.argmax(probs[channel])), probs.shape[1:]))] = True
    return masks

def postprocess_fragments(
    probs: NdarrayOrTensor,
    threshold: float = DEFAULT_THRESHOLD,
    min_component_size: int = DEFAULT_MIN_COMPONENT_SIZE,
    ensure_nonempty: bool = True,
) -> PostprocessResult:
    """Binarise ``[30, H, W]`` sigmoid probabilities into clean fragment masks.

    Each channel keeps the pixels with ``probability > threshold`` (the same rule as ``encode_fragment_bits``),
    then loses its 8-connected components of fewer than ``min_component_size`` pixels.

    Never-empty fallback (``ensure_nonempty``): the official evaluator fails on an empty bit map, so when no
    pixel of any channel survives, the channel with the highest maximum probability is kept where its
    probability is at least half of that maximum (no size filter, so at least its peak pixel survives; if
    every probability is zero, its first pixel alone is kept). The result is then flagged ``fallback_used``.

    Raises:
        ValueError: for a wrong shape, NaN/inf, or values outside [0, 1] (logits instead of probabilities).
    """
    array = as_probabilities(probs)
    threshold, min_component_size = check_threshold(threshold), check_min_component_size(min_component_size)
    masks = array > threshold
    if min_component_size > 1:
        for channel, box in enumerate(bounding_boxes(masks)):  # labelled on its box: fragments are small
            if box is not None:
                masks[channel][box] = _remove_small_components(masks[channel][box], min_component_size)
    if ensure_nonempty and not masks.any():
        return PostprocessResult(_fallback_masks(array), True)
    return PostprocessResult(masks, False)

def resize_probabilities(probs: NdarrayOrTensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinearly resize ``[30, h, w]`` probabilities to ``size`` if needed (the same aspect ratio required, to the
    rounding of a resize that kept it)."""
    tensor = convert_to_tensor(probs, dtype=torch.float32, track_meta=False)
    if tensor.ndim != 3:
        raise ValueError(f"expected probabilities of shape [{NUM_CHANNELS}, H, W], got {tuple(tensor.shape)}")
    height, width = tensor.shape[1:]
    if (height, width) == size:
        return tensor
    if abs(height * size[1] - width * size[0]) > max(size) / 2:
        raise ValueError(f"probabilities of size {(height, width)} do not have the aspect ratio of the image {size}")
    # MONAI's Resize, as evaluation's custom_transforms.ResizeToReferenced; clamped against rounding just past 0 or 1
    resized = Resize(spatial_size=size, mode=InterpolateMode.BILINEAR)(tensor)
    return convert_to_tensor(resized, dtype=torch.float32, track_meta=False).clamp_(0.0, 1.0)


def segment_probabilities(
    probs: NdarrayOrTensor,
    size: tuple[int, int],
    threshold: float = DEFAULT_THRESHOLD,
    min_component_size: int = DEFAULT_MIN_COMPONENT_SIZE,
) -> Segmentation:
    """``[30, h, w]`` fragment probabilities to the :class:`Segmentation` of an image of ``size``: resized
    (:func:`resize_probabilities`), checked, binarised and cleaned with the never-empty fallback
    (:func:`postprocess_fragments`) and encoded as a bit map.

    ``min_component_size`` counts pixels at the probabilities' size ``h x w``, the network's, where it was chosen on
    validation; resized, a component keeps its share of the image, so the size applied is scaled by the areas' ratio
    (10 pixels of a 128 px network input are 123 of a 448 px image).
    """
    probabilities = convert_to_numpy(resize_probabilities(probs, size), dtype=np.float32)
    height, width = probs.shape[-2:]
    min_component_size = round(check_min_component_size(min_component_size) * size[0] * size[1] / (height * width))
    masks, fallback_used = postprocess_fragments(probabilities, threshold, min_component_size, ensure_nonempty=True)
    return Segmentation(masks, encode_fragment_bits(masks), probabilities, fallback_used)
