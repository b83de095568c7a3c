"""Atomic file writing, used for every file the bundle writes (checkpoints go through ignite's own atomic saver).

A file is written to a temporary file in the target folder and renamed into place only once complete, so a
killed run never leaves half a file where a good one was.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_open", "write_json_atomic"]


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Yield a handle on a temporary file next to ``path`` (created with its folders); on success it replaces
    ``path``, on any failure it is removed and ``path`` is left as it was.

    Args:
        path: the file to write.
        mode: ``"wb"`` or ``"w"`` (text, UTF-8, no newline translation).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(descriptor)  # reopened by name: tifffile and PIL want a handle whose ``name`` is a path
    text = {} if "b" in mode else {"encoding": "utf-8", "newline": ""}
    try:
        with open(temp_name, mode, **text) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp_name, 0o644)  # mkstemp creates 0600; outputs are meant to be read by others
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | os.PathLike, content: Any) -> Path:
    """Write ``content`` as indented JSON to ``path`` atomically; return the path."""
    with atomic_open(path, "w") as handle:
        json.dump(content, handle, indent=2)
        handle.write("\n")
    return Path(path)
