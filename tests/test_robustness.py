"""Bad files stop a run before its first iteration, runs are repeatable, and unsafe checkpoints are refused."""

from __future__ import annotations

import collections
import json

import numpy as np
import pytest
import tifffile
import torch
from monai.bundle import ConfigParser
from monai.handlers import CheckpointLoader
from ignite.engine import Engine

from helpers import BUNDLE_ROOT, bundle_run, tiny_training_args, write_pair
from scripts.errors import root_cause
from scripts.loading import load_checkpoint


def losses(run) -> list[str]:
    return [
        line.split("train_loss: ")[1].strip()
        for line in (run.stdout + run.stderr).splitlines()
        if "train_loss: " in line
    ]


@pytest.mark.slow
def test_training_reports_every_bad_file_before_the_first_iteration(tmp_path):
    root = tmp_path / "root"
    for patient in range(1, 6):
        write_pair(root, f"{patient:03d}_0000.tif", seed=patient)
    tifffile.imwrite(root / "train/output/images/x-ray/001_0000.tif", np.ones((32, 32), np.float32))
    tifffile.imwrite(root / "train/input/images/x-ray/005_0000.tif", np.full((32, 32), np.nan, np.float32))
    run = bundle_run(
        "training", "--config_file", "configs/train.json", "--dataset_dir", str(root), "--bundle_root", str(tmp_path)
    )
    output = run.stdout + run.stderr
    assert run.returncode != 0
    assert "2 bad file(s)" in output and "001_0000.tif: bit maps must have an integer dtype" in output
    assert "005_0000.tif: image contains" in output and "NaN/inf" in output
    assert not losses(run) and not list((tmp_path / "models").iterdir())  # its folder checked, nothing written


@pytest.mark.slow
def test_same_seed_and_data_give_the_same_losses_and_another_seed_other_ones(tmp_path):
    args = tiny_training_args(tmp_path, max_epochs=2, batch_size=1)
    first, second, reseeded = bundle_run(*args), bundle_run(*args), bundle_run(*args, "--seed", "1")
    for run in (first, second, reseeded):
        assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert len(losses(first)) == 4 and losses(first) == losses(second)
    assert len(losses(reseeded)) == 4 and losses(reseeded) != losses(first)


def test_datalist_file_naming_missing_files_fails_before_anything_runs(pengwin_root, tmp_path):
    from pengwin_xray.datalist import build_datalist

    datalist = build_datalist(pengwin_root)
    datalist["validation"][0]["label"] = str(tmp_path / "nowhere" / "010_0000.tif")
    (tmp_path / "datalist.json").write_text(json.dumps(datalist))
    parser = ConfigParser()
    parser.read_config(str(BUNDLE_ROOT / "configs" / "train.json"))
    parser.update({"bundle_root": str(tmp_path), "datalist_file": str(tmp_path / "datalist.json")})
    with pytest.raises(RuntimeError) as info:
        parser.get_parsed_content("datalist")
    assert "names 1 missing file(s)" in repr(info.value.__cause__) and "nowhere/010_0000.tif" in repr(
        info.value.__cause__
    )
    assert not (tmp_path / "data").exists()  # the synthetic default was not generated


class Payload:
    """Stands for any pickled object a checkpoint could smuggle in."""


@pytest.fixture
def unsafe_checkpoint(tmp_path):
    network = torch.nn.Conv2d(1, 30, 1)
    path = tmp_path / "model.pt"
    torch.save({"model": network.state_dict(), "extra": Payload()}, path)
    return network, path


def test_inference_refuses_checkpoints_carrying_pickled_objects(unsafe_checkpoint):
    network, path = unsafe_checkpoint
    with pytest.raises(ValueError, match="model.pt: refused: the file holds pickled Python objects"):
        load_checkpoint(network, path)


@pytest.mark.parametrize("content", ["tiff", "truncated"])
def test_a_file_that_is_no_readable_checkpoint_is_one_clear_error(tmp_path, content):
    network = torch.nn.Conv2d(1, 30, 1)
    path = tmp_path / "model.pt"
    if content == "tiff":
        tifffile.imwrite(path, np.ones((8, 8), np.float32))
    else:
        torch.save(network.state_dict(), path)
        path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"model.pt: not a readable PyTorch file") as raised:
        load_checkpoint(network, path)
    assert root_cause(raised.value) is raised.value  # what the one-line report shows


def test_evaluation_checkpoint_loader_loads_weights_only(unsafe_checkpoint):
    network, path = unsafe_checkpoint
    loader = CheckpointLoader(load_path=str(path), load_dict={"model": network})
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        loader(Engine(lambda engine, batch: None))
    torch.save(collections.OrderedDict(network.state_dict()), path)
    loader(Engine(lambda engine, batch: None))  # a plain state dict loads
