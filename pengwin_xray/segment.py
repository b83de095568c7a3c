"""``load_segmenter``: the bundle's inference pipeline loaded once, for segmenting X-rays from Python.

    from pengwin_xray.segment import load_segmenter
    segmenter = load_segmenter("bundle", model_format="onnx")
    result = segmenter.segment("xray.tif")  # or a float [H, W] array of raw intensities
    result.bitmap  # uint32 PENGWIN bit map; result.masks, result.probabilities, result.fallback_used
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser

__all__ = ["load_segmenter"]


def load_segmenter(bundle_root: str | os.PathLike = ".", **overrides: Any) -> Any:
    """The ``segmenter`` of ``<bundle_root>/configs/inference.json`` (a ``scripts.segmenter.Segmenter``), built with
    config ``overrides`` such as ``model_format="onnx"`` or ``ckpt_dir="..."``; the bundle's ``scripts`` become
    importable, as ``python -m monai.bundle`` makes them."""
    root = Path(bundle_root).resolve()
    config = root / "configs" / "inference.json"
    if not config.is_file():
        raise FileNotFoundError(f"{config}: not found; bundle_root must be the bundle folder (with configs/)")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    parser = ConfigParser()
    parser.read_config(str(config))
    parser["bundle_root"] = str(root)
    for key, value in overrides.items():
        parser[key] = value
    return parser.get_parsed_content("segmenter")
