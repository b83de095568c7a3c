"""Loading what a run needs: the dataset, the checkpoint to resume, the checked inputs and the network in any format.

The end-of-run report of inputs that failed lives here too, beside the input check that finds most of them.

``configs/inference.json`` wires these pieces into its engine (:class:`scripts.segmenter.FolderInference`):

1. :func:`list_inputs` reads every ``*.tif``/``*.tiff`` of the input folder once with the validating reader, so
   that a bad file is reported with its reason and skipped instead of stopping the run half-way.
2. :func:`load_network` gives the network in the chosen format: the trained weights on ``network_def`` ("pt",
   through :func:`load_checkpoint`, which ``evaluate.json`` uses too), a TorchScript file ("ts") or an ONNX file
   run by ONNX Runtime ("onnx") or OpenVINO ("openvino"), each behind a ``torch.nn.Module``
   (:class:`OnnxModelNetwork`) so that the same inferer runs it, and so does ``evaluate.json``'s evaluator.
3. :class:`scripts.writers.PredictionWriter` writes each image's files.
4. :func:`report_failures` prints the counts at the end and fails the run when any input failed.
"""

from __future__ import annotations

import datetime
import fcntl
import logging
import os
from collections import OrderedDict
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TextIO

import numpy as np
import torch
from monai.utils import convert_to_numpy

from custom_transforms.constants import BEST_MODEL_FILE, NUM_CHANNELS
from custom_transforms.formulation import MAIN_OTHER_CHANNELS, MAIN_OTHER_RIM_CHANNELS
from custom_transforms.io import TIFF_SUFFIXES, list_tiffs, read_xray_image, tiff_stem
from pengwin_xray.datalist import IMAGE_SUBDIR, LABEL_SUBDIR, split_folders
from pengwin_xray.model_files import load_torchscript, read_state_dict

from .flags import as_count, as_positive_number

__all__ = [
    "resolve_dataset",
    "SYNTHETIC_SETTINGS",
    "checked_synthetic",
    "resume_checkpoint",
    "warn_replacing_best_model",
    "lock_training",
    "MODEL_FORMATS",
    "InputFailure",
    "InputScan",
    "error_reason",
    "check_output_folder",
    "list_inputs",
    "OnnxModelNetwork",
    "OnnxRuntimeNetwork",
    "OpenVinoNetwork",
    "load_checkpoint",
    "checkpoint_mismatch",
    "load_network",
    "EXPORT_PROBE_SIDE",
    "EXPORT_LOGIT_TOLERANCE",
    "check_export",
    "report_failures",
]

logger = logging.getLogger(__name__)


def resolve_dataset(dataset_dir: str, synthetic_dir: str, synthetic: dict[str, int], datalist_file: str = "") -> str:
    """The folder of the data to train on: the ``datalist_file``'s, ``dataset_dir`` when given, else the built-in
    synthetic dataset's.

    The synthetic dataset (``synthetic`` holds patients, projections, size and seed) is generated once into
    ``synthetic_dir`` and reused while its arguments stay the same.

    Raises:
        ValueError: when both ``datalist_file`` and ``dataset_dir`` are given (the datalist names the files: the
            folder would be ignored).
    """
    if datalist_file:
        if dataset_dir:
            raise ValueError(f"{dataset_dir}: dataset_dir and datalist_file ({datalist_file}) are both set; the "
                             "datalist names the files, so give one of them")
        return os.path.dirname(os.path.abspath(datalist_file))
    if dataset_dir:
        if not Path(dataset_dir).is_dir():
            raise FileNotFoundError(f"{dataset_dir}: dataset folder does not exist")
        return str(dataset_dir)
    from pengwin_xray.synthetic import ensure_synthetic_dataset  # imported on demand: real data never needs it

    logger.info(f"no dataset_dir given: using the built-in synthetic PENGWIN dataset in {synthetic_dir}")
    return str(ensure_synthetic_dataset(synthetic_dir, **checked_synthetic(synthetic)))


#: the settings of the built-in synthetic dataset (``train.json``'s ``synthetic``)
SYNTHETIC_SETTINGS: tuple[str, ...] = ("patients", "projections", "size", "seed", "voxel_mm")


def checked_synthetic(synthetic: Any) -> dict[str, int | float | None]:
    """The ``synthetic`` setting, a dict of :data:`SYNTHETIC_SETTINGS`, with whole numbers as ints (a seed of 0 or
    more) and ``voxel_mm`` a number above 0 or ``None``.

    Raises:
        ValueError: naming the setting, for no dict, a key the generator does not take, or a bad value.
    """
    if not isinstance(synthetic, Mapping):
        raise ValueError(f"synthetic must be a dict of {', '.join(SYNTHETIC_SETTINGS)}, got {synthetic!r}")
    if unknown := sorted(set(synthetic) - set(SYNTHETIC_SETTINGS)):
        raise ValueError(f"synthetic: no setting {unknown}; the settings are {', '.join(SYNTHETIC_SETTINGS)}")
    if missing := [key for key in SYNTHETIC_SETTINGS if key not in synthetic and key != "voxel_mm"]:
        raise ValueError(f"synthetic: missing setting {missing} (a whole --synthetic dict replaces the default one; "
                         "--synthetic#patients 3 sets one setting)")
    checked: dict[str, int | float | None] = {}
    for key, value in synthetic.items():
        name = f"synthetic#{key}"
        if key == "voxel_mm":
            checked[key] = None if value is None else as_positive_number(value, name)
        else:
            checked[key] = as_count(value, name, minimum=0 if key == "seed" else 1)
    return checked

def resume_checkpoint(ckpt_dir: str, required: bool = True) -> str | None:
    """The training state to resume from: ``<ckpt_dir>/checkpoint.pt``, written by ``train.json`` after every epoch.

    Raises:
        FileNotFoundError: when ``required`` and there is none.
    """
    path = Path(ckpt_dir) / "checkpoint.pt"
    if path.is_file():
        return str(path)
    if required:
        raise FileNotFoundError(f"{path}: no training checkpoint to resume from")
    return None

def warn_replacing_best_model(ckpt_dir: str | os.PathLike) -> Path | None:
    """Say, before a new training starts, that it will replace the ``model.pt`` an earlier run left; return it."""
    path = Path(ckpt_dir) / BEST_MODEL_FILE
    if not path.is_file():
        return None
    written = datetime.datetime.fromtimestamp(path.stat().st_mtime).strftime("%Y-%m-%d %H:%M")
    logger.warning(
        f"{path} (written {written}) will be replaced by this training's best model; to keep it, stop now and give "
        "this training its own --ckpt_dir"
    )
    return path


def lock_training(ckpt_dir: str | os.PathLike) -> TextIO:
    """Hold an exclusive lock on ``<ckpt_dir>/.training.lock`` while this process lives; return its handle.

    Two trainings writing one ``models/`` folder would overwrite each other's checkpoints and best model. The lock
    (``fcntl.flock``) is released by the operating system when the process ends, however it ends.

    Raises:
        ValueError: when another process holds the lock.
    """
    path = Path(ckpt_dir) / ".training.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "another process"
        handle.close()
        raise ValueError(
            f"{ckpt_dir}: another training (pid {owner}) is writing this folder; wait for it to end, or give this "
            "one its own --ckpt_dir"
        ) from None
    handle.truncate(0)
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


#: "pt": state dict on ``network_def``; "ts": TorchScript; "onnx": ONNX Runtime on the CPU; "openvino": the same
#: ONNX file run by OpenVINO on the CPU (the fastest on CPUs)
MODEL_FORMATS: tuple[str, ...] = ("pt", "ts", "onnx", "openvino")

class InputFailure(NamedTuple):
    """An input file that could not be processed, and why."""

    path: str
    reason: str

class InputScan(NamedTuple):
    """The readable inputs as datalist items (``{"image": path, "filename": path}``) and the rejected ones."""

    items: list[dict[str, str]]
    failures: list[InputFailure]

def error_reason(err: BaseException, path: str) -> str:
    """The error message without the leading file name that the readers put there."""
    message = str(err)
    return message[len(path) + 2 :] if message.startswith(f"{path}: ") else message

def check_output_folder(
    output_dir: str | os.PathLike, input_folders: Collection[Path], label_folders: Collection[Path] = ()
) -> None:
    """Refuse an ``output_dir`` that is a folder the inputs are read from, or a PENGWIN split's label folder (of
    the inputs' splits, or of any split: ``<split>/output/images/x-ray`` beside a ``<split>/input/images/x-ray``):
    the bit maps (``<stem>.tif``) would overwrite the X-rays or the ground truth."""
    output = Path(output_dir).resolve()
    for folders, what in ((input_folders, "the inputs"), (label_folders, "the ground-truth labels")):
        taken = [folder for folder in folders if folder.resolve() == output]
        if taken:
            raise ValueError(
                f"{output_dir}: output_dir is the folder of {what} ({taken[0]}); the bit maps would overwrite them; "
                "choose another --output_dir"
            )
    if output.parts[-len(LABEL_SUBDIR.parts) :] == LABEL_SUBDIR.parts:
        split = output.parents[len(LABEL_SUBDIR.parts) - 1]
        if (split / IMAGE_SUBDIR).is_dir():
            raise ValueError(
                f"{output_dir}: output_dir is the label folder of the PENGWIN split {split}; the bit maps would "
                "overwrite its ground truth; choose another --output_dir"
            )

def list_inputs(
    dataset_dir: str | os.PathLike,
    output_dir: str | os.PathLike | None = None,
    image_size: Sequence[int] | None = None,
) -> InputScan:
    """Find the X-rays directly inside ``dataset_dir`` (not recursive), or, for a PENGWIN root, in the
    ``<split>/input/images/x-ray`` folder of each split, and check each one before the run.

    Every ``*.tif``/``*.tiff`` file is read with :func:`custom_transforms.read_xray_image`; an unreadable, non-float,
    NaN/inf or constant image, or one too narrow at the model's ``image_size``, is logged with its reason and listed in
    ``failures``, and so is every file of an output name (``<stem>.tif``) that several inputs take (``a.tif`` and
    ``a.TIFF``: which one is meant is not known).

    Args:
        dataset_dir: folder of raw PENGWIN X-ray TIFFs, or a PENGWIN root.
        output_dir: the output folder, if known, to refuse writing bit maps over the inputs or a split's labels
            (also those beside a split's ``input/images/x-ray`` folder given as ``dataset_dir``).
        image_size: the size inference brings the images to (``None``: their own).

    Raises:
        FileNotFoundError: when ``dataset_dir`` does not exist or holds no TIFF file.
        NotADirectoryError: when ``dataset_dir`` is not a folder.
        ValueError: when ``output_dir`` is a folder of the inputs or of a split's labels (see
            :func:`check_output_folder`).
    """
    folder = Path(dataset_dir)
    if not folder.exists():
        raise FileNotFoundError(f"{folder}: input folder does not exist (set --dataset_dir)")
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder}: dataset_dir must be a folder of X-ray TIFFs")
    paths = list_tiffs(folder)
    listed = set(paths)
    others = sorted(
        path.name for path in folder.iterdir() if path.is_file() and not path.name.startswith(".") and path not in listed
    )
    if paths and others:  # e.g. a compressed b.tif.gz, or c.tf: said, so that a missing output is explained
        logger.warning(f"{folder}: {len(others)} file(s) without a {'/'.join(TIFF_SUFFIXES)} suffix not read: "
                       f"{', '.join(others[:6])}{', ...' if len(others) > 6 else ''}")
    splits = [] if paths else split_folders(folder)
    if not paths:
        paths = [path for split in splits for path in list_tiffs(split / IMAGE_SUBDIR)]
    if not paths:
        raise FileNotFoundError(
            f"{folder}: no {'/'.join(TIFF_SUFFIXES)} files in the input folder, nor in "
            f"<split>/{IMAGE_SUBDIR.as_posix()} folders of a PENGWIN root"
        )
    if output_dir is not None:
        # a PENGWIN root itself too: bit maps written there would make it a folder of TIFFs for the next run
        input_folders = {path.parent for path in paths} | {folder}
        # a split's x-ray folder given as dataset_dir: its labels lie at <split>/output/images/x-ray
        label_folders = {split / LABEL_SUBDIR for split in splits} | {
            input_folder.resolve().parents[2] / LABEL_SUBDIR
            for input_folder in input_folders
            if input_folder.resolve().parts[-len(IMAGE_SUBDIR.parts) :] == IMAGE_SUBDIR.parts
        }
        check_output_folder(output_dir, input_folders, label_folders)

    items: list[dict[str, str]] = []
    failures: list[InputFailure] = []
    by_stem: dict[str, list[str]] = {}
    for path in map(str, paths):
        by_stem.setdefault(tiff_stem(path), []).append(path)
    for path in map(str, paths):
        stem = tiff_stem(path)
        try:
            if len(by_stem[stem]) > 1:
                names = " and ".join(Path(same).name for same in by_stem[stem])
                raise ValueError(f"{names} would both be written as {stem}.tif; which one is meant is not known")
            read_xray_image(path, image_size=image_size)
        except (ValueError, OSError) as err:
            failures.append(InputFailure(path, error_reason(err, path)))
            logger.warning(f"skipping {path}: {failures[-1].reason}")
            continue
        items.append({"image": path, "filename": path})
    logger.info(f"{folder}: {len(items)} input(s) to process, {len(failures)} rejected")
    return InputScan(items, failures)


def require_inputs(scan: InputScan, dataset_dir: str | os.PathLike) -> None:
    """Refuse a run whose :func:`list_inputs` ``scan`` of ``dataset_dir`` found no usable input, listing why each
    file was rejected.

    Raises:
        ValueError: when ``scan`` has no item.
    """
    if not scan.items:
        listing = "; ".join(f"{Path(failure.path).name}: {failure.reason}" for failure in scan.failures)
        raise ValueError(f"{dataset_dir}: none of the {len(scan.failures)} input files is usable ({listing})")

class OnnxModelNetwork(torch.nn.Module):
    """An exported ONNX model run by an inference engine, behind the ``torch.nn.Module`` call of the PyTorch network.

    It takes and returns float32 tensors ``[B, C, H, W]`` (the output on the input's device), so MONAI's evaluator
    and the bundle's inferer run it unchanged, whatever autocast says. Subclasses set ``input_shape`` (an int per
    fixed axis, anything else for a dynamic one) and implement :meth:`run`.

    Args:
        path: the ``.onnx`` file (as written by ``python -m monai.bundle onnx_export``).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__()
        self.path = str(path)
        self.input_shape: tuple = ()

    def not_loadable(self, err: Exception) -> ValueError:
        """The one-line error for a file the engine cannot load (the last line of the engine's message)."""
        reason = (str(err).strip().splitlines() or [""])[-1]
        return ValueError(f"{self.path}: not a loadable ONNX model ({type(err).__name__}: {reason})")

    def run(self, image: np.ndarray) -> np.ndarray:
        """The engine's output for a float32 batch."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expected = self.input_shape
        if x.ndim != len(expected) or any(isinstance(e, int) and e != n for e, n in zip(expected, x.shape)):
            raise ValueError(
                f"{self.path}: the ONNX model takes inputs of shape {list(expected)}, got {list(x.shape)} "
                "(export it with dynamic axes, or resize with the inferer's spatial_size)"
            )
        return torch.from_numpy(self.run(convert_to_numpy(x, dtype=np.float32))).to(x.device)


class OnnxRuntimeNetwork(OnnxModelNetwork):
    """The ONNX model run by ONNX Runtime (float32).

    Args:
        path: the ``.onnx`` file.
        providers: ONNX Runtime execution providers, in order of preference.
    """

    def __init__(self, path: str | os.PathLike, providers: Sequence[str] = ("CPUExecutionProvider",)) -> None:
        super().__init__(path)
        import onnxruntime  # only the "onnx" model format needs it

        try:
            self.session = onnxruntime.InferenceSession(self.path, providers=list(providers))
        except Exception as err:  # onnxruntime raises its own exception types for unreadable models
            raise self.not_loadable(err) from err
        (model_input,) = self.session.get_inputs()
        self.input_name = model_input.name
        self.input_shape = tuple(model_input.shape)  # str or None for dynamic axes

    def run(self, image: np.ndarray) -> np.ndarray:
        (output, *_) = self.session.run(None, {self.input_name: image})
        return output


class OpenVinoNetwork(OnnxModelNetwork):
    """The ONNX model compiled by OpenVINO for the CPU, for the lowest latency.

    OpenVINO computes in bfloat16 by default on CPUs with bf16 instructions; here the precision is explicit:
    float32 unless ``bf16`` (faster on such CPUs, but bit maps move by a few percent of pixels). The model is
    compiled for each input shape it meets (0.1 s each; the last ``max_shapes`` are kept): kernels compiled for a
    static shape ran a 448 px BasicUNet pass 8% faster than the dynamic-shape model, with identical outputs.

    Args:
        path: the ``.onnx`` file.
        bf16: compute in bfloat16 instead of float32.
        threads: inference threads (``None``: OpenVINO's choice, every core).
        max_shapes: compiled input shapes kept at once.
    """

    def __init__(
        self, path: str | os.PathLike, bf16: bool = False, threads: int | None = None, max_shapes: int = 4
    ) -> None:
        super().__init__(path)
        import openvino  # only the "openvino" model format needs it
        from openvino.frontend import FrontEndManager

        # the ONNX front end named, not guessed: guessing tries every framework's parser on a bad file
        onnx_frontend = FrontEndManager().load_by_framework("onnx")
        self.config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32"}
        if threads is not None:
            self.config["INFERENCE_NUM_THREADS"] = threads
        try:
            self.model = onnx_frontend.convert(onnx_frontend.load(self.path))
        except Exception as err:  # OpenVINO raises its own exception types for unreadable models
            raise self.not_loadable(err) from err
        self.core = openvino.Core()
        self.max_shapes = max_shapes
        self.requests: OrderedDict[tuple[int, ...], Any] = OrderedDict()
        shape = self.model.input(0).get_partial_shape()
        self.input_shape = tuple(dim.get_length() if dim.is_static else None for dim in shape)

    def compiled_for(self, shape: tuple[int, ...]) -> Any:
        """The model compiled for inputs of ``shape`` (an ``openvino.CompiledModel``)."""
        return self.request_for(shape).get_compiled_model()

    def request_for(self, shape: tuple[int, ...]) -> Any:
        """An infer request of the model compiled for ``shape``, compiled on first use."""
        shape = tuple(int(n) for n in shape)
        if shape in self.requests:
            self.requests.move_to_end(shape)
            return self.requests[shape]
        model = self.model.clone()
        model.reshape(list(shape))
        self.requests[shape] = self.core.compile_model(model, "CPU", self.config).create_infer_request()
        if len(self.requests) > self.max_shapes:
            self.requests.popitem(last=False)
        return self.requests[shape]

    def run(self, image: np.ndarray) -> np.ndarray:
        return self.request_for(image.shape).infer({0: image})[0]


def load_checkpoint(
    network: torch.nn.Module, path: str | os.PathLike, device: str | torch.device = "cpu", setting: str = "ckpt_path"
) -> torch.nn.Module:
    """Load a state dict (``model.pt``, or a training ``checkpoint.pt`` holding it under ``"model"``) into
    ``network`` and return ``network``: the one loader of trained weights, for evaluation and inference.
    ``setting`` is the config id a missing file's message tells the user to set.

    Raises:
        FileNotFoundError: when the file is missing.
        ValueError: when the file is not a readable ``torch.save`` archive or not a state dict, holds arbitrary
            pickled objects (refused: loading is ``weights_only``), or its keys or shapes do not fit ``network``.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found (train first, or set --{setting})")
    state = read_state_dict(path, device)
    mismatch = checkpoint_mismatch(state, network)
    if mismatch:
        raise ValueError(f"{path}: checkpoint does not fit network_def: {mismatch}")
    network.load_state_dict(state, strict=True)
    return network


#: the first parameter name of each network the configs build, with the network's name and how to build it
NETWORK_SIGNATURES: dict[str, tuple[str, str]] = {
    "conv_0.conv_0.conv.weight": ("BasicUNet", "leave out configs/train_vgg16.json (the default network_def)"),
    "encoder.features.0.weight": ("VGG16UNet", "merge configs/train_vgg16.json after the config"),
}
#: output channels of each formulation, with the overlay that sets them
FORMULATION_OVERLAYS: dict[int, str] = {
    MAIN_OTHER_CHANNELS: "the default main/other formulation (no formulation overlay)",
    MAIN_OTHER_RIM_CHANNELS: "configs/train_rims.json",
    NUM_CHANNELS: "configs/train_seed.json or configs/train_slots.json",
}


def checkpoint_mismatch(state: Mapping[str, torch.Tensor], network: torch.nn.Module) -> str:
    """Why the state dict ``state`` does not load into ``network`` ("" when it does), in one line that names the
    config to merge when the checkpoint is of another network or formulation of this bundle.

    ``load_state_dict``'s own error lists every missing and unexpected key, hundreds for a whole network.
    """
    expected = network.state_dict()
    saved_kind = NETWORK_SIGNATURES.get(next(iter(state), ""))
    wanted_kind = NETWORK_SIGNATURES.get(next(iter(expected), ""))
    if saved_kind and wanted_kind and saved_kind != wanted_kind:
        return f"it holds a {saved_kind[0]}, network_def is a {wanted_kind[0]}: {saved_kind[1]}"
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    reshaped = [key for key in expected if key in state and state[key].shape != expected[key].shape]
    if not missing and not unexpected and not reshaped:
        return ""
    last = [key for key in expected if key.endswith("weight")][-1]
    if last in reshaped and not missing and not unexpected:
        saved, wanted = state[last].shape[0], expected[last].shape[0]
        if saved in FORMULATION_OVERLAYS and saved != wanted:
            return (
                f"it predicts {saved} channels, network_def {wanted}: for the checkpoint's formulation use "
                f"{FORMULATION_OVERLAYS[saved]}"
            )
    problems = [
        f"{len(keys)} {what} (first: {keys[0]})"
        for keys, what in ((missing, "missing keys"), (unexpected, "unexpected keys"), (reshaped, "of another shape"))
        if keys
    ]
    return "; ".join(problems)


def load_network(
    model_format: str,
    network_def: torch.nn.Module,
    ckpt_path: str | os.PathLike,
    torchscript_path: str | os.PathLike,
    onnx_path: str | os.PathLike,
    device: str | torch.device = "cpu",
    setting: str = "ckpt_path",
    cpu_bf16: bool = False,
) -> torch.nn.Module:
    """The network to run, in evaluation mode, for ``model_format`` "pt", "ts", "onnx" or "openvino".

    "pt" loads ``ckpt_path`` into ``network_def`` on ``device`` (``setting``: see :func:`load_checkpoint`); "ts"
    loads ``torchscript_path`` with ``torch.jit.load``; "onnx" and "openvino" run ``onnx_path`` on the CPU with
    :class:`OnnxRuntimeNetwork` or :class:`OpenVinoNetwork` (in bfloat16 when ``cpu_bf16``; "pt" and "ts" follow
    ``cpu_bf16`` through the inferer's autocast). An export must compute what the weights of ``ckpt_path`` compute,
    where that file exists (:func:`check_export`).

    Raises:
        ValueError: for an unknown ``model_format``, an unreadable model file, or an export of another model.
        FileNotFoundError: when the file of the chosen format is missing.
    """
    if model_format not in MODEL_FORMATS:
        raise ValueError(f"unknown model_format {model_format!r}; choose from {MODEL_FORMATS}")
    if model_format == "pt":
        return load_checkpoint(network_def.to(device), ckpt_path, device, setting).eval()
    path = torchscript_path if model_format == "ts" else onnx_path
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"{path}: no such model file (model_format {model_format}); export one with "
            f"`python -m monai.bundle {'ckpt_export' if model_format == 'ts' else 'onnx_export'}`"
        )
    if model_format == "ts":
        network = load_torchscript(path, device).eval()
    elif model_format == "openvino":
        network = OpenVinoNetwork(path, bf16=cpu_bf16).eval()
    else:
        network = OnnxRuntimeNetwork(path).eval()
    if Path(ckpt_path).is_file():
        model = load_checkpoint(network_def.cpu(), ckpt_path, "cpu", setting)  # network_def serves no other use here
        in_float32 = OpenVinoNetwork(path) if model_format == "openvino" and cpu_bf16 else network
        check_export(path, in_float32, model, device)
    return network


#: side of the probe image on which an export and its model are compared (both networks take multiples of 16)
EXPORT_PROBE_SIDE = 64
#: how far an export's logits may lie from its model's (the float32 formats agree to about 1e-5; an export of
#: another training is whole logits away)
EXPORT_LOGIT_TOLERANCE = 1e-3


def check_export(
    path: str | os.PathLike,
    export: torch.nn.Module,
    model: torch.nn.Module,
    device: str | torch.device = "cpu",
) -> None:
    """Refuse an export that does not compute what ``model`` (on the CPU, holding the ``model.pt`` beside it)
    computes: the post-processing chosen on validation belongs to ``model.pt``, and an export left from an earlier
    training would run with it unnoticed. Compared on one seeded random image of :data:`EXPORT_PROBE_SIDE` pixels
    (or the export's fixed input shape), with ``export`` (run on ``device``) computing in float32, TF32 off;
    outputs, not weights, since exporters may fold batch norms into the convolutions before them.

    Raises:
        ValueError: naming the export and how far its logits lie from the model's.
    """
    channels = next(parameter for parameter in model.parameters() if parameter.ndim == 4).shape[1]  # the first conv's
    fixed = getattr(export, "input_shape", None) or (None,) * 4  # an ONNX model's; None for a dynamic axis
    shape = [1, channels, EXPORT_PROBE_SIDE, EXPORT_PROBE_SIDE]
    shape = [size if isinstance(size, int) else default for size, default in zip(fixed, shape)]
    probe = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        expected, exported = model.eval()(probe).float(), export(probe.to(device)).float().cpu()
    if exported.shape != expected.shape or not torch.allclose(
        exported, expected, rtol=EXPORT_LOGIT_TOLERANCE, atol=EXPORT_LOGIT_TOLERANCE
    ):
        gap = (exported - expected).abs().max().item() if exported.shape == expected.shape else float("inf")
        raise ValueError(
            f"{path}: not an export of the model.pt beside it (its logits differ by up to {gap:.3g} on a test image: "
            "an export left from an earlier training?); export it again from this model"
        )


def report_failures(failures: Sequence[InputFailure], processed: Sequence[str]) -> None:
    """Print how many inputs were processed and failed; raise, listing the failed files, if any failed.

    Called at the end of the run, so that every good input is written before the run reports the bad ones and
    exits with a non-zero status.

    Raises:
        ValueError: when ``failures`` is not empty.
    """
    total = len(processed) + len(failures)
    print(f"PENGWIN inference: {len(processed)} of {total} input(s) processed, {len(failures)} failed", flush=True)
    for failure in failures:
        print(f"  FAILED {failure.path}: {failure.reason}", flush=True)
    if failures:
        names = ", ".join(Path(failure.path).name for failure in failures)
        raise ValueError(f"{len(failures)} of {total} input(s) failed ({names}); the reasons are listed above")
