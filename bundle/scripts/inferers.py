"""The network calls shared by training, evaluation and inference: fixed input size and CPU bf16 autocast, and the
two-stage recipe's per-bone crops."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from monai.inferers import Inferer

from custom_transforms.constants import (
    BONE_CROP_MARGIN,
    BONE_CROP_SCALE,
    CATEGORY_NAMES,
    NUM_CATEGORIES,
    check_threshold,
)
from pengwin_xray.masks import scaled_side, square_crop_box

from .flags import as_flag

__all__ = ["SIDE_DIVISOR", "native_cpu_bf16", "swap_sides", "PengwinInferer", "TwoStageInferer"]

#: both networks halve the image four times: they take sides divisible by this
SIDE_DIVISOR = 16


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


def swap_sides(logits: torch.Tensor) -> torch.Tensor:
    """Swap the left-hip and right-hip channel groups of ``[B, C, H, W]`` outputs (C: three per-bone groups)."""
    li, ri = CATEGORY_NAMES.index("LI"), CATEGORY_NAMES.index("RI")
    order = [ri if bone == li else li if bone == ri else bone for bone in range(NUM_CATEGORIES)]
    return logits.unflatten(1, (NUM_CATEGORIES, -1))[:, order].flatten(1, 2)


class PengwinInferer(Inferer):
    """Run the network at a fixed input size and optional CPU bf16 autocast; return logits at the input size.

    MONAI's engines autocast only on CUDA; on CPUs with native bf16 (see :func:`native_cpu_bf16`), autocast
    makes the BasicUNet step 1.4x (224) to 2x (448) faster.
    With ``spatial_size`` (e.g. 224 for the VGG16 U-Net on 448 images), inputs are resized bilinearly and
    logits brought back to the input size, so losses, metrics and outputs always live at the label size.

    With ``flip_tta``, the logits are the mean of the network's logits for the input and, mirrored back, for
    its left-right mirror image, whose left- and right-hip channels (the second and third of the three equal
    per-bone channel groups, whatever the formulation) are swapped first: a mirrored left hip is a right hip.

    Sides not divisible by :data:`SIDE_DIVISOR` are padded to the next multiple, edge pixels repeated, equally on
    both ends, and the logits cropped back: exports fix the padding BasicUNet computes from the input size when
    they are written (ONNX Runtime and OpenVINO failed on other sizes), and the VGG16 U-Net refuses such sides.

    Args:
        spatial_size: network input size ``(H, W)``, or ``None`` to use the input as it is.
        cpu_bf16: autocast to bfloat16 when running on the CPU.
        flip_tta: also run the mirror image (twice the network time).
    """

    def __init__(
        self, spatial_size: Sequence[int] | None = None, cpu_bf16: bool | str = False, flip_tta: bool | str = False
    ) -> None:
        super().__init__()
        self.spatial_size = tuple(spatial_size) if spatial_size is not None else None
        self.cpu_bf16 = as_flag(cpu_bf16, "cpu_bf16")
        self.flip_tta = as_flag(flip_tta, "flip_tta")

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any):
        size = tuple(inputs.shape[2:])
        resize = self.spatial_size is not None and self.spatial_size != size
        if resize:
            inputs = F.interpolate(inputs, size=self.spatial_size, mode="bilinear", align_corners=False)
        height, width = inputs.shape[2:]
        rows, cols = -height % SIDE_DIVISOR, -width % SIDE_DIVISOR
        if rows or cols:
            inputs = F.pad(inputs, (cols // 2, cols - cols // 2, rows // 2, rows - rows // 2), mode="replicate")
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cpu_bf16 and inputs.device.type == "cpu"):
            logits = network(inputs, *args, **kwargs).float()
            if self.flip_tta:
                mirrored = network(inputs.flip(-1), *args, **kwargs).float().flip(-1)
                logits = (logits + swap_sides(mirrored)) / 2
        logits = logits[..., rows // 2 : rows // 2 + height, cols // 2 : cols // 2 + width]
        if resize:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits


class TwoStageInferer(Inferer):
    """The two-stage recipe: a localiser finds the bones in the whole view, the fragment network segments each bone
    in its own crop, seen larger.

    ``localiser`` is a trained model of the same formulation as the fragment network (the default recipe's
    ``model.pt``), run by ``localiser_inferer``. Each bone's mask (any of its channels above ``threshold``) gives the
    square crop of :class:`custom_transforms.BoneCropd` (same ``margin`` and ``scale``); the crops of a batch go
    through the fragment network (the ``network`` argument, run by ``fragment_inferer``) in one call. Inside its square,
    a bone's logits become the fragment network's, resized back; everywhere else, and for bones the localiser does
    not find, they stay the localiser's. The logits keep the formulation's channels and the input size, so
    decoding, post-processing and outputs are those of a single network.

    Args:
        localiser: the first-stage network (evaluation mode).
        localiser_inferer: its network call (e.g. :class:`PengwinInferer` with a ``spatial_size`` or flip TTA).
        fragment_inferer: the network call of the fragment network on the crops.
        margin: added on every side of a bone's bounding box, as a fraction of the image's shorter side.
        scale: side of the resized crops, as a fraction of the image's shorter side.
        threshold: probability above which a localiser pixel belongs to a bone.
        localiser_sha256: the SHA-256 of the localiser's ``model.pt`` (``None``: unknown), which the post-processing
            chosen behind this pipeline records (``scripts.tuning``).
    """

    def __init__(
        self,
        localiser: Callable[..., torch.Tensor],
        localiser_inferer: Inferer,
        fragment_inferer: Inferer,
        margin: float = BONE_CROP_MARGIN,
        scale: float = BONE_CROP_SCALE,
        threshold: float = 0.5,
        localiser_sha256: str | None = None,
    ) -> None:
        super().__init__()
        self.localiser = localiser
        self.localiser_sha256 = localiser_sha256
        self.localiser_inferer = localiser_inferer
        self.fragment_inferer = fragment_inferer
        self.margin, self.scale = float(margin), float(scale)
        self.threshold = check_threshold(threshold, "localiser_threshold")

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any):
        logits = self.localiser_inferer(inputs, self.localiser).clone()
        bone_logits = logits.unflatten(1, (NUM_CATEGORIES, -1))  # a view: writing it writes ``logits``
        bones = (bone_logits.amax(dim=2) > torch.logit(torch.tensor(self.threshold))).cpu().numpy()
        crops = [
            (item, bone, box)
            for item in range(len(inputs))
            for bone in range(NUM_CATEGORIES)
            if (box := square_crop_box(bones[item, bone], self.margin)) is not None
        ]
        if not crops:
            return logits
        side = scaled_side(inputs.shape[2:], self.scale)
        batch = torch.cat(
            [
                F.interpolate(inputs[(slice(item, item + 1), slice(None), *box)], size=(side, side), mode="bilinear")
                for item, _, box in crops
            ]
        )
        crop_logits = self.fragment_inferer(batch, network, *args, **kwargs).unflatten(1, (NUM_CATEGORIES, -1))
        if crop_logits.shape[2] != bone_logits.shape[2]:
            raise ValueError(
                f"the fragment network gives {crop_logits.shape[1] * crop_logits.shape[2]} channels, the localiser "
                f"{logits.shape[1]}: both stages must be trained with the same formulation"
            )
        for (item, bone, box), crop in zip(crops, crop_logits):
            size = (box[0].stop - box[0].start, box[1].stop - box[1].start)
            bone_logits[(item, bone, slice(None), *box)] = F.interpolate(crop[bone][None], size=size, mode="bilinear")[0]
        return logits
