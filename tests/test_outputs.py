"""Tests for scripts.postprocessing and scripts.writers: fragment clean-up, never-empty fallback, report, overlay and atomic writers."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from custom_transforms.bits import decode_fragment_bits, encode_fragment_bits
from custom_transforms.constants import NUM_CHANNELS, fragment_channel
from custom_transforms.io import read_xray_image
from custom_transforms.io import tiff_stem
from scripts.postprocessing import postprocess_fragments
from scripts.writers import (
    FRAGMENT_PALETTE,
    display_image,
    fragment_report,
    overlay_font_size,
    overlay_image,
    place_labels,
    write_bitmap_tiff,
    write_png,
    write_prediction,
    write_report_json,
)

SIZE = 64


def disc(size: int, centre_row: float, centre_col: float, radius: float) -> np.ndarray:
    rows, cols = np.mgrid[:size, :size]
    return (rows - centre_row) ** 2 + (cols - centre_col) ** 2 <= radius**2


def empty_probs(size: int = SIZE) -> np.ndarray:
    return np.zeros((NUM_CHANNELS, size, size), np.float32)


def raw_image(size: int = SIZE, seed: int = 0) -> np.ndarray:
    """A raw-intensity float32 image in the PENGWIN range (positive, air bright)."""
    return np.random.default_rng(seed).uniform(0.2, 56.0, (size, size)).astype(np.float32)


def sample_masks() -> np.ndarray:
    masks = np.zeros((NUM_CHANNELS, SIZE, SIZE), bool)
    masks[0] = disc(SIZE, 20, 20, 6)
    masks[13] = disc(SIZE, 40, 45, 8)
    masks[29, 50:60, 5:15] = True
    return masks


# ---------------------------------------------------------------- post-processing


@pytest.mark.parametrize("small_channel, large_channel", [(0, 0), (5, 17), (29, 12)])
def test_postprocess_drops_3px_blob_and_keeps_50px_blob_per_channel(small_channel, large_channel):
    probs = empty_probs()
    probs[large_channel, 10:15, 10:20] = 0.9  # 50 px
    probs[small_channel, 40, 40:43] = 0.9  # 3 px
    masks = postprocess_fragments(probs, threshold=0.5, min_component_size=10).masks
    assert masks.dtype == bool and masks.shape == probs.shape
    assert not masks[small_channel, 40, 40:43].any()
    assert masks[large_channel].sum() == 50 and masks[large_channel, 10:15, 10:20].all()
    assert masks.sum() == 50


def test_postprocess_size_filter_is_per_channel_even_where_blobs_touch():
    probs = empty_probs()
    probs[3, 10:15, 10:20] = 0.9  # 50 px in channel 3
    probs[4, 15, 10:13] = 0.9  # 3 px in channel 4, touching channel 3's blob
    masks = postprocess_fragments(probs, min_component_size=10).masks
    assert masks[3].sum() == 50 and masks[4].sum() == 0


@pytest.mark.parametrize("min_component_size, kept", [(10, True), (11, False)])
def test_postprocess_counts_diagonal_neighbours_as_one_component(min_component_size, kept):
    probs = empty_probs()
    probs[7, np.arange(10), np.arange(10)] = 0.9  # 10 px touching only at corners: one 8-connected component
    masks = postprocess_fragments(probs, min_component_size=min_component_size, ensure_nonempty=False).masks
    assert masks[7].sum() == (10 if kept else 0)


def test_postprocess_keeps_strictly_above_threshold_like_encode_fragment_bits():
    probs = empty_probs()
    probs[2, :20, :20] = 0.5
    probs[2, 30:50, 30:50] = 0.51
    masks = postprocess_fragments(probs, threshold=0.5, min_component_size=1).masks
    assert not masks[2, :20, :20].any() and masks[2, 30:50, 30:50].all()
    np.testing.assert_array_equal(encode_fragment_bits(masks), encode_fragment_bits(probs, threshold=0.5))


def test_postprocess_accepts_torch_probabilities():
    probs = empty_probs()
    probs[9, 5:15, 5:15] = 0.8
    masks = postprocess_fragments(torch.from_numpy(probs)).masks
    assert isinstance(masks, np.ndarray) and masks[9].sum() == 100


@pytest.mark.parametrize(
    "probs, message",
    [
        (np.full((NUM_CHANNELS, 8, 8), 3.0, np.float32), "logits"),
        (np.full((NUM_CHANNELS, 8, 8), -0.5, np.float32), r"\[0, 1\]"),
        (np.zeros((3, 8, 8), np.float32), "shape"),
        (np.zeros((8, 8), np.float32), "shape"),
        (np.full((NUM_CHANNELS, 8, 8), np.nan, np.float32), "NaN"),
    ],
)
def test_postprocess_rejects_invalid_probabilities(probs, message):
    with pytest.raises(ValueError, match=message):
        postprocess_fragments(probs).masks


# ---------------------------------------------------------------- never-empty fallback


def test_fallback_keeps_argmax_channel_at_half_its_maximum_when_all_below_threshold():
    rng = np.random.default_rng(0)
    probs = rng.uniform(0.0, 0.1, (NUM_CHANNELS, SIZE, SIZE)).astype(np.float32)
    probs[21] = np.where(disc(SIZE, 30, 30, 10), 0.4, probs[21])
    probs[21, 30, 30] = 0.45  # channel 21 has the highest maximum; pixels >= 0.225 are its disc
    result = postprocess_fragments(probs, threshold=0.5, min_component_size=10)
    assert result.fallback_used
    assert result.masks.any()
    assert result.masks.reshape(NUM_CHANNELS, -1).any(axis=1).nonzero()[0].tolist() == [21]
    np.testing.assert_array_equal(result.masks[21], disc(SIZE, 30, 30, 10))


def test_fallback_not_used_when_a_channel_survives():
    probs = np.full((NUM_CHANNELS, SIZE, SIZE), 0.3, np.float32)
    probs[4, 10:20, 10:20] = 0.9
    result = postprocess_fragments(probs)
    assert not result.fallback_used
    assert result.masks.sum() == 100 and result.masks[4, 10:20, 10:20].all()


def test_fallback_also_covers_inputs_whose_only_blobs_are_too_small():
    probs = empty_probs()
    probs[12, 3, 3:5] = 0.95  # 2 px above threshold, removed by the size filter
    result = postprocess_fragments(probs, min_component_size=10)
    assert result.fallback_used and result.masks[12, 3, 3:5].all() and result.masks.sum() == 2


def test_fallback_on_all_zero_probabilities_sets_exactly_one_pixel():
    result = postprocess_fragments(empty_probs())
    assert result.fallback_used and result.masks.sum() == 1
    assert encode_fragment_bits(result.masks).any()


def test_fallback_disabled_returns_empty_masks():
    result = postprocess_fragments(np.full((NUM_CHANNELS, SIZE, SIZE), 0.2, np.float32), ensure_nonempty=False)
    assert not result.fallback_used and not result.masks.any()


# ---------------------------------------------------------------- bit map TIFF


def test_bitmap_tiff_is_uint32_single_uncompressed_page_and_round_trips(tmp_path):
    masks = sample_masks()
    masks[13, 15:25, 15:25] = True  # overlap: pixels carrying two bits
    bitmap = encode_fragment_bits(masks)
    path = write_bitmap_tiff(tmp_path / "case.tif", bitmap)
    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages) == 1
        assert tif.pages[0].compression == tifffile.COMPRESSION.NONE
        stored = tif.pages[0].asarray()
    assert stored.dtype == np.uint32 and stored.shape == (SIZE, SIZE)
    np.testing.assert_array_equal(stored, bitmap)
    np.testing.assert_array_equal(decode_fragment_bits(stored).numpy().astype(bool), masks)


@pytest.mark.parametrize(
    "bitmap, message",
    [
        (np.zeros((SIZE, SIZE), np.uint32), "all-zero"),
        (np.full((SIZE, SIZE), 1, np.uint32), r"bits \[0\]"),
        (np.full((SIZE, SIZE), 1 << 31, np.uint32), r"bits \[31\]"),
        (np.full((SIZE, SIZE), 2.0, np.float32), "integer"),
        (np.full((2, SIZE, SIZE), 2, np.uint32), r"shape \[H, W\] or \[1, H, W\]"),
    ],
)
def test_bitmap_tiff_refuses_invalid_maps_and_writes_nothing(tmp_path, bitmap, message):
    with pytest.raises(ValueError, match=message):
        write_bitmap_tiff(tmp_path / "case.tif", bitmap)
    assert list(tmp_path.iterdir()) == []


def _write_tif(path: Path, version: int) -> None:
    write_bitmap_tiff(path, np.full((SIZE, SIZE), 1 << version, np.uint32))


def _write_json(path: Path, version: int) -> None:
    write_report_json(path, [], {"version": version})


def _write_png(path: Path, version: int) -> None:
    write_png(path, np.full((SIZE, SIZE, 3), version, np.uint8))


@pytest.mark.parametrize("write, suffix", [(_write_tif, ".tif"), (_write_json, ".json"), (_write_png, ".png")])
def test_failed_write_leaves_previous_file_untouched_and_no_temp_file(tmp_path, monkeypatch, write, suffix):
    target = tmp_path / f"case{suffix}"
    write(target, 1)
    good = target.read_bytes()

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write(target, 2)
    assert target.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


@pytest.mark.parametrize("write, suffix", [(_write_tif, ".tif"), (_write_json, ".json"), (_write_png, ".png")])
def test_successful_write_replaces_previous_file(tmp_path, write, suffix):
    target = tmp_path / f"case{suffix}"
    write(target, 1)
    first = target.read_bytes()
    write(target, 2)
    assert target.read_bytes() != first
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_report_json_refuses_extra_key_fragments(tmp_path):
    with pytest.raises(ValueError, match="fragments"):
        write_report_json(tmp_path / "r.json", [], {"fragments": 1})


def test_png_reads_back_as_the_same_rgb_pixels(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE + 7, 3), dtype=np.uint8)
    with Image.open(write_png(tmp_path / "p.png", rgb)) as image:
        assert image.mode == "RGB" and np.array_equal(np.asarray(image), rgb)


def test_png_refuses_non_rgb_arrays(tmp_path):
    with pytest.raises(ValueError, match="uint8 RGB"):
        write_png(tmp_path / "p.png", np.zeros((SIZE, SIZE), np.uint8))


# ---------------------------------------------------------------- fragment report


def test_fragment_report_area_centroid_bbox_components_and_probability():
    masks = np.zeros((NUM_CHANNELS, 32, 48), bool)
    li2 = fragment_channel(2, 2)
    masks[li2, 2:5, 5:10] = True  # 3 rows x 5 cols
    sa1 = fragment_channel(1, 1)
    masks[sa1, 10:12, 10:12] = True
    masks[sa1, 12:14, 12:14] = True  # touches the first square at a corner only: still one component
    masks[sa1, 20:22, 40:42] = True  # separate
    probs = np.zeros(masks.shape, np.float32)
    probs[li2, 2:5, 5:10] = 0.6
    probs[li2, 2, 5:10] = 0.9  # one row of five at 0.9, ten pixels at 0.6

    report = fragment_report(masks, probs)
    assert [entry["bit"] for entry in report] == [1, 12]
    sa, li = report
    assert li == {
        "category_name": "LI",
        "category": 2,
        "fragment": 2,
        "bit": 12,
        "name": "LI-2",
        "area_px": 15,
        "centroid": {"x": 7.0, "y": 3.0},
        "bbox": {"x_min": 5, "y_min": 2, "x_max": 9, "y_max": 4},
        "num_components": 1,
        "mean_probability": pytest.approx((5 * 0.9 + 10 * 0.6) / 15),
    }
    assert sa["name"] == "SA-1" and sa["area_px"] == 12 and sa["num_components"] == 2
    assert sa["bbox"] == {"x_min": 10, "y_min": 10, "x_max": 41, "y_max": 21}


def test_fragment_report_without_probabilities_has_null_mean_and_serialises():
    report = fragment_report(sample_masks(), None)
    assert [entry["name"] for entry in report] == ["SA-1", "LI-4", "RI-10"]
    assert all(entry["mean_probability"] is None for entry in report)
    assert json.loads(json.dumps(report)) == report


@pytest.mark.parametrize("row, col", [(1, 2), (3, 37), (17, 1), (18, 38)])
def test_fragment_report_centroid_x_is_column_and_y_is_row_on_a_wide_image(row, col):
    masks = np.zeros((NUM_CHANNELS, 20, 40), bool)
    masks[5, row - 1 : row + 2, col - 1 : col + 2] = True
    (entry,) = fragment_report(masks)
    assert entry["centroid"] == {"x": float(col), "y": float(row)}
    assert entry["bbox"] == {"x_min": col - 1, "y_min": row - 1, "x_max": col + 1, "y_max": row + 1}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fragment_report_centroid_and_area_equal_the_pixel_coordinates_mean_and_count_exactly(seed):
    masks = np.random.default_rng(seed).random((NUM_CHANNELS, 61, 83)) < 0.3
    for entry in fragment_report(masks):
        rows, cols = np.nonzero(masks[entry["bit"] - 1])
        assert entry["area_px"] == rows.size
        assert entry["centroid"] == {"x": float(cols.mean()), "y": float(rows.mean())}


def test_fragment_report_top_left_mask_has_small_x_and_y():
    masks = np.zeros((NUM_CHANNELS, SIZE, SIZE), bool)
    masks[0, :4, :6] = True
    (entry,) = fragment_report(masks)
    assert entry["centroid"]["x"] < 5 and entry["centroid"]["y"] < 5
    assert entry["bbox"]["x_min"] == 0 and entry["bbox"]["y_min"] == 0


def test_fragment_report_rejects_probabilities_of_another_shape():
    with pytest.raises(ValueError, match="differ in shape"):
        fragment_report(sample_masks(), empty_probs(32))


# ---------------------------------------------------------------- overlay


def test_palette_has_30_distinct_colours_in_bone_hue_families():
    assert FRAGMENT_PALETTE.shape == (NUM_CHANNELS, 3) and FRAGMENT_PALETTE.dtype == np.uint8
    assert len({tuple(colour) for colour in FRAGMENT_PALETTE}) == NUM_CHANNELS
    red, green, blue = FRAGMENT_PALETTE.astype(int).T
    assert (np.minimum(red[:10], green[:10]) > blue[:10]).all()  # SA: yellows
    assert (blue[10:20] > red[10:20]).all()  # LI: blues
    assert (red[20:] > np.maximum(green[20:], blue[20:])).all()  # RI: reds


def test_overlay_tints_fragments_and_leaves_background_grey():
    display = np.random.default_rng(1).uniform(0.0, 1.0, (SIZE, SIZE)).astype(np.float32)
    masks = sample_masks()
    full = overlay_image(display, masks)
    assert full.shape[0] == SIZE and full.shape[1] > SIZE and full.dtype == np.uint8  # picture, then legend
    rgb = full[:, :SIZE]
    grey = np.rint(display * 255).astype(np.uint8)
    for channel in (0, 13, 29):
        under = rgb[masks[channel]]
        assert (under != grey[masks[channel]][:, None]).any(axis=1).mean() > 0.9
    background = ~masks.any(axis=0)
    assert (rgb[..., 0] == rgb[..., 1])[background].all() and (rgb[..., 1] == rgb[..., 2])[background].all()
    far_from_all = (5, 60)  # top-right corner: no fragment and no label
    assert background[far_from_all]
    assert (rgb[far_from_all] == grey[far_from_all]).all()


def test_overlay_draws_the_fragment_name_near_its_centroid():
    display = np.full((SIZE, SIZE), 0.5, np.float32)
    masks = np.zeros((NUM_CHANNELS, SIZE, SIZE), bool)
    masks[fragment_channel(3, 1)] = disc(SIZE, 32, 32, 20)
    rgb = overlay_image(display, masks)[:, :SIZE].astype(int)
    tint = np.rint(0.55 * 127.5 + 0.45 * FRAGMENT_PALETTE[fragment_channel(3, 1)].astype(float)).astype(int)
    changed = (rgb != tint).any(axis=-1) & masks[fragment_channel(3, 1)]
    rows, cols = np.nonzero(changed)  # the label's pixels inside the fragment
    assert 20 < rows.size < 0.3 * masks.sum()
    assert abs(rows.mean() - 32) < 6 and abs(cols.mean() - 32) < 6


def test_overlay_legend_shows_each_fragment_colour_in_bit_order():
    display = np.full((SIZE, SIZE), 0.5, np.float32)
    legend = overlay_image(display, sample_masks())[:, SIZE:].reshape(-1, 3)
    for channel in (0, 13, 29):
        swatch = (legend == FRAGMENT_PALETTE[channel]).all(axis=1).sum()
        assert swatch >= overlay_font_size(SIZE) ** 2, channel  # a full square of the fragment's own colour
    first_rows = [np.flatnonzero((overlay_image(display, sample_masks())[:, SIZE:] == FRAGMENT_PALETTE[c]).all(-1).any(1))[0]
                  for c in (0, 13, 29)]  # fmt: skip
    assert first_rows == sorted(first_rows)


def test_overlay_text_stays_readable_at_small_sizes_and_grows_with_the_image():
    heights = [64, 128, 224, 448, 896, 1792]
    sizes = [overlay_font_size(height) for height in heights]
    assert min(sizes) >= 11  # about the smallest legible text in pixels
    assert sizes == sorted(sizes)
    assert sizes[-1] == 2 * sizes[-2]  # large images: in proportion to their height


def test_labels_never_overlap_and_stay_inside_the_image():
    anchors = [(60.0, 60.0, 24.0, 12.0)] * 12 + [(126.0, 126.0, 24.0, 12.0), (127.0, 2.0, 24.0, 12.0)]
    boxes = place_labels(anchors, 128, 128)
    assert boxes[0] == (48, 54, 72, 66)  # the first (largest) fragment keeps its centre
    assert all(box is not None for box in boxes)  # twelve labels find room around one spot
    shown = [box for box in boxes if box is not None]
    for index, (x0, y0, x1, y1) in enumerate(shown):
        assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 128
        assert max(abs((x0 + x1) / 2 - anchors[index][0]), abs((y0 + y1) / 2 - anchors[index][1])) < 80  # near
        for other in shown[index + 1 :]:
            assert x1 <= other[0] or other[2] <= x0 or y1 <= other[1] or other[3] <= y0, (shown[index], other)


def test_a_label_with_no_free_place_is_left_to_the_legend():
    assert place_labels([(8.0, 8.0, 16.0, 16.0)] * 2, 16, 16) == [(0, 0, 16, 16), None]


def test_overlay_rejects_display_of_another_size():
    with pytest.raises(ValueError, match="matching the masks"):
        overlay_image(np.zeros((32, 32), np.float32), sample_masks())


# ---------------------------------------------------------------- writer


@pytest.mark.parametrize(
    "name, stem",
    [
        ("101_0000.tif", "101_0000"),
        ("a.TIFF", "a"),
        ("/in/images/b.tiff", "b"),
        ("case", "case"),
        ("x.tif.tif", "x.tif"),
    ],
)
def test_output_stem_strips_tif_suffix(name, stem):
    assert tiff_stem(name) == stem


def test_write_prediction_on_real_xray_writes_three_named_files(real_data, tmp_path):
    image_path = real_data / "101_0000.tif"
    image = read_xray_image(image_path)
    probs = empty_probs(448)
    sa1, li1 = disc(448, 120, 300, 40), disc(448, 300, 150, 60)
    probs[0][sa1] = 0.9
    probs[10][li1] = 0.8
    paths = write_prediction(probs, image, image_path.name, tmp_path / "out", report_settings={"split_depth": 1.0})

    assert {kind: path.name for kind, path in paths.items()} == {
        "tif": "101_0000.tif",
        "json": "101_0000.json",
        "png": "101_0000_overlay.png",
    }
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in paths.values())
    bitmap = tifffile.imread(paths["tif"])
    assert bitmap.shape == (448, 448) and bitmap.dtype == np.uint32
    expected = np.zeros((448, 448), np.uint32)
    expected[sa1] |= 1 << 1
    expected[li1] |= 1 << 11
    np.testing.assert_array_equal(bitmap, expected)

    report = json.loads(paths["json"].read_text())
    assert report["image"] == "101_0000.tif" and report["fallback_used"] is False
    assert report["threshold"] == 0.5 and report["min_component_size"] == 10 and report["split_depth"] == 1.0
    assert [(f["name"], f["area_px"]) for f in report["fragments"]] == [("SA-1", sa1.sum()), ("LI-1", li1.sum())]
    assert report["fragments"][0]["centroid"] == {"x": 300.0, "y": 120.0}

    with Image.open(paths["png"]) as picture:
        assert picture.size[0] > 448 and picture.size[1] == 448 and picture.mode == "RGB"  # with its legend
        overlay = np.asarray(picture)[:, :448]
    display = np.rint(display_image(image) * 255).astype(np.uint8)
    background = ~(sa1 | li1)
    assert (overlay[background][:, 0] == display[background]).mean() > 0.99  # only the labels differ there


def test_write_prediction_resizes_smaller_probabilities_to_the_input_size(tmp_path):
    probs = empty_probs(224)
    probs[fragment_channel(2, 3)][disc(224, 100, 60, 30)] = 0.9
    paths = write_prediction(probs, raw_image(448), "case.tif", tmp_path, outputs=("tif",))
    assert list(paths) == ["tif"]
    bitmap = tifffile.imread(paths["tif"])
    assert bitmap.shape == (448, 448)
    assert set(np.unique(bitmap).tolist()) == {0, 1 << 13}
    upscaled = disc(448, 200.5, 120.5, 60)  # the 224 disc in 448 pixel coordinates
    assert ((bitmap != 0) == upscaled).mean() > 0.995


@pytest.mark.parametrize("side", [3, 4])
def test_write_prediction_drops_components_under_the_minimum_size_at_the_network_scale(tmp_path, side):
    """10 pixels of a 112 px network input are 160 of a 448 px image: a 3 x 3 square (9 pixels, 144 at 448) goes,
    a 4 x 4 square (16 pixels, 256 at 448) stays; both exceed 10 pixels once resized."""
    probs = empty_probs(112)
    probs[fragment_channel(1, 1), 20:60, 20:60] = 0.9
    probs[fragment_channel(1, 2), 80 : 80 + side, 80 : 80 + side] = 0.9
    paths = write_prediction(probs, raw_image(448), "case.tif", tmp_path, min_component_size=10, outputs=("tif",))
    fragments = decode_fragment_bits(tifffile.imread(paths["tif"]))
    assert abs(int(fragments[fragment_channel(1, 1)].sum()) - 160 * 160) < 4 * 160  # the square, edges interpolated
    assert fragments[fragment_channel(1, 2)].any() == (side == 4)


def test_write_prediction_rejects_probabilities_of_another_aspect_ratio(tmp_path):
    with pytest.raises(ValueError, match="aspect ratio"):
        write_prediction(np.zeros((NUM_CHANNELS, 32, 16), np.float32), raw_image(), "case.tif", tmp_path)


def test_write_prediction_accepts_probabilities_whose_aspect_ratio_a_resize_rounded(tmp_path):
    """448 x 300 brought to 128 on its longer side is 128 x 86 (85.7 rounded): resized back to 448 x 300."""
    probs = np.zeros((NUM_CHANNELS, 128, 86), np.float32)
    probs[fragment_channel(1, 1), 40:90, 20:60] = 0.9
    raw = np.random.default_rng(0).uniform(0.2, 56.0, (448, 300)).astype(np.float32)
    bitmap = tifffile.imread(write_prediction(probs, raw, "case.tif", tmp_path, outputs=("tif",))["tif"])
    assert bitmap.shape == (448, 300) and set(np.unique(bitmap).tolist()) == {0, 1 << 1}


def test_write_prediction_rejects_unknown_output_kind(tmp_path):
    with pytest.raises(ValueError, match="unknown output kinds"):
        write_prediction(empty_probs(), raw_image(), "case.tif", tmp_path, outputs=("tif", "nii"))


def test_write_prediction_flags_fallback_in_report_and_log_and_never_writes_an_empty_map(tmp_path, caplog):
    probs = np.full((NUM_CHANNELS, SIZE, SIZE), 0.1, np.float32)
    probs[17][disc(SIZE, 20, 40, 5)] = 0.3
    with caplog.at_level(logging.WARNING, logger="scripts.writers"):
        paths = write_prediction(probs, raw_image()[None], "low.tif", tmp_path, outputs=("tif", "json"))
    assert "low.tif: no fragment above threshold 0.5; the never-empty fallback" in caplog.text
    bitmap = tifffile.imread(paths["tif"])
    np.testing.assert_array_equal(bitmap != 0, disc(SIZE, 20, 40, 5))
    assert set(np.unique(bitmap).tolist()) == {0, 1 << 18}
    report = json.loads(paths["json"].read_text())
    assert report["fallback_used"] is True and [f["name"] for f in report["fragments"]] == ["LI-8"]
