"""Neg-log window and CLAHE on raw X-rays."""

from __future__ import annotations

from contextlib import contextmanager

import cv2
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.data import set_track_meta
from monai.transforms import LoadImage

from custom_transforms import CLAHE, CLAHEd, NegLogWindow, NegLogWindowd, PengwinTiffReader


@contextmanager
def set_track_meta_off():
    set_track_meta(False)
    try:
        yield
    finally:
        set_track_meta(True)


def official_neglog(image: np.ndarray, epsilon: float = 0.01) -> np.ndarray:
    """The organisers' formula, written out in numpy as the reference."""
    x = -np.log(image + image.min() + epsilon)
    return (x - x.min()) / (x.max() - x.min())


@pytest.mark.parametrize("epsilon", [0.01, 0.5])
def test_neglog_window_matches_the_official_formula(epsilon):
    image = np.random.default_rng(0).uniform(0.1, 58.0, (1, 40, 30)).astype(np.float32)
    out = NegLogWindow(epsilon)(torch.from_numpy(image))
    np.testing.assert_allclose(out.numpy(), official_neglog(image.astype(np.float64), epsilon), atol=1e-5)
    assert out.min() == 0 and out.max() == pytest.approx(1.0)


def test_neglog_window_makes_bone_bright_and_air_dark():
    image = np.full((1, 8, 8), 56.0, np.float32)
    image[0, 2:4, 2:4] = 0.5  # dense bone transmits little
    out = NegLogWindow()(image)
    assert out[0, 2, 2] == pytest.approx(1.0) and out[0, 7, 7] == pytest.approx(0.0)


def test_neglog_window_gives_zeros_for_a_constant_image():
    out = NegLogWindow()(np.full((1, 4, 4), 3.0, np.float32))
    assert isinstance(out, np.ndarray) and not out.any()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_neglog_window_rejects_non_finite_values_naming_the_file(bad):
    image = MetaTensor(torch.ones(1, 4, 4), meta={"filename_or_obj": "/in/nan_case.tif"})
    image[0, 1, 1] = bad
    with pytest.raises(ValueError, match="nan_case.tif.*NaN/inf"):
        NegLogWindow()(image)


def test_quantile_window_keeps_orientation_and_clips_outliers():
    rng = np.random.default_rng(1)
    image = rng.uniform(1.0, 50.0, (1, 64, 64)).astype(np.float32)
    image[0, 0, 0] = 0.001  # one extreme outlier
    plain, robust = NegLogWindow()(image), NegLogWindow(quantiles=(0.01, 0.99))(image)
    # the official quantile wrapper swaps low/high and inverts the image; ours keeps dense = bright
    assert np.corrcoef(plain.ravel(), robust.ravel())[0, 1] > 0.9
    assert robust.mean() > plain.mean() + 0.1 and robust.min() == 0 and robust.max() == pytest.approx(1.0)


@pytest.mark.parametrize("quantiles", [None, (0.01, 0.99)])
def test_each_image_of_a_stack_gets_its_own_window(quantiles):
    rng = np.random.default_rng(3)
    bright, faint = rng.uniform(1.0, 50.0, (2, 32, 24)).astype(np.float32) * np.float32([[[1.0]], [[0.01]]])
    stacked = NegLogWindow(quantiles=quantiles)(np.stack([bright, faint]))
    for channel, image in enumerate((bright, faint)):
        np.testing.assert_allclose(stacked[channel], NegLogWindow(quantiles=quantiles)(image[None])[0], atol=1e-6)
        assert stacked[channel].min() == 0 and stacked[channel].max() == pytest.approx(1.0)


def test_quantile_window_takes_plain_tensors_and_detector_sized_images():
    # torch.quantile refuses more than 2**24 values; a plain tensor has no MetaTensor methods
    image = torch.from_numpy(np.random.default_rng(4).uniform(1.0, 50.0, (1, 4097, 4096)).astype(np.float32))
    with set_track_meta_off():
        out = NegLogWindow(quantiles=(0.01, 0.99))(image)
    assert type(out) is torch.Tensor and out.min() == 0 and out.max() == pytest.approx(1.0)
    assert 0.005 < float((out == 0).float().mean()) < 0.015  # the lowest 1% clipped to the window's floor


def test_quantile_window_rejects_swapped_quantiles():
    with pytest.raises(ValueError, match="low < high"):
        NegLogWindow(quantiles=(0.99, 0.01))


@pytest.mark.parametrize("clip_limit, tiles", [(4.0, (8, 8)), (2.0, (4, 4))])
def test_clahe_equals_opencv_on_uint8(clip_limit, tiles):
    image = np.random.default_rng(2).random((1, 64, 48)).astype(np.float32)
    expected = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=tiles).apply(np.rint(image[0] * 255).astype(np.uint8))
    out = CLAHE(clip_limit, tiles)(torch.from_numpy(image))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    np.testing.assert_allclose(out[0].numpy(), expected / 255.0, atol=1e-6)


def test_clahe_sixteen_bit_mode_equals_opencv_on_uint16():
    image = np.random.default_rng(3).random((1, 32, 32)).astype(np.float32)
    expected = cv2.createCLAHE(4.0, (8, 8)).apply(np.rint(image[0] * 65535).astype(np.uint16))
    np.testing.assert_allclose(CLAHE(bits=16)(image)[0], expected / 65535.0, atol=1e-6)


def test_clahe_raises_local_contrast_of_a_low_contrast_image():
    ramp = np.tile(np.linspace(0.4, 0.5, 64, dtype=np.float32), (64, 1))[None]
    out = CLAHE()(ramp)
    assert out.min() >= 0 and out.max() <= 1 and np.ptp(out) > 1.4 * np.ptp(ramp)


def test_dictionary_twins_chain_on_the_real_xray(real_data):
    loader = LoadImage(reader=PengwinTiffReader(), image_only=True, ensure_channel_first=True)
    data = {"image": loader(real_data / "101_0000.tif")}
    out = CLAHEd("image")(NegLogWindowd("image")(data))["image"]
    assert isinstance(out, MetaTensor) and out.shape == (1, 448, 448)
    assert str(out.meta["filename_or_obj"]).endswith("101_0000.tif")
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
