"""Tests of the synthetic PENGWIN generator: phantom, projector, tools, files, caching, CT rendering, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from custom_transforms.constants import FIRST_TOOL_PROJECTION, VALID_BITS_MASK, fragment_bit
from custom_transforms.io import read_fragment_label, read_xray_image
from pengwin_xray.synthetic.phantom import build_phantom
from pengwin_xray.synthetic.projector import Cylinder, VoxelGrid, cylinder_chords, label_bitmap, line_integrals, view_geometry
from pengwin_xray.datalist import IMAGE_SUBDIR, LABEL_SUBDIR
from pengwin_xray.synthetic.dataset import (
    MARKER_NAME,
    Scene,
    draw_geometry,
    ensure_synthetic_dataset,
    generate_dataset,
    main,
    projection_indices,
    render_from_ct,
    render_projection,
    render_view,
)

VOXEL_MM = 4.0  # coarse phantoms keep the tests fast
SIZE = 64


@pytest.fixture(scope="module")
def scene() -> Scene:
    phantom = build_phantom(np.random.default_rng(7), VOXEL_MM)
    return Scene.from_arrays(phantom.mu, phantom.labels, phantom.grid)


def _all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.tif"))}


def _bits(bitmap: np.ndarray) -> set[int]:
    return {bit for bit in range(32) if ((bitmap.astype(np.int64) >> bit) & 1).any()}


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_phantom_fragments_are_numbered_from_one_by_decreasing_size(seed):
    phantom = build_phantom(np.random.default_rng(seed), VOXEL_MM)
    assert set(np.unique(phantom.labels)) - {0} == set(phantom.fragments)
    for category in (1, 2, 3):
        sizes = [phantom.fragments.get(fragment_bit(category, f), 0) for f in range(1, 11)]
        present = [s for s in sizes if s]
        assert sizes[: len(present)] == present, "fragment numbers must be contiguous from 1"
        assert present == sorted(present, reverse=True)
        assert len(present) >= 1


def test_some_phantoms_are_fractured_and_some_bones_stay_whole():
    counts = []
    for seed in range(6):
        fragments = build_phantom(np.random.default_rng(seed), VOXEL_MM).fragments
        counts += [sum(1 for bit in fragments if (bit - 1) // 10 == category) for category in range(3)]
    assert 1 in counts and max(counts) >= 2 and max(counts) <= 10


@pytest.mark.parametrize("view", range(3))
def test_bitmap_uses_bits_1_to_30_and_agrees_with_per_fragment_projections(scene, view):
    geometry = draw_geometry(np.random.default_rng(view), scene, SIZE)
    _, bitmap = render_view(scene, geometry)
    assert bitmap.dtype == np.uint32 and bitmap.any()
    assert not (bitmap.astype(np.int64) & ~VALID_BITS_MASK).any()
    assert np.array_equal(bitmap, label_bitmap(scene.labels, scene.grid, geometry))
    for bit in scene.fragment_points:
        indicator = (scene.labels == bit).float()
        crossed = line_integrals(indicator, scene.grid, geometry, mode="nearest").numpy() > 0
        np.testing.assert_array_equal((bitmap >> bit) & 1, crossed.astype(np.uint32), err_msg=f"bit {bit}")


def test_masks_overlap_where_rays_cross_two_fragments():
    """Two boxes one behind the other along the beam: the pixels whose rays cross both carry both bits."""
    grid = VoxelGrid(shape=(40, 30, 30), origin=(-30.0, -40.0, -30.0), spacing=(2.0, 2.0, 2.0))
    labels = torch.zeros(grid.shape)
    labels[5:12, 5:25, 3:18] = fragment_bit(2, 1)  # anterior box, x -24..4
    labels[25:35, 5:25, 12:27] = fragment_bit(3, 2)  # posterior box, x -6..22
    geometry = view_geometry(np.zeros(3), np.array([0.0, 1.0, 0.0]), 1000.0, 700.0, 120.0, 48)
    bitmap = label_bitmap(labels, grid, geometry)
    front = (bitmap >> fragment_bit(2, 1)) & 1
    back = (bitmap >> fragment_bit(3, 2)) & 1
    both = (front & back).astype(bool)
    assert both.any() and (front & ~back).any() and (back & ~front).any()
    crossed = [
        line_integrals((labels == bit).float(), grid, geometry, mode="nearest").numpy() > 0
        for bit in (fragment_bit(2, 1), fragment_bit(3, 2))
    ]
    np.testing.assert_array_equal(both, crossed[0] & crossed[1])


def test_sphere_projection_matches_analytic_line_integral_within_one_percent():
    spacing, radius, mu = 1.0, 25.0, 0.02
    grid = VoxelGrid(shape=(71, 71, 71), origin=(-35.0, -35.0, -35.0), spacing=(spacing,) * 3)
    x, y, z = (grid.axis(a) for a in "xyz")
    distance = np.sqrt(x[None, None, :] ** 2 + y[:, None, None] ** 2 + z[None, :, None] ** 2) - radius
    volume = torch.from_numpy((np.clip(0.5 - distance / spacing, 0.0, 1.0) * mu).astype(np.float32))
    geometry = view_geometry(np.array([4.0, -3.0, 2.0]), np.array([0.4, 1.0, -0.3]), 1100.0, 760.0, 90.0, 96)
    projected = line_integrals(volume, grid, geometry).numpy()
    rays = geometry.ray_directions().numpy()
    along = rays @ -geometry.source
    miss2 = geometry.source @ geometry.source - along**2
    analytic = 2.0 * mu * np.sqrt(np.clip(radius**2 - miss2, 0.0, None))
    inner = analytic > 0.5 * analytic.max()
    assert inner.sum() > 500
    assert np.abs(projected - analytic)[inner].max() <= 0.01 * analytic.max()


@pytest.mark.parametrize("direction", [(1.0, 0.0, 0.0), (0.3, 0.2, 1.0), (0.0, 1.0, 0.05)])
def test_cylinder_chords_match_sampling_along_the_rays(direction):
    tool = Cylinder(np.array([-20.0, -5.0, -10.0]), np.array([-20.0, -5.0, -10.0]) + 40 * np.array(direction) /
                    np.linalg.norm(direction), radius=3.0, mu=0.5)
    geometry = view_geometry(np.zeros(3), np.array([0.1, 1.0, 0.1]), 1000.0, 700.0, 150.0, 24)
    chords = cylinder_chords(geometry, [tool]).numpy()
    rays = geometry.ray_directions().numpy()
    t = np.arange(640.0, 760.0, 0.02)  # dense sampling along each ray through the tool
    axis = (tool.end - tool.start) / np.linalg.norm(tool.end - tool.start)
    points = geometry.source + t[:, None, None, None] * rays[None]
    rel = points - tool.start
    along = rel @ axis
    radial = np.linalg.norm(rel - along[..., None] * axis, axis=-1)
    inside = (along >= 0) & (along <= 40.0) & (radial <= tool.radius)
    sampled = tool.mu * inside.sum(0) * (t[1] - t[0])
    assert chords.max() > 0.5 * tool.mu * 2 * tool.radius
    np.testing.assert_allclose(chords, sampled, atol=0.025)


@pytest.mark.parametrize("projection", [0, 125, 249, 250, 499])
def test_tools_only_in_projections_from_250(scene, projection):
    rendered = render_projection(scene, SIZE, projection, np.random.default_rng(projection))
    if projection < FIRST_TOOL_PROJECTION:
        assert rendered.tools == []
        return
    assert 1 <= len(rendered.tools) <= 20  # up to 10 tools, a screw with its head
    with_tools, _ = render_view(scene, rendered.geometry, rendered.tools)
    without, _ = render_view(scene, rendered.geometry)
    assert (with_tools <= without + 1e-4).all()
    assert (with_tools < 0.5 * without).any(), "metal must darken some pixels"


def test_projection_indices_reach_the_tool_range():
    assert projection_indices(1) == [0]
    assert projection_indices(2) == [0, 250]
    indices = projection_indices(8)
    assert len(set(indices)) == 8 and max(indices) < 500 and sum(i >= FIRST_TOOL_PROJECTION for i in indices) == 4
    with pytest.raises(ValueError, match="projections"):
        projection_indices(501)


def test_intensity_is_raw_transmission_air_near_56_bone_darker(scene):
    isocentre = np.array([scene.grid.axis("x")[-1], 0.0, -20.0])  # half of the view outside the body
    geometry = view_geometry(isocentre, np.array([0.0, 1.0, 0.0]), 1100.0, 750.0, 350.0, SIZE)
    image, bitmap = render_view(scene, geometry, rng=np.random.default_rng(0))
    assert image.dtype == np.float32 and (image > 0).all()
    assert 53.0 < image.max() < 58.0
    quiet, _ = render_view(scene, geometry)
    assert 54.0 < np.median(quiet[quiet > 40]) < 57.0
    body = (quiet < 40) & (bitmap == 0)
    assert np.median(quiet[bitmap > 0]) < np.median(quiet[body]) < 40


def test_air_intensity_matches_the_real_files(real_data, scene):
    real = read_xray_image(real_data / "101_0000.tif")
    geometry = view_geometry(np.array([500.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0]), 1100.0, 750.0, 300.0, 16)
    air, _ = render_view(scene, geometry)
    assert abs(float(air.mean()) - float(real.max())) < 0.03 * float(real.max())


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "root"
    return generate_dataset(root, patients=2, projections=2, size=48, seed=3, voxel_mm=VOXEL_MM, progress=False)


def test_layout_names_and_dtypes_are_pengwin(small_dataset):
    names = ["001_0000.tif", "001_0250.tif", "002_0000.tif", "002_0250.tif"]
    for sub in (IMAGE_SUBDIR, LABEL_SUBDIR):
        assert sorted(p.name for p in (small_dataset / "train" / sub).iterdir()) == names
    for name in names:
        for sub, dtype in ((IMAGE_SUBDIR, np.float32), (LABEL_SUBDIR, np.uint32)):
            with tifffile.TiffFile(small_dataset / "train" / sub / name) as tif:
                assert len(tif.pages) == 1 and tif.pages[0].compression == 1
                array = tif.pages[0].asarray()
            assert array.dtype == dtype and array.shape == (48, 48)
        read_xray_image(small_dataset / "train" / IMAGE_SUBDIR / name, (48, 48))
        label = read_fragment_label(small_dataset / "train" / LABEL_SUBDIR / name, (48, 48))
        assert label.any()
    marker = json.loads((small_dataset / "train" / MARKER_NAME).read_text())
    assert marker["complete"] is True and marker["patients"] == 2


def test_same_seed_gives_identical_files_and_another_seed_different(small_dataset, tmp_path):
    again = generate_dataset(tmp_path / "a", patients=2, projections=2, size=48, seed=3, voxel_mm=VOXEL_MM,
                             progress=False)
    other = generate_dataset(tmp_path / "b", patients=2, projections=2, size=48, seed=4, voxel_mm=VOXEL_MM,
                             progress=False)
    reference = _all_files(small_dataset)
    assert _all_files(again) == reference
    different = _all_files(other)
    assert different.keys() == reference.keys()
    assert all(different[name] != reference[name] for name in reference if "input" in name)


def test_ensure_regenerates_only_when_arguments_change(tmp_path, monkeypatch):
    arguments = dict(patients=1, projections=2, size=32, seed=0, voxel_mm=VOXEL_MM, progress=False)
    root = ensure_synthetic_dataset(tmp_path, **arguments)
    image = root / "train" / IMAGE_SUBDIR / "001_0250.tif"
    stamp = image.stat().st_mtime_ns

    import pengwin_xray.synthetic.dataset as synth

    calls = []
    real_generate = synth.generate_dataset
    monkeypatch.setattr(synth, "generate_dataset", lambda *a, **k: calls.append(a) or real_generate(*a, **k))
    ensure_synthetic_dataset(tmp_path, **arguments)
    assert calls == [] and image.stat().st_mtime_ns == stamp

    ensure_synthetic_dataset(tmp_path, **{**arguments, "projections": 1})
    assert len(calls) == 1
    assert not image.exists(), "files of the previous arguments are removed"
    image.parent.joinpath("001_0000.tif").unlink()
    ensure_synthetic_dataset(tmp_path, **{**arguments, "projections": 1})
    assert len(calls) == 2 and image.parent.joinpath("001_0000.tif").exists()


def test_generator_refuses_a_folder_of_foreign_files(tmp_path):
    foreign = tmp_path / "train" / IMAGE_SUBDIR / "101_0000.tif"
    foreign.parent.mkdir(parents=True)
    tifffile.imwrite(foreign, np.ones((8, 8), np.float32))
    with pytest.raises(ValueError, match="not written by the synthetic generator"):
        generate_dataset(tmp_path, patients=1, projections=1, size=32, voxel_mm=VOXEL_MM, progress=False)
    assert foreign.exists()


@pytest.mark.parametrize(
    "argument, message",
    [({"seed": -1}, r"seed must be 0 or more, got -1"), ({"split": ".."}, r"split must be a plain folder name")],
)
def test_generator_refuses_a_bad_argument_before_touching_an_earlier_dataset(small_dataset, argument, message):
    def files() -> dict[str, bytes]:  # the views and the generator's record of them
        return {str(path): path.read_bytes() for path in sorted(small_dataset.rglob("*")) if path.is_file()}

    before = files()
    arguments = dict(patients=1, projections=1, size=48, seed=3, voxel_mm=VOXEL_MM, progress=False)
    with pytest.raises(ValueError, match=message):
        generate_dataset(small_dataset, **{**arguments, **argument})
    assert files() == before  # nothing of the earlier dataset removed or rewritten
    assert not (small_dataset.parent / "input").exists()  # nothing written beside it either


def _write_ct(path: Path, array: np.ndarray, spacing=(1.5, 1.5, 2.5), direction=None, origin=(-30.0, -30.0, -40.0)):
    import itk

    image = itk.image_from_array(np.ascontiguousarray(array))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(itk.matrix_from_array(np.asarray(direction, np.float64)))
    itk.imwrite(image, str(path))


@pytest.mark.parametrize("suffix", [".nii.gz", ".mha"])
def test_render_from_ct_projects_a_small_volume(tmp_path, suffix):
    shape = (32, 40, 40)  # [k, j, i] as ITK arrays are
    k, j, i = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    ball = (i - 20) ** 2 + (j - 20) ** 2 + ((k - 16) * 2.5 / 1.5) ** 2 < 12**2
    hu = np.where(ball, 1000, 0).astype(np.int16)
    labels = np.where(ball & (i < 20), fragment_bit(2, 1), np.where(ball, fragment_bit(2, 2), 0)).astype(np.uint8)
    _write_ct(tmp_path / f"ct{suffix}", hu)
    _write_ct(tmp_path / f"labels{suffix}", labels)
    image, bitmap = render_from_ct(tmp_path / f"ct{suffix}", tmp_path / f"labels{suffix}", tmp_path / "x.tif",
                                   tmp_path / "y.tif", size=48, seed=1, tools=2)
    assert _bits(bitmap) <= {11, 12} and bitmap.any()
    assert np.array_equal(read_fragment_label(tmp_path / "y.tif"), bitmap.astype(np.int32))
    written = read_xray_image(tmp_path / "x.tif")
    assert written.dtype == np.float32 and np.array_equal(written, image)
    assert image[bitmap > 0].mean() < image[bitmap == 0].mean()


def test_render_from_ct_follows_the_file_orientation(tmp_path):
    """The same anatomy stored with flipped index axes (a RAS-like direction) renders identically."""
    shape = (16, 20, 20)
    k, j, i = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    labels = np.where((i > 4) & (i < 12) & (j > 6) & (j < 15) & (k > 3) & (k < 12), 21, 0).astype(np.uint8)
    labels[(i >= 12) & (i < 16) & (j > 6) & (j < 15) & (k > 3) & (k < 12)] = 22
    hu = np.where(labels > 0, 800, 0).astype(np.int16)
    spacing = (1.5, 2.0, 2.5)
    _write_ct(tmp_path / "ct.mha", hu, spacing)
    _write_ct(tmp_path / "lab.mha", labels, spacing)
    flipped_origin = (-30.0 + 1.5 * 19, -30.0 + 2.0 * 19, -40.0)  # same world box, i and j reversed
    flip = np.diag([-1.0, -1.0, 1.0])
    _write_ct(tmp_path / "ct_f.mha", hu[:, ::-1, ::-1], spacing, flip, flipped_origin)
    _write_ct(tmp_path / "lab_f.mha", labels[:, ::-1, ::-1], spacing, flip, flipped_origin)
    outputs = [
        render_from_ct(tmp_path / f"ct{tag}.mha", tmp_path / f"lab{tag}.mha", tmp_path / f"x{tag}.tif",
                       tmp_path / f"y{tag}.tif", size=40, seed=2, noise=False)
        for tag in ("", "_f")
    ]
    assert _bits(outputs[0][1]) == {21, 22}
    np.testing.assert_array_equal(outputs[0][1], outputs[1][1])
    np.testing.assert_allclose(outputs[0][0], outputs[1][0], rtol=1e-5)


def test_render_from_ct_rejects_mismatched_or_invalid_labels(tmp_path):
    _write_ct(tmp_path / "ct.mha", np.zeros((8, 8, 8), np.int16))
    _write_ct(tmp_path / "small.mha", np.ones((8, 8, 6), np.uint8))
    with pytest.raises(ValueError, match="small.mha.*does not match"):
        render_from_ct(tmp_path / "ct.mha", tmp_path / "small.mha", tmp_path / "x.tif", tmp_path / "y.tif")
    _write_ct(tmp_path / "bad.mha", np.full((8, 8, 8), 31, np.uint8))
    with pytest.raises(ValueError, match="bad.mha.*0..30"):
        render_from_ct(tmp_path / "ct.mha", tmp_path / "bad.mha", tmp_path / "x.tif", tmp_path / "y.tif")
    oblique = [[0.8, -0.6, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]]
    _write_ct(tmp_path / "oblique.mha", np.zeros((8, 8, 8), np.int16), direction=oblique)
    with pytest.raises(ValueError, match="oblique.mha.*oblique"):
        render_from_ct(tmp_path / "oblique.mha", tmp_path / "ct.mha", tmp_path / "x.tif", tmp_path / "y.tif")
    for size in (0, -5, 8):
        with pytest.raises(ValueError, match=f"size must be a whole number of at least 32 pixels, got {size}"):
            render_from_ct(tmp_path / "ct.mha", tmp_path / "ct.mha", tmp_path / "x.tif", tmp_path / "y.tif", size=size)
    assert not (tmp_path / "x.tif").exists()


def test_cli_writes_a_dataset(tmp_path, capsys):
    main(["--out", str(tmp_path), "--patients", "1", "--projections", "2", "--size", "32", "--seed", "5",
          "--voxel-mm", str(VOXEL_MM), "--no-progress"])
    assert "wrote 2 image/label pairs" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "train" / LABEL_SUBDIR).glob("*.tif")) == ["001_0000.tif",
                                                                                       "001_0250.tif"]
    with pytest.raises(SystemExit, match="pengwin-synth: projections must be 1..500, got 0"):
        main(["--out", str(tmp_path), "--projections", "0"])
    with pytest.raises(SystemExit, match="pengwin-synth: size must be a whole number of at least 32 pixels, got 24"):
        main(["--out", str(tmp_path), "--size", "24"])  # views the networks could not take
