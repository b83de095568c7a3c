"""Benchmark: inference speed of the exported networks, eager PyTorch against TorchScript, ONNX Runtime and OpenVINO.

Both networks are exported the way the model card documents (``monai.bundle`` ``ckpt_export`` and ``onnx_export``
with dynamic axes, from the bundle's own configs, random weights) into a temporary folder, then timed in the same
run at batch 1 in float32 on the CPU: the BasicUNet of ``train.json`` at 1x1x448x448 and the VGG16 U-Net of
``train_vgg16.json`` at 1x3x224x224 (the size its recipe feeds it). Each figure is the median over ``--repeats``
timed calls after ``--warmup`` untimed ones, the engines taking turns (each timed call right after an untimed one
of the same engine); every engine gets the same number of threads. The largest difference to the eager output is
printed beside each exported engine.

Run: ``.venv/bin/python bench/export.py [--repeats 10] [--threads N]``.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime
import openvino
import torch
from monai.bundle import ConfigParser, ckpt_export, onnx_export

BUNDLE_ROOT = Path(__file__).resolve().parents[1] / "bundle"
#: the configs import the bundle's ``scripts``, importable from the bundle folder only (as ``python -m monai.bundle``
#: runs them), and this script parses them in its own process
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bundle"))
CONFIGS = BUNDLE_ROOT / "configs"

from scripts.loading import OpenVinoNetwork  # noqa: E402
META_FILE = str(CONFIGS / "metadata.json")
ONNX_CONVERTER_KWARGS = {
    "input_names": ["image"],
    "output_names": ["pred"],
    "dynamic_axes": {"image": {0: "batch", 2: "height", 3: "width"}, "pred": {0: "batch", 2: "height", 3: "width"}},
}
#: name: (config files, overrides, input shape)
NETWORKS: dict[str, tuple[list[str], dict, list[int]]] = {
    "BasicUNet": ([str(CONFIGS / "train.json")], {}, [1, 1, 448, 448]),
    "VGG16UNet": (
        [str(CONFIGS / "train.json"), str(CONFIGS / "train_vgg16.json")],
        {
            "_meta_#network_data_format#inputs#image#num_channels": 3,
            "_meta_#network_data_format#inputs#image#spatial_shape": [224, 224],
        },
        [1, 3, 224, 224],
    ),
}


def median_seconds(calls: dict[str, Callable[[], object]], warmup: int, repeats: int) -> dict[str, float]:
    """Median wall time of each call over ``repeats`` runs after ``warmup`` untimed runs.

    The calls take turns within each repeat, so that a change in machine load hits all of them alike. Each timed
    run follows an untimed run of the same call: an engine's thread pool keeps spinning for a while after its call
    (ONNX Runtime's, OpenVINO's, PyTorch's OpenMP), and an engine timed right after another ran up to 25% slower
    (OpenVINO after ONNX Runtime: 108 against 85 ms per 448 px pass), which a user running one engine never sees.
    """
    for call in calls.values():
        for _ in range(warmup):
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            call()  # the previous engine's spinning threads settle during this run
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def export(name: str, folder: Path) -> tuple[torch.nn.Module, Path, Path]:
    """The eager network with random weights and its TorchScript and ONNX exports in ``folder``."""
    config_files, overrides, input_shape = NETWORKS[name]
    parser = ConfigParser()
    parser.read_config(config_files)
    parser.read_meta(META_FILE)
    for key, value in overrides.items():
        parser[key] = value
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def").eval()
    ckpt = folder / f"{name}.pt"
    torch.save(network.state_dict(), ckpt)
    common = {"ckpt_file": str(ckpt), "meta_file": META_FILE, "config_file": config_files, **overrides}
    torchscript, onnx_file = folder / f"{name}.ts", folder / f"{name}.onnx"
    ckpt_export("network_def", filepath=str(torchscript), **common)
    onnx_export(
        "network_def",
        filepath=str(onnx_file),
        input_shape=input_shape,
        converter_kwargs=ONNX_CONVERTER_KWARGS,
        **common,
    )
    return network, torchscript, onnx_file


def benchmark(name: str, folder: Path, threads: int, warmup: int, repeats: int) -> None:
    """Time eager, TorchScript, ONNX Runtime and OpenVINO (float32, as ``--model_format openvino`` runs it) on one
    network and print images/s and ratios against eager."""
    network, torchscript_file, onnx_file = export(name, folder)
    input_shape = NETWORKS[name][2]
    image = torch.rand(input_shape, generator=torch.Generator().manual_seed(1))
    scripted = torch.jit.load(str(torchscript_file)).eval()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads  # spinning after each call as the bundle's session does (median_seconds)
    session = onnxruntime.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
    feed = {"image": image.numpy()}
    openvino_network = OpenVinoNetwork(onnx_file, threads=threads)

    with torch.inference_mode():
        reference = network(image).numpy()
        engines: dict[str, Callable[[], np.ndarray]] = {
            "eager": lambda: network(image).numpy(),
            "TorchScript": lambda: scripted(image).numpy(),
            "ONNX Runtime": lambda: session.run(["pred"], feed)[0],
            "OpenVINO": lambda: openvino_network.run(feed["image"]),
        }
        seconds = median_seconds(engines, warmup, repeats)
        differences = {engine: float(np.abs(run() - reference).max()) for engine, run in engines.items()}

    batch = input_shape[0]
    print(f"\n{name} {'x'.join(map(str, input_shape))}, float32, {threads} threads, median of {repeats}")
    for engine, elapsed in seconds.items():
        ratio = seconds["eager"] / elapsed
        print(
            f"  {engine:<13} {batch / elapsed:7.2f} images/s  {elapsed * 1000:8.1f} ms/call  "
            f"{ratio:5.2f}x eager  max |diff| {differences[engine]:.1e}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.disable(logging.INFO)  # the export commands log their arguments, input tensors included
    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, openvino {openvino.__version__}")
    with tempfile.TemporaryDirectory() as folder:
        for name in NETWORKS:
            benchmark(name, Path(folder), args.threads, args.warmup, args.repeats)


if __name__ == "__main__":
    main()
