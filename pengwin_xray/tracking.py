"""MLflow tracking of the bundle's runs: model-training experiments, registered models, linked evaluations.

``pengwin-mlflow-ui`` (:func:`main`) is the MLflow UI over the bundle's store, bound to this machine only unless
asked otherwise. MONAI's ``MLFlowHandler`` logs parameters, metrics and artifacts; what it does not do is here:
marking the experiment as model training (:func:`prepare_experiment`), logging and registering the trained network
as an MLflow PyTorch model (:func:`log_trained_model`) and linking an evaluation to the run that trained the model
it scored (:func:`link_evaluation`).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import shutil
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import torch
from monai.utils import path_to_sqlite_uri, path_to_uri

from custom_transforms.constants import TUNED_POSTPROCESSING_FILE

from .atomic import file_sha256

__all__ = [
    "EXPERIMENT_KIND_TAG",
    "MODEL_TRAINING",
    "MODEL_SHA256_TAG",
    "TRAINING_RUN_TAG",
    "artifact_location",
    "prepare_experiment",
    "using_tracking_uri",
    "log_trained_model",
    "link_evaluation",
    "ui_command",
    "training_runs_url",
    "main",
]

logger = logging.getLogger(__name__)

#: the experiment tag from which the MLflow UI tells model training from GenAI experiments, and its value
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
#: run tags: the SHA-256 of the model file a training run logged, and (on an evaluation) the training run's id
MODEL_SHA256_TAG = "pengwin.model_sha256"
TRAINING_RUN_TAG = "pengwin.training_run_id"
#: MLflow's tag that shows a run nested under another
PARENT_RUN_TAG = "mlflow.parentRunId"

#: the validation scores of the post-processing chosen for the model (``postprocessing.json`` beside it), logged
#: with the model as ``chosen_<key>`` metrics
CHOSEN_SCORES: tuple[str, ...] = ("validation_fracture_iou", "validation_anatomical_iou")

#: the first bytes of every SQLite database file
SQLITE_HEADER = b"SQLite format 3\x00"
#: the store ``train.json`` writes, relative to the bundle folder the command is started in
DEFAULT_STORE = Path("eval", "mlruns.db")


def artifact_location(tracking_uri: str) -> str | None:
    """Where a new experiment keeps its runs' artifacts: ``mlruns`` beside a SQLite store (as MONAI's
    ``MLFlowHandler`` does); ``None`` for a server, which decides."""
    if tracking_uri.startswith("sqlite:///"):
        return path_to_uri(Path(tracking_uri[len("sqlite:///") :]).parent / "mlruns")
    return None


def _check_artifact_folder(location: str | None) -> None:
    """Refuse a local artifact location (``file:`` URI) that exists but is no folder: MLflow would fail on it only
    when the run logs its first artifact, after the training."""
    if location is None or urlparse(location).scheme != "file":
        return
    folder = Path(unquote(urlparse(location).path))
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder}: the MLflow artifact folder is a file; move it away or use another --output_dir")


def prepare_experiment(tracking_uri: str, experiment_name: str) -> str:
    """Create ``experiment_name`` as a model-training experiment (or mark an existing one so) and return its id.

    Without the kind tag, MLflow 3's UI shows the experiment as a GenAI one, with training runs under "Evaluations".

    Raises:
        ValueError: the experiment's local artifact folder is a file.
    """
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        _check_artifact_folder(artifact_location(tracking_uri))
        return client.create_experiment(
            experiment_name, artifact_location(tracking_uri), tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING}
        )
    _check_artifact_folder(experiment.artifact_location)
    if experiment.tags.get(EXPERIMENT_KIND_TAG) != MODEL_TRAINING:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    beside_store = artifact_location(tracking_uri)
    if beside_store and experiment.artifact_location != beside_store:
        logger.warning(
            f"{tracking_uri}: experiment {experiment_name!r} keeps its artifacts in {experiment.artifact_location}, "
            f"not in {beside_store} beside the store (was the store moved or copied?): MLflow keeps artifact "
            "locations as absolute paths, so this run's artifacts go there too; use a new --experiment_name to "
            "keep them beside the store"
        )
    return experiment.experiment_id


def _named_run(client: Any, experiment_name: str, run_name: str) -> Any:
    """The latest run called ``run_name`` in ``experiment_name``, or ``None``."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id], f"attributes.run_name = '{run_name}'", order_by=["attributes.start_time DESC"]
    )
    return runs[0] if runs else None


@contextmanager
def using_tracking_uri(tracking_uri: str) -> Iterator[None]:
    """Make ``tracking_uri`` MLflow's tracking URI inside the block only.

    ``mlflow.set_tracking_uri`` also sets ``MLFLOW_TRACKING_URI`` in the environment, which every process started
    later would inherit; both are put back on leaving.
    """
    import mlflow

    previous_uri, previous_env = mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous_uri)
        if previous_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous_env


def log_trained_model(
    tracking_uri: str,
    experiment_name: str,
    run_name: str,
    network: torch.nn.Module,
    model_path: str | os.PathLike,
    input_example: np.ndarray,
    registered_name: str,
    config_dir: str | os.PathLike | None = None,
    code_dir: str | os.PathLike | None = None,
    tags: Mapping[str, Any] | None = None,
    chosen_settings: Sequence[str] = (),
) -> Any:
    """Log ``network`` (holding the weights of ``model_path``) as an MLflow PyTorch model of the training run
    ``run_name``, register it as a new version of ``registered_name`` and return that version.

    The model has a signature (float32 ``[batch, channels, height, width]`` in, logits out, any batch and size),
    ``input_example``, the ``*.json`` of ``config_dir`` (the bundle's configs and metadata) beside it and
    ``code_dir`` (the bundle's ``scripts``, for networks defined there) and the ``postprocessing.json`` chosen for
    ``model_path`` (its ``chosen_settings``, e.g. the keys of ``scripts.tuning.DEFAULTS``, logged as ``chosen_*``
    parameters, and its validation scores as ``chosen_*`` metrics); it is a CPU copy of ``network``, and
    ``mlflow.pytorch.load_model("models:/<name>/latest")`` gives it back. The version is tagged with ``tags``
    (e.g. the validation IoU), the run with the model file's SHA-256, which :func:`link_evaluation` looks for.
    Returns ``None`` (with a warning) when the run is not found.
    """
    import mlflow
    import mlflow.pytorch
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    client = mlflow.MlflowClient(tracking_uri)
    run = _named_run(client, experiment_name, run_name)
    if run is None:
        logger.warning(f"no MLflow run {run_name!r} in experiment {experiment_name!r}: the model is not registered")
        return None
    network = network.eval()
    with torch.no_grad():
        output = network(torch.as_tensor(input_example, device=next(network.parameters()).device)).float().cpu()
    signature = ModelSignature(
        Schema([TensorSpec(np.dtype(np.float32), (-1, input_example.shape[1], -1, -1))]),
        Schema([TensorSpec(np.dtype(np.float32), (-1, output.shape[1], -1, -1))]),
    )
    extra_files = sorted(str(path) for path in Path(config_dir).glob("*.json")) if config_dir else []
    tuned = Path(model_path).parent / TUNED_POSTPROCESSING_FILE
    with using_tracking_uri(tracking_uri), mlflow.start_run(run_id=run.info.run_id):
        if tuned.is_file():  # what inference and evaluation of this model use, not the training's settings
            chosen = json.loads(tuned.read_text())
            mlflow.log_params({f"chosen_{key}": chosen.get(key) for key in chosen_settings})
            mlflow.log_metrics({f"chosen_{key}": chosen[key] for key in CHOSEN_SCORES if chosen.get(key) is not None})
            extra_files.append(str(tuned))
        info = mlflow.pytorch.log_model(
            copy.deepcopy(network).cpu(),
            name="model",
            signature=signature,
            input_example=input_example.astype(np.float32),
            registered_model_name=registered_name,
            extra_files=extra_files or None,
            code_paths=[str(code_dir)] if code_dir else None,
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"monai=={package_version('monai')}"],
            serialization_format="pickle",  # the network's own class: any batch and image size, as in the bundle
        )
        mlflow.set_tag(MODEL_SHA256_TAG, file_sha256(model_path))
    version = client.get_model_version(registered_name, str(info.registered_model_version))
    for key, value in (tags or {}).items():
        client.set_model_version_tag(registered_name, version.version, key, str(value))
    logger.info(f"registered {registered_name} version {version.version} (run {run_name})")
    return version


def link_evaluation(
    tracking_uri: str, experiment_name: str, run_name: str, model_path: str | os.PathLike
) -> str | None:
    """Nest the evaluation run ``run_name`` under the training run that logged ``model_path`` (found by the file's
    SHA-256) and tag it with that run's id, which it returns; ``None`` when no training run logged this file."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    evaluation = _named_run(client, experiment_name, run_name)
    if evaluation is None:
        return None
    trainings = client.search_runs(
        [evaluation.info.experiment_id], f"tags.`{MODEL_SHA256_TAG}` = '{file_sha256(model_path)}'"
    )
    if not trainings:
        logger.info(f"{model_path}: no MLflow training run logged this model; evaluation {run_name} is not linked")
        return None
    training_id = trainings[0].info.run_id
    client.set_tag(evaluation.info.run_id, TRAINING_RUN_TAG, training_id)
    client.set_tag(evaluation.info.run_id, PARENT_RUN_TAG, training_id)
    return training_id


def ui_command(store: str | os.PathLike, host: str = "127.0.0.1", port: int = 5000, workers: int = 1) -> list[str]:
    """The ``mlflow ui`` command line for the SQLite store written by the bundle's configs.

    One worker by default: each MLflow worker holds about 0.7 GB, and one is plenty for a single user.
    """
    store = Path(store)
    if not store.is_file():
        raise FileNotFoundError(f"{store}: no MLflow store yet (train first, or pass --store)")
    with store.open("rb") as handle:
        if handle.read(len(SQLITE_HEADER)) not in (SQLITE_HEADER, b""):  # SQLite takes an empty file for a new store
            raise ValueError(f"{store}: not an SQLite database, so no MLflow store (pass the bundle's eval/mlruns.db)")
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    uri = path_to_sqlite_uri(str(store.resolve()))
    return [mlflow, "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port), "--workers", str(workers)]


def training_runs_url(store: str | os.PathLike, base_url: str, experiment_name: str = "pengwin-xray") -> str:
    """The UI page of ``experiment_name``'s runs in the UI's model-training view (``base_url`` without it).

    MLflow 3's UI opens in its GenAI view unless the address asks for another (or the user switched once in that
    browser), whatever the experiment's kind tag says; the ``workflowType`` query of this address asks for it.
    """
    import mlflow

    experiment = mlflow.MlflowClient(path_to_sqlite_uri(str(Path(store).resolve()))).get_experiment_by_name(
        experiment_name
    )
    page = f"experiments/{experiment.experiment_id}/runs" if experiment else "experiments"
    return f"{base_url}/#/{page}?workflowType=machine_learning"


def main(argv: Sequence[str] | None = None) -> None:
    """Replace this process with the MLflow UI (Ctrl-C stops it), after printing the address of the runs."""
    parser = argparse.ArgumentParser(
        prog="pengwin-mlflow-ui", description="The MLflow UI over the bundle's runs, on this machine only by default."
    )
    parser.add_argument(
        "--store",
        default=str(DEFAULT_STORE),
        help="SQLite store (default: eval/mlruns.db in the bundle folder you stand in)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind; 0.0.0.0 exposes the UI to the network")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--experiment", default="pengwin-xray", help="experiment whose runs the printed address shows")
    args = parser.parse_args(argv)
    try:
        command = ui_command(args.store, args.host, args.port, args.workers)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"pengwin-mlflow-ui: {err}") from None
    base_url = f"http://{args.host}:{args.port}"
    runs_url = training_runs_url(args.store, base_url, args.experiment)
    print(f"MLflow UI on {base_url} ({args.store}); training runs: {runs_url}", flush=True)
    os.execv(command[0], command)
