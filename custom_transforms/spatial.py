"""Side-aware left-right flipping: mirroring an X-ray turns the left hip into a right hip."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import Flip, MapTransform, RandomizableTransform, Transform
from monai.utils import TransformBackends, ensure_tuple

from .constants import MAX_FRAGMENTS, NUM_CHANNELS, fragment_channel

__all__ = ["SwapSideChannels", "SwapSideChannelsd", "RandSideFlipd"]

_LEFT = slice(fragment_channel(2, 1), fragment_channel(2, MAX_FRAGMENTS) + 1)
_RIGHT = slice(fragment_channel(3, 1), fragment_channel(3, MAX_FRAGMENTS) + 1)


class SwapSideChannels(Transform):
    """Swap the left-hip (LI) and right-hip (RI) channels of ``[30, H, W]`` fragment masks.

    Needed after a left-right flip: the mirrored left hip lies where the right one was and looks like one.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        if img.shape[0] != NUM_CHANNELS:
            raise ValueError(f"expected {NUM_CHANNELS} fragment channels, got shape {tuple(img.shape)}")
        out = img.clone() if isinstance(img, torch.Tensor) else img.copy()
        out[_LEFT], out[_RIGHT] = img[_RIGHT], img[_LEFT]
        return out


class SwapSideChannelsd(MapTransform):
    """Dictionary twin of :class:`SwapSideChannels`."""

    backend = SwapSideChannels.backend

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.swap = SwapSideChannels()

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.swap(d[key])
        return d


class RandSideFlipd(RandomizableTransform, MapTransform):
    """With probability ``prob``, flip images and masks left-right and swap the LI/RI mask channels.

    A plain left-right flip would teach the network the wrong side; this keeps the labels anatomically true.

    Args:
        keys: all keys to flip (images and masks), channel-first ``[C, H, W]``.
        label_keys: the subset of ``keys`` holding ``[30, H, W]`` fragment masks, whose sides are swapped.
        prob: probability of flipping.
    """

    backend = Flip.backend

    def __init__(
        self, keys: KeysCollection, label_keys: KeysCollection, prob: float = 0.5, allow_missing_keys: bool = False
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.label_keys = set(ensure_tuple(label_keys))
        self.flip = Flip(spatial_axis=1)
        self.swap = SwapSideChannels()
        self.flip_now = False

    def randomize(self, data: Any = None) -> None:
        """Draw whether the next call flips (with probability ``prob``)."""
        self.flip_now = self.R.rand() < self.prob

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        self.randomize(None)
        if not self.flip_now:
            return d
        for key in self.key_iterator(d):
            d[key] = self.flip(d[key])
            if key in self.label_keys:
                d[key] = self.swap(d[key])
        return d
