"""The fragment-balanced Dice + BCE loss."""

from __future__ import annotations

import pytest
import torch
from monai.losses import DiceLoss

from scripts.losses import FragmentDiceBCELoss


def _target() -> torch.Tensor:
    target = torch.zeros(2, 3, 32, 32)
    target[0, 0, :16] = 1  # a large fragment
    target[1, 1, 4:6, 4:6] = 1  # a chip of 4 pixels
    return target


def test_loss_is_bce_plus_dice_averaged_over_present_fragments_only():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 3, 32, 32), _target()
    loss = FragmentDiceBCELoss(dice_weight=0.5)(logits, target)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    dice = DiceLoss(sigmoid=True, reduction="none", smooth_nr=1.0, smooth_dr=1.0)(logits, target).reshape(2, 3)
    torch.testing.assert_close(loss, bce + 0.5 * (dice[0, 0] + dice[1, 1]) / 2)


def test_a_missed_chip_costs_nearly_as_much_dice_as_a_missed_large_fragment():
    """Each present fragment weighs 1/2 here (two present), whatever its size: a missed 4-pixel chip costs
    0.5 * (1 - 1/5) and a missed 512-pixel fragment 0.5 * (1 - 1/513) (smoothing 1), not 4/516 of the total."""
    target = _target()
    perfect = torch.where(target > 0, 20.0, -20.0)
    loss_fn = FragmentDiceBCELoss(dice_weight=1.0)
    miss_chip, miss_large = perfect.clone(), perfect.clone()
    miss_chip[1, 1] = -20.0
    miss_large[0, 0] = -20.0
    dice_chip = loss_fn(miss_chip, target) - loss_fn.bce(miss_chip, target)
    dice_large = loss_fn(miss_large, target) - loss_fn.bce(miss_large, target)
    assert dice_chip.item() == pytest.approx(0.5 * (1 - 1 / 5), abs=1e-5)
    assert dice_large.item() == pytest.approx(0.5 * (1 - 1 / 513), abs=1e-5)


def test_all_empty_targets_give_the_bce_alone_and_gradients_flow():
    logits = torch.zeros(1, 2, 8, 8, requires_grad=True)
    target = torch.zeros(1, 2, 8, 8)
    loss = FragmentDiceBCELoss(pos_weight=torch.full((2, 1, 1), 5.0))(logits, target)
    torch.testing.assert_close(loss, torch.tensor(0.6931), atol=1e-4, rtol=0)
    loss.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_pixel_weights_from_the_last_target_channel_scale_the_bce_per_pixel():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 3, 32, 32), _target()
    weight = torch.ones(2, 1, 32, 32)
    weight[1, 0, 4:6, 4:6] = 8.0  # the chip weighs more
    pos_weight = torch.tensor([2.0, 3.0, 4.0]).view(-1, 1, 1)
    weighted = FragmentDiceBCELoss(pos_weight=pos_weight, pixel_weights=True)(logits, torch.cat([target, weight], 1))
    plain = FragmentDiceBCELoss(pos_weight=pos_weight)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, target, weight=weight, pos_weight=pos_weight
    )
    torch.testing.assert_close(weighted, plain(logits, target) - plain.bce(logits, target) + bce)
    assert bce > plain.bce(logits, target)
