"""Settings from configs and the command line, checked where they enter: switches (fire passes "true" as a string)
and numbers, each error naming the setting."""

from __future__ import annotations

__all__ = ["as_flag", "as_positive_number", "as_count"]


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


def as_positive_number(value: float | int | str, name: str) -> float:
    """A setting that must be a number above 0 (a learning rate, a time), as a float.

    Raises:
        ValueError: naming the setting, for anything else (text, 0, negative, NaN, infinite).
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or not 0.0 < number < float("inf"):
        raise ValueError(f"{name} must be a number above 0, got {value!r}")
    return number


def as_count(value: int | str, name: str, minimum: int = 1) -> int:
    """A setting that must be a whole number of at least ``minimum`` (epochs, batch size, workers), as an int.

    Raises:
        ValueError: naming the setting, for anything else (text, fractions, numbers below ``minimum``).
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or not (number >= minimum and number.is_integer()):
        raise ValueError(f"{name} must be a whole number, {minimum} or more, got {value!r}")
    return int(number)
