"""Exact decoding and encoding of PENGWIN bit maps."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from monai.data import MetaTensor

from custom_transforms import (
    DecodeFragmentBits,
    DecodeFragmentBitsd,
    EncodeFragmentBits,
    EncodeFragmentBitsd,
    channel_category_fragment,
    decode_fragment_bits,
    encode_fragment_bits,
    fragment_bit,
    fragment_channel,
    read_fragment_label,
)


def random_bitmap(seed: int, shape=(48, 40), dtype=np.uint32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    channels = rng.random((30, *shape)) < 0.3
    return (channels.astype(np.int64) << np.arange(1, 31).reshape(30, 1, 1)).sum(0).astype(dtype)


@pytest.mark.parametrize("category, fragment, bit", [(1, 1, 1), (1, 10, 10), (2, 1, 11), (3, 3, 23), (3, 10, 30)])
def test_bit_and_channel_follow_pengwin_encoding(category, fragment, bit):
    assert fragment_bit(category, fragment) == bit
    assert fragment_channel(category, fragment) == bit - 1
    assert channel_category_fragment(bit - 1) == (category, fragment)


@pytest.mark.parametrize("bit", range(1, 31))
def test_decode_is_exact_for_every_single_bit(bit):
    bitmap = np.zeros((4, 5), np.uint32)
    bitmap[1, 2] = 1 << bit
    channels = decode_fragment_bits(bitmap)
    assert channels.shape == (30, 4, 5)
    assert channels.sum() == 1 and channels[bit - 1, 1, 2] == 1


def test_decode_keeps_all_thirty_bits_of_values_near_two_to_the_thirty():
    bitmap = np.full((3, 3), 0x7FFFFFFE, np.uint32)  # bits 1..30 all set: 2**31 - 2
    assert decode_fragment_bits(bitmap).all()


@pytest.mark.parametrize("dtype", [np.uint32, np.int32, np.int64])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_round_trip_is_exact_for_integer_dtypes(dtype, seed):
    bitmap = random_bitmap(seed, dtype=dtype)
    channels = decode_fragment_bits(bitmap)
    np.testing.assert_array_equal(encode_fragment_bits(channels), bitmap.astype(np.uint32))
    np.testing.assert_array_equal(decode_fragment_bits(encode_fragment_bits(channels)), channels)


@pytest.mark.parametrize("dtype, top_bit", [(np.int8, 7), (np.int16, 15)])
def test_narrow_signed_bitmaps_keep_their_top_bit_without_sign_extension(tmp_path, dtype, top_bit):
    bitmap = np.zeros((4, 5), dtype)
    bitmap[1, 2] = np.array(1 << top_bit, np.int64).astype(dtype)  # negative: only the top bit set
    bitmap[3, 4] = 1 << 1
    expected = np.zeros((30, 4, 5), np.uint8)
    expected[top_bit - 1, 1, 2] = expected[0, 3, 4] = 1
    np.testing.assert_array_equal(decode_fragment_bits(bitmap).numpy(), expected)
    tifffile.imwrite(tmp_path / "label.tif", bitmap)
    assert read_fragment_label(tmp_path / "label.tif")[1, 2] == 1 << top_bit


@pytest.mark.parametrize(
    "value, bad_bit", [(1, 0), (np.uint32(1 << 31), 31), (np.int32(-2), 31), (np.int64(1 << 33), 33)]
)
def test_decode_rejects_bits_outside_one_to_thirty(value, bad_bit):
    bitmap = np.zeros((2, 2), np.asarray(value).dtype)
    bitmap[0, 0] = value
    with pytest.raises(ValueError, match=rf"bits \[.*{bad_bit}.*\]"):
        decode_fragment_bits(bitmap, source="case.tif")


def test_decode_rejects_float_bitmaps_naming_the_source():
    with pytest.raises(ValueError, match="case.tif.*integer dtype"):
        decode_fragment_bits(np.ones((2, 2), np.float32), source="case.tif")


def test_decode_transform_names_the_file_of_a_bad_metatensor():
    label = MetaTensor(torch.ones(1, 2, 2, dtype=torch.int32), meta={"filename_or_obj": "/data/bad_label.tif"})
    with pytest.raises(ValueError, match="bad_label.tif"):
        DecodeFragmentBits()(label)


def test_decode_transform_keeps_metadata_and_returns_float_channels():
    label = MetaTensor(torch.from_numpy(random_bitmap(3).astype(np.int32))[None], meta={"filename_or_obj": "x.tif"})
    out = DecodeFragmentBits()(label)
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "x.tif"
    assert out.dtype == torch.float32 and out.shape == (30, 48, 40)


def test_encode_thresholds_probabilities():
    probs = torch.zeros(30, 2, 2)
    probs[0, 0, 0], probs[10, 0, 0], probs[29, 1, 1] = 0.9, 0.4, 0.51
    bitmap = EncodeFragmentBits(threshold=0.5)(probs)
    assert bitmap.shape == (1, 2, 2)
    assert int(bitmap[0, 0, 0]) == 1 << 1 and int(bitmap[0, 1, 1]) == 1 << 30 and int(bitmap.sum()) == 2 + 2**30


def test_encode_rejects_wrong_channel_count():
    with pytest.raises(ValueError, match=r"\[30, H, W\]"):
        encode_fragment_bits(np.zeros((3, 2, 2)))


def test_dictionary_twins_round_trip():
    bitmap = random_bitmap(4).astype(np.int32)[None]
    data = DecodeFragmentBitsd("label")({"label": torch.from_numpy(bitmap)})
    data = EncodeFragmentBitsd("label")(data)
    np.testing.assert_array_equal(np.asarray(data["label"]), bitmap.astype(np.uint32))


@pytest.mark.parametrize(
    "name, bits",
    [("081_0000_maskrcnn_pred.tif", {1, 11, 21, 22, 23}), ("081_0025_maskrcnn_pred.tif", {1, 11, 12, 21, 22, 23})],
)
def test_real_int32_maskrcnn_predictions_decode_to_their_bits(real_data, name, bits):
    bitmap = read_fragment_label(real_data / name)
    channels = decode_fragment_bits(bitmap)
    assert {c + 1 for c in range(30) if channels[c].any()} == bits
    np.testing.assert_array_equal(encode_fragment_bits(channels).astype(np.int64), bitmap.astype(np.int64))
