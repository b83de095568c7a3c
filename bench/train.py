"""Benchmark: the bundle's trainer against a bare PyTorch loop, same model, data and batch, same run; and bf16.

The trainer is the ``SupervisedTrainer`` of ``bundle/configs/train.json``, built by ``monai.bundle.ConfigParser``
with these overrides only: ``dataset_dir`` points at a small synthetic PENGWIN root generated into a temporary
folder (one phantom, ``2 x batch_size`` views, all of them training images), ``bundle_root`` is that folder,
``num_workers`` 0, ``cache_rate`` 1 (the synthetic recipe's value: ``dataset_dir`` alone would switch caching
off), ``max_epochs`` 1 (raised an epoch at a time, see below), and of the training handlers only ``StatsHandler`` is
kept: ``ValidationHandler`` (a whole evaluation per epoch) and ``MLFlowHandler`` (an SQLite write per
iteration) would be timed as training, and the checkpoint handlers are attached only by the ``training``
expression, which is not run (``StatsHandler`` still formats its loss line; its logger is set to WARNING so that
the line is not printed). Everything else (BasicUNet, the Dice + BCE loss with ``pos_weight``, Adam,
``PengwinInferer`` with CPU bf16 autocast, ``CacheDataset`` and ``DataLoader``; no postprocessing, which only
validation needs) is as configured.

Three loops run, each on a model freshly built from the config with the same seed:

1. the trainer as configured, its random augmentation running in the main process (``num_workers`` 0);
2. the same trainer with ``train#augmentation`` set to ``[]``, so that it sees exactly the bare loop's data;
3. a bare loop over the same preprocessed tensors (the second trainer's ``CacheDataset`` items), held in memory
   as ready batches: ``zero_grad``, forward under CPU bf16 autocast, float32 BCE with the same ``pos_weight``,
   backward, ``Adam.step``.

Speed: each loop first runs one warm-up epoch alone; then the loops take turns, one epoch (2 iterations) each
per round, in an order that rotates every round, so that load from other work falls on all three alike. A
trainer epoch is one ``trainer.run()`` (ignite resumes it for one more epoch), timed whole, so data loading,
handlers and epoch boundaries count. Seconds per iteration: median over the rounds. The split
comes from ignite's events: data (``GET_BATCH_STARTED`` to ``GET_BATCH_COMPLETED``), model (to
``BACKWARD_COMPLETED``: forward, loss, backward) and rest (to ``ITERATION_COMPLETED``: ``Adam.step``,
decollation, handlers). Ratio: trainer it/s / bare it/s.

Memory: the rise of the process's resident set during each loop's warm-up epoch (the first step allocates the
activations, gradients and Adam state): peak RSS (``VmHWM``, reset before the epoch by writing 5 to
``/proc/self/clear_refs``, after ``gc.collect`` and ``malloc_trim``) minus the RSS at its start. ``tracemalloc``
cannot see tensors (torch allocates outside Python's allocator) and torch has no public statistics for its CPU
allocator, so RSS is the measure. Where ``clear_refs`` is not writable the figure is the rise of ``getrusage``
max RSS, which is zero for a loop that peaks lower than an earlier one (the method is printed).

Last, the step time (forward, loss, backward, Adam) of the same BasicUNet in float32 and under bf16 autocast,
at 224 and 448 with ``--dtype-batch-size`` (default 2), median of ``--dtype-steps`` after one warm-up step.

Run: ``.venv/bin/python bench/train.py [--size 224] [--batch-size 8] [--iterations 6]`` (under a minute on 2
idle CPU cores, about 3 when they are shared; the load average is printed because other work on the machine
moves every figure).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import logging
import math
import os
import resource
import statistics
import tempfile
import sys
import time
import warnings
from pathlib import Path

import torch
from ignite.engine import Engine, Events
from monai.bundle import ConfigParser
from monai.engines.utils import IterationEvents
from monai.utils import set_determinism

from pengwin_xray.synthetic import generate_dataset

TRAIN_CONFIG = Path(__file__).resolve().parents[1] / "bundle" / "configs" / "train.json"
#: the configs import the bundle's ``scripts``, importable from the bundle folder only (as ``python -m monai.bundle``
#: runs them), and this script parses them in its own process
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bundle"))
SEED = 0


def load_average() -> str:
    return "load average (1, 5, 15 min) " + ", ".join(f"{value:.2f}" for value in os.getloadavg())


class PeakMemory:
    """Rise of the resident set size over one block: VmHWM after a reset, minus VmRSS at the start (MiB)."""

    def __init__(self) -> None:
        libc_name = ctypes.util.find_library("c")
        self._malloc_trim = getattr(ctypes.CDLL(libc_name), "malloc_trim", None) if libc_name else None
        self.method = "VmHWM - VmRSS (clear_refs reset)"
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self.method = "getrusage max RSS rise"

    @staticmethod
    def _status_kib(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise RuntimeError(f"/proc/self/status has no {field}")

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self._malloc_trim is not None:
            self._malloc_trim(0)  # give freed heap back, so an earlier loop's leftovers do not hide this rise
        if self.method.startswith("VmHWM"):
            Path("/proc/self/clear_refs").write_text("5")
            self._start_kib = self._status_kib("VmRSS")
        else:
            self._start_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.method.startswith("VmHWM"):
            peak = self._status_kib("VmHWM")
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.rise_mib = (peak - self._start_kib) / 1024
        self.peak_mib = peak / 1024


class TrainerLoop:
    """The configured ``SupervisedTrainer``, run one epoch per call; ignite events split each iteration."""

    def __init__(self, parser: ConfigParser) -> None:
        set_determinism(seed=SEED)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="the effective log level")  # StatsHandler, silenced below
            self.trainer = parser.get_parsed_content("train#trainer")
        for handler in parser.get_parsed_content("train#handlers"):
            handler.logger.setLevel(logging.WARNING)  # the per-iteration loss lines would bury the report
        self.parts: dict[str, list[float]] = {"data": [], "model": [], "rest": []}
        self._marks: dict[str, float] = {}
        events = {
            "data_start": Events.GET_BATCH_STARTED,
            "data_end": Events.GET_BATCH_COMPLETED,
            "model_end": IterationEvents.BACKWARD_COMPLETED,
        }
        for name, event in events.items():
            self.trainer.add_event_handler(event, self._mark, name)
        self.trainer.add_event_handler(Events.ITERATION_COMPLETED, self._split)

    def _mark(self, engine: Engine, name: str) -> None:
        self._marks[name] = time.perf_counter()

    def _split(self, engine: Engine) -> None:
        marks = self._marks
        self.parts["data"].append(marks["data_end"] - marks["data_start"])
        self.parts["model"].append(marks["model_end"] - marks["data_end"])
        self.parts["rest"].append(time.perf_counter() - marks["model_end"])

    def epoch(self) -> int:
        """Run one more epoch; return its number of iterations."""
        self.trainer.state.max_epochs = self.trainer.state.epoch + 1
        self.trainer.run()
        return self.trainer.state.epoch_length


class BareLoop:
    """Model, loss and optimizer from the same config, fed the trainer's preprocessed tensors as ready batches."""

    def __init__(self, parser: ConfigParser, batch_size: int) -> None:
        dataset = parser.get_parsed_content("train#dataset")
        images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
        labels = torch.stack([dataset[i]["label"] for i in range(len(dataset))])
        self.batches = [
            (images[i : i + batch_size], labels[i : i + batch_size]) for i in range(0, len(images), batch_size)
        ]
        set_determinism(seed=SEED)
        self.network, self.loss_function, self.optimizer = (
            parser.get_parsed_content(key) for key in ("network", "loss", "optimizer")
        )
        self.parts: dict[str, list[float]] = {"data": [], "model": [], "rest": []}

    def epoch(self) -> int:
        self.network.train()
        for inputs, targets in self.batches:
            start = time.perf_counter()
            self.optimizer.zero_grad(set_to_none=False)  # as SupervisedTrainer's default optim_set_to_none=False
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = self.network(inputs)
            self.loss_function(logits.float(), targets).backward()
            backward_end = time.perf_counter()
            self.optimizer.step()
            self.parts["data"].append(0.0)
            self.parts["model"].append(backward_end - start)
            self.parts["rest"].append(time.perf_counter() - backward_end)
        return len(self.batches)


def bundle_parser(root: Path, batch_size: int, augment: bool) -> ConfigParser:
    """``train.json`` with the benchmark's overrides (see the module docstring)."""
    parser = ConfigParser()
    parser.read_config(str(TRAIN_CONFIG))
    parser.update(
        {
            "bundle_root": str(root),
            "dataset_dir": str(root / "data"),
            "num_workers": 0,
            "cache_rate": 1.0,
            "batch_size": batch_size,
            "max_epochs": 1,
            "train#handlers": [h for h in parser["train#handlers"] if h["_target_"] == "StatsHandler"],
        }
    )
    if not augment:
        parser["train#augmentation"] = []
    return parser


def step_seconds(
    network: torch.nn.Module, channels: int, size: int, batch_size: int, bf16: bool, steps: int
) -> float:
    """Median training step time of ``network`` (``channels`` outputs) on random data, after one warm-up step."""
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-4)
    loss_function = torch.nn.BCEWithLogitsLoss()
    generator = torch.Generator().manual_seed(SEED)
    inputs = torch.rand(batch_size, 1, size, size, generator=generator)
    targets = (torch.rand(batch_size, channels, size, size, generator=generator) > 0.9).float()
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = network(inputs)
        loss_function(logits.float(), targets).backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224, help="side of the generated training images")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=6, help="timed iterations per loop (2 per round)")
    parser.add_argument("--dtype-batch-size", type=int, default=2, help="batch of the fp32 vs bf16 comparison")
    parser.add_argument("--dtype-steps", type=int, default=2, help="timed steps per dtype and size")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; {load_average()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        generate_dataset(root / "data", 1, 2 * args.batch_size, args.size, SEED, "train", progress=False)
        print(f"data: {2 * args.batch_size} synthetic {args.size}x{args.size} training images (2 batches of "
              f"{args.batch_size} per epoch), generated in {time.perf_counter() - start:.1f} s")
        loops = {
            "trainer as configured": TrainerLoop(bundle_parser(root, args.batch_size, augment=True)),
            "trainer, no augmentation": TrainerLoop(bundle_parser(root, args.batch_size, augment=False)),
            "bare PyTorch loop": BareLoop(bundle_parser(root, args.batch_size, augment=False), args.batch_size),
        }
        memory = {}
        for name, loop in loops.items():  # the warm-up epoch, alone, for its peak memory
            with PeakMemory() as memory[name]:
                loop.epoch()
            for values in loop.parts.values():
                values.clear()
        seconds_per_iteration: dict[str, list[float]] = {name: [] for name in loops}
        rounds = max(1, math.ceil(args.iterations / 2))
        for round_index in range(rounds):  # the loops take turns, in a rotating order, against drifting load
            names = list(loops)[round_index % 3 :] + list(loops)[: round_index % 3]
            for name in names:
                start = time.perf_counter()
                iterations = loops[name].epoch()
                seconds_per_iteration[name].append((time.perf_counter() - start) / iterations)
            print(f"  round {round_index + 1}/{rounds} done; {load_average()}", flush=True)
    method = next(iter(memory.values())).method
    print(f"\nmedian over {rounds} rounds of one epoch each, after one warm-up epoch; memory: {method}, warm-up epoch")
    print(f"{'loop':26s} {'it/s':>6s} {'s/it':>6s} {'data s':>7s} {'model s':>8s} {'rest s':>7s} {'RSS rise MiB':>13s}")
    rates = {}
    for name, loop in loops.items():
        total = statistics.median(seconds_per_iteration[name])
        rates[name] = 1.0 / total
        parts = [statistics.median(loop.parts[part]) for part in ("data", "model", "rest")]
        print(f"{name:26s} {rates[name]:6.3f} {total:6.2f} {parts[0]:7.3f} {parts[1]:8.2f} {parts[2]:7.3f} "
              f"{memory[name].rise_mib:13.0f}")
    bare = rates["bare PyTorch loop"]
    for name in ("trainer as configured", "trainer, no augmentation"):
        print(f"ratio {name} / bare: {rates[name] / bare:.2f}")
    print(f"process peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")

    network_parser = ConfigParser()
    network_parser.read_config(str(TRAIN_CONFIG))
    print(f"\nBasicUNet training step, batch {args.dtype_batch_size}, median of {args.dtype_steps} after 1 warm-up")
    print(f"{'size':>5s} {'fp32 s':>7s} {'bf16 s':>7s} {'fp32 / bf16':>11s}")
    for size in (224, 448):
        set_determinism(seed=SEED)
        network = network_parser.get_parsed_content("network_def", lazy=False)
        channels = network_parser.get_parsed_content("out_channels")
        fp32 = step_seconds(network, channels, size, args.dtype_batch_size, bf16=False, steps=args.dtype_steps)
        bf16 = step_seconds(network, channels, size, args.dtype_batch_size, bf16=True, steps=args.dtype_steps)
        print(f"{size:5d} {fp32:7.2f} {bf16:7.2f} {fp32 / bf16:10.2f}x", flush=True)
    print(f"{load_average()} at end")


if __name__ == "__main__":
    main()
