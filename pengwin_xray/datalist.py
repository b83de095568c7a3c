"""List a PENGWIN root as a MONAI datalist: pair images and labels by name and split by patient.

A PENGWIN root holds ``<root>/<split>/input/images/x-ray/CCC_PPPP.tif`` (raw X-rays) and
``<root>/<split>/output/images/x-ray/CCC_PPPP.tif`` (bit-map labels), ``CCC`` being the patient (CT) and
``PPPP`` the projection; ``<root>/input/images/x-ray`` (a split folder given directly) works too. Labelled
pairs are split by patient, in patient order, into training, test and validation (the first 70% of patients
train, the next 15% test, the last 15% validation by default), so no patient is in two splits. Images
without labels are listed under ``inference``.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from custom_transforms.io import read_fragment_label, read_xray_image, tiff_stem, tiffs_by_stem

from .atomic import check_writable, write_json_atomic

__all__ = [
    "IMAGE_SUBDIR",
    "LABEL_SUBDIR",
    "PENGWIN_NAME",
    "patient_id",
    "source_of",
    "training_sources",
    "check_held_out",
    "check_choice_data",
    "split_folders",
    "find_pairs",
    "split_by_patient",
    "build_datalist",
    "load_datalist",
    "require_splits",
    "check_datalist_files",
    "main",
]

logger = logging.getLogger(__name__)

IMAGE_SUBDIR = Path("input", "images", "x-ray")
LABEL_SUBDIR = Path("output", "images", "x-ray")
_SPLITS = ("training", "validation", "test", "inference")
#: the start of a PENGWIN file name: patient (CT) ``CCC`` and projection ``PPPP`` of ``CCC_PPPP.tif``
PENGWIN_NAME = re.compile(r"^(\d+)_(\d+)")


def patient_id(path: str | Path) -> str:
    """The patient (CT) id ``CCC`` of a ``CCC_PPPP.tif`` file name."""
    match = PENGWIN_NAME.fullmatch(tiff_stem(path))
    if match is None:
        raise ValueError(f"{path}: file name does not follow the PENGWIN pattern CCC_PPPP.tif")
    return match.group(1)


def source_of(item: Mapping[str, str]) -> str:
    """What a datalist item's image was taken of, for keeping splits apart: ``"patient CCC"`` for a PENGWIN name
    (its views share the patient's CT), ``"image <path>"`` otherwise."""
    match = PENGWIN_NAME.fullmatch(tiff_stem(item["image"]))
    return f"patient {match.group(1)}" if match else f"image {item['image']}"


def training_sources(
    dataset: str, training: Sequence[Mapping[str, str]], validation: Sequence[Mapping[str, str]] = ()
) -> dict[str, Any]:
    """What a model was trained and validated on, as ``postprocessing.json`` records it: the ``dataset`` (an
    identity: a folder, or the built-in synthetic generator and its seed), the sorted :func:`source_of` keys of its
    ``training`` and ``validation`` items together (``sources``) and of the validation items alone (``validation``,
    on which its post-processing may be chosen again)."""
    return {
        "dataset": str(dataset),
        "sources": sorted({source_of(item) for item in [*training, *validation]}),
        "validation": sorted({source_of(item) for item in validation}),
    }


def _seen_sources(
    trained_on: Mapping[str, Any] | None, dataset: str, items: Sequence[Mapping[str, str]], allowed: Sequence[str] = ()
) -> list[str]:
    """The :func:`source_of` keys of ``items`` that ``trained_on`` (:func:`training_sources`) records for ``dataset``,
    less the ``allowed`` ones; none for another dataset (its patient numbers name other patients) or no record."""
    if not trained_on or trained_on.get("dataset") != str(dataset):
        return []
    return sorted({source_of(item) for item in items} & set(trained_on.get("sources", ())) - set(allowed))


def _listed(sources: Sequence[str]) -> str:
    """The first three ``sources`` and how many more."""
    return ", ".join(sources[:3]) + (f" and {len(sources) - 3} more" if len(sources) > 3 else "")


def check_held_out(trained_on: Mapping[str, Any] | None, dataset: str, test_items: Sequence[Mapping[str, str]]) -> None:
    """Refuse to score a model on test items of the dataset it was trained on (``trained_on``, from
    :func:`training_sources`) whose patients it was trained or validated on: its scores would pass for held-out ones.

    Another dataset is not compared (its patient numbers name other patients), nor a model with no record.

    Raises:
        ValueError: naming the dataset and the first patients (or images) seen in training.
    """
    seen = _seen_sources(trained_on, dataset, test_items)
    if seen:
        raise ValueError(
            f"{dataset}: the test split holds {_listed(seen)}, which this model was trained or validated on (a "
            "dataset split otherwise than for its training, e.g. another --synthetic size or patient count); its "
            "scores would not be held out: evaluate on the data it was trained with"
        )


def check_choice_data(
    trained_on: Mapping[str, Any] | None, dataset: str, validation_items: Sequence[Mapping[str, str]]
) -> None:
    """Refuse to choose a model's post-processing again on validation items of the dataset it was trained on
    (``trained_on``, from :func:`training_sources`) whose patients it was trained on: a choice fitted to its training
    images would fail on new ones. Its own validation patients are what the choice is made on; a record without
    them (``postprocessing.json`` of bundle 0.14.4) cannot tell the two apart and is not compared.

    Raises:
        ValueError: naming the dataset and the first patients (or images) trained on.
    """
    if not trained_on or "validation" not in trained_on:
        return
    trained = _seen_sources(trained_on, dataset, validation_items, allowed=trained_on["validation"])
    if trained:
        raise ValueError(
            f"{dataset}: the validation split holds {_listed(trained)}, which this model was trained on (a dataset "
            "split otherwise than for its training, e.g. another --synthetic size or patient count); a post-processing "
            "chosen on them would fit its training images: choose on the data it was trained with"
        )


def split_folders(root: str | Path) -> list[Path]:
    """The split folders of a PENGWIN root (those holding ``input/images/x-ray``), or ``[root]`` for a split folder."""
    root = Path(root)
    if (root / IMAGE_SUBDIR).is_dir():
        return [root]
    return sorted(child for child in root.iterdir() if (child / IMAGE_SUBDIR).is_dir())


def find_pairs(root: str | Path, allow_unpaired: bool = False) -> tuple[list[dict], list[dict]]:
    """Pair images and labels by file name under every split folder of ``root``.

    Returns:
        ``(pairs, unlabelled)``: ``{"image", "label"}`` items and ``{"image"}`` items, sorted by name.

    Raises:
        FileNotFoundError: ``root`` is missing or holds no PENGWIN image folder.
        NotADirectoryError: ``root`` is a file.
        ValueError: no image at all, or (unless ``allow_unpaired``) some labels lack an image or, in a
            labelled root, some images lack a label; every unpaired name is listed.
    """
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"{root}: is a file, not a dataset folder")
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: dataset folder does not exist")
    folders = split_folders(root)
    if not folders:
        raise FileNotFoundError(f"{root}: no '<split>/{IMAGE_SUBDIR.as_posix()}' folder found (PENGWIN layout)")
    pairs, unlabelled, unpaired = [], [], []
    for folder in folders:
        images, labels = tiffs_by_stem(folder / IMAGE_SUBDIR), tiffs_by_stem(folder / LABEL_SUBDIR)
        for name, image in images.items():
            patient_id(image)
            if name in labels:
                pairs.append({"image": str(image.resolve()), "label": str(labels[name].resolve())})
            else:
                unlabelled.append({"image": str(image.resolve())})
        unpaired += [f"label without image: {labels[name]}" for name in sorted(set(labels) - set(images))]
    if not pairs and not unlabelled:
        raise ValueError(f"{root}: empty dataset, no .tif image found")
    if pairs:
        unpaired += [f"image without label: {item['image']}" for item in unlabelled]
    if unpaired:
        message = f"{root}: {len(unpaired)} unpaired file(s):\n  " + "\n  ".join(unpaired)
        if not allow_unpaired:
            raise ValueError(message)
        logger.warning(message)
    return pairs, unlabelled


def split_by_patient(
    items: Sequence[dict], train_fraction: float = 0.70, test_fraction: float = 0.15
) -> dict[str, list[dict]]:
    """Split items by patient, in patient order: first ``train_fraction`` of patients train, the next
    ``test_fraction`` test, the rest validation. With three or more patients every split gets at least one."""
    if not (0 < train_fraction and 0 < test_fraction and train_fraction + test_fraction < 1):
        raise ValueError(
            f"need 0 < train, 0 < test (a test split to score on), train + test < 1; got {train_fraction}, "
            f"{test_fraction}"
        )
    patients = sorted({patient_id(item["image"]) for item in items})
    count = len(patients)
    n_train = max(1, round(train_fraction * count))
    n_test = round(test_fraction * count)
    if count >= 3:
        n_test = max(1, n_test)
        n_train = min(n_train, count - n_test - 1)
    n_test = min(n_test, count - n_train)
    groups = {
        "training": set(patients[:n_train]),
        "test": set(patients[n_train : n_train + n_test]),
        "validation": set(patients[n_train + n_test :]),
    }
    return {split: [item for item in items if patient_id(item["image"]) in group] for split, group in groups.items()}


def build_datalist(
    root: str | Path, train_fraction: float = 0.70, test_fraction: float = 0.15, allow_unpaired: bool = False
) -> dict[str, list[dict]]:
    """The MONAI datalist of a PENGWIN root: ``training``, ``validation``, ``test`` and ``inference`` lists of
    items with absolute paths (see :func:`find_pairs` and :func:`split_by_patient`)."""
    pairs, unlabelled = find_pairs(root, allow_unpaired)
    datalist = split_by_patient(pairs, train_fraction, test_fraction) if pairs else {}
    return {
        "training": datalist.get("training", []),
        "validation": datalist.get("validation", []),
        "test": datalist.get("test", []),
        "inference": unlabelled,
    }


def load_datalist(path: str | Path) -> dict[str, list[dict]]:
    """Read a datalist JSON (as written by ``pengwin-datalist``); every file it names must exist. Relative paths
    are taken from the datalist's folder, as MONAI's ``load_decathlon_datalist`` takes them.

    Raises:
        FileNotFoundError: the JSON is missing, or it names missing files (all listed at once).
        ValueError: the JSON is not a datalist (training/validation/test lists of ``{"image", "label"}``; inference
            items need no label), or a patient (an image, for names not of the PENGWIN pattern) is in two of the
            training, validation and test splits.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: datalist file not found")
    try:
        datalist = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(datalist, dict) or not all(isinstance(datalist.get(key, []), list) for key in _SPLITS):
        raise ValueError(f"{path}: expected a JSON object with lists {_SPLITS}")
    missing = []
    for split in _SPLITS:
        needed = ("image",) if split == "inference" else ("image", "label")
        for item in datalist.get(split, []):
            if not isinstance(item, dict) or not all(isinstance(item.get(key), str) for key in needed):
                paths = " and ".join(map(repr, needed))
                raise ValueError(f"{path}: every {split} item needs {paths} paths, got {item!r}")
            for key in ("image", "label"):
                if key in item:
                    item[key] = str(path.parent / item[key])  # an absolute path stays as it is
                    if not Path(item[key]).is_file():
                        missing.append(f"{split}: {item[key]}")
    if missing:
        raise FileNotFoundError(f"{path} names {len(missing)} missing file(s):\n  " + "\n  ".join(missing))
    split_of: dict[str, str] = {}  # a patient (PENGWIN names) or an image (other names) in one labelled split only
    for split in _SPLITS[:3]:
        for item in datalist.get(split, []):
            key = source_of(item)
            if split_of.setdefault(key, split) != split:
                raise ValueError(f"{path}: {key} is in the {split_of[key]} and the {split} split; a model would be "
                                 "chosen or scored on what it trained on (split by patient: pengwin-datalist)")
    return {split: datalist.get(split, []) for split in _SPLITS}


def require_splits(datalist: Mapping[str, Sequence[dict]], splits: Sequence[str]) -> None:
    """Raise before any work when one of ``splits`` of ``datalist`` has no item, naming it and the split sizes."""
    empty = [split for split in splits if not datalist.get(split)]
    if empty:
        sizes = ", ".join(f"{split} {len(datalist.get(split) or [])}" for split in _SPLITS[:3])
        raise ValueError(
            f"no {' and no '.join(empty)} images (datalist: {sizes}); a PENGWIN root needs at least 3 patients to be "
            f"split by patient, or give a --datalist_file that lists {' and '.join(empty)} items"
        )


def check_datalist_files(items: Sequence[dict], expected_shape: Sequence[int] | None = None) -> None:
    """Read and validate every listed file before any work starts; raise once, listing every bad file.

    Checks existence, TIFF readability, dtype, size, positive finite intensities, label bits, image/label size
    agreement and that all images have one size (batches stack them), so a long run never dies on a bad file
    hours in.
    """
    problems = []
    sizes: dict[tuple[int, ...], list[str]] = {}
    for item in items:
        try:
            image = read_xray_image(item["image"], expected_shape)
            sizes.setdefault(image.shape, []).append(str(item["image"]))
            if "label" in item:
                label = read_fragment_label(item["label"], expected_shape)
                if label.shape != image.shape:
                    problems.append(f"{item['label']}: label shape {label.shape} != image shape {image.shape}")
        except (OSError, ValueError) as err:
            problems.append(str(err))
    if len(sizes) > 1:
        common = max(sizes, key=lambda shape: len(sizes[shape]))
        problems += [
            f"{path}: image of shape {shape}, while {len(sizes[common])} others are {common} (batches need one size)"
            for shape, paths in sizes.items()
            if shape != common
            for path in paths
        ]
    if problems:
        raise ValueError(f"{len(problems)} bad file(s) of {len(items)}:\n  " + "\n  ".join(problems))


def main(argv: Sequence[str] | None = None) -> None:
    """Console command ``pengwin-datalist ROOT --out datalist.json``."""
    parser = argparse.ArgumentParser(prog="pengwin-datalist", description=__doc__.splitlines()[0])
    parser.add_argument("root", help="PENGWIN root folder")
    parser.add_argument("--out", required=True, help="datalist JSON to write")
    parser.add_argument("--train-fraction", type=float, default=0.70)
    parser.add_argument("--test-fraction", type=float, default=0.15)
    parser.add_argument("--allow-unpaired", action="store_true", help="warn about unpaired files instead of failing")
    args = parser.parse_args(argv)
    try:
        check_writable(args.out)
        datalist = build_datalist(args.root, args.train_fraction, args.test_fraction, args.allow_unpaired)
        write_json_atomic(args.out, datalist)
    except (OSError, ValueError) as err:
        raise SystemExit(f"pengwin-datalist: {err}") from None
    print(", ".join(f"{key}: {len(items)}" for key, items in datalist.items()), f"-> {args.out}")
