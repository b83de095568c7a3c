"""Ignite metric and handler that score an evaluator's predictions with the official PENGWIN metrics."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from ignite.metrics import Metric
from monai.data import MetaTensor

from custom_transforms.bits import encode_fragment_bits

from .metrics import METRICS, fracture_iou_by_size, fragment_best_ious, score_image, write_results
from .outputs import postprocess_fragments

__all__ = ["FractureIoU", "OfficialMetricsSaver"]


def _name(item: dict, key: str) -> str:
    value = item.get(key)
    return Path(str(value.meta.get("filename_or_obj", ""))).name if isinstance(value, MetaTensor) else ""


class FractureIoU(Metric):
    """The official fracture IoU as an ignite metric: per image the mean over ground-truth fragments of the best
    IoU with any predicted fragment, averaged over images.

    A validation key metric that ranks checkpoints the way the challenge ranks submissions, whatever the
    network's channels mean (fixed fragment slots or main/other components). ``update`` takes
    ``(predictions, labels)``: sequences of binary ``[30, H, W]`` tensors, as ``from_engine(["pred", "label"])``
    gives them after thresholding.
    """

    def reset(self) -> None:
        self._scores: list[float] = []

    def update(self, output: tuple[Sequence[torch.Tensor], Sequence[torch.Tensor]]) -> None:
        for pred, label in zip(*output):
            label_bitmap = encode_fragment_bits(label.detach().cpu())
            _, ious = fragment_best_ious(encode_fragment_bits(pred.detach().cpu()), label_bitmap)
            self._scores.append(float(ious.mean()))

    def compute(self) -> float:
        scores = self._scores
        if dist.is_available() and dist.is_initialized():
            shards: list[list[float]] = [[] for _ in range(dist.get_world_size())]
            dist.all_gather_object(shards, scores)
            scores = [score for shard in shards for score in shard]
        if not scores:
            raise ValueError("no image was validated: the validation split is empty")
        return float(np.mean(scores))


class OfficialMetricsSaver:
    """Score every evaluated image with the six official metrics and write ``metrics.csv`` and ``summary.json``.

    Predictions go through the same post-processing as inference (threshold, small-component removal, the
    never-empty fallback), so the scores are those of the files the bundle would submit. At the end of the
    epoch the means are added to ``engine.state.metrics`` (so MLflow and the stats handler log them) and the
    files are written, with the engine's other metrics (e.g. ``val_mean_iou``) in the summary, and with the
    fracture IoU by fragment size (:func:`~scripts.metrics.fracture_iou_by_size`, over all fragments of the
    split), which shows whether small fragments are found.

    Args:
        output_dir: folder for ``metrics.csv`` and ``summary.json``.
        prob_key: decollated output key of the sigmoid probabilities ``[30, H, W]``.
        label_key: key of the ``[30, H, W]`` ground-truth channels.
        threshold: probability threshold.
        min_component_size: components smaller than this many pixels are dropped.
    """

    def __init__(
        self,
        output_dir: str,
        prob_key: str = "prob",
        label_key: str = "label",
        threshold: float = 0.5,
        min_component_size: int = 10,
    ) -> None:
        self.output_dir = output_dir
        self.prob_key = prob_key
        self.label_key = label_key
        self.threshold = threshold
        self.min_component_size = min_component_size
        self.rows: list[dict] = []
        self.fragments: list[tuple[float, float]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.score_iteration)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.write)

    def reset(self, engine: Engine) -> None:
        self.rows = []
        self.fragments = []

    def score_iteration(self, engine: Engine) -> None:
        output: Sequence[dict] = engine.state.output
        for item in output:
            probs = item[self.prob_key].detach().float().cpu()
            masks = postprocess_fragments(probs, self.threshold, self.min_component_size).masks
            label = encode_fragment_bits(item[self.label_key].detach().cpu())
            name = _name(item, self.label_key) or f"image_{len(self.rows):05d}"
            prediction = encode_fragment_bits(masks)
            self.rows.append({"name": name, **score_image(prediction, label, name=name)})
            self.fragments.extend(zip(*fragment_best_ious(prediction, label, name=name)))

    def write(self, engine: Engine) -> None:
        rows, fragments = self.rows, self.fragments
        distributed = dist.is_available() and dist.is_initialized()
        if distributed:  # each rank scored its shard of the split: every rank gets all rows, rank 0 writes
            shards: list[tuple[list[dict], list]] = [([], []) for _ in range(dist.get_world_size())]
            dist.all_gather_object(shards, (rows, fragments))
            rows = sorted((row for shard in shards for row in shard[0]), key=lambda row: row["name"])
            fragments = [fragment for shard in shards for fragment in shard[1]]
        if not rows:
            raise ValueError("no image was evaluated: the evaluation split is empty")
        summary: dict[str, float | int] = {key: float(np.mean([row[key] for row in rows])) for key in METRICS}
        engine.state.metrics.update(summary)
        summary.update({key: float(value) for key, value in engine.state.metrics.items() if key not in summary})
        summary.update(fracture_iou_by_size(*zip(*fragments)))
        summary["num_images"] = len(rows)
        if not distributed or dist.get_rank() == 0:
            write_results(rows, summary, self.output_dir)
