"""Training pieces and the training/evaluation workflows through the monai.bundle CLI."""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import mlflow
import mlflow.pytorch
import numpy as np
import pytest
import tifffile
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.networks.nets import BasicUNet

from helpers import BUNDLE_ROOT, TINY_SYNTHETIC, assert_valid_submissions, bundle_run, free_port, tiny_training_args
from custom_transforms import MainOtherFragments
from pengwin_xray.metrics import OFFICIAL_METRICS
from pengwin_xray.tracking import using_tracking_uri
from scripts.inferers import PengwinInferer, native_cpu_bf16, swap_sides
from scripts.loading import resume_checkpoint
from scripts.losses import class_balanced_weights
from scripts.metrics import category_iou_output

def write_labels(folder: Path, bitmaps: list[np.ndarray]) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, bitmap in enumerate(bitmaps):
        paths.append(str(folder / f"{index:03d}_0000.tif"))
        tifffile.imwrite(paths[-1], bitmap.astype(np.uint32))
    return paths


def test_class_weights_are_total_over_positive_pixels_capped_and_one_for_absent_channels(tmp_path):
    first, second = np.zeros((10, 10), np.uint32), np.zeros((10, 10), np.uint32)
    first[:5] |= 1 << 1  # channel 0: 50 of 200 pixels -> 4
    second[0, :2] |= 1 << 11  # channel 10: 2 of 200 -> 100, capped at 20
    second[:, :] |= 1 << 30  # channel 29: 100 of 200 -> 2
    weights = class_balanced_weights(write_labels(tmp_path, [first, second]), max_weight=20.0)
    assert len(weights) == 30 and weights[0] == 4.0 and weights[10] == 20.0 and weights[29] == 2.0
    assert all(weights[c] == 1.0 for c in range(30) if c not in (0, 10, 29))


def test_class_weights_are_cached_per_label_set(tmp_path, monkeypatch):
    bitmap = np.full((4, 4), 1 << 1, np.uint32)
    paths = write_labels(tmp_path / "labels", [bitmap])
    first = class_balanced_weights(paths, cache_dir=str(tmp_path / "cache"))
    monkeypatch.setattr("scripts.losses.read_fragment_label", lambda path: pytest.fail("cache not used"))
    assert class_balanced_weights(paths, cache_dir=str(tmp_path / "cache")) == first
    assert len(list((tmp_path / "cache").glob("class_pixels_*.json"))) == 1


def test_class_weight_cache_tells_target_settings_apart(tmp_path):
    bitmap = np.zeros((8, 8), np.uint32)
    bitmap[:, :4] |= 1 << 2  # SA fragment 2
    bitmap[:, 4:] |= 1 << 3  # SA fragment 3, touching it
    paths = write_labels(tmp_path / "labels", [bitmap])
    cache = str(tmp_path / "cache")
    plain = class_balanced_weights(paths, cache_dir=cache, target_transform=MainOtherFragments())
    rims = class_balanced_weights(paths, cache_dir=cache, target_transform=MainOtherFragments(rims=True))
    assert len(plain) == 6 and len(rims) == 9
    assert rims[2] == 1.6  # each 8 x 4 fragment's rim: all but its 6 x 2 core (2 deep), 40 of 64 pixels
    assert len(list(Path(cache).glob("class_pixels_*.json"))) == 2


def test_class_weights_need_labels():
    with pytest.raises(ValueError, match="no training labels"):
        class_balanced_weights([])


def test_inferer_runs_the_network_at_its_size_and_returns_logits_at_the_input_size():
    seen = []

    def network(x):
        seen.append(tuple(x.shape[2:]))
        return torch.ones(x.shape[0], 30, *x.shape[2:])

    logits = PengwinInferer(spatial_size=(32, 32))(torch.zeros(2, 3, 64, 64), network)
    assert seen == [(32, 32)] and logits.shape == (2, 30, 64, 64)


@pytest.mark.parametrize("channels", [6, 9, 30])
def test_swap_sides_exchanges_the_left_and_right_hip_channel_groups(channels):
    logits = torch.arange(channels, dtype=torch.float32).view(1, channels, 1, 1)
    group = channels // 3
    swapped = swap_sides(logits).flatten().tolist()
    assert swapped == list(range(group)) + list(range(2 * group, channels)) + list(range(group, 2 * group))
    torch.testing.assert_close(swap_sides(swap_sides(logits)), logits)


def test_flip_tta_averages_the_mirrored_run_with_its_sides_swapped_back():
    image = torch.zeros(1, 1, 16, 32)
    image[..., :16] = 1.0  # bright on the left half

    def network(x):  # "SA" where bright, "LI" on the image's right half
        out = torch.zeros(x.shape[0], 6, *x.shape[2:])
        out[:, 0] = x[:, 0]
        out[:, 2, :, 16:] = 1.0
        return out

    plain = PengwinInferer()(image, network)
    tta = PengwinInferer(flip_tta=True)(image, network)
    torch.testing.assert_close(tta[:, :2], plain[:, :2])  # mirror-consistent output: unchanged
    # the mirrored run's "LI" on its right half is, mirrored back and swapped, RI on the image's left half
    assert tta[0, 2, :, 16:].eq(0.5).all() and tta[0, 2, :, :16].eq(0).all()
    assert tta[0, 4, :, :16].eq(0.5).all() and tta[0, 4, :, 16:].eq(0).all()


@pytest.mark.parametrize("flip_tta", [False, True])
@pytest.mark.parametrize("height, width", [(16, 32), (13, 30), (100, 72)])
def test_sides_not_divisible_by_16_reach_the_network_padded_and_come_back_aligned(height, width, flip_tta):
    seen = []

    def network(x):  # each output channel repeats the input: any shift between input and logits shows
        seen.append(tuple(x.shape[2:]))
        return x.repeat(1, 6, 1, 1)

    image = torch.rand(2, 1, height, width, generator=torch.Generator().manual_seed(0))
    logits = PengwinInferer(flip_tta=flip_tta)(image, network)
    assert all(rows % 16 == 0 and cols % 16 == 0 for rows, cols in seen)
    assert seen[0] == (-(-height // 16) * 16, -(-width // 16) * 16)  # the next multiples, no more
    torch.testing.assert_close(logits, image.repeat(1, 6, 1, 1))


@pytest.mark.parametrize(
    "flags, expected",
    [("fpu avx2 avx512f avx512_bf16", True), ("fpu avx2 amx_bf16 amx_tile", True), ("fpu avx2 avx512f", False)],
)
def test_cpu_bf16_default_is_on_only_with_native_bf16_instructions(tmp_path, flags, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    assert native_cpu_bf16(cpuinfo) is expected
    assert native_cpu_bf16(tmp_path / "missing") is False


@pytest.mark.parametrize("cpu_bf16, expected", [(True, torch.bfloat16), (False, torch.float32)])
def test_inferer_autocasts_to_bf16_on_cpu_only_when_asked(cpu_bf16, expected):
    layer = torch.nn.Conv2d(1, 30, 1)
    dtypes = []
    logits = PengwinInferer(cpu_bf16=cpu_bf16)(
        torch.zeros(1, 1, 8, 8), lambda x: dtypes.append(layer(x).dtype) or layer(x)
    )
    assert dtypes == [expected] and logits.dtype == torch.float32


def test_category_output_is_the_union_of_the_ten_fragment_channels():
    pred, label = torch.zeros(30, 4, 4), torch.zeros(30, 4, 4)
    pred[10, 0, 0], pred[19, 1, 1], pred[0, 2, 2] = 1, 1, 1
    label[12, 3, 3] = 1
    preds, labels = category_iou_output("LI")([{"pred": pred, "label": label}])
    assert preds[0].shape == (1, 4, 4) and preds[0].sum() == 2 and preds[0][0, 2, 2] == 0
    assert labels[0][0, 3, 3] == 1


def test_resume_checkpoint_is_the_training_state_file_or_explains_its_absence(tmp_path):
    (tmp_path / "checkpoint_epoch=3.pt").write_bytes(b"x")  # not what train.json writes: never resumed
    assert resume_checkpoint(str(tmp_path), required=False) is None
    with pytest.raises(FileNotFoundError, match="checkpoint.pt: no training checkpoint"):
        resume_checkpoint(str(tmp_path))
    (tmp_path / "checkpoint.pt").write_bytes(b"x")
    assert resume_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint.pt")


def test_train_config_has_every_property_monai_checks(pengwin_root, tmp_path):
    workflow = ConfigWorkflow(
        config_file=str(BUNDLE_ROOT / "configs" / "train.json"),
        workflow_type="train",
        dataset_dir=str(pengwin_root),
        bundle_root=str(tmp_path),
    )
    workflow.initialize()
    assert not workflow.check_properties()
    (run_configs,) = (tmp_path / "eval" / "configs").glob("basicunet-*")  # the configs the run started with
    assert (run_configs / "train.json").read_bytes() == (BUNDLE_ROOT / "configs" / "train.json").read_bytes()


def rest(base: str, endpoint: str, body: dict | None = None, **params) -> dict:
    """Call MLflow's REST API: GET with query parameters, or POST with a JSON body."""
    url = f"{base}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(params)}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture
def mlflow_server(tmp_path):
    """A real MLflow tracking server on loopback, stopped after the test."""
    port = free_port()
    store = tmp_path / "mlflow_server"
    store.mkdir()
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{store}/mlflow.db",
            "--default-artifact-root",
            str(store / "artifacts"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"{base}/health", timeout=2)
            break
        except OSError:
            if time.time() > deadline or server.poll() is not None:
                os.killpg(server.pid, signal.SIGKILL)
                pytest.fail("MLflow server did not start")
            time.sleep(0.5)
    yield base
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=30)


@pytest.mark.slow
def test_default_training_on_synthetic_data_learns_and_reaches_mlflow_then_evaluates(tmp_path, mlflow_server):
    common = ["--bundle_root", str(tmp_path), "--synthetic", TINY_SYNTHETIC, "--num_workers", "0"]
    train = bundle_run(  # the documented command: python -m monai.bundle run training --config_file ...
        "training",
        "--config_file",
        "configs/train.json",
        *common,
        "--max_epochs",
        "8",
        "--learning_rate",
        "0.001",
        "--batch_size",
        "2",
        "--train#augmentation",
        "[]",  # the same batch every epoch, so its loss shows the learning
        "--run_name",
        "tiny-train",
        env={"MLFLOW_TRACKING_URI": mlflow_server},
    )
    assert train.returncode == 0, train.stderr[-3000:]
    assert (tmp_path / "data/synthetic/train/input/images/x-ray/001_0000.tif").is_file()

    experiment = rest(mlflow_server, "experiments/get-by-name", experiment_name="pengwin-xray")["experiment"]
    runs = rest(mlflow_server, "runs/search", body={"experiment_ids": [experiment["experiment_id"]]})["runs"]
    run = next(r for r in runs if r["info"]["run_name"] == "tiny-train")
    assert run["info"]["status"] == "FINISHED"
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["learning_rate"] == "0.001" and params["synthetic"] == "True" and params["batch_size"] == "2"
    losses = rest(mlflow_server, "metrics/get-history", run_id=run["info"]["run_id"], metric_key="train_loss")
    values = [m["value"] for m in sorted(losses["metrics"], key=lambda m: m["step"])]
    assert len(values) == 8 and np.mean(values[-2:]) < np.mean(values[:2]), values
    assert "lr_group_0" not in {m["key"] for m in run["data"]["metrics"]}  # constant: a parameter, not a flat chart
    ious = rest(mlflow_server, "metrics/get-history", run_id=run["info"]["run_id"], metric_key="val_mean_iou")
    assert len(ious["metrics"]) == 8
    artifacts = rest(mlflow_server, "artifacts/list", run_id=run["info"]["run_id"])
    assert {"model.pt", "train.json", "evaluate.json"} <= {f["path"] for f in artifacts.get("files", [])}

    assert experiment["tags"] and {"key": "mlflow.experimentKind", "value": "custom_model_development"} in experiment["tags"]
    assert {d["dataset"]["name"] for d in run["inputs"]["dataset_inputs"]} == {"training_dataset_0", "validation_dataset_0"}
    assert all(d["dataset"]["digest"] for d in run["inputs"]["dataset_inputs"])
    # the best network is a registered MLflow model that loads back as the very network of model.pt
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    version = mlflow.MlflowClient(mlflow_server).get_model_version("pengwin-xray-basicunet", "1")
    assert version.run_id == run["info"]["run_id"] and float(version.tags["val_fracture_iou"]) > 0
    with using_tracking_uri(mlflow_server):
        registered = mlflow.pytorch.load_model("models:/pengwin-xray-basicunet/latest")
    assert os.environ.get("MLFLOW_TRACKING_URI") != mlflow_server  # later processes do not inherit the server
    assert isinstance(registered, BasicUNet) and registered.state_dict().keys() == state.keys()
    assert all(torch.equal(registered.state_dict()[key], state[key]) for key in state)
    # with the post-processing chosen for it, as parameters of the run and a file of the registered model
    chosen = json.loads((tmp_path / "models" / "postprocessing.json").read_text())
    assert params["chosen_threshold"] == str(chosen["threshold"])
    assert params["chosen_split_depth"] == str(chosen["split_depth"])
    assert params["chosen_two_stage"] == str(chosen["two_stage"]) == "False"
    with using_tracking_uri(mlflow_server):
        local = mlflow.artifacts.download_artifacts("models:/pengwin-xray-basicunet/latest", dst_path=str(tmp_path / "dl"))
    assert json.loads((Path(local) / "extra_files" / "postprocessing.json").read_text()) == chosen
    # a resume with no epoch left is refused in one line, and logs no empty run
    noop = bundle_run(*train.args[4:], "--resume", "true", env={"MLFLOW_TRACKING_URI": mlflow_server})
    assert noop.returncode == 1 and noop.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "nothing to resume: 8 epochs are already trained" in noop.stderr

    evaluate = bundle_run(
        "--config_file",
        "['configs/train.json','configs/evaluate.json']",
        *common,
        env={"MLFLOW_TRACKING_URI": mlflow_server},
    )
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    summary = json.loads((tmp_path / "eval/evaluation/summary.json").read_text())
    assert all(np.isfinite(summary[key]) for key in OFFICIAL_METRICS) and summary["num_images"] == 2
    assert 0.0 <= summary["val_mean_iou"] <= 1.0
    # the post-processing chosen on the validation split at the end of training is the one evaluation used
    chosen = json.loads((tmp_path / "models" / "postprocessing.json").read_text())
    assert chosen["num_validation"] == 2 and len(chosen["grid"]) == 300  # 5 thresholds x 5 sizes x 4 depths x 3 seeds
    runs = rest(mlflow_server, "runs/search", body={"experiment_ids": [experiment["experiment_id"]]})["runs"]
    scored = next(r for r in runs if r["info"]["run_name"].startswith("evaluate-"))
    params = {p["key"]: p["value"] for p in scored["data"]["params"]}
    assert float(params["threshold"]) == chosen["threshold"] and params["flip_tta"] == "True"
    assert int(params["min_component_size"]) == chosen["min_component_size"]
    assert float(params["split_depth"]) == chosen["split_depth"]
    assert float(params["seed_threshold"]) == chosen["seed_threshold"]
    tags = {t["key"]: t["value"] for t in scored["data"]["tags"]}
    assert tags["mlflow.parentRunId"] == run["info"]["run_id"]  # shown under the training run it scored
    assert len(runs) == 2  # training and evaluation; the refused resume added none
    assert "summary: " + str(tmp_path / "eval/evaluation/summary.json") in evaluate.stderr + evaluate.stdout

    # the choice made again for the trained model alone (configs/choose_postprocessing.json) is training's own
    (tmp_path / "models" / "postprocessing.json").unlink()
    choose = bundle_run("--config_file", "['configs/train.json','configs/choose_postprocessing.json']", *common)
    assert choose.returncode == 0, choose.stderr[-3000:]
    assert json.loads((tmp_path / "models" / "postprocessing.json").read_text()) == chosen

    images = tmp_path / "data/synthetic/train/input/images/x-ray"
    out = tmp_path / "predictions"
    infer = bundle_run(
        "--config_file", "configs/inference.json", "--bundle_root", str(tmp_path), "--dataset_dir", str(images),
        "--output_dir", str(out), "--num_workers", "0",
    )  # fmt: skip
    assert infer.returncode == 0, infer.stderr[-3000:]
    assert_valid_submissions(images, out, 64)

    # last, as it regenerates the synthetic data: a resume on other data is refused in one line, and logs no run
    other_data = TINY_SYNTHETIC.replace("'seed': 0", "'seed': 1")
    options = train.args[4:]
    options[options.index(TINY_SYNTHETIC)] = other_data
    options[options.index("--max_epochs") + 1] = "9"
    resumed = bundle_run(*options, "--resume", "true", env={"MLFLOW_TRACKING_URI": mlflow_server})
    last = resumed.stderr.strip().splitlines()[-1]
    assert resumed.returncode == 1 and "Traceback" not in resumed.stderr
    assert last.startswith(f"error: {tmp_path / 'models' / 'checkpoint.pt'}: the checkpoint to resume was written by run")
    assert "with other data" in last
    assert len(rest(mlflow_server, "runs/search", body={"experiment_ids": [experiment["experiment_id"]]})["runs"]) == 2


def test_cosine_lr_anneals_the_learning_rate_to_zero_over_max_epochs(tmp_path):
    args = tiny_training_args(tmp_path, max_epochs=2, batch_size=4)
    result = bundle_run(*args, "--learning_rate", "0.002", "--cosine_lr", "true", "--cpu_bf16", "false")
    assert result.returncode == 0, result.stderr[-3000:]
    state = torch.load(tmp_path / "models" / "checkpoint.pt", weights_only=True)
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert state["lr_scheduler"]["last_epoch"] == 2
    # the cosine spans max_epochs: a resume to more epochs is refused in one line, naming it
    resumed = bundle_run(*args[:-4], "--max_epochs", "3", "--batch_size", "4", "--learning_rate", "0.002",
                         "--cosine_lr", "True", "--cpu_bf16", "False", "--resume", "true")  # fmt: skip
    assert resumed.returncode == 1 and "Traceback" not in resumed.stderr
    assert "other settings (cosine_lr_epochs 2 there, 3 here)" in resumed.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("cosine_lr, stepped", [("false", False), ("true", True), (True, True)])
def test_only_cosine_lr_steps_the_learning_rate_schedule(tmp_path, cosine_lr, stepped):
    # without it the rate stays the learning_rate: no handler steps the (then unused) schedule
    parser = ConfigParser()
    parser.read_config(str(BUNDLE_ROOT / "configs" / "train.json"))
    parser.update({"bundle_root": str(tmp_path), "cosine_lr": cosine_lr})
    index = next(i for i, handler in enumerate(parser["train#handlers"]) if handler["_target_"] == "LrScheduleHandler")
    assert parser.get_parsed_content(f"train#handlers#{index}#_disabled_") is not stepped


@pytest.mark.parametrize(
    "saved, resumed, same",
    [
        ({"use_clahe": True, "cpu_bf16": "false"}, {"use_clahe": "true", "cpu_bf16": 0}, True),  # switches spelt anew
        ({"max_epochs": 40}, {"max_epochs": 80}, True),  # a constant rate: more epochs may follow
        # the cosine spans max_epochs
        ({"max_epochs": 40, "cosine_lr": "true"}, {"max_epochs": 80, "cosine_lr": True}, False),
    ],
)
def test_a_resume_compares_checked_settings_and_the_cosine_schedule_span(tmp_path, saved, resumed, same):
    def identity(overrides: dict) -> dict:
        parser = ConfigParser()
        parser.read_config(str(BUNDLE_ROOT / "configs" / "train.json"))
        parser.update({"bundle_root": str(tmp_path), "synthetic": ast.literal_eval(TINY_SYNTHETIC), **overrides})
        return parser.get_parsed_content("train#run_identity").state_dict()

    first, second = identity(saved), identity(resumed)
    assert first["data"] == second["data"] and (first["settings"] == second["settings"]) is same


def test_a_resumed_training_loads_every_part_of_the_state_it_saves():
    parser = ConfigParser()
    parser.read_config(str(BUNDLE_ROOT / "configs" / "train.json"))
    saved = parser.get("train#checkpoint#to_save")
    loaded = parser.get("train#checkpoint_handlers#0#load_dict")
    assert saved == loaded and {"lr_scheduler", "best_model", "best_validation"} <= set(saved)


@pytest.mark.slow
def test_killed_training_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path):
    args = tiny_training_args(tmp_path, max_epochs=6, batch_size=2) + ["--cpu_bf16", "false"]
    first = subprocess.Popen(
        [sys.executable, "-m", "monai.bundle", "run", *args],
        cwd=BUNDLE_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not (tmp_path / "models" / "checkpoint.pt").exists() and time.time() < deadline:
        assert first.poll() is None, "training ended before its first checkpoint"
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    state = torch.load(resume_checkpoint(str(tmp_path / "models")), weights_only=True)["trainer"]
    killed_at = state["iteration"] // state["epoch_length"]
    assert killed_at < 6

    resumed = bundle_run(*args, "--resume", "true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    epochs = [
        int(line.split("Epoch: ")[1].split("/")[0])
        for line in (resumed.stdout + resumed.stderr).splitlines()
        if "Epoch: " in line
    ]
    assert epochs[0] == killed_at + 1 and epochs[-1] == 6
    final = torch.load(tmp_path / "models" / "checkpoint.pt", weights_only=True)
    assert final["trainer"]["iteration"] == 6 * state["epoch_length"]

    uninterrupted = bundle_run(*tiny_training_args(tmp_path / "whole", max_epochs=6, batch_size=2), "--cpu_bf16", "false")
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    reference = torch.load(tmp_path / "whole" / "models" / "checkpoint.pt", weights_only=True)
    assert reference["model"].keys() == final["model"].keys()
    assert all(torch.equal(reference["model"][key], final["model"][key]) for key in final["model"])  # bit-identical
    # the best validation before the kill is kept: the same best score and epoch, and the same best model.pt
    assert final["best_validation"] == reference["best_validation"] and final["best_model"] == reference["best_model"]
    best, reference_best = (
        torch.load(root / "models" / "model.pt", weights_only=True) for root in (tmp_path, tmp_path / "whole")
    )
    assert all(torch.equal(best[key], reference_best[key]) for key in reference_best)
