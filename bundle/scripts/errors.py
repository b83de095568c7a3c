"""One-line reports of user errors (a bad file, setting or folder) in runs started with ``python -m monai.bundle``."""

from __future__ import annotations

import os
import sys
from types import TracebackType

__all__ = ["DEBUG_VARIABLE", "USER_ERRORS", "root_cause", "report_user_errors_in_one_line"]

#: set this environment variable (to anything) to see full tracebacks of user errors too
DEBUG_VARIABLE = "PENGWIN_DEBUG"
#: what the bundle's checks raise for bad input: files, folders and settings, each message naming the culprit
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)


def root_cause(error: BaseException) -> BaseException:
    """What to report of a ``raise ... from ...`` chain: its outermost user error (:data:`USER_ERRORS`), e.g. the
    check behind MONAI's ``Failed to evaluate`` rather than the library error that check explains, or the chain's
    first exception when it holds none."""
    while not isinstance(error, USER_ERRORS) and error.__cause__ is not None:
        error = error.__cause__
    return error


def _one_line_hook(kind: type[BaseException], error: BaseException, traceback: TracebackType | None) -> None:
    cause = root_cause(error)
    if isinstance(cause, USER_ERRORS) and not os.environ.get(DEBUG_VARIABLE):
        print(f"error: {cause} (set {DEBUG_VARIABLE}=1 for the traceback)", file=sys.stderr, flush=True)
        return
    if isinstance(error, KeyboardInterrupt) and not os.environ.get(DEBUG_VARIABLE):  # Python still exits by SIGINT
        print(f"interrupted (set {DEBUG_VARIABLE}=1 for the traceback)", file=sys.stderr, flush=True)
        return
    sys.__excepthook__(kind, error, traceback)


def report_user_errors_in_one_line() -> None:
    """Make an uncaught user error end the run with one line on stderr (and exit status 1).

    MONAI wraps every error raised while a config expression is evaluated in ``RuntimeError: Failed to evaluate
    ConfigExpression`` and Python prints the whole chain, 50 to 330 lines with the useful message somewhere
    inside. This installs a ``sys.excepthook`` that prints only ``error: <message>`` when the root cause is one of
    :data:`USER_ERRORS`, and ``interrupted`` for Ctrl-C; anything else (a bug) keeps its full traceback, and so does
    everything when the environment variable :data:`DEBUG_VARIABLE` is set. The configs call it first in ``initialize``.
    """
    sys.excepthook = _one_line_hook
