"""Reading model files safely: ``torch.save`` archives (weights only), TorchScript and ONNX exports, and the check
that an export holds the weights of the ``model.pt`` beside it.

Every reader turns a file it cannot use into one ``ValueError`` line naming the file, for the bundle's one-line error
report; the bundle's loaders (``scripts.loading``, ``scripts.networks``) and ``pengwin-package`` share them.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["read_torch_file", "read_state_dict", "state_arrays", "load_torchscript", "exported_weights", "check_export"]


def read_torch_file(path: str | os.PathLike, device: str | torch.device = "cpu") -> Any:
    """What ``torch.save`` wrote to ``path`` (tensors and plain containers only: ``weights_only``), on ``device``.

    Raises:
        ValueError: in one line, when the file is not a whole ``torch.save`` archive (another format, truncated,
            damaged) or holds pickled Python objects besides tensors (refused: they could run code when loaded).
    """
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not a readable PyTorch file (torch.save writes a zip archive; this file is none, or "
                         "a truncated one)")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path}: refused: the file holds pickled Python objects besides tensors, which could run code when "
            "loaded; save only the state dict (torch.save(model.state_dict(), path))"
        ) from err
    except Exception as err:  # torch's readers raise RuntimeError, KeyError, EOFError... for damaged archives
        raise ValueError(f"{path}: not a readable PyTorch file ({type(err).__name__}: {_first_line(err)})") from err


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


def state_arrays(state: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """A state dict's tensors as NumPy arrays, by name."""
    return {name: tensor.detach().cpu().numpy() for name, tensor in state.items()}


def load_torchscript(path: str | os.PathLike, device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """``torch.jit.load`` of ``path``, or one line naming the file when it is no TorchScript model."""
    try:
        return torch.jit.load(str(path), map_location=device)
    except Exception as err:  # torch's readers raise RuntimeError, ValueError... for what is no TorchScript file
        raise ValueError(f"{path}: not a loadable TorchScript model ({type(err).__name__}: {_first_line(err)})") from err


def exported_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The named weights of an export: a TorchScript model's (``.ts``) state dict, or an ONNX model's initializers,
    which keep the names the network gave its weights."""
    if Path(path).suffix == ".ts":
        return state_arrays(load_torchscript(path).state_dict())
    import onnx  # only exported models need it
    from onnx import numpy_helper

    try:
        model = onnx.load(str(path))
    except Exception as err:  # onnx raises DecodeError and others for what is no ONNX file
        raise ValueError(f"{path}: not a loadable ONNX model ({type(err).__name__}: {_first_line(err)})") from err
    return {tensor.name: numpy_helper.to_array(tensor) for tensor in model.graph.initializer}


def check_export(path: str | os.PathLike, exported: Mapping[str, np.ndarray], ckpt_path: str | os.PathLike) -> None:
    """Refuse an export whose weights differ from those of ``ckpt_path`` beside it (when there is one).

    The post-processing chosen on validation and the model card belong to ``model.pt``; an export left from an
    earlier training would run with them unnoticed. Tensors are compared by name where the export kept the
    network's names (TorchScript and ONNX do for every weight; an export that renamed all is not compared).

    Raises:
        ValueError: naming the export, ``ckpt_path`` and a differing tensor.
    """
    if not Path(ckpt_path).is_file():
        return
    weights = state_arrays(read_state_dict(ckpt_path))
    shared = [name for name in weights if name in exported]
    differing = [name for name in shared if not np.array_equal(exported[name], weights[name])]
    if differing:
        raise ValueError(
            f"{path}: not an export of {ckpt_path} ({len(differing)} of {len(shared)} weights differ, e.g. "
            f"{differing[0]}; an export left from an earlier training?): export it again from this model"
        )
