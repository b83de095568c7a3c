"""MONAI transforms for PENGWIN X-rays: exact loading, neg-log window, CLAHE and fragment bit coding.

The names below load their module on first use (PEP 562), so that ``custom_transforms.io`` and
``custom_transforms.constants`` can be imported without torch or MONAI (the scorer ``pengwin-eval`` does).
"""

from __future__ import annotations

import importlib
from typing import Any

#: each public name and the submodule that defines it
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(
        (
            "DecodeFragmentBits",
            "DecodeFragmentBitsd",
            "EncodeFragmentBits",
            "EncodeFragmentBitsd",
            "decode_fragment_bits",
            "encode_fragment_bits",
        ),
        "bits",
    ),
    **dict.fromkeys(
        (
            "CATEGORY_NAMES",
            "DEFAULT_MIN_COMPONENT_SIZE",
            "DEFAULT_SEED_THRESHOLD",
            "DEFAULT_SPLIT_DEPTH",
            "DEFAULT_THRESHOLD",
            "IMAGE_SIZE",
            "MIN_IMAGE_SIZE",
            "BEST_MODEL_FILE",
            "TUNED_POSTPROCESSING_FILE",
            "MAX_FRAGMENTS",
            "NUM_CATEGORIES",
            "NUM_CHANNELS",
            "VALID_BITS_MASK",
            "channel_category_fragment",
            "fragment_bit",
            "fragment_channel",
            "fragment_name",
        ),
        "constants",
    ),
    **dict.fromkeys(
        (
            "MAIN_OTHER_CHANNELS",
            "MAIN_OTHER_RIM_CHANNELS",
            "CORE_DEPTH_FRACTION",
            "fragment_cores",
            "MainOtherFragments",
            "MainOtherFragmentsd",
            "FragmentSizeWeights",
            "FragmentSizeWeightsd",
            "SplitOtherFragments",
            "SplitOtherFragmentsd",
        ),
        "formulation",
    ),
    **dict.fromkeys(("CLAHE", "CLAHEd", "NegLogWindow", "NegLogWindowd"), "intensity"),
    **dict.fromkeys(
        ("BoneCropd", "RandSideFlipd", "ResizeToReferenced", "SwapSideChannels", "SwapSideChannelsd"), "spatial"
    ),
    **dict.fromkeys(
        (
            "TIFF_SUFFIXES",
            "as_bitmap",
            "check_xray_image",
            "invalid_label_bits",
            "list_tiffs",
            "read_fragment_label",
            "read_xray_image",
            "tiff_stem",
            "tiffs_by_stem",
        ),
        "io",
    ),
    **dict.fromkeys(("PengwinTiffReader", "tensor_filename"), "reader"),
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
