"""The MONAI side of PENGWIN file reading: an ``ImageReader`` for ``LoadImage``/``LoadImaged`` and the file a
``MetaTensor`` came from. The reading itself (exact, validating) is :mod:`custom_transforms.io`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from monai.config import NdarrayOrTensor
from monai.data import ImageReader, MetaTensor
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

from .io import TIFF_SUFFIXES, read_fragment_label, read_xray_image

__all__ = ["PengwinTiffReader", "tensor_filename"]


def tensor_filename(img: NdarrayOrTensor) -> str | None:
    """The file a MetaTensor was loaded from (its ``filename_or_obj``), or ``None`` for other arrays."""
    if isinstance(img, MetaTensor) and img.meta.get("filename_or_obj"):
        return str(img.meta["filename_or_obj"])
    return None


class PengwinTiffReader(ImageReader):
    """MONAI ``ImageReader`` for PENGWIN TIFFs: raw float32 X-rays or exact integer bit-map labels.

    Use one ``LoadImaged`` per kind, e.g. ``LoadImaged("label", reader=PengwinTiffReader(label=True),
    dtype=None, ensure_channel_first=True)``, so that labels are never cast to float.

    Args:
        label: read bit-map labels (int32) instead of float32 images.
        expected_shape: optional required ``(H, W)``; ``None`` accepts any 2D size.
    """

    def __init__(self, label: bool = False, expected_shape: Sequence[int] | None = None) -> None:
        super().__init__()
        self.label = label
        self.expected_shape = expected_shape

    def verify_suffix(self, filename: Sequence[str | Path] | str | Path) -> bool:
        return all(Path(name).suffix.lower() in TIFF_SUFFIXES for name in ensure_tuple(filename))

    def read(self, data: Sequence[str | Path] | str | Path, **kwargs) -> list[np.ndarray] | np.ndarray:
        read_one = read_fragment_label if self.label else read_xray_image
        arrays = [read_one(name, self.expected_shape) for name in ensure_tuple(data)]
        return arrays if len(arrays) > 1 else arrays[0]

    def get_data(self, img: list[np.ndarray] | np.ndarray) -> tuple[np.ndarray, dict]:
        arrays = img if isinstance(img, list) else [img]
        meta = {
            MetaKeys.SPATIAL_SHAPE: np.asarray(arrays[0].shape),
            MetaKeys.SPACE: SpaceKeys.RAS,
            MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan"),
            MetaKeys.AFFINE: np.eye(3),
            MetaKeys.ORIGINAL_AFFINE: np.eye(3),
        }
        if len(arrays) == 1:
            return arrays[0], meta
        meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = 0  # several files of one item are stacked as channels
        return np.stack(arrays), meta
