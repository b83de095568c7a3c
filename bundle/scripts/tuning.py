"""Post-processing chosen on the validation split: the threshold, minimum component size and (main/other formulation)
split depth and seed threshold of the trained model.

At the end of training, :func:`choose_postprocessing` runs the best network once over the validation images and
scores every setting of a small grid (:data:`THRESHOLDS` x :data:`MIN_COMPONENT_SIZES`, x :data:`SPLIT_DEPTHS` x
:data:`SEED_THRESHOLDS` for 6 output channels) with the official fracture IoU, ties going to the higher anatomical
IoU, then to the grid's earlier setting. The choice is written to ``postprocessing.json`` beside ``model.pt`` with
the model file's SHA-256; evaluation and inference read it through :func:`tuned_postprocessing`, which ignores (with
a warning) a file written for another ``model.pt``; ``configs/choose_postprocessing.json`` makes the choice again
for a trained model. Test images never enter the choice. A value given on the command line (``--threshold``,
``--min_component_size``, ``--split_depth``, ``--seed_threshold``) still wins.

The file also records ``image_size``, the size of the validation images (``None`` if they differ): the scale at
which the network learned the anatomy and at which the pixel-valued settings (minimum size, split depth) were chosen.
Inference and evaluation bring images of another size to it (``image_size`` of ``configs/inference.json`` and
``configs/evaluate.json``).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from custom_transforms.bits import encode_fragment_bits
from custom_transforms.constants import (
    DEFAULT_MIN_COMPONENT_SIZE,
    DEFAULT_SEED_THRESHOLD,
    DEFAULT_SPLIT_DEPTH,
    DEFAULT_THRESHOLD,
    NUM_CHANNELS,
    BEST_MODEL_FILE,
    TUNED_POSTPROCESSING_FILE,
    check_min_component_size,
    check_seed_threshold,
    check_split_depth,
    check_threshold,
)
from custom_transforms.formulation import MAIN_OTHER_CHANNELS, MAIN_OTHER_RIM_CHANNELS, SplitOtherFragments
from pengwin_xray.atomic import file_sha256, write_json_atomic
from pengwin_xray.metrics import score_ious
from pengwin_xray.model_files import CHOICE_REMEDY, chosen_for, read_choice

from .flags import as_flag, as_image_size
from .inferers import TwoStageInferer
from .postprocessing import postprocess_fragments

__all__ = [
    "THRESHOLDS",
    "MIN_COMPONENT_SIZES",
    "SPLIT_DEPTHS",
    "SEED_THRESHOLDS",
    "fragment_probabilities",
    "choose_postprocessing",
    "tuned_postprocessing",
    "check_pipeline",
]

logger = logging.getLogger(__name__)

#: the grid searched on the validation split
THRESHOLDS: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7)
MIN_COMPONENT_SIZES: tuple[int, ...] = (0, 10, 25, 50, 100)
#: split depths (pixels) tried for the main/other formulation; the other formulations split no component
SPLIT_DEPTHS: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0)
#: seed thresholds tried for the main/other formulation (0: every other-fragment pixel is a seed); one at or below
#: the setting's threshold would repeat the 0 setting, so it is skipped
SEED_THRESHOLDS: tuple[float, ...] = (0.0, 0.8, 0.9)
#: what :func:`tuned_postprocessing` falls back to without a tuned file (or for a key an older file lacks)
DEFAULTS: dict[str, float | int | list[int] | None] = {
    "threshold": DEFAULT_THRESHOLD,
    "min_component_size": DEFAULT_MIN_COMPONENT_SIZE,
    "split_depth": DEFAULT_SPLIT_DEPTH,
    "seed_threshold": DEFAULT_SEED_THRESHOLD,
    "image_size": None,
    "two_stage": False,
    "use_clahe": True,
    "flip_tta": True,
    "localiser_sha256": None,
}
#: what else a ``postprocessing.json`` records: the scores, the model and data it was chosen for, the whole grid
RECORDS: tuple[str, ...] = (
    "validation_fracture_iou", "validation_anatomical_iou", "default_validation_fracture_iou", "num_validation",
    "model_sha256", "trained_on", "grid",
)  # fmt: skip
#: a SHA-256 digest as ``pengwin_xray.atomic.file_sha256`` writes it
_SHA256 = re.compile(r"[0-9a-f]{64}")


def fragment_probabilities(
    probs: torch.Tensor,
    threshold: float,
    min_component_size: int,
    split_depth: float = DEFAULT_SPLIT_DEPTH,
    seed_threshold: float = DEFAULT_SEED_THRESHOLD,
    shared_labels: dict[tuple, list] | None = None,
) -> torch.Tensor:
    """``[C, H, W]`` sigmoid outputs of any formulation to ``[30, H, W]`` fragment probabilities.

    The channel count tells the formulation: 30 fragment slots pass through; 6 (main/other) and 9 (with rims) are
    split by :class:`~custom_transforms.formulation.SplitOtherFragments`. ``shared_labels``, a dict kept
    across calls on the same ``probs``, lets settings that differ only in the minimum size (without rims) label
    the other fragments once (:meth:`~custom_transforms.formulation.SplitOtherFragments.label_others`).
    """
    channels = probs.shape[0]
    if channels == NUM_CHANNELS:
        return probs
    if channels not in (MAIN_OTHER_CHANNELS, MAIN_OTHER_RIM_CHANNELS):
        raise ValueError(f"expected 6, 9 or {NUM_CHANNELS} output channels, got {channels}")
    rims = channels == MAIN_OTHER_RIM_CHANNELS
    splitter = SplitOtherFragments(threshold, min_component_size, rims, split_depth, seed_threshold)
    if shared_labels is None:
        return splitter(probs)
    key = (threshold, split_depth, seed_threshold, min_component_size if rims else None)
    if key not in shared_labels:
        shared_labels[key] = splitter.label_others(probs)
    return splitter(probs, shared_labels[key])


def choose_postprocessing(
    network: torch.nn.Module,
    dataloader: Iterable[dict[str, Any]],
    inferer: Callable[[torch.Tensor, torch.nn.Module], torch.Tensor],
    model_path: str | os.PathLike,
    device: str | torch.device = "cpu",
    thresholds: Sequence[float] = THRESHOLDS,
    min_component_sizes: Sequence[int] = MIN_COMPONENT_SIZES,
    split_depths: Sequence[float] = SPLIT_DEPTHS,
    seed_thresholds: Sequence[float] = SEED_THRESHOLDS,
    max_images: int = 200,
    use_clahe: bool = True,
    flip_tta: bool = True,
    trained_on: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Choose the post-processing of ``network`` (the weights in ``model_path``) on the validation ``dataloader``.

    Args:
        network: the trained network, already holding the weights of ``model_path``.
        dataloader: batches of ``image`` and 30-channel ``label`` of the validation split.
        inferer: the network call (e.g. :class:`scripts.inferers.PengwinInferer`) giving logits.
        model_path: the model file; the result goes to ``postprocessing.json`` in its folder.
        device: where the network runs.
        thresholds: probability thresholds to try.
        min_component_sizes: minimum component sizes (pixels) to try.
        split_depths: split depths (pixels) to try when the network has the main/other formulation's 6 outputs.
        seed_thresholds: seed thresholds to try with them.
        max_images: score at most this many validation images (the first ones: each costs a scoring per setting).
        use_clahe: the model's input had CLAHE (recorded: inference and evaluation default to it).
        flip_tta: ``inferer`` averages the mirror image's logits (recorded: inference and evaluation default to it).
        trained_on: what the model was trained and validated on (``pengwin_xray.datalist.training_sources``;
            recorded: evaluation refuses test patients among them).

    Returns:
        what was written: the chosen ``threshold``, ``min_component_size``, ``split_depth`` and ``seed_threshold``,
        their validation scores, the scores of the defaults, the whole grid, the validation images' ``image_size``
        and the model file's SHA-256.

    Raises:
        ValueError: when ``model_path`` is not a folder's ``model.pt``, whose choice the folder's one
            ``postprocessing.json`` holds (a choice for ``checkpoint.pt`` would replace it), or when the file changed
            while the choice was made (the choice would carry the new file's digest).
    """
    if Path(model_path).name != BEST_MODEL_FILE:
        raise ValueError(
            f"{model_path}: the post-processing is chosen for a folder's {BEST_MODEL_FILE} (its "
            f"{TUNED_POSTPROCESSING_FILE} holds one choice); copy this model into a folder of its own as "
            f"{BEST_MODEL_FILE} and choose there"
        )
    model_sha256 = file_sha256(model_path)  # the choice is for these bytes (checked again once it is made)
    scores: dict[tuple[float, int, float, float], list[tuple[float, float]]] = {}
    image_sizes: set[tuple[int, ...]] = set()
    num_scored = 0
    network.eval()
    with torch.no_grad():
        for batch in dataloader:
            image_sizes.add(tuple(batch["image"].shape[2:]))
            probs = torch.sigmoid(inferer(batch["image"].to(device), network)).float().cpu()
            if not scores:
                main_other = probs.shape[1] == MAIN_OTHER_CHANNELS
                depths = split_depths if main_other else (DEFAULT_SPLIT_DEPTH,)
                seeds = seed_thresholds if main_other else (DEFAULT_SEED_THRESHOLD,)
                grid = [
                    (float(t), int(m), float(d), float(s))
                    for t in thresholds
                    for m in min_component_sizes
                    for d in depths
                    for s in seeds
                    if s == DEFAULT_SEED_THRESHOLD or s > t
                ]
                scores = {setting: [] for setting in grid}
            for prob, label in list(zip(probs, batch["label"]))[: max_images - num_scored]:
                label_bits = encode_fragment_bits(label.cpu())
                shared_labels: dict[tuple, list] = {}
                for setting, values in scores.items():
                    threshold, size, depth, seed = setting
                    fragments = fragment_probabilities(prob, threshold, size, depth, seed, shared_labels)
                    masks = postprocess_fragments(fragments, threshold, size).masks
                    result = score_ious(encode_fragment_bits(masks), label_bits)
                    values.append((result["fracture_iou"], result["anatomical_iou"]))
                num_scored += 1
            if num_scored >= max_images:
                break
    if not num_scored:
        raise ValueError("no validation image to choose the post-processing on")
    means = {setting: tuple(np.mean(values, axis=0).tolist()) for setting, values in scores.items()}
    best = max(scores, key=lambda setting: means[setting])  # max keeps the first of equal scores
    default = (
        float(DEFAULT_THRESHOLD),
        int(DEFAULT_MIN_COMPONENT_SIZE),
        float(DEFAULT_SPLIT_DEPTH),
        float(DEFAULT_SEED_THRESHOLD),
    )
    chosen = {
        "threshold": best[0],
        "min_component_size": best[1],
        "split_depth": best[2],
        "seed_threshold": best[3],
        "validation_fracture_iou": means[best][0],
        "validation_anatomical_iou": means[best][1],
        "default_validation_fracture_iou": means[default][0] if default in means else None,
        "num_validation": len(scores[best]),
        "image_size": list(next(iter(image_sizes))) if len(image_sizes) == 1 else None,
        "two_stage": isinstance(inferer, TwoStageInferer),
        "localiser_sha256": inferer.localiser_sha256 if isinstance(inferer, TwoStageInferer) else None,
        "use_clahe": bool(use_clahe),
        "flip_tta": bool(flip_tta),
        "model_sha256": model_sha256,
        "trained_on": dict(trained_on) if trained_on is not None else None,
        "grid": [{"threshold": t, "min_component_size": m, "split_depth": d, "seed_threshold": s,
                  "fracture_iou": means[(t, m, d, s)][0], "anatomical_iou": means[(t, m, d, s)][1]}
                 for t, m, d, s in scores],
    }  # fmt: skip
    if file_sha256(model_path) != model_sha256:
        raise ValueError(f"{model_path}: the file changed while its post-processing was chosen (a training writing "
                         "it?); nothing was written: choose again once it is done")
    path = write_json_atomic(Path(model_path).parent / TUNED_POSTPROCESSING_FILE, chosen)
    logger.info(
        f"post-processing chosen on {chosen['num_validation']} validation images: threshold {best[0]:g}, "
        f"min_component_size {best[1]}, split_depth {best[2]:g}, seed_threshold {best[3]:g} (fracture IoU "
        f"{means[best][0]:.4f}; defaults {chosen['default_validation_fracture_iou'] or float('nan'):.4f}); "
        f"written to {path}"
    )
    return chosen


def _choice_path(model_path: str | os.PathLike) -> Path:
    return Path(model_path).parent / TUNED_POSTPROCESSING_FILE


def model_choice(model_path: str | os.PathLike, warn: bool = True) -> Mapping[str, Any] | None:
    """The content of the ``postprocessing.json`` beside ``model_path`` when it was chosen for that model file (an
    export's: the ``model.pt`` beside it), else ``None`` (with a warning, given ``warn``, for another model's).

    Raises:
        ValueError: naming the file, when it is not a JSON object.
    """
    path = _choice_path(model_path)
    if not path.is_file():
        return None
    chosen = read_choice(path)
    weights = Path(model_path) if Path(model_path).suffix == ".pt" else Path(model_path).parent / BEST_MODEL_FILE
    if not chosen_for(chosen, weights):
        if warn:
            logger.warning(f"{path}: chosen for another model than {weights.name}; using the defaults {DEFAULTS}")
        return None
    return chosen


def tuned_postprocessing(model_path: str | os.PathLike) -> dict[str, float | int | list[int] | None]:
    """The ``threshold``, ``min_component_size``, ``split_depth`` and ``seed_threshold`` chosen for ``model_path`` on
    validation and the validation images' ``image_size``, or the defaults (also for a key of a file written before it
    was recorded; ``image_size`` ``None``: unknown).

    The defaults are used when no ``postprocessing.json`` lies beside the model, or when it was chosen for another
    model file (then with a warning: e.g. for ``checkpoint.pt``, or a ``model.pt`` trained after the choice);
    exported models (``model.ts``, ``model.onnx``) share the choice of the ``model.pt`` beside them.

    Raises:
        ValueError: naming the file, when it is no JSON object or holds a bad setting.
    """
    chosen = model_choice(model_path, warn=True)
    if chosen is None:
        return dict(DEFAULTS)
    settings = {key: chosen.get(key, default) for key, default in DEFAULTS.items()}
    try:  # a file edited by hand fails here, naming itself, rather than later as if a setting were bad
        if unknown := sorted(set(chosen) - set(DEFAULTS) - set(RECORDS)):
            raise ValueError(f"no setting {unknown} in a post-processing choice (misspelt?)")
        check_threshold(settings["threshold"])
        check_min_component_size(settings["min_component_size"])
        check_split_depth(settings["split_depth"])
        check_seed_threshold(settings["seed_threshold"])
        as_image_size(settings["image_size"], "image_size")
        for switch in ("two_stage", "use_clahe", "flip_tta"):
            as_flag(settings[switch], switch)
        localiser = settings["localiser_sha256"]
        if localiser is not None and not (isinstance(localiser, str) and _SHA256.fullmatch(localiser)):
            raise ValueError(f"localiser_sha256 must be a SHA-256 digest (64 hex digits) or null, got {localiser!r}")
    except ValueError as err:
        raise ValueError(f"{_choice_path(model_path)}: {err}; {CHOICE_REMEDY}") from None
    return settings


def recorded_training(model_path: str | os.PathLike) -> Mapping[str, Any] | None:
    """What the ``postprocessing.json`` of ``model_path`` records the model was trained and validated on
    (``trained_on``), or ``None`` without such a record for this model."""
    chosen = model_choice(model_path, warn=False)
    return chosen.get("trained_on") if chosen is not None else None


def check_pipeline(choice: Mapping[str, Any], inferer: Any, model_path: str | os.PathLike) -> None:
    """Refuse to run the fragment network of the two-stage recipe (its choice records ``two_stage``) without its
    localiser: alone, it would segment whole views it never learned, with a post-processing chosen for crops; and
    behind another localiser than the one its post-processing was chosen behind (both digests known), which crops
    the bones otherwise.

    Raises:
        ValueError: naming the model and the overlay that runs it, or the localiser to take.
    """
    chosen_behind, given = choice.get("localiser_sha256"), getattr(inferer, "localiser_sha256", None)
    if isinstance(inferer, TwoStageInferer) and chosen_behind and given and chosen_behind != given:
        raise ValueError(
            f"{model_path}: its post-processing was chosen behind another localiser (model.pt of SHA-256 "
            f"{chosen_behind[:12]}...) than the one given ({given[:12]}...): pass that localiser's folder as "
            "--localiser_dir, or choose again behind this one (configs/choose_postprocessing.json after "
            "configs/train_two_stage.json)"
        )
    if choice.get("two_stage") and not isinstance(inferer, TwoStageInferer):
        raise ValueError(
            f"{model_path}: the fragment network of the two-stage recipe, whose post-processing was chosen behind its "
            "localiser: run it with configs/inference_two_stage.json after inference.json (to evaluate it, "
            "configs/train_two_stage.json after train.json)"
        )
