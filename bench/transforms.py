"""Benchmark: images per second through the bundle's preprocessing against a naive chain, same files, same run.

The bundle's chain is built from ``bundle/configs/train.json`` itself (``load_transforms``, ``image_transforms``,
``label_transforms``): ``LoadImaged`` with ``PengwinTiffReader`` for the X-ray and the bit-map label,
``NegLogWindowd``, ``CLAHEd`` (OpenCV, uint8, clip limit 4, 8x8 tiles) and ``DecodeFragmentBitsd`` (uint8).

The naive chain does what a first attempt would: PIL loads both files (mode ``F`` for the X-ray, mode ``I`` for
the label; PIL reads a uint32 TIFF as int32, so values with bit 31 set would wrap negative: PENGWIN labels never
set bit 31, so the decoded channels still match here, but PIL gives no error on a bad label), the neg-log window
in numpy, scikit-image's ``equalize_adapthist`` recomputed from scratch per call, and a Python loop over
3 categories x 10 fragments doing ``(label >> bit) & 1`` per channel. Its CLAHE is made comparable: kernel size
``size // 8`` gives the same 8x8 tiles, and clip limit ``4 / 256`` is OpenCV's 4 (OpenCV clips at ``4 x`` the
mean count of 256 bins, scikit-image at ``clip_limit x`` the tile's pixel count). The two CLAHEs are different
algorithms (uint8 against 14-bit quantisation, other interpolation), so their outputs differ; the decoded
channels must be identical and the neg-log windows agree to float32 rounding (both are checked).

Data: the real ``101_0000.tif`` X-ray with the two int32 ``*_maskrcnn_pred.tif`` bit maps as labels when
``../shared/data/pengwin_real`` holds them and ``--size`` is 448, else two synthetic pairs written with tifffile.
Each figure is the best of ``--repeats`` passes over all pairs, the two chains taking turns.

Run: ``.venv/bin/python bench/transforms.py [--repeats 20] [--size 448]`` (a few seconds).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tifffile
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose, LoadImaged
from PIL import Image
from skimage.exposure import equalize_adapthist

from custom_transforms import CLAHEd, DecodeFragmentBitsd, NegLogWindowd
from custom_transforms.constants import MAX_FRAGMENTS, NUM_CATEGORIES, NUM_CHANNELS, fragment_bit, fragment_channel

REAL_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pengwin_real"
TRAIN_CONFIG = Path(__file__).resolve().parents[1] / "bundle" / "configs" / "train.json"
#: the configs import the bundle's ``scripts``, importable from the bundle folder only (as ``python -m monai.bundle``
#: runs them), and this script parses them in its own process
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bundle"))
REAL_IMAGE = "101_0000.tif"
REAL_LABELS = ("081_0000_maskrcnn_pred.tif", "081_0025_maskrcnn_pred.tif")
OPENCV_CLIP_LIMIT = 4.0
OPENCV_BINS = 256
TILES = 8


def load_average() -> str:
    return "load average (1, 5, 15 min) " + ", ".join(f"{value:.2f}" for value in os.getloadavg())


def bundle_chain() -> Compose:
    """The load, neg-log, CLAHE and decode transforms exactly as ``train.json`` defines them."""
    parser = ConfigParser()
    parser.read_config(str(TRAIN_CONFIG))
    keys = ("load_transforms", "image_transforms", "label_transforms")
    return Compose([transform for key in keys for transform in parser.get_parsed_content(key)])


def naive_load(pair: dict[str, str]) -> dict[str, np.ndarray]:
    """PIL: mode ``F`` float32 X-ray, mode ``I`` int32 label (a uint32 value above 2**31 would wrap negative)."""
    image = np.array(Image.open(pair["image"]), dtype=np.float32)
    return {"image": image, "label": np.array(Image.open(pair["label"]))}


def naive_neglog(data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    image = data["image"]
    attenuation = -np.log(image + image.min() + 0.01)
    window = (attenuation - attenuation.min()) / (attenuation.max() - attenuation.min())
    return {**data, "image": window}


def naive_clahe(data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """scikit-image CLAHE, its tables recomputed per call, with OpenCV's tiles and clip limit (see above)."""
    kernel = [side // TILES for side in data["image"].shape]
    equalised = equalize_adapthist(data["image"], kernel_size=kernel, clip_limit=OPENCV_CLIP_LIMIT / OPENCV_BINS)
    return {**data, "image": equalised.astype(np.float32)}


def naive_decode(data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    label = data["label"]
    channels = np.zeros((NUM_CHANNELS, *label.shape), np.uint8)
    for category in range(1, NUM_CATEGORIES + 1):
        for fragment in range(1, MAX_FRAGMENTS + 1):
            bit = fragment_bit(category, fragment)
            channels[fragment_channel(category, fragment)] = (label >> bit) & 1
    return {**data, "label": channels}


NAIVE_STAGES = {"load": [naive_load], "neg-log": [naive_neglog], "CLAHE": [naive_clahe], "decode": [naive_decode]}


def naive_chain(pair: dict[str, str]) -> dict[str, np.ndarray]:
    """PIL loading, numpy neg-log, scikit-image CLAHE and a per-channel decoding loop."""
    data = pair
    for stage in NAIVE_STAGES.values():
        data = stage[0](data)
    return data


def bundle_stages(chain: Compose) -> dict[str, list[Callable]]:
    """The bundle's transforms grouped into the same four stages as the naive chain."""
    groups = {"load": LoadImaged, "neg-log": NegLogWindowd, "CLAHE": CLAHEd, "decode": DecodeFragmentBitsd}
    return {name: [t for t in chain.transforms if isinstance(t, kind)] for name, kind in groups.items()}


def synthetic_pairs(folder: Path, size: int, count: int = 2) -> list[dict[str, str]]:
    """Smooth positive X-ray intensities and int32 bit maps with a few rectangular fragments per category."""
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[0:size, 0:size] / size
    pairs = []
    for index in range(count):
        bone = np.exp(-((rows - 0.5) ** 2 + (cols - 0.5) ** 2) / 0.05) * rng.uniform(2.0, 3.0)
        image = (56.0 * np.exp(-bone) + rng.normal(0.0, 0.2, (size, size))).clip(0.25).astype(np.float32)
        label = np.zeros((size, size), np.int32)
        for category in range(1, NUM_CATEGORIES + 1):
            for fragment in range(1, rng.integers(2, 5)):
                top, left = rng.integers(0, size * 3 // 4, 2)
                height, width = rng.integers(size // 16, size // 4, 2)
                label[top : top + height, left : left + width] |= 1 << fragment_bit(category, fragment)
        image_path, label_path = folder / f"image_{index}.tif", folder / f"label_{index}.tif"
        tifffile.imwrite(image_path, image)
        tifffile.imwrite(label_path, label)
        pairs.append({"image": str(image_path), "label": str(label_path)})
    return pairs


def real_pairs() -> list[dict[str, str]]:
    return [{"image": str(REAL_DIR / REAL_IMAGE), "label": str(REAL_DIR / name)} for name in REAL_LABELS]


def pass_seconds(function: Callable[[dict[str, str]], object], pairs: list[dict[str, str]]) -> float:
    start = time.perf_counter()
    for pair in pairs:
        function(pair)
    return time.perf_counter() - start


def check_agreement(chain: Compose, pairs: list[dict[str, str]]) -> tuple[float, float]:
    """Largest neg-log difference and mean CLAHE difference; raises if the decoded channels differ."""
    stages = bundle_stages(chain)
    window_diff = clahe_diff = 0.0
    for pair in pairs:
        loaded = stages["load"][0](pair)
        window = stages["neg-log"][0](loaded)["image"][0].numpy()
        window_diff = max(window_diff, float(np.abs(window - naive_neglog(naive_load(pair))["image"]).max()))
        fast, naive = chain(pair), naive_chain(pair)
        if not torch.equal(fast["label"].as_tensor(), torch.from_numpy(naive["label"])):
            raise AssertionError(f"{pair['label']}: the two chains decode different channels")
        clahe_diff = max(clahe_diff, float(np.abs(fast["image"][0].numpy() - naive["image"]).mean()))
    return window_diff, clahe_diff


def stage_seconds(stages: dict[str, list[Callable]], pairs: list[dict[str, str]]) -> dict[str, float]:
    """Seconds spent in each stage over one pass of all pairs."""
    spent = dict.fromkeys(stages, 0.0)
    for pair in pairs:
        data = pair
        for name, transforms in stages.items():
            start = time.perf_counter()
            for transform in transforms:
                data = transform(data)
            spent[name] += time.perf_counter() - start
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20, help="timed passes over all pairs (the best is kept)")
    parser.add_argument("--size", type=int, default=448, help="image side; real files are used only at 448")
    args = parser.parse_args()
    print(f"{load_average()} at start, {os.cpu_count()} CPUs")
    chain = bundle_chain()
    with tempfile.TemporaryDirectory() as tmp:
        if args.size == 448 and all((REAL_DIR / name).is_file() for name in (REAL_IMAGE, *REAL_LABELS)):
            pairs, source = real_pairs(), f"real X-ray {REAL_IMAGE} with {len(REAL_LABELS)} Mask R-CNN bit maps"
        else:
            pairs, source = synthetic_pairs(Path(tmp), args.size), f"2 synthetic {args.size}x{args.size} pairs"
        print(f"data: {source}")
        window_diff, clahe_diff = check_agreement(chain, pairs)
        bundle_times, naive_times = [], []
        for _ in range(args.repeats):
            bundle_times.append(pass_seconds(chain, pairs))
            naive_times.append(pass_seconds(naive_chain, pairs))
        stages = bundle_stages(chain)
        naive_stage_times = [stage_seconds(NAIVE_STAGES, pairs) for _ in range(args.repeats)]
        bundle_stage_times = [stage_seconds(stages, pairs) for _ in range(args.repeats)]
    print(f"{'chain':44s} {'best img/s':>10s} {'median img/s':>12s}")
    rows = (("naive (PIL, numpy loop, skimage CLAHE)", naive_times), ("bundle (train.json transforms)", bundle_times))
    for name, times in rows:
        print(f"{name:44s} {len(pairs) / min(times):10.1f} {len(pairs) / statistics.median(times):12.1f}")
    naive_rate, bundle_rate = len(pairs) / min(naive_times), len(pairs) / min(bundle_times)
    print(f"ratio bundle / naive (best): {bundle_rate / naive_rate:.1f}x")
    print(f"per stage, best ms per image: {'naive':>8s} {'bundle':>8s}")
    for name in NAIVE_STAGES:
        naive_ms, bundle_ms = (
            min(t[name] for t in times) / len(pairs) * 1e3 for times in (naive_stage_times, bundle_stage_times)
        )
        print(f"  {name:26s} {naive_ms:8.2f} {bundle_ms:8.2f}")
    print(f"agreement: decoded channels identical; neg-log max |diff| {window_diff:.2e}; "
          f"CLAHE mean |diff| {clahe_diff:.3f} on [0, 1] (OpenCV uint8 vs scikit-image)")
    print(f"{load_average()} at end")


if __name__ == "__main__":
    main()
