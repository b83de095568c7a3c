"""The main/other formulation: per bone, one main-fragment channel and one channel for all its other fragments.

The 30 PENGWIN channels give every fragment a fixed slot, but the number of a fragment beyond the first (its
rank by size) carries no meaning a network can see, and the official metric matches fragments regardless of
slot. The main/other formulation trains 6 channels (SA-main, SA-other, LI-main, LI-other, RI-main, RI-other)
and turns the other-fragments channel back into fragments 2..10 by its 8-connected components, largest first,
as the PENGWIN 2024 winners did.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_numpy, convert_to_tensor
from scipy import ndimage

from .constants import (
    DEFAULT_MIN_COMPONENT_SIZE,
    DEFAULT_THRESHOLD,
    MAX_FRAGMENTS,
    NUM_CATEGORIES,
    NUM_CHANNELS,
    check_min_component_size,
    check_threshold,
)

__all__ = [
    "MAIN_OTHER_CHANNELS",
    "EIGHT_CONNECTED",
    "MainOtherFragments",
    "MainOtherFragmentsd",
    "SplitOtherFragments",
    "SplitOtherFragmentsd",
]

#: channels of the main/other formulation: ``2 * (category - 1)`` is the main fragment, ``+ 1`` the others
MAIN_OTHER_CHANNELS: int = 2 * NUM_CATEGORIES
#: 8-connectivity in 2D, for every connected-component labelling of fragment masks
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def _like(result: torch.Tensor, img: NdarrayOrTensor) -> NdarrayOrTensor:
    if isinstance(img, MetaTensor):
        return MetaTensor(result, meta=img.meta, applied_operations=img.applied_operations)
    return result if isinstance(img, torch.Tensor) else result.numpy()


class MainOtherFragments(Transform):
    """``[30, H, W]`` fragment masks to ``[6, H, W]``: per bone its fragment 1 and the union of fragments 2..10."""

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        masks = convert_to_tensor(img, track_meta=False)
        if masks.shape[0] != NUM_CHANNELS:
            raise ValueError(f"expected {NUM_CHANNELS} fragment channels, got shape {tuple(masks.shape)}")
        bones = masks.reshape(NUM_CATEGORIES, MAX_FRAGMENTS, *masks.shape[1:])
        main_other = torch.stack((bones[:, 0], bones[:, 1:].amax(1)), dim=1)
        return _like(main_other.reshape(MAIN_OTHER_CHANNELS, *masks.shape[1:]), img)


class SplitOtherFragments(Transform):
    """``[6, H, W]`` main/other probabilities to ``[30, H, W]`` fragment probabilities.

    Fragment 1 of each bone takes the main channel. The other channel's pixels above ``threshold`` are split into
    8-connected components; components smaller than ``min_component_size`` pixels are dropped, the largest nine
    become fragments 2..10 (each keeping its probabilities inside the component, zero elsewhere), and any
    further ones join fragment 10, so that no bone exceeds the ten fragments the bit map can hold. Thresholding
    the result at ``threshold`` gives exactly the split masks, so the 30-channel post-processing, metrics and
    writers apply unchanged.

    Args:
        threshold: probability above which an other-fragments pixel belongs to a fragment.
        min_component_size: smaller components are dropped before the fragments are numbered.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self, threshold: float = DEFAULT_THRESHOLD, min_component_size: int = DEFAULT_MIN_COMPONENT_SIZE
    ) -> None:
        self.threshold = check_threshold(threshold)
        self.min_component_size = check_min_component_size(min_component_size)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        probs = convert_to_numpy(img, dtype=np.float32)
        if probs.shape[0] != MAIN_OTHER_CHANNELS:
            raise ValueError(f"expected {MAIN_OTHER_CHANNELS} main/other channels, got shape {probs.shape}")
        fragments = np.zeros((NUM_CATEGORIES, MAX_FRAGMENTS, *probs.shape[1:]), dtype=np.float32)
        for bone in range(NUM_CATEGORIES):
            main, other = probs[2 * bone], probs[2 * bone + 1]
            fragments[bone, 0] = main
            components, count = ndimage.label(other > self.threshold, structure=EIGHT_CONNECTED)
            sizes = np.bincount(components.ravel(), minlength=count + 1)[1:]
            kept = [index + 1 for index in np.argsort(-sizes, kind="stable") if sizes[index] >= self.min_component_size]
            for rank, component in enumerate(kept):
                slot = min(rank + 1, MAX_FRAGMENTS - 1)
                inside = components == component
                fragments[bone, slot][inside] = other[inside]
        result = torch.from_numpy(fragments.reshape(NUM_CHANNELS, *probs.shape[1:]))
        return _like(result.to(img.device) if isinstance(img, torch.Tensor) else result, img)


class MainOtherFragmentsd(MapTransform):
    """Dictionary twin of :class:`MainOtherFragments`."""

    backend = MainOtherFragments.backend

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = MainOtherFragments()

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d


class SplitOtherFragmentsd(MapTransform):
    """Dictionary twin of :class:`SplitOtherFragments`."""

    backend = SplitOtherFragments.backend

    def __init__(
        self,
        keys: KeysCollection,
        threshold: float = DEFAULT_THRESHOLD,
        min_component_size: int = DEFAULT_MIN_COMPONENT_SIZE,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.splitter = SplitOtherFragments(threshold, min_component_size)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.splitter(d[key])
        return d


MainOtherFragmentsD = MainOtherFragmentsDict = MainOtherFragmentsd
SplitOtherFragmentsD = SplitOtherFragmentsDict = SplitOtherFragmentsd
