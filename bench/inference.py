"""Benchmark: folder inference end to end against the network alone, per stage and per engine, in one run.

Data: ``--patients`` x ``--views`` raw X-rays of the default synthetic generator at ``--size`` (448) px, seed 0.
Model: the trained ``model.pt`` of ``--ckpt_dir`` (the bundle's ``models`` by default; train first), exported here
to TorchScript and ONNX (the model card's recipe, dynamic axes), run as ``configs/inference.json`` runs it: float32 on
the CPU, flip TTA (two network calls per image), the post-processing chosen for the model; the network runs at the
views' own size (``image_size`` null), as for a model trained on 448 px images, whatever size the model was trained
at (the inference command would bring the views to that size).

1. Network only, per model format (the inferer's call on a preprocessed image, both TTA passes): eager float32,
   TorchScript, ONNX Runtime, OpenVINO, and where the CPU computes bf16 natively eager bfloat16 autocast and
   OpenVINO in bf16 (``--cpu_bf16 true``); images/s, ratio to eager float32, the largest difference of its
   probabilities from eager float32's, and the share of bit-map pixels that differ from eager float32's after the
   full post-processing (worst image). Median of ``--repeats`` per image, engines taking turns (each timed call
   right after an untimed one of the same engine).
2. Stages per image with the fastest engine whose probabilities stay within 1e-4 of eager float32's (the tolerance
   the README documents and the tests check for the float32 formats; a bit-map pixel moves only where that little
   decides the threshold or a split at a neck): load and preprocess, network, fragment decoding, post-processing and
   bit map, report, overlay, the three file writes. Decoding splits the predicted other-fragment masks, so its cost
   grows with their area and depends on the model: how well the model segments these images (official IoUs), how much
   of a view its masks cover against the labels, and the decoding time of the labels themselves as the network's
   output (a model that segments like them).
3. End to end: ``FolderInference.run`` (what the inference command runs: DataLoader, network, background
   decoding and writing) over the folder twice, all three outputs and the bit map only, for eager float32 and the
   fastest engine; images/s and the ratio to that engine's network-only figure, beside the most that ratio can be
   when the network keeps every thread busy and the other stages (their part 2 times) share the same cores, and that
   bound again with the labels' decoding time in place of this model's.
4. Warm single-image latency of ``Segmenter.segment`` (a loaded bundle, a file in, a Segmentation out): distribution
   over every image, for eager float32 and the fastest engine.
5. The inference command's start-up: wall time on a one-image folder, less the warm per-image time, against
   ``python -c "import monai"``.

Run: ``.venv/bin/python bench/inference.py [--patients 2 --views 4 --repeats 2]`` on a quiet machine.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser, ckpt_export, onnx_export
from monai.data import DataLoader, Dataset

from export import ONNX_CONVERTER_KWARGS, median_seconds
from custom_transforms import MAX_FRAGMENTS, NUM_CATEGORIES, MainOtherFragments, decode_fragment_bits
from custom_transforms.io import list_tiffs, read_fragment_label
from pengwin_xray.datalist import IMAGE_SUBDIR, LABEL_SUBDIR
from pengwin_xray.metrics import score_ious
from pengwin_xray.segment import load_segmenter
from pengwin_xray.synthetic import generate_dataset

BUNDLE_ROOT = Path(__file__).resolve().parents[1] / "bundle"
#: how far float32 engines' probabilities may lie from eager float32's (README; tests/test_inference.py)
FAITHFUL_PROBABILITY = 1e-4
sys.path.insert(0, str(BUNDLE_ROOT))  # the bundle's scripts, as python -m monai.bundle makes them importable

from scripts.inferers import native_cpu_bf16  # noqa: E402
from scripts.postprocessing import segment_probabilities  # noqa: E402
from scripts.segmenter import FolderInference, Segmenter  # noqa: E402
from scripts.writers import (  # noqa: E402
    PredictionWriter,
    display_image,
    fragment_report,
    overlay_image,
    write_bitmap_tiff,
    write_png,
    write_report_json,
)

CONFIGS = BUNDLE_ROOT / "configs"
NETWORK_STAGE = "network (2 TTA passes)"


def export_models(ckpt_dir: Path, folder: Path) -> dict[str, str]:
    """model.ts and model.onnx of ``ckpt_dir/model.pt`` in ``folder``, as the model card exports them."""
    common = {
        "ckpt_file": str(ckpt_dir / "model.pt"),
        "meta_file": str(CONFIGS / "metadata.json"),
        "config_file": str(CONFIGS / "train.json"),
    }
    ckpt_export("network_def", filepath=str(folder / "model.ts"), **common)
    onnx_export("network_def", filepath=str(folder / "model.onnx"), input_shape=[1, 1, 448, 448],
                converter_kwargs=ONNX_CONVERTER_KWARGS, **common)  # fmt: skip
    return {"torchscript_path": str(folder / "model.ts"), "onnx_path": str(folder / "model.onnx")}


def engines(ckpt_dir: Path, exported: dict[str, str]) -> dict[str, Segmenter]:
    """A loaded Segmenter per engine (the same config, model format and bf16 switch changed)."""
    common = {"ckpt_dir": str(ckpt_dir), "image_size": None, **exported}
    found = {
        "eager fp32": load_segmenter(BUNDLE_ROOT, **common),
        "TorchScript": load_segmenter(BUNDLE_ROOT, model_format="ts", **common),
        "ONNX Runtime": load_segmenter(BUNDLE_ROOT, model_format="onnx", **common),
        "OpenVINO": load_segmenter(BUNDLE_ROOT, model_format="openvino", **common),
    }
    if native_cpu_bf16():
        found["eager bf16"] = load_segmenter(BUNDLE_ROOT, cpu_bf16=True, **common)
        found["OpenVINO bf16"] = load_segmenter(BUNDLE_ROOT, model_format="openvino", cpu_bf16=True, **common)
    else:
        print("bf16 engines: skipped, this CPU has no native bf16 (emulated, it is several times slower than fp32)")
    return found


def stage_times(segmenter: Segmenter, files: list[Path], out: Path) -> dict[str, float]:
    """Median milliseconds per image of each stage of one image's inference."""
    times: dict[str, list[float]] = {}

    def timed(stage: str, call: Callable[[], object]) -> object:
        start = time.perf_counter()
        result = call()
        times.setdefault(stage, []).append((time.perf_counter() - start) * 1e3)
        return result

    preprocessing = file_preprocessing()
    for path in files:
        data = timed("load + preprocess", lambda: preprocessing({"image": str(path)}))
        with torch.inference_mode():
            logits = timed(NETWORK_STAGE, lambda: segmenter.inferer(data["image"][None], segmenter.network))
        probs = timed("fragment decoding", lambda: segmenter.postprocessing({"pred": logits[0]})["pred"])
        raw = data["raw"][0].numpy()
        seg = timed("post-processing + bit map", lambda: segment_probabilities(
            probs, raw.shape, segmenter.threshold, segmenter.min_component_size))  # fmt: skip
        report = timed("report", lambda: fragment_report(seg.masks, seg.probabilities))
        picture = timed("overlay", lambda: overlay_image(display_image(raw), seg.masks, report))
        timed("write tif", lambda: write_bitmap_tiff(out / "stage.tif", seg.bitmap))
        timed("write json", lambda: write_report_json(out / "stage.json", report, {"image": path.name}))
        timed("write png", lambda: write_png(out / "stage.png", picture))
    return {stage: statistics.median(values) for stage, values in times.items()}


def label_decoding(segmenter: Segmenter, labels: list[Path]) -> tuple[float, float]:
    """Median milliseconds of the segmenter's fragment decoding when the network's output is the labels themselves
    (their main/other maps as confident logits: what a model that segments like the labels costs), and the share of
    the view their other-fragment masks cover."""
    times, areas = [], []
    for path in labels:
        targets = MainOtherFragments()(decode_fragment_bits(read_fragment_label(path))).float()
        logits = (2 * targets - 1) * 20  # sigmoid 1 - 2e-9 inside, 2e-9 outside
        start = time.perf_counter()
        segmenter.postprocessing({"pred": logits})
        times.append((time.perf_counter() - start) * 1e3)
        areas.append(float(targets[1::2].mean()))
    return statistics.median(times), statistics.mean(areas)


def background_stages(outputs: list[str]) -> list[str]:
    """The stages of :func:`stage_times` besides the network that a folder run writing ``outputs`` goes through."""
    per_output = {"tif": ["write tif"], "json": ["report", "write json"], "png": ["report", "overlay", "write png"]}
    always = ["load + preprocess", "fragment decoding", "post-processing + bit map"]
    return list(dict.fromkeys(always + [stage for output in outputs for stage in per_output[output]]))


def file_preprocessing() -> Callable[[dict], dict]:
    """The file preprocessing of inference.json (load, keep the raw image, then the segmenter's own)."""
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser["image_size"] = None
    return parser.get_parsed_content("preprocessing")


def end_to_end(segmenter: Segmenter, files: list[Path], out: Path, outputs: list[str]) -> float:
    """Images/s of ``FolderInference`` over ``files`` (the inference command's engine, file reading included)."""
    loader = DataLoader(
        Dataset([{"image": str(p), "filename": str(p)} for p in files], file_preprocessing()),
        batch_size=1, num_workers=0,
    )  # fmt: skip
    writer = PredictionWriter(out, segmenter.threshold, segmenter.min_component_size, outputs)
    start = time.perf_counter()
    FolderInference(segmenter, loader, writer).run()
    elapsed = time.perf_counter() - start
    assert not writer.failures and len(writer.written) == len(files)
    return len(files) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt_dir", type=Path, default=BUNDLE_ROOT / "models", help="folder of model.pt")
    parser.add_argument("--patients", type=int, default=2)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--repeats", type=int, default=2, help="timed network calls per image and engine")
    args = parser.parse_args()
    if not (args.ckpt_dir / "model.pt").is_file():
        raise SystemExit(f"{args.ckpt_dir / 'model.pt'}: no trained model; train first or pass --ckpt_dir")
    logging.disable(logging.INFO)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; model {args.ckpt_dir}")
    with tempfile.TemporaryDirectory() as tmp:
        root, out = Path(tmp), Path(tmp, "out")
        generate_dataset(root, args.patients, args.views, args.size, seed=0, split="bench", progress=False)
        files = list_tiffs(root / "bench" / IMAGE_SUBDIR)
        segmenters = engines(args.ckpt_dir, export_models(args.ckpt_dir, root))
        preprocessing = file_preprocessing()
        images = [preprocessing({"image": str(path)}) for path in files]

        print(f"\n1. network only, {len(files)} images of {args.size} px, flip TTA (2 passes), median of {args.repeats}")
        per_image: dict[str, list[float]] = {name: [] for name in segmenters}
        differing: dict[str, list[float]] = {name: [] for name in segmenters}
        largest: dict[str, float] = dict.fromkeys(segmenters, 0.0)
        with torch.inference_mode():
            for data in images:
                batch = data["image"][None]
                calls = {name: (lambda s=s: s.inferer(batch, s.network)) for name, s in segmenters.items()}
                for name, seconds in median_seconds(calls, warmup=1, repeats=args.repeats).items():
                    per_image[name].append(seconds)
                shape = data["raw"].shape[1:]
                logits = {name: call()[0] for name, call in calls.items()}
                bitmaps = {
                    name: segment_probabilities(
                        s.postprocessing({"pred": logits[name]})["pred"], shape, s.threshold, s.min_component_size
                    ).bitmap
                    for name, s in segmenters.items()
                }
                for name, bitmap in bitmaps.items():
                    differing[name].append(float(np.mean(bitmap != bitmaps["eager fp32"])))
                    gap = float((logits[name].sigmoid() - logits["eager fp32"].sigmoid()).abs().max())
                    largest[name] = max(largest[name], gap)
        network_rate = {name: len(values) / sum(values) for name, values in per_image.items()}
        for name, rate in network_rate.items():
            print(f"  {name:13s} {1e3 / rate:8.1f} ms/image {rate:6.2f} images/s {rate / network_rate['eager fp32']:5.2f}x"
                  f"  probabilities within {largest[name]:.1e}, bit-map pixels differing {100 * max(differing[name]):.4f}%"
                  " of eager fp32's (worst image)")
        faithful = [name for name in network_rate if largest[name] <= FAITHFUL_PROBABILITY]
        fastest = max(faithful, key=network_rate.get)
        print(f"  fastest with probabilities within {FAITHFUL_PROBABILITY:g} of eager fp32's: {fastest}")

        print(f"\n2. stages with {fastest}, median ms per image")
        out.mkdir()
        stages = stage_times(segmenters[fastest], files, out)
        for stage, milliseconds in stages.items():
            print(f"  {stage:28s} {milliseconds:8.1f}")
        print(f"  {'all stages':28s} {sum(stages.values()):8.1f}")
        # decoding splits the predicted other-fragment masks: its cost grows with their area, so it depends on the model
        labels = [root / "bench" / LABEL_SUBDIR / path.name for path in files]
        predicted_area, scores = [], []
        for path, label in zip(files, labels):
            segmentation = segmenters[fastest].segment(path)
            per_bone = segmentation.masks.reshape(NUM_CATEGORIES, MAX_FRAGMENTS, *segmentation.masks.shape[1:])
            predicted_area.append(float(per_bone[:, 1:].any(1).mean()))
            scores.append(score_ious(segmentation.bitmap, read_fragment_label(label)))
        labels_ms, labels_area = label_decoding(segmenters[fastest], labels)
        fracture = statistics.mean(score["fracture_iou"] for score in scores)
        anatomical = statistics.mean(score["anatomical_iou"] for score in scores)
        print(f"  this model on these images: fracture IoU {fracture:.3f}, anatomical IoU {anatomical:.3f}; its other-"
              f"fragment masks cover {100 * statistics.mean(predicted_area):.1f}% of a view per bone, the labels' "
              f"{100 * labels_area:.1f}%")
        print(f"  fragment decoding of the labels themselves (a model that segments like them): {labels_ms:.1f} ms")

        print(f"\n3. end to end: FolderInference, the inference command's engine, {2 * len(files)} images; the bound")
        print(f"   assumes the network keeps all {torch.get_num_threads()} threads busy, the other stages' time B (part 2)"
              " taking their share: T x threads / (T x threads + B)")
        for name in dict.fromkeys(["eager fp32", fastest]):
            for outputs in (["tif", "json", "png"], ["tif"]):
                rate = end_to_end(segmenters[name], files * 2, out / name.replace(" ", "_"), outputs)
                network_cpu = torch.get_num_threads() / network_rate[name]
                other_cpu = sum(stages[stage] for stage in background_stages(outputs)) / 1e3
                like_labels = other_cpu + (labels_ms - stages["fragment decoding"]) / 1e3
                print(f"  {name:13s} {'+'.join(outputs):12s} {rate:6.2f} images/s = "
                      f"{100 * rate / network_rate[name]:5.1f}% of its network-only {network_rate[name]:.2f}"
                      f" (bound {100 * network_cpu / (network_cpu + other_cpu):5.1f}%, with the labels' decoding"
                      f" {100 * network_cpu / (network_cpu + like_labels):5.1f}%)")

        print("\n4. warm single-image latency: Segmenter.segment(file), ms")
        warm = {name: segmenters[name] for name in dict.fromkeys(["eager fp32", fastest])}
        no_mirror = copy.copy(segmenters[fastest])
        no_mirror.inferer = copy.copy(no_mirror.inferer)
        no_mirror.inferer.flip_tta = False
        warm[f"{fastest}, no TTA"] = no_mirror
        for name, segmenter in warm.items():
            segmenter.segment(files[0])
            latencies = []
            for path in files:
                start = time.perf_counter()
                segmenter.segment(path)
                latencies.append((time.perf_counter() - start) * 1e3)
            quartiles = np.percentile(latencies, [0, 50, 90, 100])
            print(f"  {name:22s} min {quartiles[0]:6.0f}  median {quartiles[1]:6.0f}  p90 {quartiles[2]:6.0f}  "
                  f"max {quartiles[3]:6.0f}")

        one = root / "one"
        one.mkdir()
        os.link(files[0], one / files[0].name)
        command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
                   "--dataset_dir", str(one), "--output_dir", str(root / "one_out"), "--ckpt_dir",
                   str(args.ckpt_dir.resolve()), "--num_workers", "0", "--image_size", "0"]  # fmt: skip
        start = time.perf_counter()
        subprocess.run(command, cwd=BUNDLE_ROOT, check=True, capture_output=True)
        command_s = time.perf_counter() - start
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import monai"], check=True, capture_output=True)
        monai_s = time.perf_counter() - start
        warm_s = statistics.median(per_image["eager fp32"]) + (sum(stages.values()) - stages[NETWORK_STAGE]) / 1e3
        print(f"\n5. inference command on one image: {command_s:.1f} s, start-up about {command_s - warm_s:.1f} s; "
              f"python -c 'import monai' alone: {monai_s:.1f} s")


if __name__ == "__main__":
    main()
