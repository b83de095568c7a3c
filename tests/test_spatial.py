"""Side-aware flipping: the left hip's channels and the right hip's trade places when the picture is mirrored."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from custom_transforms import RandSideFlipd, SwapSideChannels, SwapSideChannelsd, fragment_channel


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
