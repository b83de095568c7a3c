"""Atomic writing: a failed or killed write never replaces a good file with half a file."""

from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path

import pytest

from pengwin_xray.atomic import TEMPORARY_SUFFIX, atomic_open, remove_stale_temporaries, write_json_atomic


def test_successful_write_creates_folders_and_a_readable_file(tmp_path):
    target = tmp_path / "a" / "b" / "data.json"
    write_json_atomic(target, {"x": [1, 2]})
    assert json.loads(target.read_text()) == {"x": [1, 2]}
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert sorted(p.name for p in target.parent.iterdir()) == ["data.json"]


@pytest.mark.parametrize("mode", ["w", "wb"])
def test_failure_mid_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path, mode):
    target = tmp_path / "report.txt"
    target.write_text("good")
    with pytest.raises(RuntimeError):
        with atomic_open(target, mode) as handle:
            handle.write("half" if mode == "w" else b"half")
            raise RuntimeError("killed")
    assert target.read_text() == "good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.txt"]


def test_the_target_is_replaced_only_by_the_rename(tmp_path, monkeypatch):
    target = tmp_path / "out.json"
    target.write_text("{}")

    def refuse(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="rename failed"):
        write_json_atomic(target, {"new": True})
    assert target.read_text() == "{}" and len(list(tmp_path.iterdir())) == 1


def stale_files(folder: Path, names: list[str]) -> list[Path]:
    paths = [folder / name for name in names]
    for path in paths:
        path.write_text("x")
        os.utime(path, (0, 0))  # long untouched
    return paths


def test_temporaries_left_by_killed_writes_are_removed_and_nothing_else(tmp_path):
    with atomic_open(tmp_path / "summary.json", "w"):  # what a write killed here leaves: its temporary
        (ours,) = tmp_path.iterdir()
        os.link(ours, tmp_path / "kept")
    ours = (tmp_path / "kept").rename(ours)
    os.utime(ours, (0, 0))
    (tmp_path / "summary.json").unlink()
    # other programs' files, also temporary-looking: Python's tempfile names, editors' drafts
    keep = stale_files(tmp_path, ["model.pt", "tmp_notes.txt", "tmpab12cd34", ".draft.v2.tmp", ".hidden.tmp.bak"])
    in_progress = Path(tempfile.mkstemp(dir=tmp_path, prefix=".model.pt.", suffix=TEMPORARY_SUFFIX)[1])  # just written
    assert remove_stale_temporaries(tmp_path) == [ours]
    assert sorted(tmp_path.iterdir()) == sorted([*keep, in_progress])
    assert remove_stale_temporaries(tmp_path / "missing") == []


def test_a_checkpoint_folder_also_loses_ignites_temporaries(tmp_path):
    with tempfile.NamedTemporaryFile(delete=False, dir=tmp_path) as handle:  # as ignite's atomic DiskSaver names it
        ignites = Path(handle.name)
    os.utime(ignites, (0, 0))
    keep = stale_files(tmp_path, ["model.pt", "tmp_notes.txt"])
    assert remove_stale_temporaries(tmp_path) == []
    assert remove_stale_temporaries(tmp_path, checkpoints=True) == [ignites]
    assert sorted(tmp_path.iterdir()) == sorted(keep)
