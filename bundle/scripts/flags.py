"""Command-line switches: ``monai.bundle``'s parser (fire) passes ``--resume true`` on as the string "true"."""

from __future__ import annotations

__all__ = ["as_flag"]


def as_flag(value: bool | int | str) -> bool:
    """A switch from a config or the command line as a bool (``"true"`` would otherwise count as set).

    Raises:
        ValueError: for anything but a bool, 0/1 or "true"/"false"/"1"/"0" (any case).
    """
    if isinstance(value, (bool, int)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise ValueError(f"expected a switch (true/false), got {value!r}")
