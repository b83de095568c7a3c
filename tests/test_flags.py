"""Settings checked where they enter: numbers with the setting named, unknown command-line keys refused."""

from __future__ import annotations

import json

import pytest
import torch
from monai.bundle import ConfigParser

from helpers import BUNDLE_ROOT
from scripts.errors import root_cause
from scripts.flags import (
    as_count,
    as_device,
    as_fraction,
    as_image_size,
    as_positive_number,
    check_distinct_folders,
    check_folders,
    reject_unknown_overrides,
)

TRAIN = str(BUNDLE_ROOT / "configs" / "train.json")
EVALUATE = str(BUNDLE_ROOT / "configs" / "evaluate.json")


@pytest.mark.parametrize("value, expected", [(1e-3, 1e-3), ("3e-4", 3e-4), (2, 2.0)])
def test_positive_numbers_are_read_as_floats(value, expected):
    assert as_positive_number(value, "learning_rate") == expected


@pytest.mark.parametrize("value", [0, -1e-3, "abc", None, float("nan"), float("inf"), True])
def test_anything_but_a_positive_number_names_the_setting(value):
    with pytest.raises(ValueError, match=f"learning_rate must be a number above 0, got {value!r}"):
        as_positive_number(value, "learning_rate")


@pytest.mark.parametrize("value", ["cpu", torch.device("cpu")])
def test_a_usable_device_is_read_as_a_torch_device(value):
    assert as_device(value, "device") == torch.device("cpu")


@pytest.mark.parametrize("value", ["cuda:99", "gpu", ""])  # no machine has 100 GPUs; "gpu" is no device type
def test_a_device_this_machine_cannot_use_names_the_setting_in_one_line(value):
    with pytest.raises(ValueError, match=f"^device {value!r}: not a device this machine can use") as raised:
        as_device(value, "device")
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("value, expected", [(0, 0.0), ("0.5", 0.5), (1, 1.0)])
def test_fractions_are_read_as_floats_from_zero_to_one(value, expected):
    assert as_fraction(value, "fragment_seam_target") == expected


@pytest.mark.parametrize("value", [-0.1, 1.5, "low", None, float("nan"), True])
def test_anything_but_a_number_from_zero_to_one_names_the_setting(value):
    with pytest.raises(ValueError, match=f"fragment_seam_target must be a number from 0 to 1, got {value!r}"):
        as_fraction(value, "fragment_seam_target")


@pytest.mark.parametrize("value, minimum, expected", [(8, 1, 8), ("40", 1, 40), (2.0, 1, 2), (0, 0, 0)])
def test_counts_are_read_as_whole_numbers(value, minimum, expected):
    assert as_count(value, "batch_size", minimum) == expected


@pytest.mark.parametrize("value, minimum", [(0, 1), (2.5, 1), ("abc", 1), (-1, 0), (False, 0), (None, 1)])
def test_anything_but_a_whole_number_from_the_minimum_names_the_setting(value, minimum):
    with pytest.raises(ValueError, match=f"batch_size must be a whole number, {minimum} or more, got"):
        as_count(value, "batch_size", minimum)


@pytest.mark.parametrize(
    "value, expected",
    [
        ([128, 128], [128, 128]), ((448, 300), [448, 300]), (224, [224, 224]), ("[128, 96]", [128, 96]),
        ("448", [448, 448]), ([128.0, 128.0], [128, 128]),
        (None, None), (0, None), (False, None), ("0", None), ("none", None), ("None", None), ("false", None),
    ],
)  # fmt: skip
def test_image_sizes_are_read_as_height_and_width_or_none(value, expected):
    assert as_image_size(value, "image_size") == expected


@pytest.mark.parametrize("value", ["big", [128, 0], [128, 12.5], [1, 2, 3], "[128, -1]", True, [True, 3]])
def test_anything_but_an_image_size_or_off_names_the_setting(value):
    with pytest.raises(ValueError, match=r"^image_size must be \[height, width\] in pixels, or 0 for none, got "):
        as_image_size(value, "image_size")


@pytest.mark.parametrize(
    "overrides",
    [
        ["--max_epochs", "2", "--learning_rate=3e-4"],
        ["--network_def#features", "[8, 8, 16, 32, 64, 8]"],  # a new argument of an existing component
        ["--synthetic#voxel_mm", "1.0"],  # a key of a plain dict of settings
        ["--run_id", "training", "--meta_file", "configs/metadata.json"],  # monai.bundle's own arguments
    ],
)
def test_keys_of_the_merged_configs_are_accepted(overrides):
    reject_unknown_overrides(["monai.bundle", "run", "--config_file", TRAIN, *overrides])


@pytest.mark.parametrize(
    "config_file, key, message",
    [
        (TRAIN, "max_epoch", "did you mean --max_epochs?"),
        (json.dumps([TRAIN, EVALUATE]), "evaluation_dri", "did you mean --evaluation_dir?"),
        (TRAIN, "network_def#no_such#thing", "no such setting"),
        (TRAIN, "zzz", "no such setting in"),
        (TRAIN, "synthetic#patient", r"did you mean --synthetic#patients\?"),  # a plain dict takes no new key
        (TRAIN, "synthetc#size", r"did you mean --synthetic\?"),
        (TRAIN, "train#handlers#99#prob", "no such setting"),
        (TRAIN, "batch_size#x", "no such setting"),  # below a single value
    ],
)
def test_an_unknown_key_is_refused_with_the_closest_known_one(config_file, key, message):
    with pytest.raises(ValueError, match=f"--{key}: .*{message}"):
        reject_unknown_overrides(["monai.bundle", "run", "--config_file", config_file, f"--{key}", "1"])


def test_only_monai_bundle_command_lines_are_checked():
    reject_unknown_overrides(["pytest", "-q", "--max_epoch", "1"])  # no --config_file: not a bundle run


def test_a_folder_setting_naming_a_file_is_refused_and_a_folder_or_a_new_path_pass(tmp_path):
    (tmp_path / "results").write_text("a file")
    check_folders(output_dir=str(tmp_path), ckpt_dir=str(tmp_path / "not_yet"))
    with pytest.raises(ValueError, match=rf"^{tmp_path / 'results'}: --ckpt_dir is a file, not a folder"):
        check_folders(output_dir=str(tmp_path), ckpt_dir=str(tmp_path / "results"))
    below_a_file = rf"^{tmp_path / 'results'}: is a file, so --output_dir .* cannot be a folder"
    with pytest.raises(ValueError, match=below_a_file):
        check_folders(output_dir=str(tmp_path / "results" / "run1"))
    assert (tmp_path / "not_yet").is_dir() and not list((tmp_path / "not_yet").iterdir())  # created, probe gone


def test_a_folder_setting_that_cannot_be_created_is_refused_before_the_run():
    # /proc takes no new folders, whoever runs the test (a read-only folder would not stop root)
    with pytest.raises(ValueError, match=r"^/proc/pengwin_results: --evaluation_dir cannot be written \("):
        check_folders(evaluation_dir="/proc/pengwin_results")


@pytest.mark.parametrize("config", ["train.json", "evaluate.json", "inference.json", "multi_gpu_train.json",
                                    "multi_gpu_evaluate.json"])  # fmt: skip
def test_every_run_checks_its_output_folder_before_anything_else(config):
    steps = json.loads((BUNDLE_ROOT / "configs" / config).read_text())["initialize"]
    checks = [index for index, step in enumerate(steps) if "check_folders(output_dir=@output_dir" in step]
    assert checks and checks[0] <= 2  # right after the error report and the override check


@pytest.mark.parametrize("configs", [["train.json"], ["train.json", "evaluate.json"], ["inference.json"],
                                     ["train.json", "choose_postprocessing.json"]])  # fmt: skip
def test_every_single_process_run_checks_its_device_before_using_it(tmp_path, configs):
    parser = ConfigParser()
    parser.read_config([str(BUNDLE_ROOT / "configs" / name) for name in configs])
    parser.update({"bundle_root": str(tmp_path), "device": "cuda:99"})  # as --device cuda:99 gives it
    steps = parser["initialize"]
    check = steps.index("$scripts.flags.as_device(@device, 'device')")
    assert not any("@device" in step or "@segmenter" in step or "@network" in step for step in steps[:check])
    with pytest.raises(RuntimeError) as raised:
        parser.get_parsed_content(f"initialize#{check}")
    assert str(root_cause(raised.value)).startswith("device 'cuda:99': not a device this machine can use")


def test_two_folder_settings_naming_one_folder_are_refused(tmp_path):
    (tmp_path / "models").mkdir()
    check_distinct_folders(localiser_dir=str(tmp_path / "models"), ckpt_dir=str(tmp_path / "models" / "fragments"))
    with pytest.raises(ValueError, match=r"--localiser_dir and --ckpt_dir are the same folder"):
        check_distinct_folders(localiser_dir=str(tmp_path / "models"), ckpt_dir=str(tmp_path / "models" / ".." / "models"))


@pytest.mark.parametrize("overlay", ["train_two_stage.json", "inference_two_stage.json"])
def test_the_two_stage_overlays_keep_the_localiser_apart_from_the_fragment_network(overlay):
    steps = json.loads((BUNDLE_ROOT / "configs" / overlay).read_text())["+initialize"]
    assert "$scripts.flags.check_distinct_folders(localiser_dir=@localiser_dir, ckpt_dir=@ckpt_dir)" in steps
