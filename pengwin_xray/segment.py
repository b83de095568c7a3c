"""``load_segmenter``: the bundle's inference pipeline loaded once, for segmenting X-rays from Python.

    from pengwin_xray.segment import load_segmenter
    segmenter = load_segmenter("bundle", model_format="onnx")
    result = segmenter.segment("xray.tif")  # or a float [H, W] array of raw intensities
    result.bitmap  # uint32 PENGWIN bit map; result.masks, result.probabilities, result.fallback_used
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser

__all__ = ["load_segmenter"]


def load_segmenter(bundle_root: str | os.PathLike = ".", config_files: Sequence[str] = (), **overrides: Any) -> Any:
    """The ``segmenter`` of ``<bundle_root>/configs/inference.json`` (a ``scripts.segmenter.Segmenter``).

    Args:
        bundle_root: the bundle folder; its ``scripts`` become importable, as ``python -m monai.bundle`` makes them.
        config_files: overlays merged after ``inference.json``, relative to ``bundle_root`` (for example
            ``["configs/train_vgg16.json"]`` for the VGG16 U-Net), as on the command line.
        overrides: config values by id, e.g. ``model_format="onnx"``, ``ckpt_dir="..."``; each must exist in the
            merged config (a misspelt one is an error, not ignored).

    Raises:
        FileNotFoundError: a config or model file is missing.
        KeyError: an override names no config id.
        ValueError: the model does not fit the config (the message says which overlay to merge), a bad setting, or
            the two-stage recipe's fragment network without its localiser.
    """
    root = Path(bundle_root).resolve()
    files = [root / "configs" / "inference.json", *(root / name for name in config_files)]
    for file in files:
        if not file.is_file():
            raise FileNotFoundError(f"{file}: not found; bundle_root must be the bundle folder (with configs/)")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    parser = ConfigParser()
    parser.read_config([str(file) for file in files])
    parser["bundle_root"] = str(root)
    unknown = sorted(key for key in overrides if key not in parser)
    if unknown:
        raise KeyError(f"no config id {unknown} in {', '.join(file.name for file in files)}")
    for key, value in overrides.items():
        parser[key] = value
    from scripts.errors import USER_ERRORS, root_cause  # importable once the bundle folder is on sys.path
    from scripts.flags import as_device
    from scripts.tuning import check_pipeline

    try:
        as_device(parser.get_parsed_content("device"), "device")  # what inference.json's initialize checks
        segmenter = parser.get_parsed_content("segmenter")
        choice, model_path = parser.get_parsed_content("postprocessing_choice"), parser.get_parsed_content("ckpt_path")
        check_pipeline(choice, segmenter.inferer, model_path)  # what inference.json's initialize checks
        return segmenter
    except RuntimeError as err:  # MONAI wraps a failed check (a missing model, a wrong config) in its own error
        cause = root_cause(err)
        if isinstance(cause, USER_ERRORS):
            raise cause from None
        raise
