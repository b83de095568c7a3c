"""Settings from configs and the command line, checked where they enter: switches (fire passes "true" as a string)
and numbers, each error naming the setting."""

from __future__ import annotations

import ast
import difflib
import os
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from monai.bundle import ConfigParser
from monai.utils import ensure_tuple

from custom_transforms.constants import as_number
from pengwin_xray.atomic import file_in_the_way

__all__ = [
    "as_flag",
    "as_positive_number",
    "as_fraction",
    "as_count",
    "as_image_size",
    "check_folders",
    "check_distinct_folders",
    "reject_unknown_overrides",
    "check_override_keys",
]


def as_flag(value: bool | int | str, name: str) -> bool:
    """The switch ``name`` from a config or the command line as a bool (``"true"`` would otherwise count as set).

    Raises:
        ValueError: naming the setting, for anything but a bool, 0/1 or "true"/"false"/"1"/"0" (any case).
    """
    if isinstance(value, (bool, int)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise ValueError(f"{name} must be a switch (true/false), got {value!r}")


def as_positive_number(value: float | int | str, name: str) -> float:
    """A setting that must be a number above 0 (a learning rate, a time), as a float.

    Raises:
        ValueError: naming the setting, for anything else (text, 0, negative, NaN, infinite).
    """
    number = as_number(value)
    if not 0.0 < number < float("inf"):
        raise ValueError(f"{name} must be a number above 0, got {value!r}")
    return number


def as_fraction(value: float | int | str, name: str) -> float:
    """A setting that must be a number from 0 to 1 (a training target), as a float.

    Raises:
        ValueError: naming the setting, for anything else (text, NaN, numbers outside 0..1).
    """
    number = as_number(value)
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"{name} must be a number from 0 to 1, got {value!r}")
    return number


def as_count(value: int | str, name: str, minimum: int = 1) -> int:
    """A setting that must be a whole number of at least ``minimum`` (epochs, batch size, workers), as an int.

    Raises:
        ValueError: naming the setting, for anything else (text, fractions, numbers below ``minimum``).
    """
    number = as_number(value)
    if not (number >= minimum and number.is_integer()):
        raise ValueError(f"{name} must be a whole number, {minimum} or more, got {value!r}")
    return int(number)


def as_image_size(value: Sequence[int] | int | str | None, name: str) -> list[int] | None:
    """An image size ``[H, W]`` (a single number: square), or ``None`` for none: ``None``, ``0``, ``false`` or
    ``none`` (the command line cannot pass ``None`` itself: ``monai.bundle run`` drops such overrides).

    Raises:
        ValueError: naming the setting, for anything but two whole numbers above 0, one, or an "off" value.
    """
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in ("", "none", "null", "false", "0"):
            return None
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise ValueError(f"{name} must be [height, width] in pixels, or 0 for none, got {value!r}") from None
    if value is None or (isinstance(value, (int, float)) and value == 0):  # False == 0
        return None
    sides = list(ensure_tuple(value))
    if len(sides) == 1:
        sides *= 2
    whole = all(
        isinstance(side, (int, float)) and not isinstance(side, bool) and side >= 1 and float(side).is_integer()
        for side in sides
    )
    if len(sides) != 2 or not whole:
        raise ValueError(f"{name} must be [height, width] in pixels, or 0 for none, got {value!r}")
    return [int(side) for side in sides]


def as_device(value: str | torch.device, name: str) -> torch.device:
    """A device setting (``cpu``, ``cuda``, ``cuda:1``...) as a ``torch.device``, checked to hold a tensor here.

    Raises:
        ValueError: naming the setting, for a device name torch does not know or one this machine lacks (``cuda``
            without a GPU or a CUDA build of torch: torch's own error is an assertion deep in the first use).
    """
    try:
        device = torch.device(value)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError, TypeError) as err:  # torch's errors for unknown and absent devices
        reason = (str(err).strip().splitlines() or ["no message"])[0]
        raise ValueError(f"{name} {value!r}: not a device this machine can use ({reason})") from None
    return device


#: ``python -m monai.bundle run`` arguments that are not config overrides
_RUN_ARGUMENTS = frozenset(
    {"config_file", "meta_file", "logging_file", "args_file", "tracking", "run_id", "init_id", "final_id",
     "workflow_name", "workflow_type"}
)  # fmt: skip


def check_folders(**folders: str) -> None:
    """Refuse a folder setting (e.g. ``output_dir=...``) naming a file, a folder below a file
    (:func:`pengwin_xray.atomic.file_in_the_way`), or a folder that cannot be created or written: its files could
    not be written, and the run would fail only when it first writes one, after its work. Each folder is created
    and a temporary file written and removed in it.

    Raises:
        ValueError: naming the file in the way or the folder, and the setting.
    """
    for name, folder in folders.items():
        blocking = file_in_the_way(folder)
        if blocking == Path(folder):
            raise ValueError(f"{folder}: --{name} is a file, not a folder; choose a folder")
        if blocking is not None:
            raise ValueError(f"{blocking}: is a file, so --{name} {folder} cannot be a folder; choose a folder")
        try:  # the folder is kept: the run writes there (and the processes of a distributed run check it at once)
            Path(folder).mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as err:
            raise ValueError(f"{folder}: --{name} cannot be written ({err.strerror or err})") from None


def check_distinct_folders(**folders: str) -> None:
    """Refuse two folder settings (e.g. ``ckpt_dir=..., localiser_dir=...``) that name the same folder, whose files
    would replace each other's.

    Raises:
        ValueError: naming the folder and both settings.
    """
    seen: dict[str, str] = {}
    for name, folder in folders.items():
        key = os.path.realpath(folder)
        if key in seen:
            raise ValueError(f"{folder}: --{seen[key]} and --{name} are the same folder; give each its own")
        seen[key] = name


def _config_files(value: str) -> list[str]:
    """The ``--config_file`` value as fire reads it: one path, or a Python list of paths."""
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = value
    return [str(path) for path in ensure_tuple(parsed)]


def reject_unknown_overrides(argv: Sequence[str] | None = None) -> None:
    """Fail when a ``--key value`` of the ``monai.bundle`` command line names nothing in the configs it merges
    (:func:`check_override_keys`). Only command lines with ``--config_file`` are checked (``argv`` defaults to
    ``sys.argv``), so workflows built in Python are left alone.

    Raises:
        ValueError: naming the unknown key and the closest known one.
    """
    argv = list(sys.argv if argv is None else argv)
    options = {}
    for index, token in enumerate(argv):
        if token.startswith("--"):
            key, _, value = token[2:].partition("=")
            options[key] = value if value or index + 1 >= len(argv) else argv[index + 1]
    if "config_file" in options:
        check_override_keys(options.keys() - _RUN_ARGUMENTS, _config_files(options["config_file"]))


def check_override_keys(keys: Iterable[str], config_files: Sequence[str]) -> None:
    """Fail when a config id to override names nothing in ``config_files`` merged.

    ``monai.bundle`` adds an unknown key silently, so a misspelt ``--max_epoch 1`` would train the default 40
    epochs. A key must exist in the merged files, except a new argument of a component (``network_def#dropout``),
    whose component must exist.

    Raises:
        ValueError: naming the unknown key and the closest known one.
    """
    parser = ConfigParser(ConfigParser.load_config_files(list(config_files)))
    for key in sorted(keys):
        parent, _, leaf = key.rpartition("#")
        if key in parser or (parent in parser and _takes_new_arguments(parser.get(parent))):
            continue
        while parent and parent not in parser:  # the hint: a key of the deepest config that exists
            parent, _, leaf = parent.rpartition("#")
        siblings = parser.get(parent) if parent else parser.get()
        if isinstance(siblings, (dict, list)):
            known = [str(name) for name in (siblings if isinstance(siblings, dict) else range(len(siblings)))]
        else:  # a key below a single value (--batch_size#x)
            known = []
        close = difflib.get_close_matches(leaf, known, n=1)
        hint = f"; did you mean --{parent + '#' if parent else ''}{close[0]}?" if close else ""
        raise ValueError(f"--{key}: no such setting in {', '.join(map(str, config_files))}{hint}")


def _takes_new_arguments(config: object) -> bool:
    """Whether an override may add a key below ``config``: a component (``_target_``) takes any argument of its
    class, whereas a plain dict of settings (``synthetic``) or a list holds only what the configs define."""
    return isinstance(config, dict) and "_target_" in config
