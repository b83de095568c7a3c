"""Spatial transforms that know the anatomy: side-aware left-right flipping (mirroring an X-ray turns the left hip
into a right hip) and per-bone crops (the second stage of the two-stage recipe); and bringing predictions made at the
model's image size back to the size of their label."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import Flip, MapTransform, RandomizableTransform, Resize, SpatialCrop, Transform
from monai.utils import InterpolateMode, TransformBackends, convert_to_numpy, ensure_tuple, ensure_tuple_rep

from pengwin_xray.masks import Box, scaled_side, square_crop_box

from .constants import (
    BONE_CROP_MARGIN,
    BONE_CROP_SCALE,
    MAX_FRAGMENTS,
    NUM_CATEGORIES,
    NUM_CHANNELS,
    fragment_channel,
)

__all__ = ["SwapSideChannels", "SwapSideChannelsd", "RandSideFlipd", "BoneCropd", "ResizeToReferenced"]

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


class BoneCropd(MapTransform):
    """One sample per bone present in ``[30, H, W]`` fragment masks: the square around the bone (all its
    fragments), grown by ``margin`` times the image's shorter side, cropped from every key and resized to a square
    of ``scale`` times that side.

    The training data of the two-stage recipe's fragment network, which sees each bone larger than in the whole
    view; :class:`scripts.inferers.TwoStageInferer` crops the predicted bones the same way (same defaults). Every
    sample keeps all 30 channels (a neighbouring bone's fragments inside the square stay labelled). A label
    without any fragment gives one sample of the whole image.

    Args:
        keys: the keys to crop, channel-first ``[C, H, W]`` of the label's size.
        label_key: the fragment masks the bones are found in (one of ``keys`` or another key).
        margin: added on every side of the bone's bounding box, as a fraction of the image's shorter side.
        scale: side of the resized crops, as a fraction of the image's shorter side.
        mode: interpolation of each key (``"nearest"`` for masks); tensors keep their dtype.
    """

    backend = Resize.backend

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str,
        margin: float = BONE_CROP_MARGIN,
        scale: float = BONE_CROP_SCALE,
        mode: Sequence[str] | str = InterpolateMode.BILINEAR,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if margin < 0 or scale <= 0:
            raise ValueError(f"margin must be 0 or more and scale more than 0, got {margin} and {scale}")
        self.label_key = label_key
        self.margin, self.scale = float(margin), float(scale)
        self.mode = dict(zip(self.keys, ensure_tuple_rep(mode, len(self.keys))))

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> list[dict[Hashable, NdarrayOrTensor]]:
        d = dict(data)
        masks = convert_to_numpy(d[self.label_key]) != 0
        if masks.shape[0] != NUM_CHANNELS:
            raise ValueError(f"expected {NUM_CHANNELS} fragment channels in {self.label_key!r}, got shape {masks.shape}")
        bones = masks.reshape(NUM_CATEGORIES, MAX_FRAGMENTS, *masks.shape[1:]).any(axis=1)
        boxes = [box for box in (square_crop_box(bone, self.margin) for bone in bones) if box is not None]
        side = scaled_side(masks.shape[1:], self.scale)
        whole_image = (slice(0, masks.shape[1]), slice(0, masks.shape[2]))
        return [self._crop(d, box, side) for box in boxes or [whole_image]]

    def _crop(self, data: dict[Hashable, NdarrayOrTensor], box: Box, side: int) -> dict[Hashable, NdarrayOrTensor]:
        sample = dict(data)
        crop = SpatialCrop(roi_slices=box)
        for key in self.key_iterator(sample):
            resized = Resize((side, side), mode=self.mode[key])(crop(sample[key]))
            sample[key] = resized.to(sample[key].dtype) if isinstance(sample[key], torch.Tensor) else resized
        return sample


class ResizeToReferenced(MapTransform):
    """Resize ``keys`` (channel first) to the spatial size of ``reference_key`` with MONAI's :class:`Resize`.

    Evaluation of a model on images of another size than it was trained on: the image is brought to the model's
    image size and the predicted probabilities, decoded there, are brought back to the label's size to be scored,
    as inference brings them back to the input's. MONAI's ``ResampleToMatchd`` would need the affines of both; here
    only the sizes matter (a whole view resized, never cropped).

    Args:
        keys: the items to resize.
        reference_key: the item whose spatial size they take.
        mode: interpolation mode of :class:`Resize` (probabilities: "bilinear").
    """

    backend = Resize.backend

    def __init__(
        self, keys: KeysCollection, reference_key: str, mode: str = InterpolateMode.BILINEAR,
        allow_missing_keys: bool = False,
    ) -> None:  # fmt: skip
        super().__init__(keys, allow_missing_keys)
        self.reference_key = reference_key
        self.mode = mode

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        resize = Resize(spatial_size=tuple(d[self.reference_key].shape[1:]), mode=self.mode)
        for key in self.key_iterator(d):
            d[key] = resize(d[key])
        return d
