"""Pairing, patient-wise splitting and validation of PENGWIN roots."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile

from helpers import write_pair
from scripts.loading import checked_synthetic, resolve_dataset
from pengwin_xray.datalist import (
    check_choice_data,
    check_held_out,
    training_sources,
    build_datalist,
    check_datalist_files,
    find_pairs,
    load_datalist,
    main,
    patient_id,
    require_splits,
    split_by_patient,
)


def patients_of(items):
    return {patient_id(item["image"]) for item in items}


def test_datalist_splits_by_patient_in_patient_order(pengwin_root):
    datalist = build_datalist(pengwin_root)
    assert [len(datalist[k]) for k in ("training", "test", "validation", "inference")] == [14, 4, 2, 0]
    assert patients_of(datalist["training"]) == {f"{p:03d}" for p in range(1, 8)}
    assert patients_of(datalist["test"]) == {"008", "009"}
    assert patients_of(datalist["validation"]) == {"010"}


def test_no_patient_appears_in_two_splits_and_every_pair_is_listed(pengwin_root):
    datalist = build_datalist(pengwin_root)
    groups = [patients_of(datalist[k]) for k in ("training", "test", "validation")]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    assert sum(len(datalist[k]) for k in ("training", "test", "validation")) == 20


def test_pairs_match_by_file_name(pengwin_root):
    for item in build_datalist(pengwin_root)["training"]:
        assert item["image"].replace("/input/", "/output/") == item["label"]


def test_tiff_and_upper_case_suffixes_pair_by_stem(pengwin_root):
    labels = pengwin_root / "train" / "output" / "images" / "x-ray"
    (labels / "001_0000.tif").rename(labels / "001_0000.TIFF")
    images = pengwin_root / "train" / "input" / "images" / "x-ray"
    (images / "002_0000.tif").rename(images / "002_0000.Tif")
    pairs = {Path(item["image"]).name: Path(item["label"]).name for item in find_pairs(pengwin_root)[0]}
    assert len(pairs) == 20
    assert pairs["001_0000.tif"] == "001_0000.TIFF" and pairs["002_0000.Tif"] == "002_0000.tif"


def test_hidden_files_such_as_macos_metadata_are_not_images(pengwin_root):
    images = pengwin_root / "train" / "input" / "images" / "x-ray"
    (images / "._001_0000.tif").write_bytes(b"Mac OS X resource fork")  # what macOS leaves on shared drives
    datalist = build_datalist(pengwin_root)
    assert not any(Path(item["image"]).name.startswith(".") for split in datalist.values() for item in split)
    assert sum(map(len, datalist.values())) == 20


@pytest.mark.parametrize("count", [3, 4, 7, 20, 100])
def test_every_split_is_non_empty_from_three_patients(count):
    items = [{"image": f"/r/{p:03d}_0000.tif"} for p in range(count)]
    splits = split_by_patient(items)
    assert all(splits[k] for k in splits) and sum(map(len, splits.values())) == count


def test_split_depends_on_the_patients_not_on_the_input_order():
    items = [{"image": f"/r/{p:03d}_{j:04d}.tif"} for p in range(30) for j in range(3)]
    shuffled = [items[i] for i in np.random.default_rng(0).permutation(len(items))]
    splits, reordered = split_by_patient(items), split_by_patient(shuffled)
    assert splits.keys() == reordered.keys()
    for split, split_items in splits.items():
        assert sorted(item["image"] for item in split_items) == sorted(item["image"] for item in reordered[split])


def test_unlabelled_root_is_listed_for_inference(tmp_path):
    for patient in (101, 102):
        write_pair(tmp_path, f"{patient}_0000.tif", split="test", label=False)
    datalist = build_datalist(tmp_path)
    assert len(datalist["inference"]) == 2 and not datalist["training"]


def test_unpaired_files_are_reported_by_name(pengwin_root):
    write_pair(pengwin_root, "011_0000.tif", label=False)
    (pengwin_root / "train/input/images/x-ray/003_0000.tif").unlink()
    with pytest.raises(
        ValueError,
        match=r"2 unpaired(.|\n)*label without image: .*003_0000.tif(.|\n)*image without label: .*011_0000.tif",
    ):
        build_datalist(pengwin_root)
    datalist = build_datalist(pengwin_root, allow_unpaired=True)
    assert [item["image"].endswith("011_0000.tif") for item in datalist["inference"]] == [True]


@pytest.mark.parametrize("layout", ["missing", "no image folder", "empty"])
def test_missing_or_empty_dataset_is_a_clear_error(tmp_path, layout):
    root = tmp_path / "root"
    if layout != "missing":
        root.mkdir()
    if layout == "empty":
        (root / "train/input/images/x-ray").mkdir(parents=True)
    with pytest.raises(
        (FileNotFoundError, ValueError), match="root: (dataset folder does not exist|no '<split>|empty)"
    ):
        build_datalist(root)


def test_file_name_outside_the_pengwin_pattern_is_an_error(tmp_path):
    write_pair(tmp_path, "scan.tif", label=False)
    with pytest.raises(ValueError, match="scan.tif.*CCC_PPPP"):
        build_datalist(tmp_path)


def test_check_files_reports_every_bad_file_at_once(pengwin_root):
    items = build_datalist(pengwin_root)["training"]
    tifffile.imwrite(items[0]["label"], np.ones((32, 32), np.float32))
    tifffile.imwrite(items[1]["label"], np.ones((16, 16), np.uint32) << 1)
    items.append({"image": str(pengwin_root / "gone_0000.tif"), "label": "x"})
    with pytest.raises(ValueError) as info:
        check_datalist_files(items)
    message = str(info.value)
    assert message.startswith("3 bad file(s) of 15")
    assert "integer dtype" in message and "label shape (16, 16) != image shape (32, 32)" in message
    assert "gone_0000.tif: file not found" in message


def test_check_files_names_the_images_whose_size_differs_from_the_others(pengwin_root):
    items = build_datalist(pengwin_root)["training"]
    write_pair(pengwin_root, Path(items[2]["image"]).name, size=48)
    with pytest.raises(ValueError) as info:
        check_datalist_files(items)
    message = str(info.value)
    assert message.startswith("1 bad file(s) of 14")
    assert f"{items[2]['image']}: image of shape (48, 48), while 13 others are (32, 32)" in message


@pytest.mark.parametrize(
    "sizes, splits, message",
    [
        ((5, 0, 2), ["training", "validation"], "no validation images (datalist: training 5, validation 0, test 2)"),
        ((0, 0, 2), ["training", "validation"], "no training and no validation images"),
        ((5, 2, 0), ["test"], "give a --datalist_file that lists test items"),
    ],
)
def test_an_empty_split_that_a_run_needs_is_an_error_naming_it(sizes, splits, message):
    datalist = {name: [{"image": f"{name}{i}.tif"} for i in range(count)]
                for name, count in zip(("training", "validation", "test"), sizes)}  # fmt: skip
    with pytest.raises(ValueError, match=re.escape(message)):
        require_splits(datalist, splits)


def test_splits_with_items_pass_without_error():
    require_splits({"training": [{"image": "a"}], "validation": [{"image": "b"}], "test": []}, ["training", "validation"])


def test_cli_writes_a_monai_datalist(pengwin_root, tmp_path, capsys):
    out = tmp_path / "lists" / "datalist.json"
    main([str(pengwin_root), "--out", str(out)])
    datalist = json.loads(out.read_text())
    assert set(datalist) == {"training", "validation", "test", "inference"} and len(datalist["training"]) == 14
    assert "training: 14" in capsys.readouterr().out


def test_datalist_json_round_trips_through_the_loader(pengwin_root, tmp_path):
    main([str(pengwin_root), "--out", str(tmp_path / "datalist.json")])
    assert load_datalist(tmp_path / "datalist.json") == build_datalist(pengwin_root)


def test_datalist_json_naming_missing_files_lists_them_all(pengwin_root, tmp_path):
    datalist = build_datalist(pengwin_root)
    Path(datalist["training"][0]["label"]).unlink()
    Path(datalist["test"][1]["image"]).unlink()
    (tmp_path / "datalist.json").write_text(json.dumps(datalist))
    with pytest.raises(FileNotFoundError, match=r"names 2 missing file\(s\):\n  training: .*001_0000.tif\n  test: .*"):
        load_datalist(tmp_path / "datalist.json")


@pytest.mark.parametrize("renamed", [False, True], ids=["pengwin names", "other names"])
def test_datalist_json_with_a_patient_in_two_splits_is_refused(pengwin_root, tmp_path, renamed):
    datalist = build_datalist(pengwin_root)
    leaked = dict(datalist["training"][0])
    if not renamed:  # another view of a training patient
        leaked = next(item for item in datalist["training"][1:] if patient_id(item["image"]) == patient_id(leaked["image"]))
    else:  # the very image, under a name without a patient id
        for item in datalist["training"]:
            for key in ("image", "label"):
                target = Path(item[key]).with_name("scan_" + Path(item[key]).name.replace("_", "-"))
                Path(item[key]).rename(target)
                item[key] = str(target)
        leaked = datalist["training"][0]
    datalist["validation"].append(leaked)
    (tmp_path / "datalist.json").write_text(json.dumps(datalist))
    what = "image .*scan_" if renamed else f"patient {patient_id(leaked['image'])}"
    with pytest.raises(ValueError, match=f"{what}.* is in the training and the validation split"):
        load_datalist(tmp_path / "datalist.json")


def test_datalist_json_paths_relative_to_its_folder_are_found(pengwin_root):
    datalist = build_datalist(pengwin_root)
    relative = {
        split: [{key: str(Path(value).relative_to(pengwin_root)) for key, value in item.items()} for item in items]
        for split, items in datalist.items()
    }
    (pengwin_root / "relative.json").write_text(json.dumps(relative))
    assert load_datalist(pengwin_root / "relative.json") == datalist


@pytest.mark.parametrize("split, needed", [("training", "'image' and 'label'"), ("test", "'image' and 'label'"),
                                           ("inference", "'image'")])  # fmt: skip
def test_datalist_items_without_the_paths_their_split_needs_are_a_clear_error(pengwin_root, tmp_path, split, needed):
    datalist = build_datalist(pengwin_root)
    datalist[split] = [{"image": datalist["training"][0]["image"]} if split != "inference" else {"label": "x.tif"}]
    (tmp_path / "datalist.json").write_text(json.dumps(datalist))
    with pytest.raises(ValueError, match=f"datalist.json: every {split} item needs {needed} paths"):
        load_datalist(tmp_path / "datalist.json")


@pytest.mark.parametrize(
    "content, message",
    [(None, "datalist file not found"), ("{oops", "not valid JSON"), ("[1, 2]", "expected a JSON object")],
)
def test_unreadable_datalist_json_is_a_clear_error(tmp_path, content, message):
    if content is not None:
        (tmp_path / "datalist.json").write_text(content)
    with pytest.raises((FileNotFoundError, ValueError), match=f"datalist.json: {message}"):
        load_datalist(tmp_path / "datalist.json")


def test_cli_reports_a_bad_root_in_one_line(tmp_path):
    with pytest.raises(SystemExit, match=f"^pengwin-datalist: {re.escape(str(tmp_path / 'missing'))}"):
        main([str(tmp_path / "missing"), "--out", str(tmp_path / "datalist.json")])
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SystemExit, match=f"^pengwin-datalist: {re.escape(str(tmp_path / 'afile'))}: is a file, not a"):
        main([str(tmp_path / "afile"), "--out", str(tmp_path / "datalist.json")])


@pytest.mark.parametrize("out, message", [(".", "is a folder, not a file to write"), ("afile/d.json", "is a file, so")])
def test_cli_reports_an_out_path_that_cannot_be_written_in_one_line(pengwin_root, tmp_path, out, message):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SystemExit, match=f"^pengwin-datalist: .*{message}"):
        main([str(pengwin_root), "--out", str(tmp_path / out)])


def test_a_test_fraction_of_zero_is_refused_since_evaluation_needs_a_test_split():
    items = [{"image": f"/r/{p:03d}_0000.tif"} for p in range(10)]
    with pytest.raises(ValueError, match=r"0 < test \(a test split to score on\)"):
        split_by_patient(items, test_fraction=0)


def test_training_data_come_from_a_datalist_file_or_a_dataset_dir_never_both(tmp_path):
    datalist_file = str(tmp_path / "lists" / "datalist.json")
    assert resolve_dataset("", str(tmp_path / "synthetic"), {}, datalist_file) == str(tmp_path / "lists")
    with pytest.raises(ValueError, match=r"dataset_dir and datalist_file \(.*datalist.json\) are both set"):
        resolve_dataset(str(tmp_path), str(tmp_path / "synthetic"), {}, datalist_file)


def _items(*names: str) -> list[dict]:
    return [{"image": f"/data/{name}", "label": f"/labels/{name}"} for name in names]


@pytest.mark.parametrize(
    "dataset, test_names, refused",
    [
        ("/data", ["009_0000.tif", "012_0250.tif"], "patient 009"),  # patient 9 trained on: not held out
        ("/data", ["013_0000.tif"], None),  # a patient never seen
        ("/other", ["009_0000.tif"], None),  # another dataset: its patient 9 is someone else
        ("/data", ["scan.tif"], "image /data/scan.tif"),  # other names: the image itself
    ],
)
def test_evaluation_refuses_test_patients_the_model_was_trained_or_validated_on(dataset, test_names, refused):
    trained_on = training_sources("/data", _items("001_0000.tif", "scan.tif"), _items("009_0250.tif"))
    assert trained_on == {"dataset": "/data", "sources": ["image /data/scan.tif", "patient 001", "patient 009"],
                          "validation": ["patient 009"]}  # fmt: skip
    if refused is None:
        check_held_out(trained_on, dataset, _items(*test_names))
    else:
        with pytest.raises(ValueError, match=f"^{dataset}: the test split holds {refused}, which this model was "):
            check_held_out(trained_on, dataset, _items(*test_names))
    check_held_out(None, "/data", _items(*test_names))  # a model with no record (chosen before it was kept)


@pytest.mark.parametrize(
    "dataset, validation_names, refused",
    [
        ("/data", ["009_0000.tif", "009_0250.tif"], None),  # its own validation patient: what a choice is made on
        ("/data", ["001_0000.tif", "009_0000.tif"], "patient 001"),  # patient 1 trained on: the choice would fit it
        ("/data", ["013_0000.tif"], None),  # a patient never seen
        ("/other", ["001_0000.tif"], None),  # another dataset: its patient 1 is someone else
    ],
)
def test_a_new_choice_refuses_validation_patients_the_model_was_trained_on(dataset, validation_names, refused):
    trained_on = training_sources("/data", _items("001_0000.tif", "002_0000.tif"), _items("009_0250.tif"))
    if refused is None:
        check_choice_data(trained_on, dataset, _items(*validation_names))
    else:
        with pytest.raises(ValueError, match=f"^{dataset}: the validation split holds {refused}, which this model was "):
            check_choice_data(trained_on, dataset, _items(*validation_names))
    # a record without its validation patients (bundle 0.14.4) cannot tell them from trained ones, nor no record
    check_choice_data({"dataset": "/data", "sources": trained_on["sources"]}, "/data", _items("001_0000.tif"))
    check_choice_data(None, "/data", _items("001_0000.tif"))


_SYNTHETIC = {"patients": 3, "projections": 2, "size": 64, "seed": 0}


@pytest.mark.parametrize(
    "synthetic, message",
    [
        ({**_SYNTHETIC, "projection": 2}, r"^synthetic: no setting \['projection'\]; the settings are patients, "),
        ({"patients": 3}, r"^synthetic: missing setting \['projections', 'size', 'seed'\] \(a whole --synthetic"),
        ({**_SYNTHETIC, "patients": "x"}, r"^synthetic#patients must be a whole number, 1 or more, got 'x'"),
        ({**_SYNTHETIC, "seed": -1}, r"^synthetic#seed must be a whole number, 0 or more, got -1"),
        ({**_SYNTHETIC, "voxel_mm": 0}, r"^synthetic#voxel_mm must be a number above 0, got 0"),
        ([3, 2], r"^synthetic must be a dict of patients, projections, size, seed, voxel_mm, got \[3, 2\]"),
    ],
)
def test_a_bad_synthetic_setting_is_one_line_naming_it_before_any_data_is_written(tmp_path, synthetic, message):
    with pytest.raises(ValueError, match=message):
        resolve_dataset("", str(tmp_path / "synthetic"), synthetic)
    assert not (tmp_path / "synthetic").exists()


def test_synthetic_settings_from_the_command_line_are_read_as_numbers():
    checked = checked_synthetic({"patients": "3", "projections": 2.0, "size": 64, "seed": "0", "voxel_mm": "1.5"})
    assert checked == {"patients": 3, "projections": 2, "size": 64, "seed": 0, "voxel_mm": 1.5}
    assert checked_synthetic({**_SYNTHETIC, "voxel_mm": None})["voxel_mm"] is None
