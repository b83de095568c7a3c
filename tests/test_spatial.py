"""Side-aware flipping (the left hip's channels and the right hip's trade places when the picture is mirrored) and
the two-stage recipe's per-bone crops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from custom_transforms import (
    BoneCropd,
    RandSideFlipd,
    ResizeToReferenced,
    SwapSideChannels,
    SwapSideChannelsd,
    fragment_channel,
)
from pengwin_xray.masks import square_box, square_crop_box


def _masks(as_tensor: bool = True):
    """[30, 4, 6] masks: SA-1 in column 2, LI-1 on the left (columns 0-1), RI-3 on the right (column 5)."""
    masks = np.zeros((30, 4, 6), np.uint8)
    masks[fragment_channel(1, 1), :, 2] = 1
    masks[fragment_channel(2, 1), :, :2] = 1
    masks[fragment_channel(3, 3), :, 5] = 1
    return torch.from_numpy(masks) if as_tensor else masks


@pytest.mark.parametrize("as_tensor", [True, False])
def test_swap_trades_left_and_right_hip_channels_and_keeps_the_sacrum(as_tensor):
    masks = _masks(as_tensor)
    swapped = SwapSideChannels()(masks)
    assert type(swapped) is type(masks)
    assert (swapped[fragment_channel(3, 1)] == masks[fragment_channel(2, 1)]).all()
    assert (swapped[fragment_channel(2, 3)] == masks[fragment_channel(3, 3)]).all()
    assert (swapped[fragment_channel(1, 1)] == masks[fragment_channel(1, 1)]).all()
    assert (SwapSideChannels()(swapped) == masks).all()  # its own inverse
    assert masks[fragment_channel(2, 1)].sum() == 8  # the input is left as it was


def test_swap_rejects_masks_without_thirty_channels():
    with pytest.raises(ValueError, match="expected 30 fragment channels"):
        SwapSideChannels()(torch.zeros(6, 4, 4))


def test_dictionary_swap_changes_only_its_keys():
    data = {"label": _masks(), "other": _masks()}
    out = SwapSideChannelsd("label")(data)
    assert out["label"][fragment_channel(3, 1)].sum() == 8 and out["other"][fragment_channel(2, 1)].sum() == 8


def test_a_flip_mirrors_images_and_masks_and_relabels_the_sides():
    image = MetaTensor(torch.arange(24, dtype=torch.float32).reshape(1, 4, 6))
    data = {"image": image, "label": MetaTensor(_masks())}
    out = RandSideFlipd(["image", "label"], label_keys="label", prob=1.0)(data)
    assert torch.equal(out["image"], torch.flip(image, dims=[2]))
    # the left hip, mirrored to columns 4-5, is now labelled as the right hip; RI-3 became LI-3 in column 0
    assert out["label"][fragment_channel(3, 1), :, 4:].all() and out["label"][fragment_channel(3, 1)].sum() == 8
    assert out["label"][fragment_channel(2, 3), :, 0].all() and out["label"][fragment_channel(2, 1)].sum() == 0
    assert out["label"][fragment_channel(1, 1), :, 3].all()  # the sacrum only moves


def test_an_image_key_outside_label_keys_is_flipped_but_not_swapped():
    data = {"pred": _masks(), "label": _masks()}
    out = RandSideFlipd(["pred", "label"], label_keys=["label"], prob=1.0)(data)
    assert out["pred"][fragment_channel(2, 1), :, 4:].all()
    assert out["label"][fragment_channel(3, 1), :, 4:].all()


def test_probability_zero_leaves_the_data_untouched():
    data = {"image": torch.rand(1, 4, 6), "label": _masks()}
    out = RandSideFlipd(["image", "label"], label_keys="label", prob=0.0)(data)
    assert out["image"] is data["image"] and out["label"] is data["label"]


def test_flips_are_drawn_with_probability_prob_and_reproducible_from_a_seed():
    def draws(seed: int) -> list[bool]:
        flip = RandSideFlipd("image", label_keys=[], prob=0.3).set_random_state(seed)
        image = torch.arange(6, dtype=torch.float32).reshape(1, 1, 6)
        return [bool(flip({"image": image})["image"][0, 0, 0] == 5) for _ in range(2000)]

    assert draws(7) == draws(7)
    assert 0.25 < np.mean(draws(7)) < 0.35


@pytest.mark.parametrize(
    "box, margin, shape, expected",
    [
        ((slice(10, 20), slice(30, 36)), 2, (64, 64), (slice(8, 22), slice(26, 40))),  # centred, longer side + 2 margins
        ((slice(0, 4), slice(60, 64)), 3, (64, 64), (slice(0, 10), slice(54, 64))),  # moved inside at two borders
        ((slice(0, 40), slice(5, 10)), 20, (50, 70), (slice(0, 50), slice(0, 50))),  # capped at the shorter side
    ],
)
def test_square_box_is_a_square_around_the_grown_box_moved_inside_the_image(box, margin, shape, expected):
    assert square_box(box, margin, shape) == expected


def test_square_crop_box_grows_by_a_fraction_of_the_shorter_side_and_is_none_for_an_empty_mask():
    mask = np.zeros((100, 200), bool)
    mask[40:50, 40:60] = True
    assert square_crop_box(mask, 0.1) == (slice(25, 65), slice(30, 70))  # 20 + 2 * 10
    assert square_crop_box(np.zeros((8, 8), bool), 0.1) is None


def _bone_sample(size: int = 64) -> dict:
    image = torch.arange(size * size, dtype=torch.float32).reshape(1, size, size)
    label = torch.zeros(30, size, size, dtype=torch.uint8)
    label[fragment_channel(1, 1), 10:20, 10:20] = 1  # sacrum in the top-left corner
    label[fragment_channel(3, 2), 40:60, 30:50] = 1  # right hip, fragment 2 only
    return {"image": image, "label": label, "name": "x"}


def test_bone_crops_one_sample_per_present_bone_shown_at_the_image_size():
    samples = BoneCropd(["image", "label"], "label", margin=0.0, mode=["bilinear", "nearest"])(_bone_sample())
    assert len(samples) == 2  # no left hip
    for sample, channel in zip(samples, (fragment_channel(1, 1), fragment_channel(3, 2))):
        assert sample["image"].shape == (1, 64, 64) and sample["label"].shape == (30, 64, 64)
        assert sample["label"].dtype == torch.uint8 and sample["name"] == "x"
        assert sample["label"][channel].all()  # without margin the square is the bone: it fills the crop
    # the image is cropped where the bone is: the sacrum's square starts at row 10, column 10
    assert samples[0]["image"][0, 0, 0] == pytest.approx(10 * 64 + 10, abs=64)


def test_bone_crops_keep_a_margin_and_follow_the_scale():
    samples = BoneCropd(["image", "label"], "label", margin=0.125, scale=0.5, mode=["bilinear", "nearest"])(
        _bone_sample()
    )
    sacrum = samples[0]["label"][fragment_channel(1, 1)]
    assert sacrum.shape == (32, 32)  # half the image side
    # square of 10 + 2 * 8 = 26 px from row 2: the bone's 10 rows take 10/26 of the 32 rows, after 8/26 of them
    rows = torch.nonzero(sacrum.any(dim=1)).flatten()
    assert rows[0] == pytest.approx(8 / 26 * 32, abs=1) and len(rows) == pytest.approx(10 / 26 * 32, abs=1)


def test_bone_crops_of_a_label_without_fragments_are_the_whole_image():
    sample = _bone_sample()
    sample["label"][:] = 0
    (whole,) = BoneCropd(["image", "label"], "label")(sample)
    torch.testing.assert_close(whole["image"], sample["image"])


def test_bone_crops_reject_masks_without_thirty_channels():
    with pytest.raises(ValueError, match="expected 30 fragment channels in 'label'"):
        BoneCropd("label", "label")({"label": torch.zeros(6, 8, 8)})


@pytest.mark.parametrize("size, reference", [(16, 32), (48, 32), (32, 32)])
def test_resize_to_reference_brings_keys_to_the_reference_size_bilinearly(size, reference):
    """Probabilities decoded at the model's image size take the label's size; the reference itself is untouched."""
    probs = torch.zeros(2, size, size)
    probs[1, : size // 2] = 1.0  # the top half
    label = torch.zeros(2, reference, reference)
    data = ResizeToReferenced(keys=["pred", "prob"], reference_key="label")({"pred": probs, "prob": probs, "label": label})
    assert data["pred"].shape == data["prob"].shape == (2, reference, reference) and data["label"] is label
    resized = torch.as_tensor(data["pred"])
    assert torch.equal(resized[0], torch.zeros(reference, reference))
    assert torch.equal(resized[1] > 0.5, (torch.arange(reference) < reference // 2)[:, None].expand(reference, reference))
    assert float(resized.min()) >= 0.0 and float(resized.max()) <= 1.0
