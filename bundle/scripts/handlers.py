"""Ignite event handlers the configs attach: time budget, checkpoint saving, encoder freezing, scoring.

Also the checkpointed objects that are not handlers, saved with the training state: :class:`RunIdentity` and
:class:`RandomStates`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from ignite.handlers import DiskSaver
from monai.transforms import Compose, Randomizable
from torch import nn

from custom_transforms.bits import encode_fragment_bits
from custom_transforms.constants import (
    DEFAULT_MIN_COMPONENT_SIZE,
    DEFAULT_THRESHOLD,
    check_min_component_size,
    check_threshold,
)
from custom_transforms.reader import tensor_filename
from pengwin_xray.metrics import (
    OFFICIAL_METRICS,
    fracture_iou_by_size,
    fragment_best_ious,
    remove_results,
    score_image,
    summarise,
    write_results,
)
from pengwin_xray.model_files import read_torch_file

from .flags import as_count, as_positive_number
from .postprocessing import segment_probabilities

__all__ = [
    "EpochTimeLimit",
    "require_validated_epoch",
    "ReplacingDiskSaver",
    "RunIdentity",
    "RandomStates",
    "BestValidation",
    "EncoderFreezeHandler",
    "OfficialMetricsSaver",
]

logger = logging.getLogger(__name__)


class EpochTimeLimit:
    """Stop training at the end of the first validated epoch that finishes ``minutes`` after the run started.

    ignite's ``TimeLimit`` stops at the first iteration past the limit, in the middle of an epoch, so that
    epoch is never validated and a short budget may end without any best model (``models/model.pt``). This
    handler waits for the end of an epoch the ``ValidationHandler`` validates (every ``interval`` epochs): attached
    after it (as in ``train.json``), that epoch is validated and checkpointed first, and the final checkpoint is
    written as for a completed run. In distributed training rank 0's clock decides for every process, which must
    all leave the same epoch.

    Args:
        minutes: wall-time budget of one ``trainer.run()``, from its start.
        interval: the validation interval in epochs (``val_interval``).
    """

    def __init__(self, minutes: float | str, interval: int = 1) -> None:
        self.minutes = as_positive_number(minutes, "max_minutes")
        self.interval = as_count(interval, "val_interval")
        self.started = time.monotonic()

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.start)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.check)

    def start(self, engine: Engine) -> None:
        self.started = time.monotonic()

    def check(self, engine: Engine) -> None:
        if engine.state.epoch % self.interval:
            return
        elapsed = (time.monotonic() - self.started) / 60
        decision = [elapsed >= self.minutes]
        if dist.is_available() and dist.is_initialized():  # every rank stops when rank 0 does, or the others hang
            dist.broadcast_object_list(decision, src=0)
        if decision[0]:
            logger.info(f"stopping after epoch {engine.state.epoch}: {elapsed:.3g} of {self.minutes:g} minutes used")
            engine.terminate()


def require_validated_epoch(evaluator: Engine, val_interval: int) -> None:
    """Refuse to go on (choose the post-processing, register the model) after a training that validated no epoch:
    it wrote no ``model.pt``, and one found in the folder is an earlier run's.

    Raises:
        ValueError: when ``evaluator`` (MONAI's, ``validate#evaluator``) has no best epoch.
    """
    if evaluator.state.best_metric_epoch < 1:
        raise ValueError(
            f"val_interval {val_interval}: no epoch of this training was validated, so it wrote no model.pt; train "
            "at least val_interval epochs"
        )


class ReplacingDiskSaver(DiskSaver):
    """ignite's ``DiskSaver`` for checkpoints with a fixed file name (``model.pt``, ``checkpoint.pt``).

    ignite's ``Checkpoint`` removes the file it retires before it writes the new one; with a fixed name that is
    the very file being replaced, so a kill between the two steps would leave no model at all. Here ``remove``
    keeps the file, and the atomic write of its successor (``atomic=True``, a temporary file renamed into
    place) replaces it in one step. ``tests/test_handlers.py`` checks that ignite still calls ``remove`` with
    the file it then writes, which is what makes this subclass necessary.

    Args:
        dirname: folder of the checkpoint (created if missing).
    """

    def __init__(self, dirname: str | os.PathLike) -> None:
        super().__init__(dirname, atomic=True, create_dir=True, require_empty=False)

    def remove(self, filename: str) -> None:
        """Keep ``filename``: the next save replaces it atomically."""

def _digest(content: Any) -> str:
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:16]


class RunIdentity:
    """What a training checkpoint belongs to: the run that wrote it, a digest of its data and its settings.

    Saved in ``checkpoint.pt``; a resume (:meth:`check_resume`, and again when ignite loads it) refuses a checkpoint
    of other data or settings, which would otherwise be continued silently, naming the settings that differ. The data
    digest covers the training and validation files (paths, sizes, modification times; for generated data, their
    paths and what generated them, since a dataset generated again holds the same bytes in newer files); the settings
    are ``settings`` (in ``train.json``: network and loss classes, channels, learning rate and its schedule, batch
    size, preprocessing, seed and precision) except a budget (``max_epochs``, ``max_minutes``), which a resume may
    extend.

    Args:
        run_name: this run's name.
        items: the training and validation datalist items.
        settings: the run's settings by name, as checked values (``true`` and ``"true"`` must compare equal).
        generated_by: for generated data, what generated the files (the generator's settings), which then stands
            for their sizes and times.
    """

    BUDGET: tuple[str, ...] = ("max_epochs", "max_minutes")

    def __init__(
        self,
        run_name: str,
        items: Sequence[Mapping[str, str]],
        settings: Mapping[str, Any],
        generated_by: Mapping[str, Any] | None = None,
    ) -> None:
        paths = sorted({str(path) for item in items for key, path in item.items() if key in ("image", "label")})
        if generated_by is not None:
            files: list[Any] = [dict(generated_by), paths]
        else:
            files = [(path, stat.st_size, stat.st_mtime_ns) for path, stat in ((p, Path(p).stat()) for p in paths)]
        compared = {key: value for key, value in settings.items() if key not in self.BUDGET}
        self.identity = {
            "run_name": str(run_name),
            "data": _digest(files),
            "settings": _digest(compared),
            "setting_values": json.loads(json.dumps(compared, sort_keys=True, default=str)),
        }

    def state_dict(self) -> dict[str, Any]:
        return dict(self.identity)

    def load_state_dict(self, saved: Mapping[str, Any]) -> None:
        """Accept the identity of a checkpoint being resumed, or raise naming what differs."""
        differing = [part for part in ("data", "settings") if saved.get(part) != self.identity[part]]
        if not differing:
            return
        described = [f"other {part}" for part in differing]
        if "settings" in differing and isinstance(saved.get("setting_values"), Mapping):
            before, now = saved["setting_values"], self.identity["setting_values"]
            changes = [
                f"{key} {before.get(key)!r} there, {now.get(key)!r} here"
                for key in sorted(before.keys() | now.keys())
                if before.get(key) != now.get(key)
            ]
            described[-1] += f" ({'; '.join(changes)})"
        raise ValueError(
            f"the checkpoint to resume was written by run {saved.get('run_name', '(unknown)')} with "
            f"{' and '.join(described)}; resuming it would mix two trainings (start afresh without --resume, or give "
            "this training its own --ckpt_dir)"
        )

    def check_resume(
        self, checkpoint_path: str, max_epochs: int | None = None, saved: Mapping[str, Any] | Collection[str] = ()
    ) -> None:
        """Before training: refuse ``checkpoint_path`` unless it was written with this data and these settings and
        holds every object of ``saved`` (what the resume loads, by name; the networks among them, given as objects,
        with the same layers and sizes), and (given ``max_epochs``) unless epochs are left to train, so that a resume
        with nothing to do logs no empty run.
        """
        checkpoint = read_torch_file(checkpoint_path)
        if not isinstance(checkpoint, Mapping) or "run" not in checkpoint:
            raise ValueError(f"{checkpoint_path}: no run identity (written by an older version); it cannot be resumed")
        missing = [name for name in saved if name not in checkpoint]
        if missing:
            raise ValueError(
                f"{checkpoint_path}: written by an older version without {', '.join(missing)}; it cannot be resumed "
                "exactly: train anew (without --resume)"
            )
        try:
            self.load_state_dict(checkpoint["run"])
        except ValueError as err:
            raise ValueError(f"{checkpoint_path}: {err}") from None
        objects = saved.items() if isinstance(saved, Mapping) else ()
        for name, network in ((name, obj) for name, obj in objects if isinstance(obj, nn.Module)):
            mismatch = _first_shape_mismatch(checkpoint[name], network)
            if mismatch:
                raise ValueError(
                    f"{checkpoint_path}: its {name} is not this network ({mismatch}): it was trained with another "
                    "network_def; resume with that one, or start afresh without --resume"
                )
        trainer = checkpoint.get("trainer", {})
        completed = trainer.get("iteration", 0) // (trainer.get("epoch_length") or 1)
        if max_epochs is not None and completed >= max_epochs:
            raise ValueError(
                f"{checkpoint_path}: nothing to resume: {completed} epochs are already trained and max_epochs is "
                f"{max_epochs}; pass a larger --max_epochs to train on"
            )


def _unwrapped(network: nn.Module) -> nn.Module:
    """``network`` without its ``DistributedDataParallel`` or ``DataParallel`` wrapper."""
    if isinstance(network, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return network.module
    return network


def _first_shape_mismatch(state: Mapping[str, torch.Tensor], network: nn.Module) -> str | None:
    """The first tensor of ``network`` (unwrapped from DDP) that ``state`` lacks or holds in another shape, described,
    or a tensor ``state`` has beyond the network's; ``None`` when they match."""
    expected = {key: tuple(value.shape) for key, value in _unwrapped(network).state_dict().items()}
    for key, shape in expected.items():
        if key not in state:
            return f"no {key}"
        if tuple(state[key].shape) != shape:
            return f"{key} {list(state[key].shape)} there, {list(shape)} here"
    extra = sorted(state.keys() - expected.keys())
    return f"{extra[0]} is not in this network" if extra else None


def _random_transforms(transform: Any, found: list[Randomizable] | None = None) -> list[Randomizable]:
    """Every random transform inside ``transform``, depth first: the members of a ``Compose`` and the random
    transforms a transform holds (``RandAffined`` draws through its ``RandAffine`` and that one's grid).

    MONAI has no public list of the random transforms a transform holds, so the walk looks at the values of its
    attributes, relying on no attribute's name.
    """
    found = [] if found is None else found
    if isinstance(transform, Randomizable) and all(transform is not known for known in found):
        found.append(transform)
        members = transform.transforms if isinstance(transform, Compose) else ()
        for inner in [*members, *vars(transform).values()]:
            _random_transforms(inner, found)
    return found


class RandomStates:
    """Every random state a training run draws from, as one object ignite's ``Checkpoint`` saves and loads.

    In ``checkpoint.pt`` beside model, optimizer and trainer, it lets a resumed run continue exactly as an
    uninterrupted one: torch's global generator (data order, loader seeds), numpy's and Python's, and the
    generator of every random transform of ``transform`` (MONAI seeds those once, when the data loader is built, so
    without their state a resumed run would augment differently). States are stored as tensors and lists, which
    ``torch.load(weights_only=True)`` reads.

    Args:
        transform: the training transform, e.g. ``train#dataset.transform``.
    """

    def __init__(self, transform: Randomizable) -> None:
        self.transforms = _random_transforms(transform)

    def state_dict(self) -> dict[str, Any]:
        version, internal, gauss = random.getstate()
        return {
            "torch": torch.get_rng_state(),
            "numpy": _saved_numpy_state(np.random.get_state()),
            "python": [version, list(internal), gauss],
            "transforms": [_saved_numpy_state(transform.R.get_state()) for transform in self.transforms],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["transforms"]) != len(self.transforms):
            raise ValueError(
                f"the checkpoint holds {len(state['transforms'])} random transform states, this training has "
                f"{len(self.transforms)}: it was written with other transforms and cannot be resumed exactly"
            )
        torch.set_rng_state(state["torch"])
        np.random.set_state(_numpy_state(state["numpy"]))
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        for transform, saved in zip(self.transforms, state["transforms"]):
            transform.R.set_state(_numpy_state(saved))


class BestValidation:
    """The evaluator's best key metric so far and its epoch, as one object ignite's ``Checkpoint`` saves and loads.

    In ``checkpoint.pt`` beside the best-model ``Checkpoint`` (which keeps the best score for ``model.pt``), it lets a
    resumed run compare each validation with the best one before the interruption, as an uninterrupted run does:
    without it, the first validation after a resume would count as a new best and replace a better ``model.pt``,
    and the best epoch the run reports would be wrong.

    Args:
        evaluator: the validation engine (``validate#evaluator``), whose ``state.best_metric`` and
            ``state.best_metric_epoch`` MONAI keeps.
    """

    def __init__(self, evaluator: Engine) -> None:
        self.evaluator = evaluator

    def state_dict(self) -> dict[str, float | int]:
        state = self.evaluator.state
        return {"best_metric": float(state.best_metric), "best_metric_epoch": int(state.best_metric_epoch)}

    def load_state_dict(self, state: Mapping[str, float | int]) -> None:
        self.evaluator.state.best_metric = float(state["best_metric"])
        self.evaluator.state.best_metric_epoch = int(state["best_metric_epoch"])


def _saved_numpy_state(state: tuple) -> list:
    """A numpy ``RandomState`` state with its key array as an int64 tensor, which ``weights_only`` loading reads."""
    name, keys, *rest = state
    return [name, torch.from_numpy(keys.astype(np.int64)), *rest]


def _numpy_state(saved: list) -> tuple:
    """The inverse of :func:`_saved_numpy_state`."""
    name, keys, *rest = saved
    return (name, keys.numpy().astype(np.uint32), *rest)


class EncoderFreezeHandler:
    """Keep the network's encoder frozen until ``freeze_epochs`` epochs have completed, then train it.

    Attach to a MONAI ``SupervisedTrainer`` (or any ignite ``Engine`` with a ``network`` attribute whose network,
    possibly wrapped in ``DistributedDataParallel``, has ``set_encoder_trainable``). The state is set at the
    start of every epoch from ``engine.state.epoch``, so a run resumed from a checkpoint gets it right.

    With ``DistributedDataParallel`` build the wrapper while the encoder is trainable and pass
    ``find_unused_parameters=True``: DDP registers only the parameters that require gradients when it is built.

    Args:
        freeze_epochs: number of epochs to train with the encoder frozen (0: never frozen).
    """

    def __init__(self, freeze_epochs: int) -> None:
        if freeze_epochs < 0:
            raise ValueError(f"freeze_epochs must be >= 0, got {freeze_epochs}")
        self.freeze_epochs = freeze_epochs

    def attach(self, engine: Engine) -> None:
        """Register the handler on ``engine``'s ``EPOCH_STARTED`` event."""
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        """Freeze or unfreeze the encoder for the epoch now starting."""
        network = _unwrapped(engine.network)
        completed_epochs = engine.state.epoch - 1
        network.set_encoder_trainable(completed_epochs >= self.freeze_epochs)

class OfficialMetricsSaver:
    """Score every evaluated image with the six official metrics and write ``metrics.csv`` and ``summary.json``.

    Predictions go through the same post-processing as inference (:func:`scripts.postprocessing.segment_probabilities`:
    resized to the label's size, threshold, small-component removal at the network's scale, the never-empty
    fallback), so the scores are those of the files the bundle would submit. At the end of the
    epoch the means are added to ``engine.state.metrics`` (so MLflow and the stats handler log them) and the
    files are written, with the engine's other metrics (e.g. ``val_mean_iou``) in the summary, and with the
    fracture IoU by fragment size (:func:`~pengwin_xray.metrics.fracture_iou_by_size`, over all fragments of the
    split), which shows whether small fragments are found.

    Args:
        output_dir: folder for ``metrics.csv`` and ``summary.json``.
        prob_key: decollated output key of the sigmoid probabilities ``[30, h, w]`` at the network's size.
        label_key: key of the ``[30, H, W]`` ground-truth channels.
        threshold: probability threshold.
        min_component_size: components smaller than this many pixels are dropped.
    """

    def __init__(
        self,
        output_dir: str,
        prob_key: str = "prob",
        label_key: str = "label",
        threshold: float = DEFAULT_THRESHOLD,
        min_component_size: int = DEFAULT_MIN_COMPONENT_SIZE,
    ) -> None:
        self.output_dir = output_dir
        self.prob_key = prob_key
        self.label_key = label_key
        self.threshold = check_threshold(threshold)
        self.min_component_size = check_min_component_size(min_component_size)
        self.rows: list[dict] = []
        self.fragments: list[tuple[float, float]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.score_iteration)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.write)

    def reset(self, engine: Engine) -> None:
        """Start afresh: no rows, and no result files of an earlier evaluation left to pass for this one's."""
        self.rows = []
        self.fragments = []
        remove_results(self.output_dir)

    def score_iteration(self, engine: Engine) -> None:
        output: Sequence[dict] = engine.state.output
        for item in output:
            probs = item[self.prob_key].detach().float().cpu()
            label_channels = item[self.label_key].detach().cpu()
            size = tuple(label_channels.shape[-2:])
            masks = segment_probabilities(probs, size, self.threshold, self.min_component_size).masks
            label = encode_fragment_bits(label_channels)
            name = Path(tensor_filename(item[self.label_key]) or "").name or f"image_{len(self.rows):05d}"
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
        summary = summarise(rows)
        num_images = summary.pop("num_images")
        engine.state.metrics.update(summary)
        summary.update({key: float(value) for key, value in engine.state.metrics.items() if key not in summary})
        summary.update(fracture_iou_by_size(*zip(*fragments)))
        summary["num_images"] = num_images
        if not distributed or dist.get_rank() == 0:
            csv_path, json_path = write_results(rows, summary, self.output_dir)
            scores = "\n".join(f"  {key:<15} {summary[key]:.4f}" for key in OFFICIAL_METRICS)
            logger.info(
                f"official metrics over {num_images} images:\n{scores}\nsummary: {json_path}\nper image: {csv_path}"
            )
