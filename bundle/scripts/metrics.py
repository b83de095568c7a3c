"""Ignite metrics the configs attach during validation; the scoring algorithms live in :mod:`pengwin_xray.metrics`."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from ignite.metrics import Metric

from custom_transforms.bits import encode_fragment_bits
from custom_transforms.constants import CATEGORY_NAMES, MAX_FRAGMENTS
from pengwin_xray.metrics import fragment_best_ious

__all__ = ["FractureIoU", "category_iou_output"]


class FractureIoU(Metric):
    """The official fracture IoU as an ignite metric: per image the mean over ground-truth fragments of the best
    IoU with any predicted fragment, averaged over images.

    A validation key metric that ranks checkpoints the way the challenge ranks submissions, whatever the
    network's channels mean (fixed fragment slots or main/other components). ``update`` takes
    ``(predictions, labels)``: sequences of binary ``[30, H, W]`` tensors, as ``from_engine(["pred", "label"])``
    gives them after thresholding.
    """

    def reset(self) -> None:
        self.scores: list[float] = []

    def update(self, output: tuple[Sequence[torch.Tensor], Sequence[torch.Tensor]]) -> None:
        for pred, label in zip(*output):
            label_bitmap = encode_fragment_bits(label.detach().cpu())
            _, ious = fragment_best_ious(encode_fragment_bits(pred.detach().cpu()), label_bitmap)
            self.scores.append(float(ious.mean()))

    def compute(self) -> float:
        scores = self.scores
        if dist.is_available() and dist.is_initialized():
            shards: list[list[float]] = [[] for _ in range(dist.get_world_size())]
            dist.all_gather_object(shards, scores)
            scores = [score for shard in shards for score in shard]
        if not scores:
            raise ValueError("no image was validated: the validation split is empty")
        return float(np.mean(scores))

def category_iou_output(category: str, pred_key: str = "pred", label_key: str = "label") -> Callable:
    """An ignite ``output_transform`` giving one bone's masks (the union of its 10 fragment channels).

    Feeds MONAI's ``MeanIoUHandler`` for the per-category (SA, LI, RI) IoU.
    """
    index = CATEGORY_NAMES.index(category)
    channels = slice(index * MAX_FRAGMENTS, (index + 1) * MAX_FRAGMENTS)

    def transform(output: Sequence[dict]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        preds = [item[pred_key][channels].amax(0, keepdim=True) for item in output]
        labels = [item[label_key][channels].amax(0, keepdim=True) for item in output]
        return preds, labels

    return transform
