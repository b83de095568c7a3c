"""Pack the bundle into one self-contained model-zoo archive, ``pengwin_xray_v<version>.zip``.

The archive holds a single folder ``pengwin_xray/`` (the MONAI Bundle Specification's archive format) with
``configs/``, ``models/`` (the ``.pt``, ``.ts`` and ``.onnx`` files present and ``postprocessing.json``, also those
of the other networks' folders at any depth such as ``models/vgg16unet/`` and ``models/vgg16unet/fragments/``),
``scripts/``, ``docs/``, ``LICENSE`` and copies of the ``custom_transforms`` and ``pengwin_xray`` packages next to
``scripts/``. ``python -m monai.bundle run`` started in the unpacked folder puts that folder first on ``sys.path``,
so the configs' ``$import scripts`` and ``$import custom_transforms`` (and the scripts' own imports) find the
copies in the archive without installing anything.

Usage::

    cd bundle && pengwin-package --out dist
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import custom_transforms
import pengwin_xray

from .atomic import atomic_open
from .model_files import chosen_for, export_mismatch, read_choice

__all__ = ["BUNDLE_NAME", "MODEL_SUFFIXES", "bundle_version", "archive_members", "package_bundle", "main"]

logger = logging.getLogger(__name__)

#: name of the archive's top folder and prefix of the archive file name
BUNDLE_NAME = "pengwin_xray"
#: model files packed from ``models/``
MODEL_SUFFIXES: tuple[str, ...] = (".pt", ".ts", ".onnx")
#: training resume checkpoints (``train.json``'s ``train#checkpoint``: ``checkpoint.pt``, and older ``checkpoint_*.pt``):
#: they carry the optimizer and trainer state, which a distributed bundle does not need
_RESUME_CHECKPOINTS = "checkpoint*.pt"
#: folders packed whole, relative to the bundle root
_PACKED_FOLDERS: tuple[str, ...] = ("configs", "scripts", "docs")
#: names never packed: byte-code caches, run outputs and datasets
_EXCLUDED_NAMES = frozenset({"__pycache__", "eval", "data"})
_EXCLUDED_SUFFIXES: tuple[str, ...] = (".pyc", ".pyo")


def bundle_version(bundle_root: str | os.PathLike) -> str:
    """The ``version`` of ``<bundle_root>/configs/metadata.json``, checked to have a ``changelog`` entry.

    Raises:
        FileNotFoundError: no metadata file.
        ValueError: the metadata has no ``version`` string, or its ``changelog`` does not list the version.
    """
    meta_file = Path(bundle_root) / "configs" / "metadata.json"
    if not meta_file.is_file():
        raise FileNotFoundError(f"{meta_file}: bundle metadata not found")
    metadata = json.loads(meta_file.read_text(encoding="utf-8"))
    version = metadata.get("version")
    if not isinstance(version, str) or not version:
        raise ValueError(f"{meta_file}: 'version' must be a non-empty string, got {version!r}")
    if version not in metadata.get("changelog", {}):
        raise ValueError(f"{meta_file}: version {version} has no entry in 'changelog'")
    return version


def _tree_files(folder: Path) -> Iterator[Path]:
    """Files under ``folder`` in sorted order, skipping excluded folders and byte code."""
    for path in sorted(folder.rglob("*")):
        relative_parts = path.relative_to(folder).parts
        if any(part in _EXCLUDED_NAMES for part in relative_parts) or path.suffix in _EXCLUDED_SUFFIXES:
            continue
        if path.is_file():
            yield path


def _model_files(folder: Path) -> list[Path]:
    """The model files directly in ``folder`` (weights and exports, no resume checkpoint) and, with them, the
    post-processing chosen for them.

    Raises:
        ValueError: when an export was not exported from the ``model.pt`` beside it (inference would refuse it), or
            that ``postprocessing.json`` was chosen for another ``model.pt`` (its digest differs).
    """
    files = [
        path
        for path in sorted(folder.glob("*"))
        if path.is_file() and path.suffix in MODEL_SUFFIXES and not path.match(_RESUME_CHECKPOINTS)
    ]
    weights = folder / custom_transforms.BEST_MODEL_FILE
    for export in files:
        mismatch = export_mismatch(export, weights) if export.suffix != ".pt" and weights.is_file() else None
        if mismatch:
            raise ValueError(f"{export}: exported from another model than {weights} ({mismatch}); export it again "
                             "(README, 'Export and sharing') or remove it before packing")
    tuned = folder / custom_transforms.TUNED_POSTPROCESSING_FILE
    if files and tuned.is_file():
        if not chosen_for(read_choice(tuned), weights):
            raise ValueError(f"{tuned}: chosen for another model than {weights}; choose again "
                             "(configs/choose_postprocessing.json) or remove it before packing")
        files.append(tuned)
    return files


def archive_members(bundle_root: str | os.PathLike) -> list[tuple[Path, str]]:
    """``(source file, name in the archive)`` for every file the archive holds, in archive order.

    Raises:
        FileNotFoundError: a required part (``configs/``, ``scripts/``, ``docs/``, ``LICENSE``) is missing.
    """
    root = Path(bundle_root).resolve()
    members: list[tuple[Path, str]] = []
    for folder in _PACKED_FOLDERS:
        if not (root / folder).is_dir():
            raise FileNotFoundError(f"{root / folder}: bundle folder missing")
        members += [(path, f"{BUNDLE_NAME}/{path.relative_to(root).as_posix()}") for path in _tree_files(root / folder)]
    license_file = root / "LICENSE"
    if not license_file.is_file():
        raise FileNotFoundError(f"{license_file}: bundle licence missing")
    members.append((license_file, f"{BUNDLE_NAME}/LICENSE"))
    models = root / "models"
    packed_models = _model_files(models)
    # the other networks' folders travel with them, at any depth (models/vgg16unet/ of train_vgg16.json and its
    # two-stage models/vgg16unet/fragments/)
    for network_folder in sorted(path for path in models.rglob("*") if path.is_dir()):
        packed_models += _model_files(network_folder)
    if not packed_models:
        logger.warning(f"{models}: no model file ({', '.join(MODEL_SUFFIXES)}); the archive holds no weights")
    elif not (models / "model.pt").is_file():
        logger.warning(f"{models}: no model.pt, which the MONAI Bundle Specification requires")
    members += [(path, f"{BUNDLE_NAME}/{path.relative_to(root).as_posix()}") for path in packed_models]
    # the installed (or repository) copies of the packages the scripts import, whichever this interpreter imports
    for package in (custom_transforms, pengwin_xray):
        package_root = Path(package.__file__).resolve().parent
        members += [
            (path, f"{BUNDLE_NAME}/{package.__name__}/{path.relative_to(package_root).as_posix()}")
            for path in _tree_files(package_root)
        ]
    return members


def package_bundle(out_dir: str | os.PathLike, bundle_root: str | os.PathLike | None = None) -> Path:
    """Write ``<out_dir>/pengwin_xray_v<version>.zip`` from ``bundle_root`` (default: the current folder).

    The archive is written to a temporary file in ``out_dir`` and moved into place only when complete.

    Returns:
        the archive path.
    """
    root = Path(bundle_root if bundle_root is not None else ".")
    version = bundle_version(root)
    members = archive_members(root)
    archive = Path(out_dir) / f"{BUNDLE_NAME}_v{version}.zip"
    with atomic_open(archive) as handle, zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_DEFLATED) as zipped:
        for source, name in members:
            zipped.write(source, name)
    logger.info(f"wrote {archive} ({len(members)} files)")
    return archive


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``pengwin-package --out DIR [--bundle_root DIR]``; prints the archive path. Returns nothing: a
    console script exits with what ``main`` returns."""
    parser = argparse.ArgumentParser(prog="pengwin-package", description="Pack the bundle into a model-zoo archive.")
    parser.add_argument("--out", required=True, help="folder to write pengwin_xray_v<version>.zip into")
    parser.add_argument("--bundle_root", default=None, help="bundle folder (default: the current folder)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        archive = package_bundle(args.out, args.bundle_root)
    except (OSError, ValueError) as err:
        raise SystemExit(f"pengwin-package: {err}") from None
    print(archive)


if __name__ == "__main__":
    main()
