"""Reading model files safely: ``torch.save`` archives (weights only) and TorchScript exports.

Every reader turns a file it cannot use into one ``ValueError`` line naming the file, for the bundle's one-line error
report; the bundle's loaders (``scripts.loading``, ``scripts.handlers``, ``scripts.networks``) share them.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import file_sha256

__all__ = [
    "read_torch_file",
    "read_state_dict",
    "load_torchscript",
    "export_mismatch",
    "CHOICE_REMEDY",
    "read_choice",
    "chosen_for",
]


def read_torch_file(path: str | os.PathLike, device: str | torch.device = "cpu") -> Any:
    """What ``torch.save`` wrote to ``path`` (tensors and plain containers only: ``weights_only``), on ``device``.

    Raises:
        ValueError: in one line, when the file is not a whole ``torch.save`` archive (another format, truncated,
            damaged) or holds pickled Python objects besides tensors (refused: they could run code when loaded).
    """
    if not zipfile.is_zipfile(path) and not _is_legacy_torch_file(path):
        raise ValueError(f"{path}: not a readable PyTorch file (torch.save writes a zip archive, before PyTorch 1.6 a "
                         "pickle stream; this file is neither, or a truncated one)")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path}: refused: the file holds pickled Python objects besides tensors, which could run code when "
            "loaded; save only the state dict (torch.save(model.state_dict(), path))"
        ) from err
    except Exception as err:  # torch's readers raise RuntimeError, KeyError, EOFError... for damaged archives
        raise ValueError(f"{path}: not a readable PyTorch file ({type(err).__name__}: {_first_line(err)})") from err


#: how a file of ``torch.save``'s format before PyTorch 1.6 starts: its pickled magic number (torchvision's older
#: weight downloads have it)
_LEGACY_TORCH_PREFIX = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


def _is_legacy_torch_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` starts like a ``torch.save`` file of the format before PyTorch 1.6."""
    with open(path, "rb") as handle:
        return handle.read(len(_LEGACY_TORCH_PREFIX)) == _LEGACY_TORCH_PREFIX


def read_state_dict(path: str | os.PathLike, device: str | torch.device = "cpu") -> Mapping[str, torch.Tensor]:
    """The state dict in ``path``: a ``model.pt``, or a training ``checkpoint.pt`` holding it under ``"model"``.

    Raises:
        ValueError: as :func:`read_torch_file`, or when the file holds no state dict.
    """
    state = read_torch_file(path, device)
    if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
        state = state["model"]
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


def _first_line(err: BaseException) -> str:
    """The first line of an exception's message (library messages run on for lines of advice)."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else "no message"


def load_torchscript(path: str | os.PathLike, device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """``torch.jit.load`` of ``path``, or one line naming the file when it is no TorchScript model."""
    try:
        return torch.jit.load(str(path), map_location=device)
    except Exception as err:  # torch's readers raise RuntimeError, ValueError... for what is no TorchScript file
        reason = f"{type(err).__name__}: {_first_line(err)}"
        raise ValueError(f"{path}: not a loadable TorchScript model ({reason})") from err


def _export_tensors(path: Path) -> dict[str, np.ndarray]:
    """The named weights a ``.ts`` (its state dict) or ``.onnx`` export (its initializers) holds."""
    if path.suffix == ".onnx":
        import onnx  # imported on demand: only exports need it
        from onnx import numpy_helper

        try:
            graph = onnx.load(str(path)).graph
        except Exception as err:  # onnx raises DecodeError, ValueError... for what is no ONNX file
            raise ValueError(f"{path}: not a readable ONNX model ({type(err).__name__}: {_first_line(err)})") from err
        return {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    return {name: tensor.numpy() for name, tensor in load_torchscript(path).state_dict().items()}


def _scaled_per_output_channel(exported: np.ndarray, weight: np.ndarray) -> bool:
    """Whether ``exported`` is ``weight`` times one factor per output channel (its first axis): a convolution's weight
    with the batch normalisation after it folded in, as ONNX exporters do."""
    if exported.shape != weight.shape or exported.ndim < 2:
        return False
    flat_weight, flat_exported = weight.reshape(len(weight), -1), exported.reshape(len(exported), -1)
    norms = np.einsum("ij,ij->i", flat_weight, flat_weight)
    factors = np.einsum("ij,ij->i", flat_exported, flat_weight) / np.where(norms > 0, norms, 1)
    return np.allclose(flat_exported, factors[:, None] * flat_weight, rtol=1e-4, atol=1e-6)


def export_mismatch(export_path: str | os.PathLike, weights_path: str | os.PathLike) -> str | None:
    """Why the export ``export_path`` (``model.ts`` or ``model.onnx``) was not exported from the weights
    ``weights_path`` (a ``model.pt``), or ``None`` when it was.

    The exports of ``ckpt_export`` and ``onnx_export`` keep the state dict's names, so each weight the export holds
    under a name of ``weights_path`` must be equal to it; in ONNX, where a normalisation may be folded away, also
    one factor per output channel away from it. An export of an earlier training differs in them.

    Raises:
        ValueError: in one line naming the file, when either file cannot be read.
    """
    weights = read_state_dict(weights_path)
    exported = _export_tensors(Path(export_path))
    shared = [name for name in weights if name in exported]
    if not shared:
        return f"it holds none of the weights of {weights_path} by name"
    folding = Path(export_path).suffix == ".onnx"
    for name in shared:
        weight = weights[name].numpy()
        if not np.array_equal(exported[name], weight) and not (
            folding and _scaled_per_output_channel(exported[name], weight)
        ):
            return f"its weight {name} differs from that of {weights_path}"
    return None


#: what to do about a postprocessing.json that cannot be used (choosing again reads it first, so it must go first)
CHOICE_REMEDY = "remove the file, then choose again (configs/choose_postprocessing.json)"


def read_choice(path: str | os.PathLike) -> Mapping[str, Any]:
    """The post-processing choice in ``path`` (a ``postprocessing.json``).

    Raises:
        ValueError: in one line naming the file, when it is not JSON or not a JSON object.
    """
    try:
        choice = json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        raise ValueError(f"{path}: not a post-processing choice (not JSON: {err}); {CHOICE_REMEDY}") from None
    if not isinstance(choice, Mapping):
        raise ValueError(f"{path}: not a post-processing choice (a JSON {type(choice).__name__}); {CHOICE_REMEDY}")
    return choice


def chosen_for(choice: Mapping[str, Any], weights: str | os.PathLike) -> bool:
    """Whether the post-processing ``choice`` (a ``postprocessing.json``'s content) was made for the model file
    ``weights``: the file's SHA-256 is the one the choice records, or there is no such file to compare."""
    return not os.path.isfile(weights) or choice.get("model_sha256") == file_sha256(weights)
