"""User errors (bad files, folders, settings) end a ``monai.bundle`` run with one line; bugs keep their traceback."""

from __future__ import annotations

import ast
import json
import sys

import numpy as np
import pytest
import tifffile
import torch
from monai.bundle import ConfigParser

from helpers import BUNDLE_ROOT, TINY_SYNTHETIC, bundle_run, write_pair
from pengwin_xray.atomic import file_sha256
from scripts.errors import DEBUG_VARIABLE, report_user_errors_in_one_line, root_cause


def _chained(error: BaseException) -> RuntimeError:
    """``error`` wrapped as MONAI wraps a failing config expression."""
    try:
        try:
            raise error
        except BaseException as inner:
            raise RuntimeError("Failed to evaluate ConfigExpression: $...") from inner
    except RuntimeError as outer:
        return outer


def test_root_cause_is_the_outermost_user_error_of_the_chain():
    cause = ValueError("x.tif: constant image")
    assert root_cause(_chained(cause)) is cause
    assert root_cause(cause) is cause
    try:  # a check explaining a library's error: the check's message is the one to show
        raise cause from KeyError("load key")
    except ValueError:
        assert root_cause(_chained(cause)) is cause
    bug = KeyError("no user error in the chain")
    assert root_cause(_chained(bug)) is bug


@pytest.mark.parametrize("debug", [False, True])
def test_a_user_error_is_one_line_unless_debugging(monkeypatch, capsys, debug):
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    if debug:
        monkeypatch.setenv(DEBUG_VARIABLE, "1")
    else:
        monkeypatch.delenv(DEBUG_VARIABLE, raising=False)
    report_user_errors_in_one_line()
    error = _chained(FileNotFoundError("/data/x.tif: file not found"))
    sys.excepthook(type(error), error, error.__traceback__)
    err = capsys.readouterr().err
    if debug:
        assert "Traceback" in err and "Failed to evaluate" in err
    else:
        assert err == f"error: /data/x.tif: file not found (set {DEBUG_VARIABLE}=1 for the traceback)\n"


def test_ctrl_c_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.delenv(DEBUG_VARIABLE, raising=False)
    report_user_errors_in_one_line()
    sys.excepthook(KeyboardInterrupt, KeyboardInterrupt(), None)  # it reaches the top unwrapped: no Exception
    assert capsys.readouterr().err == f"interrupted (set {DEBUG_VARIABLE}=1 for the traceback)\n"


def test_a_bug_keeps_its_traceback(monkeypatch, capsys):
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.delenv(DEBUG_VARIABLE, raising=False)
    report_user_errors_in_one_line()
    error = _chained(TypeError("unsupported operand type(s)"))
    sys.excepthook(type(error), error, error.__traceback__)
    err = capsys.readouterr().err
    assert "Traceback" in err and "TypeError: unsupported operand" in err and not err.startswith("error:")


def _one_patient_root(root):
    """A PENGWIN root with one patient: every image lands in the training split."""
    write_pair(root, "001_0000.tif", size=64)
    write_pair(root, "001_0250.tif", size=64, seed=1)
    return root


def _inputs(folder):
    """A folder with one good raw X-ray, and an untrained ``models/model.pt`` beside it, for inference."""
    folder.mkdir()
    tifffile.imwrite(folder / "001_0000.tif", np.random.default_rng(0).uniform(1, 56, (64, 64)).astype(np.float32))
    parser = ConfigParser()
    parser.read_config(str(BUNDLE_ROOT / "configs" / "inference.json"))
    (folder.parent / "models").mkdir()
    torch.save(parser.get_parsed_content("network_def").state_dict(), folder.parent / "models" / "model.pt")
    return folder


INFERENCE = ["--config_file", "configs/inference.json"]
TRAINING = ["training", "--config_file", "configs/train.json"]
EVALUATION = ["--config_file", "['configs/train.json','configs/evaluate.json']"]


@pytest.mark.parametrize(
    "config_files, data, overrides, item, message",
    [
        (["inference.json"], "inputs", {"min_component_size": "abc"}, "fragment_decoding",
         "min_component_size must be a whole number of pixels, 0 or more, got 'abc'"),
        (["train.json"], "synthetic", {"max_epochs": 0}, "train#trainer#max_epochs",
         "max_epochs must be a whole number, 1 or more, got 0"),
        (["train.json"], "synthetic", {"batch_size": "two"}, "train#dataloader#batch_size",
         "batch_size must be a whole number, 1 or more, got 'two'"),
        (["train.json"], "synthetic", {"seed": "abc"}, "initialize",
         "seed must be a whole number, 0 or more, got 'abc'"),
        (["train.json"], "synthetic", {"fragment_seam_target": 2}, "train#preprocessing",
         "fragment_seam_target must be a number from 0 to 1, got 2"),
        (["train.json"], "one patient", {"max_class_weight": -2}, "class_weights",
         "max_class_weight must be a number above 0, got -2"),
        (["train.json"], "one patient", {}, "initialize", "no validation images (datalist: training 2, validation 0"),
        (["train.json", "evaluate.json"], "inputs", {"evaluation_dir": "$@bundle_root + '/inputs/001_0000.tif'"},
         "initialize", "001_0000.tif: --evaluation_dir is a file, not a folder"),
    ],
)  # fmt: skip
def test_each_setting_is_checked_where_the_config_uses_it(
    tmp_path, monkeypatch, config_files, data, overrides, item, message
):
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # initialize installs the one-line hook
    dataset = {
        "inputs": lambda: str(_inputs(tmp_path / "inputs")),
        "synthetic": lambda: "",
        "one patient": lambda: str(_one_patient_root(tmp_path / "one")),
    }[data]()
    parser = ConfigParser()
    parser.read_config([str(BUNDLE_ROOT / "configs" / name) for name in config_files])
    parser.update({"bundle_root": str(tmp_path), "dataset_dir": dataset, **overrides})
    if "train.json" in config_files:
        parser.update({"synthetic": ast.literal_eval(TINY_SYNTHETIC)})
    with pytest.raises((RuntimeError, ValueError)) as raised:
        parser.get_parsed_content(item)
    assert isinstance(root_cause(raised.value), ValueError) and message in str(root_cause(raised.value))


@pytest.mark.parametrize(
    "config, check, patients, refused",
    [
        ("evaluate.json", "check_held_out", 3, "the test split holds patient 002, which this model was trained or "),
        ("evaluate.json", "check_held_out", 12, None),
        ("choose_postprocessing.json", "check_choice_data", 3, "the validation split holds patient 003, which this "
         "model was trained on"),
        ("choose_postprocessing.json", "check_choice_data", 12, None),
    ],
)  # fmt: skip
def test_a_split_of_other_patients_than_training_had_is_refused_where_it_holds_patients_the_model_saw(
    tmp_path, tmp_path_factory, monkeypatch, config, check, patients, refused
):
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # initialize installs the one-line hook
    # a model trained on the tiny synthetic set of 12 patients (training 001-008, validation 011-012), then evaluated
    # or its post-processing chosen again on the same generator's set of 3 (test: patient 002, validation: 003) or
    # 12 (test: 009-010, never seen; validation: its own 011-012)
    models = tmp_path / "models"
    models.mkdir()
    torch.save({"weights": torch.zeros(1)}, models / "model.pt")
    validated = ["patient 011", "patient 012"]
    trained_on = {"dataset": "built-in synthetic data, seed 0", "validation": validated,
                  "sources": [f"patient {p:03d}" for p in range(1, 9)] + validated}  # fmt: skip
    choice = {"model_sha256": file_sha256(models / "model.pt"), "trained_on": trained_on, "use_clahe": True,
              "flip_tta": True}  # fmt: skip
    (models / "postprocessing.json").write_text(json.dumps(choice))
    parser = ConfigParser()
    parser.read_config([str(BUNDLE_ROOT / "configs" / name) for name in ("train.json", config)])
    synthetic = {**ast.literal_eval(TINY_SYNTHETIC), "patients": patients, "projections": 1}
    synthetic_dir = tmp_path_factory.getbasetemp() / f"synthetic_{patients}_patients"  # generated once for all cases
    parser.update({"bundle_root": str(tmp_path), "synthetic": synthetic, "synthetic_dir": str(synthetic_dir),
                   "num_workers": 0})  # fmt: skip
    step = next(index for index, expression in enumerate(parser["initialize"]) if check in expression)
    if refused:
        with pytest.raises((RuntimeError, ValueError)) as raised:
            parser.get_parsed_content(f"initialize#{step}")
        assert refused in str(root_cause(raised.value))
    else:
        assert parser.get_parsed_content(f"initialize#{step}") is None


@pytest.mark.slow
@pytest.mark.parametrize(
    "command, data, setting, message",
    [
        (INFERENCE, "inputs", ["--threshold", "2"], "threshold must be a probability strictly between 0 and 1, got 2"),
        (TRAINING, "synthetic", ["--learning_rate", "abc"], "learning_rate must be a number above 0, got 'abc'"),
        (TRAINING, "synthetic", ["--max_epoch", "1"], "--max_epoch: no such setting in configs/train.json; did you mean"),
        (EVALUATION, "one patient", [], "no test images"),
    ],
)  # fmt: skip
def test_a_bad_setting_or_split_ends_the_run_in_one_line(tmp_path, command, data, setting, message):
    dataset = {
        "inputs": lambda: str(_inputs(tmp_path / "inputs")),
        "synthetic": lambda: "",
        "one patient": lambda: str(_one_patient_root(tmp_path / "one")),
    }[data]()
    stale = tmp_path / "eval" / "evaluation" / "summary.json"  # an earlier evaluation's result
    stale.parent.mkdir(parents=True)
    stale.write_text("{}")
    synthetic = [] if command is INFERENCE else ["--synthetic", TINY_SYNTHETIC]
    result = bundle_run(
        *command, *setting, *synthetic, "--dataset_dir", dataset, "--bundle_root", str(tmp_path), "--num_workers", "0",
        env={DEBUG_VARIABLE: ""},
    )  # fmt: skip
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert stale.exists() != (command is EVALUATION)  # a failed evaluation leaves no earlier result behind
