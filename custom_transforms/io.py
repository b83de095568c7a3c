"""Exact, validating readers for PENGWIN TIFF files, for use with MONAI's ``LoadImage``/``LoadImaged``.

MONAI's own readers do not fit these files: ``PILReader`` wraps uint32 values above 2**31, ``ITKReader``
transposes and needs the full ITK, and the default float32 cast of ``LoadImage`` silently drops low bits of
large bit maps (float32 keeps 24 significant bits). This reader uses tifffile, keeps numpy's row-major
``[H, W]`` orientation, returns labels as exact int32 (bit 31 is never set in a valid label) and checks each
file so that a bad one fails with its name and the problem.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tifffile
from monai.config import NdarrayOrTensor
from monai.data import ImageReader, MetaTensor
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

from .constants import MIN_IMAGE_SIZE, VALID_BITS_MASK

__all__ = [
    "TIFF_SUFFIXES",
    "list_tiffs",
    "tiff_stem",
    "tiffs_by_stem",
    "PengwinTiffReader",
    "read_xray_image",
    "read_fragment_label",
    "invalid_label_bits",
    "tensor_filename",
]

#: file suffixes read as TIFF, in any case (``a.tif``, ``b.TIFF``)
TIFF_SUFFIXES: tuple[str, ...] = (".tif", ".tiff")


def list_tiffs(folder: str | Path) -> list[Path]:
    """The files directly in ``folder`` with a TIFF suffix (:data:`TIFF_SUFFIXES`, any case), sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in TIFF_SUFFIXES)


def tiffs_by_stem(folder: str | Path) -> dict[str, Path]:
    """The TIFFs directly in ``folder`` keyed by :func:`tiff_stem`, so that ``a.tif`` pairs with ``a.TIFF``; ``{}``
    when the folder does not exist."""
    return {tiff_stem(path): path for path in list_tiffs(folder)} if Path(folder).is_dir() else {}


def tensor_filename(img: NdarrayOrTensor) -> str | None:
    """The file a MetaTensor was loaded from (its ``filename_or_obj``), or ``None`` for other arrays."""
    if isinstance(img, MetaTensor) and img.meta.get("filename_or_obj"):
        return str(img.meta["filename_or_obj"])
    return None


def tiff_stem(name: str | Path) -> str:
    """A file's name without its ``.tif``/``.tiff`` suffix (any case): the key that pairs images, labels and
    predictions, and the stem of every output written for an input."""
    name = Path(name).name
    for suffix in sorted(TIFF_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _read_single_page(path: str | Path) -> np.ndarray:
    """Read a one-page TIFF with tifffile, turning every failure into a ``ValueError`` naming the file."""
    try:
        with tifffile.TiffFile(path) as tif:
            if len(tif.pages) != 1:
                raise ValueError(f"{path}: expected a single-page TIFF, found {len(tif.pages)} pages")
            return tif.pages[0].asarray()
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{path}: file not found") from err
    except ValueError as err:
        if str(err).startswith(str(path)):
            raise
        raise ValueError(f"{path}: not a readable TIFF ({err})") from err
    except Exception as err:  # tifffile raises many types for truncated or corrupt files
        raise ValueError(f"{path}: not a readable TIFF ({type(err).__name__}: {err})") from err


def _check_shape(path: str | Path, array: np.ndarray, expected_shape: Sequence[int] | None) -> None:
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        raise ValueError(f"{path}: RGB/RGBA image of shape {array.shape}; expected one grey channel [H, W]")
    if array.ndim != 2:
        raise ValueError(f"{path}: expected a 2D [H, W] array, got shape {array.shape}")
    if expected_shape is not None and tuple(array.shape) != tuple(expected_shape):
        raise ValueError(f"{path}: expected shape {tuple(expected_shape)}, got {array.shape}")


def read_xray_image(path: str | Path, expected_shape: Sequence[int] | None = None) -> np.ndarray:
    """Read a raw PENGWIN X-ray as float32 ``[H, W]``; reject what the pipeline cannot process.

    Rejected, with the file named: non-float, smaller than :data:`MIN_IMAGE_SIZE` on a side, non-finite,
    non-positive (the neg-log window takes the logarithm of the transmitted intensity) and constant images.
    """
    array = _read_single_page(path)
    _check_shape(path, array, expected_shape)
    if min(array.shape) < MIN_IMAGE_SIZE:
        raise ValueError(f"{path}: image of {array.shape[0]}x{array.shape[1]} pixels; the networks need at least "
                         f"{MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE}")
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{path}: expected a float raw-intensity image (float32), got dtype {array.dtype}")
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        raise ValueError(f"{path}: image contains {np.count_nonzero(~np.isfinite(array))} NaN/inf values")
    if array.min() <= 0:
        raise ValueError(f"{path}: raw intensities must be positive (transmitted X-ray intensity), minimum is "
                         f"{array.min():g}; is this a windowed or log image instead of a raw one?")
    if array.min() == array.max():
        raise ValueError(f"{path}: constant image (every pixel is {array.flat[0]}): no content to segment")
    return array


def invalid_label_bits(bitmap: np.ndarray) -> list[int]:
    """Bits set anywhere in the integer ``bitmap`` outside the PENGWIN range 1..30 (bit 0, bit 31 and above)."""
    values = np.ascontiguousarray(bitmap)
    if np.issubdtype(values.dtype, np.signedinteger):  # a negative value is a set top bit: read the raw bits
        values = values.view(np.dtype(f"u{values.dtype.itemsize}"))
    present = int(np.bitwise_or.reduce(values, axis=None)) if values.size else 0
    invalid = present & ~VALID_BITS_MASK
    return [bit for bit in range(invalid.bit_length()) if invalid >> bit & 1]


def read_fragment_label(path: str | Path, expected_shape: Sequence[int] | None = None) -> np.ndarray:
    """Read a PENGWIN bit-map label exactly as int32 ``[H, W]``; reject float dtypes and bits outside 1..30."""
    array = _read_single_page(path)
    _check_shape(path, array, expected_shape)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{path}: a label must be an integer bit map (uint32/int32), got dtype {array.dtype}")
    bad_bits = invalid_label_bits(array)
    if bad_bits:
        raise ValueError(f"{path}: label sets bits {bad_bits}; PENGWIN labels use only bits 1..30")
    # exact: all valid values are below 2**31
    return array.astype(np.int32)


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
