"""Atomic file writing, used for every file the bundle writes (checkpoints go through ignite's own atomic saver).

A file is written to a temporary file in the target folder and renamed into place only once complete, so a
killed run never leaves half a file where a good one was.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = [
    "file_in_the_way",
    "check_writable",
    "atomic_open",
    "write_json_atomic",
    "remove_stale_temporaries",
    "file_sha256",
]

logger = logging.getLogger(__name__)

#: the suffix of :func:`atomic_open`'s temporary files, which no other program uses
TEMPORARY_SUFFIX = ".pengwin.tmp"
#: :func:`atomic_open`'s temporary files: ``.<name>.<random>.pengwin.tmp``
TEMPORARY_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]+" + re.escape(TEMPORARY_SUFFIX) + "$")
#: ignite's atomic ``DiskSaver`` writes a checkpoint to ``tmp<random>`` first: Python's ``tempfile`` naming, which
#: other programs share, so such a file is taken for a left-behind checkpoint only in a checkpoint folder
CHECKPOINT_TEMPORARY_NAME = re.compile(r"^tmp[A-Za-z0-9_]{8}$")


def file_in_the_way(folder: str | os.PathLike) -> Path | None:
    """The first of ``folder`` and the folders above it that exists but is no folder, so that ``folder`` can be
    neither used nor created; ``None`` when there is none."""
    folder = Path(folder)
    return next((path for path in (folder, *folder.parents) if path.exists() and not path.is_dir()), None)


def check_writable(path: str | os.PathLike) -> Path:
    """``path`` as a file that can be written (its folders created if needed); checked before a long job writes it.

    Raises:
        IsADirectoryError: ``path`` is a folder.
        NotADirectoryError: a folder above it is a file.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a folder, not a file to write")
    blocking = file_in_the_way(path.parent)
    if blocking is not None:
        raise NotADirectoryError(f"{blocking}: is a file, so {path} cannot be written")
    return path


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Yield a handle on a temporary file next to ``path`` (created with its folders); on success it replaces
    ``path``, on any failure it is removed and ``path`` is left as it was.

    Args:
        path: the file to write.
        mode: ``"wb"`` or ``"w"`` (text, UTF-8, no newline translation).

    Raises:
        OSError: as :func:`check_writable`, before anything is written.
    """
    path = check_writable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX)
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


def remove_stale_temporaries(
    folder: str | os.PathLike, min_age_s: float = 60.0, checkpoints: bool = False
) -> list[Path]:
    """Delete the temporary files that killed atomic writes left directly in ``folder``; return them.

    A file counts as left behind when it bears :func:`atomic_open`'s temporary name (:data:`TEMPORARY_NAME`), or, in
    a checkpoint folder (``checkpoints``), ignite's (:data:`CHECKPOINT_TEMPORARY_NAME`), and it has not been written
    for ``min_age_s`` seconds, so a write in progress elsewhere is not touched. A missing folder is fine.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    names = [TEMPORARY_NAME, CHECKPOINT_TEMPORARY_NAME] if checkpoints else [TEMPORARY_NAME]
    now = time.time()
    stale = [
        path
        for path in sorted(folder.iterdir())
        if path.is_file()
        and any(name.match(path.name) for name in names)
        and now - path.stat().st_mtime >= min_age_s
    ]
    for path in stale:
        path.unlink(missing_ok=True)
        logger.info(f"removed {path}: a temporary file left by an interrupted write")
    return stale


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, as hex: what ties a choice or a tracked run to one model file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
