"""Dataset fingerprint of a PENGWIN X-ray folder: what the images and bit maps hold, measured.

Like nnU-Net's dataset fingerprint (sizes, spacings and foreground intensities of a dataset, read once before
any planning), but for the statistics that make PENGWIN Task 2 hard: how much of a view is bone, how much of
it carries several overlapping fragments, and how small the fragments are. It reads a PENGWIN root
(``<root>/<split>/input|output/images/x-ray``), one split folder, or a flat folder of TIFFs named
``CCC_PPPP*.tif`` (float TIFFs are X-rays, integer TIFFs bit maps); labels are optional.

Every label statistic is a share of the image's pixels, so views of any size compare:

- bone coverage: pixels carrying any bit; overlap: pixels carrying more than one bit;
- fragment area: pixels of one fragment (one bit) in one view; a fragment is "below 1%" when it covers less
  than 1% of the image;
- per bone (SA, LI, RI): how often it is in view, its coverage, and its fragment count when present.

Images: size, dtype, raw intensity range and percentiles (sampled pixels), and the mean histogram of the
official neg-log window.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from collections.abc import Sequence
from contextlib import ExitStack
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm import tqdm

from custom_transforms.constants import CATEGORY_NAMES, FIRST_TOOL_PROJECTION, MAX_FRAGMENTS, NUM_CHANNELS, fragment_bit
from custom_transforms.intensity import NegLogWindow
from custom_transforms.io import list_tiffs, read_fragment_label, read_xray_image, stored_dtype

from .atomic import check_writable, write_json_atomic
from .datalist import IMAGE_SUBDIR, LABEL_SUBDIR, PENGWIN_NAME

__all__ = ["AREA_THRESHOLDS", "list_files", "measure_image", "measure_label", "fingerprint", "format_table", "main"]

#: fragment areas (share of the image) the fragment-size distribution is cut at
AREA_THRESHOLDS = (0.005, 0.01, 0.05)
_HISTOGRAM_BINS = 10
_PIXELS_SAMPLED = 2000  # raw intensities sampled (with replacement) per image for the dataset percentiles
_FILES_PER_CHUNK = 16  # files a worker reads per task batch
_MIN_FILES_PER_WORKER = 5000  # a worker spends seconds importing torch: below this, one process is faster
_BITS = np.arange(1, NUM_CHANNELS + 1, dtype=np.uint32)
_BONE_MASKS = [
    sum(1 << fragment_bit(category, f) for f in range(1, MAX_FRAGMENTS + 1))
    for category in range(1, len(CATEGORY_NAMES) + 1)
]


def _tiffs(folder: Path) -> list[Path]:
    return [p for p in list_tiffs(folder) if PENGWIN_NAME.match(p.name)] if folder.is_dir() else []


def list_files(root: str | os.PathLike) -> tuple[list[Path], list[Path]]:
    """The X-ray images and bit-map labels under ``root``: a PENGWIN root, a split folder or a flat folder.

    In a flat folder each ``CCC_PPPP*.tif`` is sorted by its TIFF sample format: float = image, integer = label.

    Raises:
        NotADirectoryError: ``root`` is a file.
        FileNotFoundError: ``root`` does not exist or holds no PENGWIN TIFF.
    """
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"{root}: is a file, not a folder (give the folder that holds the TIFFs)")
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: folder does not exist")
    splits = [root] if (root / IMAGE_SUBDIR).is_dir() or (root / LABEL_SUBDIR).is_dir() else sorted(
        child for child in root.iterdir() if (child / IMAGE_SUBDIR).is_dir() or (child / LABEL_SUBDIR).is_dir()
    )
    if splits:
        images = [p for split in splits for p in _tiffs(split / IMAGE_SUBDIR)]
        labels = [p for split in splits for p in _tiffs(split / LABEL_SUBDIR)]
    else:
        images, labels = [], []
        for path in _tiffs(root):
            try:
                is_float = np.issubdtype(stored_dtype(path)[0], np.floating)
            except Exception:  # tifffile raises many types; an unreadable file is reported when measured
                is_float = True
            (images if is_float else labels).append(path)
    if not images and not labels:
        raise FileNotFoundError(
            f"{root}: no CCC_PPPP.tif file, neither in '<split>/{IMAGE_SUBDIR.as_posix()}' folders nor directly"
        )
    return images, labels


def _name_parts(path: Path) -> tuple[str, int]:
    match = PENGWIN_NAME.match(path.name)
    return match.group(1), int(match.group(2))


def measure_image(path: str | os.PathLike, seed: int = 0) -> dict:
    """Size, dtype, raw range, sampled raw pixels and the neg-log histogram (share per bin) of one X-ray."""
    image = read_xray_image(path)
    dtype = str(stored_dtype(path)[0])
    window = np.asarray(NegLogWindow()(image))
    # bincount of the bin indices: np.histogram's general path is 5x slower on a 448 image
    bins = np.minimum((window * _HISTOGRAM_BINS).astype(np.intp), _HISTOGRAM_BINS - 1)
    histogram = np.bincount(bins.ravel(), minlength=_HISTOGRAM_BINS) / image.size
    pixels = np.random.default_rng(seed).integers(0, image.size, min(_PIXELS_SAMPLED, image.size))
    return {
        "shape": f"{image.shape[0]}x{image.shape[1]}",
        "dtype": dtype,
        "min": float(image.min()),
        "max": float(image.max()),
        "sample": image.ravel()[pixels],
        "neglog_histogram": histogram,
    }


def measure_label(path: str | os.PathLike) -> dict:
    """Coverage, overlap and per-fragment areas (shares of the image) of one bit map.

    Everything comes from the histogram of the distinct pixel values (a view holds a few dozen): a value's
    bits say which fragments its pixels belong to.
    """
    label = read_fragment_label(path).view(np.uint32)
    dtype = str(stored_dtype(path)[0])
    values, counts = np.unique(label, return_counts=True)
    shares = counts / label.size
    in_bit = ((values[:, None] >> _BITS) & 1).astype(bool)  # [distinct values, 30]
    bit_areas = shares @ in_bit
    return {
        "shape": f"{label.shape[0]}x{label.shape[1]}",
        "dtype": dtype,
        "coverage": float(shares[values != 0].sum()),
        "overlap": float(shares[np.bitwise_count(values) > 1].sum()),
        "bone_coverage": [float(shares[(values & mask) != 0].sum()) for mask in _BONE_MASKS],
        "fragment_areas": {int(bit): float(area) for bit, area in zip(_BITS, bit_areas) if area > 0},
    }


def _single_threaded() -> None:
    """Worker start: one torch thread per process, so that the workers do not oversubscribe the cores."""
    import torch

    torch.set_num_threads(1)


def _measure(task: tuple[str, str, int]) -> tuple[str, str, dict | str]:
    """Worker: measure one file; a file that cannot be read gives its one-line problem instead."""
    kind, path, seed = task
    try:
        result = measure_image(path, seed) if kind == "image" else measure_label(path)
    except (OSError, ValueError) as err:
        return kind, path, str(err)
    return kind, path, result


def _stats(values: Sequence[float]) -> dict[str, float]:
    if not len(values):
        return {}
    array = np.asarray(values, np.float64)
    return {
        "mean": float(array.mean()),
        "std": float(array.std()),
        "min": float(array.min()),
        "median": float(np.median(array)),
        "max": float(array.max()),
    }


def _sample(paths: list[Path], max_images: int | None, seed: int) -> list[Path]:
    if max_images is None or len(paths) <= max_images:
        return paths
    chosen = np.random.default_rng(seed).choice(len(paths), max_images, replace=False)
    return [paths[i] for i in sorted(chosen)]


def _summarise_images(paths: list[Path], results: list[dict]) -> dict:
    patients = {_name_parts(p)[0] for p in paths}
    summary: dict = {
        "count": len(results),
        "patients": len(patients),
        "tool_projections": sum(_name_parts(p)[1] >= FIRST_TOOL_PROJECTION for p in paths),
    }
    if not results:
        return summary
    samples = np.concatenate([r["sample"] for r in results])
    summary.update(
        shapes=dict(Counter(r["shape"] for r in results)),
        dtypes=dict(Counter(r["dtype"] for r in results)),
        raw_intensity={
            "min": min(r["min"] for r in results),
            "max": max(r["max"] for r in results),
            **{f"p{q:g}": float(np.percentile(samples, q)) for q in (0.5, 50, 99.5)},
        },
        neglog_histogram={
            "bin_edges": np.linspace(0.0, 1.0, _HISTOGRAM_BINS + 1).round(3).tolist(),
            "share": np.mean([r["neglog_histogram"] for r in results], axis=0).round(4).tolist(),
        },
    )
    return summary


def _summarise_labels(paths: list[Path], results: list[dict]) -> dict:
    summary: dict = {"count": len(results), "patients": len({_name_parts(p)[0] for p in paths})}
    if not results:
        return summary
    areas = np.array([a for r in results for a in r["fragment_areas"].values()])
    per_image = [len(r["fragment_areas"]) for r in results]
    bones = {}
    for index, name in enumerate(CATEGORY_NAMES):
        bits = range(fragment_bit(index + 1, 1), fragment_bit(index + 1, MAX_FRAGMENTS) + 1)
        counts = [sum(bit in r["fragment_areas"] for bit in bits) for r in results]
        present = [c for c in counts if c]
        bones[name] = {
            "in_view": len(present) / len(results),
            "coverage": _stats([r["bone_coverage"][index] for r in results]),
            "fragments_when_in_view": {**_stats(present), "histogram": dict(sorted(Counter(present).items()))},
        }
    main_bits = [fragment_bit(category, 1) for category in range(1, len(CATEGORY_NAMES) + 1)]
    main_areas = [r["fragment_areas"][bit] for r in results for bit in main_bits if bit in r["fragment_areas"]]
    summary.update(
        shapes=dict(Counter(r["shape"] for r in results)),
        dtypes=dict(Counter(r["dtype"] for r in results)),
        bone_coverage=_stats([r["coverage"] for r in results]),
        overlap=_stats([r["overlap"] for r in results]),
        fragments_per_image={**_stats(per_image), "histogram": dict(sorted(Counter(per_image).items()))},
        bones=bones,
        fragment_area={
            "count": int(areas.size),
            **_stats(areas),
            "share_below": {f"{t:.1%}": float((areas < t).mean()) if areas.size else 0.0 for t in AREA_THRESHOLDS},
        },
        main_fragment_area=_stats(main_areas),
    )
    return summary


def fingerprint(
    root: str | os.PathLike,
    max_images: int | None = None,
    workers: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """The fingerprint of the images and labels under ``root`` (see the module docstring).

    Args:
        root: a PENGWIN root, a split folder or a flat folder of ``CCC_PPPP*.tif`` files.
        max_images: measure a seeded random sample of at most this many images and as many labels.
        workers: processes reading files (default: one per CPU, one per 5,000 files at most; a worker process
            costs a few seconds of imports).
        seed: seed of the sampling.
        progress: show a progress bar.

    Returns:
        ``{"root", "images", "labels", "problems"}``; ``problems`` lists the files that could not be read (one
        line each), which are left out of the statistics.
    """
    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images must be at least 1, got {max_images}")
    if not seed >= 0:  # numpy's generators take seeds of 0 or more
        raise ValueError(f"seed must be 0 or more, got {seed}")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    images, labels = list_files(root)
    images, labels = _sample(images, max_images, seed), _sample(labels, max_images, seed)
    tasks = [("image", str(p), seed + i) for i, p in enumerate(images)] + [("label", str(p), 0) for p in labels]
    if workers is None:
        workers = min(os.cpu_count() or 1, len(tasks) // _MIN_FILES_PER_WORKER)
    workers = max(1, min(workers, len(tasks)))
    results: dict[str, dict[str, dict]] = {"image": {}, "label": {}}
    problems = []
    with ExitStack() as stack:
        if workers > 1:
            # spawned, not forked: a fork of a process whose torch threads have run can deadlock in the workers
            pool = stack.enter_context(get_context("spawn").Pool(workers, initializer=_single_threaded))
            measured = pool.imap_unordered(_measure, tasks, chunksize=_FILES_PER_CHUNK)
        else:
            measured = map(_measure, tasks)
        for kind, path, result in tqdm(
            measured, total=len(tasks), desc="pengwin-fingerprint", unit="file", disable=not progress
        ):
            if isinstance(result, str):
                problems.append(result)
            else:
                results[kind][path] = result
    image_paths = [p for p in images if str(p) in results["image"]]
    label_paths = [p for p in labels if str(p) in results["label"]]
    return {
        "root": str(Path(root).resolve()),
        "images": _summarise_images(image_paths, [results["image"][str(p)] for p in image_paths]),
        "labels": _summarise_labels(label_paths, [results["label"][str(p)] for p in label_paths]),
        "problems": sorted(problems),
    }


def _spread(stats: dict, digits: int = 2) -> str:
    if not stats:
        return "-"
    return f"{stats['mean']:.{digits}f} ({stats['min']:.{digits}f}..{stats['max']:.{digits}f})"


def _table_rows(fingerprint_: dict) -> list[tuple[str, str]]:
    """``(statistic, value)`` rows of one fingerprint for the console table."""
    images, labels = fingerprint_["images"], fingerprint_["labels"]
    rows = [
        ("images / labels", f"{images['count']} / {labels['count']}"),
        ("patients", str(max(images["patients"], labels["patients"]))),
        (f"tool projections ({FIRST_TOOL_PROJECTION:04d}+)", str(images["tool_projections"])),
    ]
    if images["count"]:
        raw = images["raw_intensity"]
        rows += [
            ("image size", ", ".join(f"{k} x{v}" for k, v in images["shapes"].items())),
            ("image dtype", ", ".join(images["dtypes"])),
            ("raw intensity min..max", f"{raw['min']:.3g}..{raw['max']:.3g}"),
            ("raw intensity p0.5 / p50 / p99.5", f"{raw['p0.5']:.3g} / {raw['p50']:.3g} / {raw['p99.5']:.3g}"),
            ("neg-log histogram (% per 0.1)", " ".join(f"{100 * s:.0f}" for s in images["neglog_histogram"]["share"])),
        ]
    if labels["count"]:
        area = labels["fragment_area"]
        rows += [
            ("label dtype", ", ".join(labels["dtypes"])),
            ("bone coverage mean (min..max)", _spread(labels["bone_coverage"])),
            ("overlap (>1 bit) mean (min..max)", _spread(labels["overlap"])),
            ("fragments per image mean (min..max)", _spread(labels["fragments_per_image"], 1)),
            ("fragments (all views)", str(area["count"])),
            ("fragment area median", f"{area['median']:.2%}" if area["count"] else "-"),
            *((f"fragments below {t} of image", f"{s:.0%}") for t, s in area["share_below"].items()),
            ("main fragment area median", f"{labels['main_fragment_area'].get('median', 0):.1%}"),
        ]
        for name, bone in labels["bones"].items():
            fragments = bone["fragments_when_in_view"]
            rows += [
                (f"{name} in view / coverage mean", f"{bone['in_view']:.0%} / {bone['coverage']['mean']:.2f}"),
                (
                    f"{name} fragments when in view",
                    f"{fragments['mean']:.1f} (max {fragments['max']:.0f})" if "mean" in fragments else "-",
                ),
            ]
    if fingerprint_["problems"]:
        rows.append(("unreadable files", str(len(fingerprint_["problems"]))))
    return rows


def format_table(fingerprints: Sequence[dict]) -> str:
    """A readable table of one fingerprint, or of several side by side (one column per root)."""
    columns = [dict(_table_rows(f)) for f in fingerprints]
    keys = list(dict.fromkeys(key for f in fingerprints for key, _ in _table_rows(f)))
    headers = ["statistic", *(Path(f["root"]).name or f["root"] for f in fingerprints)]
    table = [headers] + [[key, *(column.get(key, "-") for column in columns)] for key in keys]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Console command ``pengwin-fingerprint ROOT [--compare OTHER_ROOT] [--json OUT]``."""
    parser = argparse.ArgumentParser(prog="pengwin-fingerprint", description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="PENGWIN root, split folder or flat folder of CCC_PPPP*.tif files")
    parser.add_argument("--compare", type=Path, help="a second folder, shown side by side")
    parser.add_argument("--json", type=Path, help="write the fingerprint(s) as JSON here")
    parser.add_argument("--max-images", type=int, help="measure a seeded random sample of this many images/labels")
    parser.add_argument("--workers", type=int, help="reading processes (default: one per CPU for large folders)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    roots = [args.root] + ([args.compare] if args.compare else [])
    try:
        for root in roots:  # every folder checked before the first is measured, which can take minutes
            list_files(root)
        if args.json:
            check_writable(args.json)
        prints = [fingerprint(r, args.max_images, args.workers, args.seed, not args.no_progress) for r in roots]
    except (OSError, ValueError) as err:
        parser.exit(2, f"pengwin-fingerprint: {err}\n")
    print(format_table(prints))
    if args.json:
        try:
            write_json_atomic(args.json, prints[0] if len(prints) == 1 else {"fingerprints": prints})
        except OSError as err:
            parser.exit(2, f"pengwin-fingerprint: {err}\n")
        print(f"fingerprint JSON written to {args.json}")
    problems = [p for f in prints for p in f["problems"]]
    if problems:
        print(f"pengwin-fingerprint: {len(problems)} unreadable file(s) left out:", *problems, sep="\n  ",
              file=sys.stderr)
        raise SystemExit(1)
