"""Tests of the dataset fingerprint (``pengwin-fingerprint``) and of the generator's calibration against it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from pengwin_xray.fingerprint import fingerprint, format_table, list_files, main
from pengwin_xray.synthetic import generate_dataset

from helpers import write_pair

REAL_MAPS = ("081_0000_maskrcnn_pred.tif", "081_0025_maskrcnn_pred.tif")


def _independent_label_statistics(path: Path) -> dict:
    """Coverage, overlap and fragment areas recomputed bit by bit, without the fingerprint's value histogram."""
    bitmap = tifffile.imread(path).astype(np.int64)
    planes = {bit: ((bitmap >> bit) & 1).astype(bool) for bit in range(1, 31)}
    bits_per_pixel = sum(plane.astype(int) for plane in planes.values())
    return {
        "coverage": float((bits_per_pixel > 0).mean()),
        "overlap": float((bits_per_pixel > 1).mean()),
        "areas": [float(plane.mean()) for plane in planes.values() if plane.any()],
        "bones": [float(np.any([planes[10 * c + f] for f in range(1, 11)], axis=0).mean()) for c in range(3)],
    }


def test_real_maps_fingerprint_matches_bit_by_bit_statistics(real_data):
    result = fingerprint(real_data, progress=False)
    expected = [_independent_label_statistics(real_data / name) for name in REAL_MAPS]
    labels = result["labels"]
    assert labels["count"] == 2 and labels["dtypes"] == {"int32": 2}
    assert labels["bone_coverage"]["mean"] == pytest.approx(np.mean([e["coverage"] for e in expected]), abs=1e-12)
    assert labels["bone_coverage"]["min"] == pytest.approx(min(e["coverage"] for e in expected), abs=1e-12)
    assert labels["overlap"]["max"] == pytest.approx(max(e["overlap"] for e in expected), abs=1e-12)
    areas = np.concatenate([e["areas"] for e in expected])
    assert labels["fragment_area"]["count"] == len(areas) == 11
    assert labels["fragment_area"]["median"] == pytest.approx(np.median(areas), abs=1e-12)
    for threshold in (0.005, 0.01, 0.05):
        assert labels["fragment_area"]["share_below"][f"{threshold:.1%}"] == pytest.approx((areas < threshold).mean())
    for index, bone in enumerate(labels["bones"].values()):
        assert bone["coverage"]["mean"] == pytest.approx(np.mean([e["bones"][index] for e in expected]), abs=1e-12)
    assert labels["fragments_per_image"]["histogram"] == {5: 1, 6: 1}
    # the real input: one float32 image of CT 101 with raw intensities in PENGWIN's range
    images = result["images"]
    assert images["count"] == 1 and images["patients"] == 1 and images["shapes"] == {"448x448": 1}
    assert 0.2 < images["raw_intensity"]["min"] < 0.3 and 55 < images["raw_intensity"]["max"] < 57
    assert sum(images["neglog_histogram"]["share"]) == pytest.approx(1.0)


def test_flat_folder_files_are_sorted_by_sample_format(real_data):
    images, labels = list_files(real_data)
    assert [p.name for p in images] == ["101_0000.tif"]
    assert [p.name for p in labels] == list(REAL_MAPS)


def test_pengwin_root_counts_patients_tools_and_unlabelled_images(tmp_path):
    for patient in (1, 2, 3):
        for projection in (0, 250, 499):
            write_pair(tmp_path, f"{patient:03d}_{projection:04d}.tif", seed=patient + projection, split="train")
    write_pair(tmp_path, "104_0000.tif", split="test", label=False)
    result = fingerprint(tmp_path, progress=False)
    assert result["images"]["count"] == 10 and result["labels"]["count"] == 9
    assert result["images"]["patients"] == 4 and result["images"]["tool_projections"] == 6
    # write_pair's label: bit 1 on the top half, 11 on the left half, 21 on rows and columns 8..31: every pixel
    # is bone; two bits or more on the top-left quadrant and where 21 meets the halves (256 + 320 - 64 pixels)
    assert result["labels"]["bone_coverage"]["mean"] == 1.0
    assert result["labels"]["overlap"]["mean"] == pytest.approx(512 / 32**2)
    assert result["labels"]["bones"]["SA"]["fragments_when_in_view"]["mean"] == 1
    assert result["problems"] == []


def test_max_images_samples_a_seeded_subset(pengwin_root):
    first = fingerprint(pengwin_root, max_images=5, seed=3, progress=False)
    again = fingerprint(pengwin_root, max_images=5, seed=3, progress=False)
    assert first["images"]["count"] == first["labels"]["count"] == 5
    assert first == again
    other = fingerprint(pengwin_root, max_images=5, seed=4, progress=False)
    assert other["images"]["count"] == 5 and other != first  # another seed samples other images
    with pytest.raises(ValueError, match="max_images"):
        fingerprint(pengwin_root, max_images=0, progress=False)
    with pytest.raises(ValueError, match="^seed must be 0 or more, got -1$"):  # not every image "unreadable"
        fingerprint(pengwin_root, seed=-1, progress=False)


def test_workers_give_the_same_fingerprint_as_one_process(tmp_path):
    for index in range(40):
        write_pair(tmp_path, f"{index // 4 + 1:03d}_{index % 4:04d}.tif", seed=index)
    assert fingerprint(tmp_path, workers=2, progress=False) == fingerprint(tmp_path, workers=1, progress=False)


def test_unreadable_file_is_named_left_out_and_fails_the_command(pengwin_root, capsys):
    broken = next((pengwin_root / "train" / "input" / "images" / "x-ray").glob("*.tif"))
    broken.write_bytes(b"not a tiff")
    result = fingerprint(pengwin_root, progress=False)
    assert result["images"]["count"] == 19 and len(result["problems"]) == 1
    assert str(broken) in result["problems"][0]
    with pytest.raises(SystemExit) as exit_info:
        main([str(pengwin_root), "--no-progress"])
    assert exit_info.value.code == 1
    assert str(broken) in capsys.readouterr().err


@pytest.mark.parametrize(
    "missing, problem",
    [("root", "does not exist"), ("compare", "does not exist"), ("file", "is a file, not a folder")],
)
def test_missing_folder_is_one_clear_line_before_any_measuring(
    pengwin_root, tmp_path, capsys, monkeypatch, missing, problem
):
    measured = []
    monkeypatch.setattr("pengwin_xray.fingerprint.fingerprint", lambda root, *args: measured.append(root))
    if missing == "file":
        (tmp_path / "nowhere").write_bytes(b"a file")
    folders = [pengwin_root, tmp_path / "nowhere"] if missing == "compare" else [tmp_path / "nowhere", pengwin_root]
    with pytest.raises(SystemExit) as exit_info:
        main([str(folders[0]), "--compare", str(folders[1]), "--no-progress"])
    assert exit_info.value.code == 2 and measured == []
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nowhere" in err and problem in err


@pytest.mark.parametrize("target", ["folder", "below_a_file"])
def test_a_json_path_that_cannot_be_written_is_one_line_before_any_measuring(
    pengwin_root, tmp_path, capsys, monkeypatch, target
):
    measured = []
    monkeypatch.setattr("pengwin_xray.fingerprint.fingerprint", lambda root, *args: measured.append(root))
    (tmp_path / "afile").write_text("x")
    out = tmp_path if target == "folder" else tmp_path / "afile" / "fp.json"
    with pytest.raises(SystemExit) as exit_info:
        main([str(pengwin_root), "--json", str(out), "--no-progress"])
    assert exit_info.value.code == 2 and measured == []
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and ("is a folder" in err if target == "folder" else "afile: is a file" in err)


def test_compare_prints_both_roots_side_by_side_and_writes_json(pengwin_root, real_data, tmp_path, capsys):
    out = tmp_path / "fp.json"
    main([str(pengwin_root), "--compare", str(real_data), "--json", str(out), "--no-progress"])
    table = capsys.readouterr().out
    header = table.splitlines()[0].split()
    assert header == ["statistic", pengwin_root.name, real_data.name]
    coverage_row = next(line for line in table.splitlines() if line.startswith("bone coverage"))
    assert "1.00" in coverage_row and "0.63" in coverage_row  # the fixture's labels are all bone; real 0.71, 0.55
    saved = json.loads(out.read_text())["fingerprints"]
    assert [Path(f["root"]).name for f in saved] == [pengwin_root.name, real_data.name]
    assert format_table(saved) == table.split("\nfingerprint JSON")[0]


@pytest.mark.parametrize("size, patients, projections", [(224, 4, 6), (448, 3, 4)])
def test_default_generator_matches_pengwin_view_statistics(tmp_path, size, patients, projections):
    """The calibration targets: bone coverage 0.50-0.80, overlap 0.15-0.40, at least 40% of fragments below
    1% of the image, main fragments large (real PENGWIN: about a fifth of the view)."""
    generate_dataset(tmp_path, patients, projections, size, seed=0, progress=False)
    labels = fingerprint(tmp_path, progress=False)["labels"]
    assert 0.50 <= labels["bone_coverage"]["mean"] <= 0.80
    assert 0.15 <= labels["overlap"]["mean"] <= 0.40
    assert labels["fragment_area"]["share_below"]["1.0%"] >= 0.40
    assert labels["main_fragment_area"]["median"] >= 0.05
