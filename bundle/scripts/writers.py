"""The per-image files inference writes: submission bit map, fragment report and overlay picture.

For each input X-ray ``<stem>.tif`` inference writes, into one output folder:

- ``<stem>.tif``: the PENGWIN submission bit map (uint32 ``[H, W]``, one page, uncompressed, never empty),
- ``<stem>.json``: a fragment report (name, area, centroid, bounding box, components, mean probability),
- ``<stem>_overlay.png``: the CLAHE display of the X-ray with each fragment tinted and labelled, and a legend.

Arrays are numpy row-major ``[H, W]`` throughout, as read by tifffile: ``y`` is the row and ``x`` the column.
Every file is written atomically (:func:`pengwin_xray.atomic.atomic_open`), so a reader never sees a
half-written file and a failed write leaves the previous file untouched.
"""

from __future__ import annotations

import colorsys
import functools
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np
import tifffile
from monai.config import NdarrayOrTensor
from monai.utils import convert_to_numpy
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from custom_transforms.constants import (
    CATEGORY_NAMES,
    DEFAULT_MIN_COMPONENT_SIZE,
    DEFAULT_THRESHOLD,
    MAX_FRAGMENTS,
    NUM_CHANNELS,
    channel_category_fragment,
    check_min_component_size,
    check_threshold,
    fragment_bit,
    fragment_name,
)
from custom_transforms.intensity import CLAHE, NegLogWindow
from custom_transforms.io import as_bitmap, stored_dtype, tiff_stem
from pengwin_xray.atomic import atomic_open
from pengwin_xray.masks import bounding_boxes

from custom_transforms.formulation import EIGHT_CONNECTED

from .loading import InputFailure, InputScan, error_reason
from .postprocessing import as_probabilities, segment_probabilities

__all__ = [
    "OUTPUT_KINDS",
    "FRAGMENT_PALETTE",
    "fragment_report",
    "overlay_font_size",
    "place_labels",
    "overlay_image",
    "display_image",
    "write_bitmap_tiff",
    "write_report_json",
    "write_png",
    "write_prediction",
    "output_paths",
    "PredictionWriter",
]

logger = logging.getLogger(__name__)

#: the files :func:`write_prediction` can write: submission bit map, fragment report, overlay picture
OUTPUT_KINDS: tuple[str, ...] = ("tif", "json", "png")
#: what follows an input's stem in the name of each output kind
OUTPUT_SUFFIXES: dict[str, str] = {"tif": ".tif", "json": ".json", "png": "_overlay.png"}
_OVERLAY_ALPHA = 0.45


def _fragment_palette() -> np.ndarray:
    """30 fixed RGB colours: one hue family per bone (SA yellows, LI blues, RI reds), varied by fragment."""
    base_hues = (50.0, 215.0, 355.0)  # degrees: yellow, blue, red
    lightness_cycle = (0.45, 0.62, 0.35)
    colours = []
    for channel in range(NUM_CHANNELS):
        category, fragment = channel_category_fragment(channel)
        hue = (base_hues[category - 1] + 4.0 * (fragment - 1 - (MAX_FRAGMENTS - 1) / 2)) % 360.0
        red, green, blue = colorsys.hls_to_rgb(hue / 360.0, lightness_cycle[(fragment - 1) % 3], 0.95)
        colours.append((round(255 * red), round(255 * green), round(255 * blue)))
    return np.asarray(colours, dtype=np.uint8)

#: ``FRAGMENT_PALETTE[channel]`` is the overlay colour (uint8 RGB) of that channel's fragment
FRAGMENT_PALETTE: np.ndarray = _fragment_palette()

def _as_masks(masks: NdarrayOrTensor) -> np.ndarray:
    array = convert_to_numpy(masks)
    if array.ndim != 3 or array.shape[0] != NUM_CHANNELS:
        raise ValueError(f"expected masks of shape [{NUM_CHANNELS}, H, W], got {array.shape}")
    return array.astype(bool, copy=False)

def fragment_report(masks: NdarrayOrTensor, probs: NdarrayOrTensor | None = None) -> list[dict[str, Any]]:
    """Describe each non-empty fragment channel of ``masks`` ``[30, H, W]``, sorted by bit.

    Each entry: ``category_name`` ("SA"/"LI"/"RI"), ``category``, ``fragment``, ``bit``, ``name`` ("LI-2"),
    ``area_px``, ``centroid`` ``{"x", "y"}`` (pixel units; x = column, y = row), ``bbox``
    ``{"x_min", "y_min", "x_max", "y_max"}`` (inclusive), ``num_components`` (8-connected) and
    ``mean_probability`` over the mask (``None`` without ``probs``).
    """
    mask_array = _as_masks(masks)
    prob_array = None if probs is None else as_probabilities(probs)
    if prob_array is not None and prob_array.shape != mask_array.shape:
        raise ValueError(f"masks {mask_array.shape} and probabilities {prob_array.shape} differ in shape")
    report = []
    for channel, box in enumerate(bounding_boxes(mask_array)):  # channel order is bit order
        if box is None:
            continue
        mask = mask_array[channel][box]
        # the centroid from the row and column counts: exact integer sums, as the mean of the pixel coordinates
        row_counts, col_counts = mask.sum(axis=1), mask.sum(axis=0)
        area = int(row_counts.sum())
        category, fragment = channel_category_fragment(channel)
        _, num_components = ndimage.label(mask, structure=EIGHT_CONNECTED)
        report.append(
            {
                "category_name": CATEGORY_NAMES[category - 1],
                "category": category,
                "fragment": fragment,
                "bit": fragment_bit(category, fragment),
                "name": fragment_name(category, fragment),
                "area_px": area,
                "centroid": {
                    "x": float(np.arange(box[1].start, box[1].stop) @ col_counts / area),
                    "y": float(np.arange(box[0].start, box[0].stop) @ row_counts / area),
                },
                "bbox": {
                    "x_min": box[1].start,
                    "y_min": box[0].start,
                    "x_max": box[1].stop - 1,
                    "y_max": box[0].stop - 1,
                },
                "num_components": int(num_components),
                "mean_probability": None if prob_array is None else float(prob_array[channel][box][mask].mean()),
            }
        )
    return report

#: overlay label sizes: one font pixel per 32 image rows (14 px at 448), never under this
_MIN_FONT_SIZE = 11
#: the legend's background grey and its gaps (pixels)
_LEGEND_BACKGROUND = (32, 32, 32)
_LEGEND_GAP = 4
#: rings of candidate positions tried around a fragment's centroid before its label is left to the legend
_LABEL_RINGS = 6


@functools.lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont:
    """PIL's default font at ``size`` pixels, read once per size (reading it costs milliseconds per picture)."""
    return ImageFont.load_default(size=size)


def overlay_font_size(height: int) -> int:
    """The label and legend font size for an image ``height`` pixels high: readable at 224 and 448."""
    return max(_MIN_FONT_SIZE, round(height / 32))


def place_labels(
    anchors: Sequence[tuple[float, float, float, float]], width: int, height: int
) -> list[tuple[int, int, int, int] | None]:
    """Boxes ``(x0, y0, x1, y1)`` for labels that do not overlap each other, inside a ``width`` x ``height`` image.

    Each anchor is ``(centre_x, centre_y, label_width, label_height)``; anchors are placed in order, each at its
    centre if that is free, else at the nearest free spot of a few rings of positions around it, else not at
    all (``None``: the legend still lists the fragment). PIL draws text where it is told, so the placing is ours.
    """
    placed: list[tuple[int, int, int, int]] = []
    boxes: list[tuple[int, int, int, int] | None] = []
    for centre_x, centre_y, label_width, label_height in anchors:
        step_x, step_y = label_width + 1, label_height + 1
        candidates = [(0.0, 0.0)] + [
            (ring * step_x * dx, ring * step_y * dy)
            for ring in range(1, _LABEL_RINGS + 1)
            for dx, dy in ((0, 1), (0, -1), (1, 0), (-1, 0), (1, 1), (-1, 1), (1, -1), (-1, -1))
        ]
        box = None
        for dx, dy in candidates:
            x0 = int(round(min(max(centre_x + dx - label_width / 2, 0), max(width - label_width, 0))))
            y0 = int(round(min(max(centre_y + dy - label_height / 2, 0), max(height - label_height, 0))))
            candidate = (x0, y0, x0 + int(label_width), y0 + int(label_height))
            if all(candidate[2] <= o[0] or o[2] <= candidate[0] or candidate[3] <= o[1] or o[3] <= candidate[1]
                   for o in placed):  # fmt: skip
                box = candidate
                break
        if box is not None:
            placed.append(box)
        boxes.append(box)
    return boxes


def _legend(entries: Sequence[Mapping[str, Any]], height: int, font: ImageFont.ImageFont) -> Image.Image:
    """A panel ``height`` pixels high (or more) listing each fragment as a colour swatch, its name and area."""
    size = font.size
    row = size + _LEGEND_GAP
    lines = [f"{entry['name']}  {entry['area_px']} px" for entry in entries] or ["no fragment"]
    text_width = max(int(font.getlength(line)) for line in lines)
    rows_per_column = max(1, (height - _LEGEND_GAP) // row)
    columns = -(-len(lines) // rows_per_column)
    column_width = _LEGEND_GAP + size + _LEGEND_GAP + text_width + _LEGEND_GAP
    panel_height = max(height, min(len(lines), rows_per_column) * row + _LEGEND_GAP)
    panel = Image.new("RGB", (columns * column_width, panel_height), _LEGEND_BACKGROUND)
    draw = ImageDraw.Draw(panel)
    for index, line in enumerate(lines):
        x = (index // rows_per_column) * column_width + _LEGEND_GAP
        y = (index % rows_per_column) * row + _LEGEND_GAP
        if entries:
            colour = tuple(int(c) for c in FRAGMENT_PALETTE[entries[index]["bit"] - 1])
            draw.rectangle((x, y, x + size - 1, y + size - 1), fill=colour)
        draw.text((x + size + _LEGEND_GAP, y), line, fill="white", font=font)
    return panel


def overlay_image(
    display: NdarrayOrTensor, masks: NdarrayOrTensor, report: Sequence[Mapping[str, Any]] | None = None
) -> np.ndarray:
    """Tint each fragment of ``masks`` ``[30, H, W]`` over a grey ``display`` ``[H, W]`` in [0, 1], label it and
    add a legend on the right.

    Fragments are alpha-blended in bit order with their :data:`FRAGMENT_PALETTE` colour and labelled with their
    name (e.g. "LI-2") at or near their centroid, in white with a black outline, larger fragments first, labels
    never overlapping (:func:`place_labels`); everything outside fragments and labels stays grey (R = G = B).
    The legend lists every fragment shown (colour, name, area in pixels), in bit order.

    Args:
        display: grey display ``[H, W]`` in [0, 1].
        masks: fragment masks ``[30, H, W]``.
        report: :func:`fragment_report` of ``masks``, when the caller has it already (it is computed otherwise).

    Returns:
        uint8 RGB ``[H, W + legend width, 3]`` (taller than ``H`` only when the legend needs it); the first ``W``
        columns are the picture.
    """
    grey = convert_to_numpy(display, dtype=np.float32)
    mask_array = _as_masks(masks)
    if grey.ndim != 2 or grey.shape != mask_array.shape[1:]:
        raise ValueError(f"expected a display of shape {mask_array.shape[1:]} matching the masks, got {grey.shape}")
    if not np.isfinite(grey).all() or grey.min() < 0.0 or grey.max() > 1.0:
        raise ValueError("the display must be finite and lie in [0, 1]")
    rgb = np.repeat(grey[..., None] * np.float32(255.0), 3, axis=-1)
    for channel, box in enumerate(bounding_boxes(mask_array)):
        if box is not None:
            rows, cols = np.nonzero(mask_array[channel][box])
            rows, cols = rows + box[0].start, cols + box[1].start
            rgb[rows, cols] = (1.0 - _OVERLAY_ALPHA) * rgb[rows, cols] + _OVERLAY_ALPHA * FRAGMENT_PALETTE[channel]
    picture = Image.fromarray(np.rint(rgb).astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(picture)
    height, width = grey.shape
    font = _font(overlay_font_size(height))
    entries = fragment_report(mask_array) if report is None else report
    by_size = sorted(entries, key=lambda entry: -entry["area_px"])
    extents = [draw.textbbox((0, 0), entry["name"], font=font, stroke_width=1) for entry in by_size]
    anchors = [
        (entry["centroid"]["x"], entry["centroid"]["y"], right - left, bottom - top)
        for entry, (left, top, right, bottom) in zip(by_size, extents)
    ]
    for entry, (left, top, _, _), box in zip(by_size, extents, place_labels(anchors, width, height)):
        if box is not None:
            draw.text((box[0] - left, box[1] - top), entry["name"], fill="white", font=font, stroke_width=1,
                      stroke_fill="black")  # fmt: skip
    legend = _legend(entries, height, font)
    canvas = Image.new("RGB", (width + legend.width, max(height, legend.height)), _LEGEND_BACKGROUND)
    canvas.paste(picture, (0, 0))
    canvas.paste(legend, (width, 0))
    return np.asarray(canvas)


def display_image(image: NdarrayOrTensor) -> np.ndarray:
    """The organisers' display of a raw X-ray ``[H, W]``: neg-log window, then CLAHE (clip 4, 8x8 tiles), in [0, 1]."""
    raw = convert_to_numpy(image, dtype=np.float32)
    windowed = NegLogWindow()(raw[None])
    return np.asarray(CLAHE(clip_limit=4.0, tile_grid_size=(8, 8))(windowed))[0]

def _write_atomically(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    with atomic_open(path) as handle:
        write(handle)
    return Path(path)

def write_bitmap_tiff(path: str | os.PathLike, bitmap: NdarrayOrTensor) -> Path:
    """Write a PENGWIN submission bit map: uint32 ``[H, W]``, one uncompressed page, atomically.

    Raises:
        ValueError: for what :func:`custom_transforms.io.as_bitmap` rejects, or an all-zero map (the official
            evaluator cannot score an empty prediction).
    """
    array = as_bitmap(bitmap, source=str(path))
    if not array.any():
        raise ValueError(f"{path}: refusing to write an all-zero bit map (the official evaluator fails on it)")
    exact = array.astype(np.uint32)  # exact: only bits 1..30 are set

    def write(handle: IO[bytes]) -> None:
        tifffile.imwrite(handle, exact, photometric="minisblack", compression=None)

    return _write_atomically(path, write)

def write_report_json(path: str | os.PathLike, report: Sequence[Mapping[str, Any]], extra: Mapping[str, Any]) -> Path:
    """Write ``{**extra, "fragments": report}`` as indented JSON, atomically."""
    if "fragments" in extra:
        raise ValueError(f"{path}: 'fragments' is reserved for the report and may not appear in extra")
    content = json.dumps({**extra, "fragments": list(report)}, indent=2, allow_nan=False) + "\n"
    return _write_atomically(path, lambda handle: handle.write(content.encode("utf-8")))

def write_png(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    """Write a uint8 RGB ``[H, W, 3]`` picture as PNG, atomically."""
    array = np.asarray(rgb)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"{path}: expected a uint8 RGB image [H, W, 3], got {array.dtype} of shape {array.shape}")
    # OpenCV's encoder (BGR order) at zlib level 1: a third of the default level's time for a file about 15% larger,
    # and 1.4x faster than PIL's at the same level on 448 px overlays; same pixels
    encoded, data = cv2.imencode(".png", np.ascontiguousarray(array[..., ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not encoded:
        raise ValueError(f"{path}: OpenCV could not encode the picture as PNG")
    return _write_atomically(path, lambda handle: handle.write(data.tobytes()))

def write_prediction(
    probs: NdarrayOrTensor,
    image: NdarrayOrTensor,
    image_name: str | os.PathLike,
    output_dir: str | os.PathLike,
    threshold: float = DEFAULT_THRESHOLD,
    min_component_size: int = DEFAULT_MIN_COMPONENT_SIZE,
    outputs: Sequence[str] = OUTPUT_KINDS,
    report_settings: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Post-process one image's network output and write its files into ``output_dir``.

    Probabilities smaller than the input (a model run at 224 on a 448 image) are first resized to the input's
    size with bilinear interpolation, before thresholding, so that the bit map matches the input pixel for
    pixel. Then :func:`postprocess_fragments` (with the never-empty fallback) gives the masks, from which
    ``<stem>.tif`` (bit map), ``<stem>.json`` (report) and ``<stem>_overlay.png`` are written as requested.
    Plain arguments and no state: :class:`PredictionWriter` calls it per image, from any thread.

    Args:
        probs: sigmoid probabilities ``[30, h, w]``.
        image: the raw X-ray ``[H, W]`` (or ``[1, H, W]``), for the size and the overlay's display.
        image_name: the input file name; the stem is its name without ``.tif``/``.tiff``.
        output_dir: folder for the files (created if missing).
        threshold: probability threshold (kept where ``> threshold``).
        min_component_size: smaller 8-connected components are dropped.
        outputs: which of ``"tif"``, ``"json"``, ``"png"`` to write.
        report_settings: further settings the report records beside the threshold and minimum size (e.g. the
            fragment decoding's ``split_depth``, applied before the probabilities came here).

    Returns:
        the written paths, keyed by output kind.
    """
    unknown = sorted(set(outputs) - set(OUTPUT_KINDS))
    if unknown:
        raise ValueError(f"unknown output kinds {unknown}; choose from {OUTPUT_KINDS}")
    raw = convert_to_numpy(image, dtype=np.float32)
    if raw.ndim == 3 and raw.shape[0] == 1:
        raw = raw[0]
    if raw.ndim != 2:
        raise ValueError(f"{image_name}: expected a raw image [H, W] or [1, H, W], got shape {raw.shape}")
    masks, bitmap, probabilities, fallback_used = segment_probabilities(probs, raw.shape, threshold, min_component_size)
    if fallback_used:  # the report flags it too, but a submission run writes no report
        logger.warning(f"{Path(image_name).name}: no fragment above threshold {threshold}; the never-empty fallback "
                       "kept the most probable channel where it reaches half its maximum")
    report = fragment_report(masks, probabilities) if {"json", "png"} & set(outputs) else []
    picture = overlay_image(display_image(raw), masks, report) if "png" in outputs else None

    Path(output_dir).mkdir(parents=True, exist_ok=True)
    targets = output_paths(output_dir, image_name)
    # the input's files of an earlier run go first, all kinds: a run killed between two writes, or one writing fewer
    # kinds, leaves no earlier report or overlay beside this run's bit map
    for kind, path in targets.items():
        if path.is_file():
            path.unlink()
            if kind not in outputs:
                logger.info(f"removed {path}: an earlier run's output of {Path(image_name).name}, not written this time")
    paths: dict[str, Path] = {}
    if "tif" in outputs:
        paths["tif"] = write_bitmap_tiff(targets["tif"], bitmap)
    if "json" in outputs:
        extra = {
            "image": Path(image_name).name,
            "threshold": threshold,
            "min_component_size": min_component_size,
            **(report_settings or {}),
            "fallback_used": fallback_used,
        }
        paths["json"] = write_report_json(targets["json"], report, extra)
    if picture is not None:
        paths["png"] = write_png(targets["png"], picture)
    return paths


def _is_bit_map(path: Path) -> bool:
    """Whether ``path`` is a one-page TIFF of integers, as :func:`write_bitmap_tiff` writes (read from its header)."""
    try:
        dtype, pages = stored_dtype(path)
        return pages == 1 and dtype.kind in "iu"
    except (OSError, ValueError, tifffile.TiffFileError):
        return False


def output_paths(output_dir: str | os.PathLike, image_name: str) -> dict[str, Path]:
    """Where :func:`write_prediction` writes each output kind of the input ``image_name`` in ``output_dir``."""
    folder, stem = Path(output_dir), tiff_stem(image_name)
    return {kind: folder / f"{stem}{suffix}" for kind, suffix in OUTPUT_SUFFIXES.items()}


class PredictionWriter:
    """Writes each image's PENGWIN files into one folder with :func:`write_prediction`, for a whole run.

    A write that fails (bad probabilities, a full disk) is logged and recorded in ``failures`` so that the other
    images are still written; ``written`` lists the inputs done. Thread-safe for one writing thread at a time
    (:class:`scripts.segmenter.FolderInference` writes from one background thread).

    Args:
        output_dir: folder for the files.
        threshold: probability threshold of the fragment masks.
        min_component_size: smaller 8-connected components are dropped.
        outputs: which of "tif", "json", "png" to write per image (a string: one kind, or kinds separated by commas).
        report_settings: further settings every report records (see :func:`write_prediction`).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        threshold: float = DEFAULT_THRESHOLD,
        min_component_size: int = DEFAULT_MIN_COMPONENT_SIZE,
        outputs: Sequence[str] = OUTPUT_KINDS,
        report_settings: Mapping[str, Any] | None = None,
    ) -> None:
        if isinstance(outputs, str):  # the command line's --outputs tif or --outputs tif,json
            outputs = [kind.strip() for kind in outputs.split(",")]
        unknown = sorted(set(outputs) - set(OUTPUT_KINDS))
        if unknown or not outputs:
            raise ValueError(f"outputs must be a non-empty subset of {OUTPUT_KINDS}, got {list(outputs)}")
        self.output_dir = str(output_dir)
        self.threshold = check_threshold(threshold)
        self.min_component_size = check_min_component_size(min_component_size)
        self.outputs = tuple(outputs)
        self.report_settings = dict(report_settings or {})
        self.written: list[str] = []
        self.failures: list[InputFailure] = []

    def write(self, probs: Any, raw: Any, filename: str) -> None:
        """Write one image's files; record the failure instead of raising."""
        try:
            paths = write_prediction(
                probs,
                raw,
                filename,
                self.output_dir,
                self.threshold,
                self.min_component_size,
                self.outputs,
                self.report_settings,
            )
        except (ValueError, OSError) as err:
            self.failures.append(InputFailure(filename, f"writing outputs failed: {error_reason(err, filename)}"))
            logger.error(f"{filename}: {self.failures[-1].reason}")
            return
        self.written.append(filename)
        logger.info(f"{filename} -> {', '.join(path.name for path in paths.values())}")

    def warn_earlier_outputs(self, scan: InputScan) -> list[Path]:
        """Warn about the files in the folder named as the outputs (``<stem>.tif``, ``<stem>.json``,
        ``<stem>_overlay.png``) of an input that is not in this run's ``scan``: an earlier run's, which would pass for
        this run's results. They are left where they are. Returns them."""
        folder = Path(self.output_dir)
        ours = {tiff_stem(item["image"]) for item in scan.items} | {tiff_stem(failure.path) for failure in scan.failures}
        found = sorted(
            path
            for path in (folder.iterdir() if folder.is_dir() else ())
            if path.is_file()
            and any(
                path.name.endswith(suffix) and len(path.name) > len(suffix) and path.name[: -len(suffix)] not in ours
                for suffix in OUTPUT_SUFFIXES.values()
            )
        )
        if found:
            names = ", ".join(path.name for path in found[:6]) + (", ..." if len(found) > 6 else "")
            logger.warning(
                f"{folder}: {len(found)} file(s) named as outputs of inputs not in this run, an earlier run's (left as "
                f"they are; move them away so that the folder holds this run's results only): {names}"
            )
        return found

    def remove_earlier_outputs(self, scan: InputScan) -> list[Path]:
        """Delete, before the run, an earlier run's files of this run's inputs (each would be rewritten anyway), so
        that a run stopped part-way leaves its own outputs only, none of an earlier run beside them to pass for its
        own. Returns the deleted files.

        Raises:
            ValueError: naming it, when a ``<stem>.tif`` there is no integer bit map (an X-ray, say): not an earlier
                output, but a file this run would replace; nothing is deleted then.
        """
        earlier = [
            path
            for item in scan.items
            for path in output_paths(self.output_dir, item["image"]).values()
            if path.is_file()
        ]
        for path in earlier:
            if path.suffix == ".tif" and not _is_bit_map(path):
                raise ValueError(f"{path}: not a bit map of an earlier run (another image of this name), which this "
                                 "run's output would replace; choose another --output_dir or move the file away")
        for path in earlier:
            path.unlink()
        if earlier:
            logger.info(f"{self.output_dir}: removed {len(earlier)} file(s) of an earlier run of these inputs before "
                        "writing theirs again")
        return earlier

    def remove_failed_outputs(self, failures: Sequence[InputFailure]) -> list[Path]:
        """Delete the output files of inputs that failed in this run (an earlier run's, or a part this run wrote
        before the failure), so that none passes for this run's result; files of an input this run wrote under the
        same name are kept. Returns the deleted files."""
        written = {tiff_stem(name) for name in self.written}
        removed = []
        for failure in failures:
            if tiff_stem(failure.path) in written:
                continue
            for path in output_paths(self.output_dir, failure.path).values():
                if path.is_file():
                    path.unlink()
                    removed.append(path)
                    logger.warning(f"removed {path}: its input {failure.path} failed in this run")
        return removed
