"""Training losses for multi-label fragment channels."""

from __future__ import annotations

import torch
from monai.losses import DiceLoss
from torch import nn

__all__ = ["FragmentDiceBCELoss"]


class FragmentDiceBCELoss(nn.Module):
    """Class-weighted BCE plus a soft Dice averaged over the fragments present, each fragment weighing the same.

    The official fracture IoU is a mean over ground-truth fragments, so a chip of 50 pixels counts as much as a
    main fragment of 5,000. Pixel losses (BCE, or Dice pooled over the batch as ``DiceLoss(batch=True)``) are
    ruled by the large fragments; here MONAI's ``DiceLoss`` is computed per image and channel
    (``reduction="none"``) and averaged over the (image, channel) pairs whose target is not empty, the same
    weighting as the metric. Empty channels enter through the BCE only (a Dice of an empty target rewards
    nothing but an empty prediction, which the BCE already asks for).

    Args:
        pos_weight: per-channel positive weights of the BCE, shape ``[C, 1, 1]`` (``None``: unweighted).
        dice_weight: factor of the Dice term.
        smooth: MONAI ``DiceLoss`` smoothing of numerator and denominator, in pixels.
    """

    def __init__(self, pos_weight: torch.Tensor | None = None, dice_weight: float = 1.0, smooth: float = 1.0) -> None:
        super().__init__()
        self.bce = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
        self.dice = DiceLoss(sigmoid=True, reduction="none", smooth_nr=smooth, smooth_dr=smooth)
        self.dice_weight = float(dice_weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of ``logits`` against the binary ``target``, both ``[B, C, H, W]``."""
        bce = self.bce(logits, target)
        dice = self.dice(logits, target).reshape(target.shape[:2])
        present = target.flatten(2).amax(2) > 0
        if not present.any():
            return bce
        return bce + self.dice_weight * dice[present].mean()
