"""Train and evaluate several recipes on the same data and budget, and tabulate their official scores.

``pengwin-compare --recipes default,seed --max_epochs N [--dataset_dir DIR] [--output_dir OUT]``, started in the bundle folder
(``--dataset_dir`` left out: the built-in synthetic dataset) trains each recipe of :data:`RECIPES` with the
bundle's own configs (``train.json`` and the recipe's overlays), evaluates its best checkpoint (chosen on the
validation split) with ``evaluate.json`` merged after them on the test split, and prints one row per recipe:
parameters, epochs, training throughput, peak memory, the IoU per bone, the six official metrics, the one-to-one
fragment IoU and the fracture IoU by fragment size. The table is also written to ``OUT/compare.json`` and
``OUT/compare.md``; every train and evaluate run goes to one MLflow experiment. The default recipes are the
two networks: ``default`` (BasicUNet, ``train.json``) and ``vgg16unet``.

Each recipe runs in its own child process (``ConfigWorkflow`` train, then evaluate, in that process), so that its
peak memory is the kernel's maximum resident set size of that process alone (``os.wait4``), with nothing left over
from the other recipes. All children read the same dataset folder, so ``pengwin_xray.datalist.build_datalist`` gives
all the same patient split; the children report their split sizes and a difference is an error. While a child
runs, its validation results are echoed, one line per epoch.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Timer
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.utils import path_to_sqlite_uri

from .atomic import atomic_open, write_json_atomic

__all__ = [
    "RECIPES",
    "LOCALISER_RECIPES",
    "DEFAULT_RECIPES",
    "count_parameters",
    "ThroughputMeter",
    "run_recipe",
    "compare",
    "format_table",
    "main",
]

#: recipe name -> the config files that define it, in merge order (``evaluate.json`` is appended to evaluate)
RECIPES: dict[str, tuple[str, ...]] = {
    "default": ("train.json",),
    "vgg16unet": ("train.json", "train_vgg16.json"),
    "seed": ("train.json", "train_seed.json"),
    "slots": ("train.json", "train_slots.json"),
    "rims": ("train.json", "train_rims.json"),
    "two_stage": ("train.json", "train_two_stage.json"),
}
#: recipe -> the recipe whose trained model is its first stage (``localiser_dir``); that one runs first
LOCALISER_RECIPES: dict[str, str] = {"two_stage": "default"}
#: what ``pengwin-compare`` runs without ``--recipes``: the two networks
DEFAULT_RECIPES: tuple[str, ...] = ("default", "vgg16unet")
EVALUATE_CONFIG = "evaluate.json"
#: table columns: (row key, header, format)
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("recipe", "recipe", "{}"),
    ("parameters", "parameters", "{:,}"),
    ("epochs", "epochs", "{:g}"),
    ("train_images_per_s", "train images/s", "{:.2f}"),
    ("train_minutes", "training min", "{:.1f}"),
    ("peak_rss_mib", "peak RSS (MiB)", "{:.0f}"),
    ("iou_SA", "IoU SA", "{:.3f}"),
    ("iou_LI", "IoU LI", "{:.3f}"),
    ("iou_RI", "IoU RI", "{:.3f}"),
    ("fracture_iou", "fracture IoU", "{:.3f}"),
    ("fracture_hd95", "fracture HD95", "{:.1f}"),
    ("fracture_assd", "fracture ASSD", "{:.1f}"),
    ("anatomical_iou", "anatomical IoU", "{:.3f}"),
    ("anatomical_hd95", "anatomical HD95", "{:.1f}"),
    ("anatomical_assd", "anatomical ASSD", "{:.1f}"),
    ("fracture_iou_hungarian", "one-to-one IoU", "{:.3f}"),
    ("fracture_iou_under_0.5pct", "IoU <0.5%", "{:.3f}"),
    ("fracture_iou_0.5_1pct", "IoU 0.5-1%", "{:.3f}"),
    ("fracture_iou_1_5pct", "IoU 1-5%", "{:.3f}"),
    ("fracture_iou_over_5pct", "IoU >5%", "{:.3f}"),
)
#: summary.json key -> row key
SUMMARY_KEYS: dict[str, str] = {
    "val_iou_SA": "iou_SA",
    "val_iou_LI": "iou_LI",
    "val_iou_RI": "iou_RI",
    **{key: key for key, _, _ in COLUMNS[9:]},
    "num_images": "num_test_images",
}
_VALIDATION_LINE = re.compile(r"Key metric: (\S+) best value: ([0-9.eE+-]+) at epoch: (\d+)")


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``model`` (only those with ``requires_grad`` when ``trainable_only``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


class ThroughputMeter:
    """Count the images a trainer consumes and the time spent fetching batches and running training iterations.

    Time runs from each ``GET_BATCH_STARTED`` to the next ``ITERATION_COMPLETED`` (ignite's ``Timer``), so data
    loading, forward, backward and the optimiser step count; validation and checkpointing between epochs do not.
    """

    def __init__(self, image_key: str = "image") -> None:
        self.image_key = image_key
        self.images = 0
        self.timer = Timer(average=False)

    def attach(self, engine: Engine) -> None:
        """Start timing when ``engine`` starts and count the images of every batch it fetches."""
        self.timer.attach(
            engine, start=Events.STARTED, resume=Events.GET_BATCH_STARTED, pause=Events.ITERATION_COMPLETED
        )
        engine.add_event_handler(Events.GET_BATCH_COMPLETED, self._count)

    def _count(self, engine: Engine) -> None:
        self.images += len(engine.state.batch[self.image_key])

    @property
    def seconds(self) -> float:
        return float(self.timer.value())

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


def run_recipe(
    config_files: Sequence[str],
    evaluate_config: str,
    overrides: dict[str, Any],
    evaluate_overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train with ``config_files``, then evaluate with ``evaluate_config`` merged after them, in this process.

    Args:
        config_files: the training configs in merge order.
        evaluate_config: the evaluation config merged after them.
        overrides: config ids and values for both runs (``dataset_dir``, ``output_dir``, ``ckpt_dir``, ...).
        evaluate_overrides: further ids and values for the evaluation only (e.g. its ``run_name``).

    Returns:
        parameters, epochs (maximum and completed), images, training seconds and throughput, the split sizes,
        and the evaluation summary.
    """
    train = ConfigWorkflow(config_file=list(config_files), workflow_type="train", **overrides)
    train.initialize()
    meter = ThroughputMeter()
    meter.attach(train.trainer)
    parameters = count_parameters(train.parser.get_parsed_content("network"))
    datalist = train.parser.get_parsed_content("datalist")
    max_epochs = int(train.parser.get_parsed_content("max_epochs"))
    train.run()
    epochs = train.trainer.state.iteration / max(train.trainer.state.epoch_length or 1, 1)
    train.finalize()

    evaluate = ConfigWorkflow(
        config_file=[*config_files, evaluate_config], workflow_type=None, **{**overrides, **(evaluate_overrides or {})}
    )
    evaluate.initialize()
    evaluate.run()
    evaluate.finalize()
    summary_path = Path(evaluate.parser.get_parsed_content("evaluation_dir")) / "summary.json"
    return {
        "parameters": parameters,
        "max_epochs": max_epochs,
        "epochs": epochs,
        "train_images": meter.images,
        "train_seconds": meter.seconds,
        "train_images_per_s": meter.images_per_second,
        "split": {name: len(datalist[name]) for name in ("training", "validation", "test")},
        "summary_path": str(summary_path),
        "summary": json.loads(summary_path.read_text()),
    }


def _run_child(spec: dict[str, Any], work_dir: Path, bundle_root: Path) -> tuple[dict[str, Any], int]:
    """Run :func:`run_recipe` for ``spec`` in a child process; return its result and peak RSS in bytes.

    The child's output goes to ``compare.log`` in ``work_dir``; its validation results are echoed as they come.
    """
    spec_path, result_path, log_path = work_dir / "spec.json", work_dir / "result.json", work_dir / "compare.log"
    write_json_atomic(spec_path, {**spec, "result_path": str(result_path)})
    result_path.unlink(missing_ok=True)
    command = [sys.executable, "-m", "pengwin_xray.compare", "--run_spec", str(spec_path)]
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command,
            cwd=bundle_root,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},  # lines as they come, for the progress echo
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        for line in process.stdout:
            log.write(line)
            if match := _VALIDATION_LINE.search(line):
                print(f"  {spec['recipe']}: best {match[1]} {float(match[2]):.3f} at epoch {match[3]}", flush=True)
        # os.wait4 rather than Popen.wait: it also returns the child's own resource usage (peak RSS)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0 or not result_path.is_file():
        lines = log_path.read_text(errors="replace").splitlines()
        reason = next((line for line in reversed(lines) if line.startswith("error: ")), lines[-1] if lines else "")
        raise RuntimeError(f"{spec['recipe']}: run failed (exit code {process.returncode}; {reason}), log {log_path}")
    return json.loads(result_path.read_text()), usage.ru_maxrss * 1024  # ru_maxrss is in KiB on Linux


def _tracking_uri(output_dir: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or path_to_sqlite_uri(str(output_dir.resolve() / "mlruns.db"))


def compare(
    dataset_dir: str = "",
    max_epochs: int | None = None,
    output_dir: str | os.PathLike | None = None,
    bundle_root: str | os.PathLike | None = None,
    overrides: dict[str, Any] | None = None,
    recipe_overrides: dict[str, dict[str, Any]] | None = None,
    recipes: Sequence[str] = DEFAULT_RECIPES,
) -> dict[str, Any]:
    """Train and evaluate each of ``recipes`` on the same data and epochs; write and return the table.

    Args:
        dataset_dir: PENGWIN root; empty for the built-in synthetic dataset (generated here once, before the runs).
        max_epochs: training epochs of every recipe; ``None`` keeps the configs' default.
        output_dir: where each recipe's checkpoints, evaluation and logs go (``OUT/<recipe>/``), with the shared
            MLflow store (unless ``MLFLOW_TRACKING_URI`` is set) and ``compare.json`` / ``compare.md``.
        bundle_root: the bundle folder (holding ``configs/`` and ``scripts/``); default: the current folder.
        overrides: further config ids and values for every recipe (e.g. ``{"num_workers": 0}``).
        recipe_overrides: config ids and values for one recipe only, by name (e.g. ``vgg16_weights``).
        recipes: names from :data:`RECIPES`, run in this order.

    Returns:
        the content of ``compare.json``: settings, split sizes and one row per recipe.

    Raises:
        ValueError: an unknown recipe name, override key or epoch count, an output folder that is a file, or the
            recipes got different epochs or splits.
        RuntimeError: a run failed (the message gives its error line and log).
    """
    bundle = Path(bundle_root or ".").resolve()
    if not (bundle / "configs" / "train.json").is_file():
        raise ValueError(f"{bundle}: not a bundle folder (no configs/train.json); start in bundle/ or pass --bundle_root")
    output = Path(output_dir or bundle / "eval" / "compare").resolve()
    recipe_overrides = recipe_overrides or {}
    unknown = sorted((set(recipes) | set(recipe_overrides)) - set(RECIPES))
    if unknown or not recipes:
        raise ValueError(f"unknown or no recipe(s) {unknown}; recipes are {', '.join(RECIPES)}")
    # the configs import the bundle's own `scripts`, importable from the bundle folder as under `python -m monai.bundle`
    if str(bundle) not in sys.path:
        sys.path.insert(0, str(bundle))
    from scripts.errors import root_cause  # the bundle's, importable from here on
    from scripts.flags import as_count, check_folders, check_override_keys

    # what the user gave is checked before any data is generated or any recipe trained
    check_folders(output_dir=str(output))
    for recipe in _with_localisers(recipes):
        keys = {**(overrides or {}), **recipe_overrides.get(recipe, {})}.keys()
        check_override_keys(keys, [str(bundle / "configs" / name) for name in (*RECIPES[recipe], EVALUATE_CONFIG)])
    shared: dict[str, Any] = {
        "bundle_root": str(bundle),
        "dataset_dir": str(dataset_dir),
        "tracking_uri": _tracking_uri(output),
        **(overrides or {}),
    }
    if max_epochs is not None:
        shared["max_epochs"] = as_count(max_epochs, "max_epochs")
    # resolve (and, for the synthetic default, generate) the data once, so no run's figures include it
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / RECIPES["default"][0]))
    parser.update(shared)

    try:
        data_root = parser.get_parsed_content("data_root")
    except RuntimeError as error:  # MONAI wraps the failed expression; its cause is the check on the user's input
        cause = root_cause(error)
        if isinstance(cause, (ValueError, OSError)):
            raise ValueError(str(cause)) from None
        raise

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    rows, budgets, train_seconds = [], {}, {}
    for recipe in _with_localisers(recipes):
        recipe_dir = output / recipe
        localiser = LOCALISER_RECIPES.get(recipe)
        spec = {
            "recipe": recipe,
            "config_files": [str(bundle / "configs" / name) for name in RECIPES[recipe]],
            "evaluate_config": str(bundle / "configs" / EVALUATE_CONFIG),
            "overrides": {
                **shared,
                "output_dir": str(recipe_dir),
                "ckpt_dir": str(recipe_dir / "models"),
                "run_name": f"{recipe}-{stamp}",
                **({"localiser_dir": str(output / localiser / "models")} if localiser else {}),
                **recipe_overrides.get(recipe, {}),
            },
            "evaluate_overrides": {"run_name": f"evaluate-{recipe}-{stamp}"},
        }
        print(f"{recipe}: training and evaluating, log in {recipe_dir / 'compare.log'}", flush=True)
        recipe_dir.mkdir(parents=True, exist_ok=True)
        result, peak_rss = _run_child(spec, recipe_dir, bundle)
        budgets[recipe] = {"max_epochs": result["max_epochs"], **result["split"]}
        train_seconds[recipe] = result["train_seconds"] + (train_seconds[localiser] if localiser else 0.0)
        summary = result["summary"]
        rows.append(
            {
                "recipe": recipe,
                "config_files": list(RECIPES[recipe]),
                "parameters": result["parameters"],
                "epochs": result["epochs"],
                "train_images_per_s": result["train_images_per_s"],
                "train_minutes": train_seconds[recipe] / 60,
                "peak_rss_mib": peak_rss / 2**20,
                **{row_key: summary.get(key) for key, row_key in SUMMARY_KEYS.items()},
                "train_images": result["train_images"],
                "train_seconds": result["train_seconds"],
                "checkpoint": str(recipe_dir / "models" / "model.pt"),
                "summary": result["summary_path"],
            }
        )
    if len({json.dumps(budget, sort_keys=True) for budget in budgets.values()}) != 1:
        raise ValueError(f"{data_root}: the recipes got different epochs or splits: {budgets}")
    budget = next(iter(budgets.values()))
    report = {
        "output_dir": str(output),
        "dataset": str(data_root),
        "max_epochs": budget.pop("max_epochs"),
        "split": budget,
        "tracking_uri": shared["tracking_uri"],
        "experiment_name": parser.get_parsed_content("experiment_name"),
        "peak_rss": "maximum resident set size of each recipe's own process (train and evaluate)",
        "train_images_per_s": "images / seconds of batch loading and training iterations, the first (warm-up) "
        "iteration included; validation and checkpointing excluded",
        "rows": rows,
    }
    write_json_atomic(output / "compare.json", report)
    with atomic_open(output / "compare.md", "w") as handle:
        handle.write(format_table(rows) + "\n")
    return report


def _with_localisers(recipes: Sequence[str]) -> list[str]:
    """``recipes`` in order, each two-stage recipe preceded by its localiser's recipe unless that ran before it."""
    ordered: list[str] = []
    for recipe in recipes:
        localiser = LOCALISER_RECIPES.get(recipe)
        if localiser and localiser not in ordered:
            ordered.append(localiser)
        if recipe not in ordered:
            ordered.append(recipe)
    return ordered


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a Markdown table with the columns of :data:`COLUMNS`."""
    lines = [
        "| " + " | ".join(header for _, header, _ in COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    for row in rows:
        cells = ("n/a" if row.get(key) is None else fmt.format(row[key]) for key, _, fmt in COLUMNS)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _key_value(text: str) -> tuple[str, Any]:
    """Parse ``KEY=VALUE`` with VALUE as JSON where it parses (``0``, ``[16, 16]``, ``null``), else as a string."""
    key, separator, value = text.partition("=")
    if not separator or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``pengwin-compare --dataset_dir DIR --max_epochs N [--output_dir OUT]``; the report goes to
    ``compare.json`` in the output folder. Returns nothing: a console script exits with what ``main`` returns."""
    parser = argparse.ArgumentParser(prog="pengwin-compare", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--recipes", default=",".join(DEFAULT_RECIPES),
        help=f"comma-separated recipe names, of {', '.join(RECIPES)} (default: {','.join(DEFAULT_RECIPES)})",
    )
    parser.add_argument("--dataset_dir", default="", help="PENGWIN root (default: the built-in synthetic dataset)")
    parser.add_argument("--max_epochs", type=int, default=None, help="epochs for every recipe (default: config's)")
    parser.add_argument("--output_dir", default=None, help="output folder (default: <bundle>/eval/compare)")
    parser.add_argument("--bundle_root", default=None, help="bundle folder (default: the current folder)")
    parser.add_argument("--vgg16_weights", default=None, help="local torchvision VGG16 state dict (default: none)")
    parser.add_argument(
        "--override", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
        help="config override for every recipe, VALUE in JSON (repeatable), e.g. --override num_workers=0",
    )
    parser.add_argument(
        "--vgg16_override", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
        help="config override for the VGG16 U-Net only (repeatable), e.g. --vgg16_override freeze_encoder_epochs=2",
    )
    parser.add_argument("--run_spec", default=None, help=argparse.SUPPRESS)  # one recipe, in a child process
    args = parser.parse_args(argv)
    if args.run_spec is not None:
        spec = json.loads(Path(args.run_spec).read_text())
        from scripts.errors import report_user_errors_in_one_line  # the bundle's: the child runs in its folder

        report_user_errors_in_one_line()  # the parent reports a failed run by its "error: " line
        result = run_recipe(spec["config_files"], spec["evaluate_config"], spec["overrides"], spec["evaluate_overrides"])
        write_json_atomic(spec["result_path"], result)
        return
    vgg16 = dict(args.vgg16_override)
    if args.vgg16_weights is not None:
        vgg16["vgg16_weights"] = str(Path(args.vgg16_weights).resolve())
    recipes = [name.strip() for name in args.recipes.split(",") if name.strip()]
    try:
        report = compare(
            args.dataset_dir, args.max_epochs, args.output_dir, args.bundle_root, dict(args.override),
            {"vgg16unet": vgg16}, recipes,
        )  # fmt: skip
    except (ValueError, RuntimeError) as error:  # bad input, or a recipe's run failed (its log named)
        raise SystemExit(f"pengwin-compare: {error}") from None
    print(format_table(report["rows"]))
    print(f"written: {Path(report['output_dir']) / 'compare.json'} and compare.md")


if __name__ == "__main__":
    main()
