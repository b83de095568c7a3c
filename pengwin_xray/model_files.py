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

import torch

from .atomic import file_sha256

__all__ = ["read_torch_file", "read_state_dict", "load_torchscript", "CHOICE_REMEDY", "read_choice", "chosen_for"]


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
