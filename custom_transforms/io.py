"""Exact, validating reading of PENGWIN TIFF files and bit maps, in plain numpy and tifffile.

No torch or MONAI here: the scorer (``pengwin-eval``) imports this module and starts in about a second.
MONAI's ``LoadImage``/``LoadImaged`` reads through :class:`custom_transforms.reader.PengwinTiffReader`, built on these
functions.

MONAI's own readers do not fit these files: ``PILReader`` wraps uint32 values above 2**31, ``ITKReader``
transposes and needs the full ITK, and the default float32 cast of ``LoadImage`` silently drops low bits of
large bit maps (float32 keeps 24 significant bits). This reader uses tifffile, keeps numpy's row-major
``[H, W]`` orientation, returns labels as exact int32 (bit 31 is never set in a valid label) and checks each
file so that a bad one fails with its name and the problem.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from .constants import MIN_IMAGE_SIZE, VALID_BITS_MASK

__all__ = [
    "TIFF_SUFFIXES",
    "list_tiffs",
    "tiff_stem",
    "tiffs_by_stem",
    "stored_dtype",
    "read_xray_image",
    "check_xray_image",
    "read_fragment_label",
    "invalid_label_bits",
    "as_bitmap",
]

#: file suffixes read as TIFF, in any case (``a.tif``, ``b.TIFF``)
TIFF_SUFFIXES: tuple[str, ...] = (".tif", ".tiff")


def list_tiffs(folder: str | Path) -> list[Path]:
    """The files directly in ``folder`` with a TIFF suffix (:data:`TIFF_SUFFIXES`, any case), sorted by name; hidden
    files (``.name``, such as the ``._name.tif`` metadata files macOS leaves on shared drives) are not images. A
    broken link of such a name is listed too, so that reading it fails, naming it, instead of its image going
    missing without a word."""
    return sorted(
        path
        for path in Path(folder).iterdir()
        if (path.is_file() or (path.is_symlink() and not path.exists()))
        and path.suffix.lower() in TIFF_SUFFIXES
        and not path.name.startswith(".")
    )


def tiffs_by_stem(folder: str | Path) -> dict[str, Path]:
    """The TIFFs directly in ``folder`` keyed by :func:`tiff_stem`, so that ``a.tif`` pairs with ``a.TIFF``; ``{}``
    when the folder does not exist.

    Raises:
        ValueError: when two files share a stem (``a.tif`` and ``a.TIFF``): which one is meant is not known.
    """
    found: dict[str, Path] = {}
    for path in list_tiffs(folder) if Path(folder).is_dir() else []:
        stem = tiff_stem(path)
        if stem in found:
            raise ValueError(f"{folder}: {found[stem].name} and {path.name} have the same name stem; keep one of them")
        found[stem] = path
    return found


def tiff_stem(name: str | Path) -> str:
    """A file's name without its ``.tif``/``.tiff`` suffix (any case): the key that pairs images, labels and
    predictions, and the stem of every output written for an input."""
    name = Path(name).name
    for suffix in sorted(TIFF_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def stored_dtype(path: str | Path) -> tuple[np.dtype, int]:
    """The sample type a TIFF stores in its first page, and its page count, from its header (no pixels read; the
    readers convert: X-rays to float32, bit maps to int32). Raises what tifffile raises for no TIFF."""
    with tifffile.TiffFile(path) as tif:
        return np.dtype(tif.pages[0].dtype), len(tif.pages)


def _read_single_page(path: str | Path) -> np.ndarray:
    """Read a one-page TIFF with tifffile, turning every failure into a ``ValueError`` naming the file."""
    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.pages:  # a header without a readable first image: truncated or corrupt
                raise ValueError(f"{path}: not a readable TIFF (no image in it)")
            if len(tif.pages) != 1:
                raise ValueError(f"{path}: expected a single-page TIFF, found {len(tif.pages)} pages")
            return tif.pages[0].asarray()
    except FileNotFoundError as err:
        if Path(path).is_symlink():
            raise FileNotFoundError(f"{path}: a link to {os.readlink(path)}, which does not exist") from err
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


def read_xray_image(
    path: str | Path, expected_shape: Sequence[int] | None = None, image_size: Sequence[int] | None = None
) -> np.ndarray:
    """Read a raw PENGWIN X-ray as float32 ``[H, W]``; reject what the pipeline cannot process (see
    :func:`check_xray_image`)."""
    return check_xray_image(_read_single_page(path), str(path), expected_shape, image_size)


def check_xray_image(
    image: np.ndarray,
    source: str = "image",
    expected_shape: Sequence[int] | None = None,
    image_size: Sequence[int] | None = None,
) -> np.ndarray:
    """A raw X-ray ``[H, W]`` as float32, checked; ``source`` names it in the errors.

    Rejected: non-2D, not of ``expected_shape`` (when given), non-float, smaller than :data:`MIN_IMAGE_SIZE` on a
    side (also once its longer side is brought to the model's ``image_size``, when given, as inference does),
    non-finite, too large for the float32 neg-log window, non-positive (the window takes the logarithm of the
    transmitted intensity) and constant images.
    """
    array = np.asarray(image)
    _check_shape(source, array, expected_shape)
    if min(array.shape) < MIN_IMAGE_SIZE:
        raise ValueError(f"{source}: image of {array.shape[0]}x{array.shape[1]} pixels; the networks need at least "
                         f"{MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE}")
    if image_size:
        longest = max(image_size)
        scaled = [round(side * longest / max(array.shape)) for side in array.shape]
        if min(scaled) < MIN_IMAGE_SIZE:
            raise ValueError(f"{source}: image of {array.shape[0]}x{array.shape[1]} pixels is {scaled[0]}x{scaled[1]} "
                             f"at the model's image size ({longest} pixels on its longer side); the networks need at "
                             f"least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE} (--image_size 0 runs it at its own size)")
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{source}: expected a float raw-intensity image (float32), got dtype {array.dtype}")
    if not np.isfinite(array).all():
        raise ValueError(f"{source}: image contains {np.count_nonzero(~np.isfinite(array))} NaN/inf values")
    # the neg-log window adds the image's minimum to each pixel, in float32
    if float(array.max()) + float(array.min()) >= float(np.finfo(np.float32).max):
        raise ValueError(f"{source}: intensities up to {array.max():g} overflow float32 in the neg-log window; is this "
                         "a raw transmitted-intensity image?")
    array = array.astype(np.float32, copy=False)
    if array.min() <= 0:
        raise ValueError(f"{source}: raw intensities must be positive (transmitted X-ray intensity), minimum is "
                         f"{array.min():g}; is this a windowed or log image instead of a raw one?")
    if array.min() == array.max():
        raise ValueError(f"{source}: constant image (every pixel is {array.flat[0]}): no content to segment")
    return array


def _raw_bits(bitmap: np.ndarray) -> np.ndarray:
    """The integer ``bitmap`` with its raw bits: a signed one as its unsigned twin, where a negative value is a set
    top bit (an int16 map's bit 15 is fragment LI-5), not a sign that widening would copy into the higher bits."""
    values = np.ascontiguousarray(bitmap)
    if np.issubdtype(values.dtype, np.signedinteger):
        return values.view(np.dtype(f"u{values.dtype.itemsize}"))
    return values


def invalid_label_bits(bitmap: np.ndarray) -> list[int]:
    """Bits set anywhere in the integer ``bitmap`` outside the PENGWIN range 1..30 (bit 0, bit 31 and above)."""
    values = _raw_bits(bitmap)
    present = int(np.bitwise_or.reduce(values, axis=None)) if values.size else 0
    invalid = present & ~VALID_BITS_MASK
    return [bit for bit in range(invalid.bit_length()) if invalid >> bit & 1]


def as_bitmap(bitmap: Any, source: str = "bit map") -> np.ndarray:
    """An integer bit map ``[H, W]`` or ``[1, H, W]`` (numpy, or a torch tensor) as a checked numpy ``[H, W]``; a
    signed one as its unsigned twin, so that widening it keeps its bits (an int16 map can set bit 15).

    Raises:
        ValueError: for a float dtype, a wrong shape, or bits outside 1..30 (``source`` names the input).
    """
    if hasattr(bitmap, "detach"):  # a torch tensor, read without importing torch
        bitmap = (bitmap.detach() if bitmap.is_floating_point() else bitmap).cpu().numpy()
    array = np.asarray(bitmap)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{source}: bit maps must have an integer dtype (uint32/int32), got {array.dtype}")
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise ValueError(f"{source}: expected a bit map of shape [H, W] or [1, H, W], got {tuple(array.shape)}")
    bad_bits = invalid_label_bits(array)
    if bad_bits:
        raise ValueError(f"{source}: bit map sets bits {bad_bits}; PENGWIN bit maps use only bits 1..30")
    return _raw_bits(array)


def read_fragment_label(path: str | Path, expected_shape: Sequence[int] | None = None) -> np.ndarray:
    """Read a PENGWIN bit-map label exactly as int32 ``[H, W]``; reject what :func:`as_bitmap` rejects."""
    array = _read_single_page(path)
    _check_shape(path, array, expected_shape)
    # exact: all valid values are below 2**31
    return as_bitmap(array, source=str(path)).astype(np.int32)
