"""Pieces the training and evaluation configs call that MONAI does not provide as such."""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.bundle import ConfigWorkflow
from monai.handlers import CheckpointSaver
from monai.inferers import Inferer

from custom_transforms.bits import decode_fragment_bits
from custom_transforms.constants import CATEGORY_NAMES, MAX_FRAGMENTS
from custom_transforms.io import read_fragment_label

from .atomic import write_json_atomic
from .flags import as_flag

__all__ = [
    "resolve_dataset",
    "class_balanced_weights",
    "native_cpu_bf16",
    "PengwinInferer",
    "category_iou_output",
    "export_running_config",
    "AtomicCheckpointSaver",
    "latest_checkpoint",
]

logger = logging.getLogger(__name__)


def resolve_dataset(dataset_dir: str, synthetic_dir: str, synthetic: dict[str, int]) -> str:
    """The PENGWIN root to train on: ``dataset_dir`` when given, else the built-in synthetic dataset.

    The synthetic dataset (``synthetic`` holds patients, projections, size and seed) is generated once into
    ``synthetic_dir`` and reused while its arguments stay the same.
    """
    if dataset_dir:
        if not Path(dataset_dir).is_dir():
            raise FileNotFoundError(f"{dataset_dir}: dataset folder does not exist")
        return str(dataset_dir)
    from .synth import ensure_synthetic_dataset

    logger.info(f"no dataset_dir given: using the built-in synthetic PENGWIN dataset in {synthetic_dir}")
    return str(ensure_synthetic_dataset(synthetic_dir, **synthetic))


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
    sizes, times) and the name of the target transform.
    """
    if not label_paths:
        raise ValueError("no training labels to compute class weights from")
    cache = None
    if cache_dir is not None:
        signature = hashlib.sha256(type(target_transform).__name__.encode())
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


def native_cpu_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX flags in ``cpuinfo``).

    The default of the configs' ``cpu_bf16``: where the CPU has no bf16 instructions torch emulates them, and
    a BasicUNet training step at 224 ran 9x slower in bf16 than in fp32 (AVX2-only EPYC, 2026-12-01), while
    with AVX-512 BF16 it ran 1.4x faster. Off Linux (no ``/proc/cpuinfo``) it answers ``False``.
    """
    try:
        flags = Path(cpuinfo).read_text()
    except OSError:
        return False
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", flags) is not None


class PengwinInferer(Inferer):
    """Run the network at a fixed input size and optional CPU bf16 autocast; return logits at the input size.

    MONAI's engines autocast only on CUDA; on CPUs with native bf16 (see :func:`native_cpu_bf16`), autocast
    makes the BasicUNet step 1.4x (224) to 2x (448) faster.
    With ``spatial_size`` (e.g. 224 for the VGG16 U-Net on 448 images), inputs are resized bilinearly and
    logits brought back to the input size, so losses, metrics and outputs always live at the label size.

    Args:
        spatial_size: network input size ``(H, W)``, or ``None`` to use the input as it is.
        cpu_bf16: autocast to bfloat16 when running on the CPU.
    """

    def __init__(self, spatial_size: Sequence[int] | None = None, cpu_bf16: bool | str = False) -> None:
        super().__init__()
        self.spatial_size = tuple(spatial_size) if spatial_size is not None else None
        self.cpu_bf16 = as_flag(cpu_bf16)

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any):
        size = tuple(inputs.shape[2:])
        resize = self.spatial_size is not None and self.spatial_size != size
        if resize:
            inputs = F.interpolate(inputs, size=self.spatial_size, mode="bilinear", align_corners=False)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cpu_bf16 and inputs.device.type == "cpu"):
            logits = network(inputs, *args, **kwargs)
        logits = logits.float()
        if resize:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits


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


def export_running_config(path: str) -> str:
    """Write the fully merged config of the running ``monai.bundle`` workflow to ``path``; return ``path``.

    MONAI exports the executed config only under ``--tracking``; here MLflow tracking is on by default, so the
    config is taken from the workflow that is evaluating this expression (found on the call stack).
    """
    for frame in inspect.stack():
        workflow = frame.frame.f_locals.get("self")
        if isinstance(workflow, ConfigWorkflow):
            content = workflow.parser.get()
            break
    else:
        raise RuntimeError("export_running_config must be called from a monai.bundle ConfigWorkflow")
    write_json_atomic(path, content)
    return path


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` with every file written to a temporary file and renamed into place.

    MONAI switches ignite's atomic saving off (for file permissions, which ignite 0.5 restores itself), so a
    kill during a save could leave a truncated checkpoint where a good one was. Fixed file names (``model.pt``,
    ``checkpoint.pt``) are also no longer deleted before their replacement is written: the rename replaces them.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is None:
                continue
            saver = checkpoint.save_handler
            saver._atomic = True  # ignite's DiskSaver option, fixed to False by MONAI's subclass
            if saver.filename is not None:
                saver.remove = lambda filename: None


def latest_checkpoint(ckpt_dir: str, required: bool = True) -> str | None:
    """The most recent training checkpoint (``checkpoint*.pt``) in ``ckpt_dir``, for resuming.

    Raises:
        FileNotFoundError: when ``required`` and there is none.
    """
    candidates = sorted(Path(ckpt_dir).glob("checkpoint*.pt"), key=lambda path: path.stat().st_mtime_ns)
    if not candidates:
        if required:
            raise FileNotFoundError(f"{ckpt_dir}: no checkpoint*.pt to resume from")
        return None
    return str(candidates[-1])
