"""Training losses for multi-label fragment channels and the class-balanced weights they use."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.losses import DiceLoss
from torch import nn

from custom_transforms.bits import decode_fragment_bits
from custom_transforms.io import read_fragment_label
from pengwin_xray.atomic import write_json_atomic

from .flags import as_positive_number

__all__ = ["class_balanced_weights", "FragmentDiceBCELoss"]


def class_balanced_weights(
    label_paths: Sequence[str],
    max_weight: float = 20.0,
    cache_dir: str | None = None,
    target_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> list[float]:
    """Per-channel weights ``w_c = total pixels / pixels of channel c``, capped at ``max_weight``.

    Used as the positive-class weights of the BCE loss. The channels are the decoded 30 fragment channels, or
    what ``target_transform`` makes of them (e.g. ``custom_transforms.MainOtherFragments()``). A channel absent
    from every training label gets weight 1: it has no positive pixel, so its weight would never enter the
    loss, and 1 keeps it finite. The counts are cached in ``cache_dir`` under a hash of the label files (paths,
    sizes, times) and the target transform (class and settings).
    """
    if not label_paths:
        raise ValueError("no training labels to compute class weights from")
    max_weight = as_positive_number(max_weight, "max_class_weight")
    cache = None
    if cache_dir is not None:
        settings = json.dumps(vars(target_transform) if target_transform else {}, sort_keys=True, default=str)
        signature = hashlib.sha256(f"{type(target_transform).__name__}|{settings}".encode())
        for path in sorted(label_paths):
            stat = Path(path).stat()
            signature.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        cache = Path(cache_dir) / f"class_pixels_{signature.hexdigest()[:16]}.json"
    if cache is not None and cache.is_file():
        counts = json.loads(cache.read_text())
    else:
        positives, total = 0, 0
        for path in label_paths:
            channels = decode_fragment_bits(read_fragment_label(path), source=str(path))
            if target_transform is not None:
                channels = target_transform(channels)
            positives = positives + channels.flatten(1).sum(1, dtype=torch.int64).numpy()
            total += channels[0].numel()
        counts = {"total": int(total), "positives": np.asarray(positives).tolist()}
        if cache is not None:
            write_json_atomic(cache, counts)
    positives = np.asarray(counts["positives"], np.float64)
    weights = np.where(positives > 0, counts["total"] / np.maximum(positives, 1), 1.0)
    return np.minimum(weights, max_weight).round(4).tolist()

class FragmentDiceBCELoss(nn.Module):
    """Class-weighted BCE plus a soft Dice averaged over the fragments present, each fragment weighing the same.

    The official fracture IoU is a mean over ground-truth fragments, so a chip of 50 pixels counts as much as a
    main fragment of 5,000. Pixel losses (BCE, or Dice pooled over the batch as ``DiceLoss(batch=True)``) are
    ruled by the large fragments; here MONAI's ``DiceLoss`` is computed per image and channel
    (``reduction="none"``) and averaged over the (image, channel) pairs whose target is not empty, the same
    weighting as the metric. Empty channels enter through the BCE only (a Dice of an empty target rewards
    nothing but an empty prediction, which the BCE already asks for).

    With ``pixel_weights`` the target's last channel is a per-pixel weight map of the BCE (e.g.
    ``custom_transforms.FragmentSizeWeightsd``, concatenated after the targets), shared by every channel.

    Args:
        pos_weight: per-channel positive weights of the BCE, shape ``[C, 1, 1]`` (``None``: unweighted).
        dice_weight: factor of the Dice term.
        smooth: MONAI ``DiceLoss`` smoothing of numerator and denominator, in pixels.
        pixel_weights: the target ends with a ``[B, 1, H, W]`` weight map of the BCE.
    """

    def __init__(
        self,
        pos_weight: torch.Tensor | None = None,
        dice_weight: float = 1.0,
        smooth: float = 1.0,
        pixel_weights: bool = False,
    ) -> None:
        super().__init__()
        self.bce = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
        self.pixel_weights = bool(pixel_weights)
        self.dice = DiceLoss(sigmoid=True, reduction="none", smooth_nr=smooth, smooth_dr=smooth)
        self.dice_weight = float(dice_weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of ``logits`` ``[B, C, H, W]`` against the binary ``target`` (``[B, C + 1, H, W]`` with weights)."""
        weight = None
        if self.pixel_weights:
            target, weight = target[:, :-1], target[:, -1:]
        bce = nn.functional.binary_cross_entropy_with_logits(
            logits, target, weight=weight, pos_weight=self.bce.pos_weight
        )
        dice = self.dice(logits, target).reshape(target.shape[:2])
        present = target.flatten(2).amax(2) > 0
        if not present.any():
            return bce
        return bce + self.dice_weight * dice[present].mean()
