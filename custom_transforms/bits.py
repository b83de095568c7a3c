"""Exact conversions between PENGWIN uint32 bit maps and 30 binary channels (``channel = bit - 1``)."""

from __future__ import annotations

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_numpy

from .constants import NUM_CHANNELS
from .io import as_bitmap
from .reader import tensor_filename

__all__ = [
    "decode_fragment_bits",
    "encode_fragment_bits",
    "DecodeFragmentBits",
    "EncodeFragmentBits",
    "DecodeFragmentBitsd",
    "EncodeFragmentBitsd",
]

_SHIFTS = torch.arange(1, NUM_CHANNELS + 1, dtype=torch.int32).view(NUM_CHANNELS, 1, 1)


def decode_fragment_bits(bitmap: NdarrayOrTensor, source: str = "bit map") -> torch.Tensor:
    """Decode an integer bit map ``[H, W]`` or ``[1, H, W]`` into ``[30, H, W]`` uint8 channels.

    Raises:
        ValueError: for a float bit map, a wrong shape, or bits outside 1..30 (``source`` names the input).
    """
    array = as_bitmap(bitmap, source)
    # int32 is exact for bits 1..30 and the fastest dtype for torch shifts (torch has none on uint32)
    values = torch.from_numpy(array.astype(np.int32, copy=False))
    return ((values.unsqueeze(0) >> _SHIFTS) & 1).to(torch.uint8)


def encode_fragment_bits(masks: NdarrayOrTensor, threshold: float = 0.5) -> np.ndarray:
    """Encode ``[30, H, W]`` binary masks (or probabilities, kept where ``> threshold``) into a uint32 ``[H, W]``.

    Only the channels with a pixel set are shifted in (a prediction sets a few of the 30).
    """
    channels = convert_to_numpy(masks)
    if channels.ndim != 3 or channels.shape[0] != NUM_CHANNELS:
        raise ValueError(f"expected masks of shape [{NUM_CHANNELS}, H, W], got {tuple(channels.shape)}")
    binary = channels > threshold if np.issubdtype(channels.dtype, np.floating) else channels != 0
    bitmap = np.zeros(channels.shape[1:], dtype=np.uint32)
    for channel in np.flatnonzero(binary.reshape(NUM_CHANNELS, -1).any(axis=1)):
        bitmap |= binary[channel].astype(np.uint32) << np.uint32(channel + 1)
    return bitmap


class DecodeFragmentBits(Transform):
    """Decode a PENGWIN bit-map label ``[1, H, W]`` into 30 binary channels ``[30, H, W]`` (channel = bit - 1).

    Exact for every bit 1..30; a bit map with bit 0, bit 31 (a negative int32) or higher bits set, or with a
    float dtype, is an error naming the source file, since such a file is not a PENGWIN label.

    Args:
        dtype: output dtype of the channels (float32 for a BCE target).
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        self.dtype = dtype

    def __call__(self, img: NdarrayOrTensor) -> torch.Tensor:
        channels = decode_fragment_bits(img, source=tensor_filename(img) or "bit map").to(self.dtype)
        if isinstance(img, MetaTensor):
            return MetaTensor(channels, meta=img.meta, applied_operations=img.applied_operations)
        return channels


class EncodeFragmentBits(Transform):
    """Encode ``[30, H, W]`` masks or probabilities into a ``[1, H, W]`` uint32 PENGWIN bit map.

    ``decode(encode(x)) == x`` for binary ``x``. Probabilities are binarised with ``> threshold``.

    Args:
        threshold: probability threshold for float inputs.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        bitmap = encode_fragment_bits(img, self.threshold)[None]
        if isinstance(img, MetaTensor):
            return MetaTensor(torch.from_numpy(bitmap), meta=img.meta, applied_operations=img.applied_operations)
        return torch.from_numpy(bitmap) if isinstance(img, torch.Tensor) else bitmap


class DecodeFragmentBitsd(MapTransform):
    """Dictionary twin of :class:`DecodeFragmentBits`."""

    backend = DecodeFragmentBits.backend

    def __init__(self, keys: KeysCollection, dtype: torch.dtype = torch.float32, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.decoder = DecodeFragmentBits(dtype)

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.decoder(d[key])
        return d


class EncodeFragmentBitsd(MapTransform):
    """Dictionary twin of :class:`EncodeFragmentBits`."""

    backend = EncodeFragmentBits.backend

    def __init__(self, keys: KeysCollection, threshold: float = 0.5, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.encoder = EncodeFragmentBits(threshold)

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.encoder(d[key])
        return d


DecodeFragmentBitsD = DecodeFragmentBitsDict = DecodeFragmentBitsd
EncodeFragmentBitsD = EncodeFragmentBitsDict = EncodeFragmentBitsd
