"""Synthetic PENGWIN Task 2 data: fractured pelvis phantoms projected to X-rays with fragment bit maps.

Phantom data is for demos and tests only: a model trained on it will not work on real X-rays. It exists so
that the bundle trains, evaluates and infers out of the box where the real PENGWIN data cannot be had, and
it is written in exactly the PENGWIN layout and encoding, so that everything else runs unchanged on real
data:

- ``<root>/<split>/input/images/x-ray/CCC_PPPP.tif``: raw transmitted intensity, float32, one page,
  uncompressed; air is bright (about 56, like the real files), bone dark.
- ``<root>/<split>/output/images/x-ray/CCC_PPPP.tif``: uint32 bit map, bit ``10 * (category - 1) +
  fragment`` set where the pixel's ray crosses that fragment (categories 1 = SA, 2 = LI, 3 = RI).

``CCC`` numbers the phantoms from 001, ``PPPP`` the projections. ``M`` projections of a phantom get the
indices ``k * 500 // M`` (``k = 0..M-1``), spread evenly over 0000..0499; as in PENGWIN, projections 0250 and
above carry 1 to 10 metal K-wires or screws. The views follow the PENGWIN geometry: source-to-detector
distance 1000 to 1200 mm, view direction within 45 degrees of AP, imaging centre within 50 mm of a
fragment, and close-ups in which the pelvis fills the detector (the calibrated constants below say where each
value comes from). A view that would show no fragment is drawn again, so no label is ever empty.

Everything is seeded: the same arguments give byte-identical files. Use different seeds (or splits, which
are mixed into the seed) for data that must not share phantoms.

:func:`render_from_ct` projects a user's own CT with a fragment label volume through the same projector.
"""

from __future__ import annotations

import argparse
import json
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
import torch
from scipy import ndimage
from tqdm import tqdm

from custom_transforms.constants import FIRST_TOOL_PROJECTION, MIN_IMAGE_SIZE, NUM_CHANNELS, PROJECTIONS_PER_CT
from custom_transforms.io import list_tiffs, tiff_stem
from ..atomic import atomic_open, write_json_atomic
from ..datalist import IMAGE_SUBDIR, LABEL_SUBDIR, PENGWIN_NAME
from .phantom import MU_WATER, build_phantom
from .projector import ConeBeamGeometry, Cylinder, VoxelGrid, cylinder_chords, project_volume, view_geometry

__all__ = [
    "MARKER_NAME",
    "Scene",
    "projection_indices",
    "default_voxel_mm",
    "draw_geometry",
    "draw_tools",
    "render_view",
    "RenderedProjection",
    "render_projection",
    "generate_dataset",
    "ensure_synthetic_dataset",
    "hu_to_mu",
    "render_from_ct",
    "main",
]

MARKER_NAME = "synthetic_dataset.json"
MAX_TOOLS = 10

_GENERATOR_VERSION = 2
# View geometry, calibrated with ``pengwin-fingerprint`` against the real PENGWIN views (bundle/docs/synthetic_data.md).
#: detector width (mm) and source-to-isocentre distance as a fraction of the source-to-detector distance (1000 to
#: 1200 mm, the challenge's C-arm range): a 200-280 mm detector at 1.8-2.4x magnification sees 85-155 mm at the
#: isocentre. Chosen by measurement so that bone covers 0.6 of a view on average (real: 0.55 and 0.71 on the two
#: real-layout maps of CT 081) and a main fragment about a fifth of it (real: median 19%): PENGWIN views are
#: close-ups in which the pelvis fills the detector.
DETECTOR_MM = (200.0, 280.0)
SOURCE_TO_ISOCENTRE_FRACTION = (0.42, 0.55)
#: the imaging centre lies within this distance of a point of a fragment chosen uniformly among the phantom's
#: fragments (challenge description: within 50 mm of a fragment; 30 mm keeps the pelvis filling the view)
CENTRE_OFFSET_MM = 30.0
#: photons per pixel in air (quantum noise): measured, the real 101_0000.tif has a high-pass (-log, minus a 2 px
#: Gaussian blur) noise of 0.0026 where 2.6% of the air intensity passes; with 2e6 to 1e7 photons the default
#: views measure 0.003 to 0.009, phantom texture included (the earlier 2e4 to 1e5 gave 0.03 to 0.07)
PHOTONS_IN_AIR = (2e6, 1e7)
_AIR_INTENSITY = 55.5
_MU_STEEL = 0.45
_MU_TITANIUM = 0.16
_MAX_VIEW_ATTEMPTS = 50


@dataclass
class Scene:
    """A volume ready to project: attenuation and bit-index volumes (torch float32, ``[Y, Z, X]``) on their grid.

    ``fragment_points`` holds, per bit index present, the world positions ``[N, 3]`` (mm) of its voxels:
    the candidates for imaging centres and tool anchors.
    """

    mu: torch.Tensor
    labels: torch.Tensor
    grid: VoxelGrid
    fragment_points: dict[int, np.ndarray]

    @classmethod
    def from_arrays(cls, mu: np.ndarray, labels: np.ndarray, grid: VoxelGrid) -> Scene:
        points = {}
        for bit in np.unique(labels[labels > 0]):
            iy, iz, ix = np.nonzero(labels == bit)
            points[int(bit)] = grid.world(iy, iz, ix)
        if not points:
            raise ValueError("the label volume holds no fragment: nothing to centre a view on")
        # labels are kept as float32 because grid_sample samples float volumes only
        mu_tensor = torch.from_numpy(np.ascontiguousarray(mu, dtype=np.float32))
        return cls(mu_tensor, torch.from_numpy(labels.astype(np.float32)), grid, points)


def projection_indices(projections: int) -> list[int]:
    """PENGWIN projection indices for ``projections`` views of one phantom, spread evenly over 0..499."""
    if not 1 <= projections <= PROJECTIONS_PER_CT:
        raise ValueError(f"projections must be 1..{PROJECTIONS_PER_CT}, got {projections}")
    return [k * PROJECTIONS_PER_CT // projections for k in range(projections)]


def default_voxel_mm(size: int) -> float:
    """Phantom voxel size for a detector of ``size`` pixels: 2 mm (1.5 mm looks a little finer at 448 px but
    costs about 1.6 times as long per image, which misses the 1 s per image budget on 2 cores)."""
    return 2.0


def draw_geometry(rng: np.random.Generator, scene: Scene, size: int) -> ConeBeamGeometry:
    """A random PENGWIN-like close-up: SDD 1000..1200 mm, within 45 degrees of AP, centred within
    :data:`CENTRE_OFFSET_MM` of a random fragment, :data:`DETECTOR_MM` wide at that magnification."""
    bits = sorted(scene.fragment_points)
    points = scene.fragment_points[bits[int(rng.integers(len(bits)))]]
    offset = rng.normal(size=3)
    offset *= CENTRE_OFFSET_MM * rng.random() ** (1 / 3) / np.linalg.norm(offset)  # uniform in the ball
    isocentre = points[int(rng.integers(len(points)))] + offset
    cos_tilt = rng.uniform(np.cos(np.radians(45.0)), 1.0)  # uniform over the 45-degree cap around AP
    azimuth = rng.uniform(0.0, 2 * np.pi)
    sin_tilt = np.sqrt(1.0 - cos_tilt**2)
    direction = np.array([sin_tilt * np.cos(azimuth), cos_tilt, sin_tilt * np.sin(azimuth)])
    source_to_detector = rng.uniform(1000.0, 1200.0)
    return view_geometry(
        isocentre=isocentre,
        direction=direction,
        source_to_detector=source_to_detector,
        source_to_isocentre=source_to_detector * rng.uniform(*SOURCE_TO_ISOCENTRE_FRACTION),
        detector_mm=rng.uniform(*DETECTOR_MM),
        size=size,
    )


def draw_tools(rng: np.random.Generator, scene: Scene, isocentre: np.ndarray, count: int) -> list[Cylinder]:
    """``count`` K-wires (thin steel) and screws (steel or titanium shaft with a head) in bone near the centre."""
    anchors = np.concatenate(list(scene.fragment_points.values()))
    near = anchors[np.linalg.norm(anchors - isocentre, axis=1) < 90.0]
    anchors = near if len(near) else anchors
    tools: list[Cylinder] = []
    for _ in range(count):
        anchor = anchors[int(rng.integers(len(anchors)))]
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        if rng.random() < 0.5:
            length, radius, mu = rng.uniform(80.0, 250.0), rng.uniform(0.8, 1.25), _MU_STEEL
        else:
            length, radius = rng.uniform(30.0, 110.0), rng.uniform(2.5, 3.6)
            mu = _MU_STEEL if rng.random() < 0.6 else _MU_TITANIUM
        start = anchor - direction * length * rng.uniform(0.2, 0.8)
        end = start + direction * length
        tools.append(Cylinder(start, end, radius, mu))
        if radius > 2.0:  # a screw head, wider and a few millimetres long, at the entry end
            tools.append(Cylinder(start - direction * rng.uniform(3.0, 5.0), start, radius * 1.7, mu))
    return tools


def render_view(
    scene: Scene,
    geometry: ConeBeamGeometry,
    tools: Sequence[Cylinder] = (),
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Raw X-ray (float32) and bit map (uint32) of ``scene`` seen by ``geometry``.

    Intensity is ``I0 * exp(-line integral)`` with ``I0`` near 56, as in the real files. The line integral
    is blurred by a Gaussian of half the projected voxel pitch (detector blur, which also hides the voxel
    grid). With ``rng``, ``I0`` varies slightly and Poisson-like noise is added; without it the image is
    noiseless. Tools add to the line integral but not to the labels.
    """
    line_integral, bitmap = project_volume(scene.mu, scene.labels, scene.grid, geometry)
    if tools:
        line_integral = line_integral + cylinder_chords(geometry, list(tools))
    magnification = np.linalg.norm(geometry.detector_centre - geometry.source) / max(
        np.linalg.norm(geometry.isocentre - geometry.source), 1.0
    )
    pitch_px = float(min(scene.grid.spacing)) * magnification / geometry.pixel_mm
    attenuation = ndimage.gaussian_filter(line_integral.numpy(), sigma=0.5 * pitch_px, mode="nearest")
    air = _AIR_INTENSITY
    if rng is not None:
        air *= rng.uniform(0.99, 1.01)
    image = air * np.exp(-attenuation.astype(np.float64))
    if rng is not None:
        photons = rng.uniform(*PHOTONS_IN_AIR)
        image += rng.normal(size=image.shape) * np.sqrt(image * air / photons)
    return np.clip(image, 0.01, None).astype(np.float32), bitmap


@dataclass
class RenderedProjection:
    """One rendered projection: the raw image, its bit map, the view and the tools in it."""

    image: np.ndarray
    bitmap: np.ndarray
    geometry: ConeBeamGeometry
    tools: list[Cylinder]


def render_projection(
    scene: Scene, size: int, projection: int, rng: np.random.Generator, tools: int | None = None
) -> RenderedProjection:
    """PENGWIN projection number ``projection`` of ``scene``; the view is redrawn until it shows a fragment.

    Projections 250 and above get 1..10 tools (``tools`` fixes the count instead), the others none.
    """
    if not 0 <= projection < PROJECTIONS_PER_CT:
        raise ValueError(f"projection must be 0..{PROJECTIONS_PER_CT - 1}, got {projection}")
    for _ in range(_MAX_VIEW_ATTEMPTS):
        geometry = draw_geometry(rng, scene, size)
        count = int(rng.integers(1, MAX_TOOLS + 1)) if projection >= FIRST_TOOL_PROJECTION else 0
        placed = draw_tools(rng, scene, geometry.isocentre, count if tools is None else tools)
        image, bitmap = render_view(scene, geometry, placed, rng)
        if bitmap.any():
            return RenderedProjection(image, bitmap, geometry, placed)
    raise RuntimeError(f"no view out of {_MAX_VIEW_ATTEMPTS} showed a fragment; the label volume may be too small")


def _write_tiff(path: Path, array: np.ndarray) -> None:
    """Write a one-page uncompressed TIFF atomically."""
    with atomic_open(path) as handle:
        tifffile.imwrite(handle, array, photometric="minisblack", metadata=None)


def _dataset_arguments(patients: int, projections: int, size: int, seed: int, split: str, voxel_mm: float) -> dict:
    return {
        "generator_version": _GENERATOR_VERSION,
        "patients": patients,
        "projections": projections,
        "size": size,
        "seed": seed,
        "split": split,
        "voxel_mm": voxel_mm,
    }


def _expected_names(patients: int, projections: int) -> list[str]:
    return [f"{p:03d}_{k:04d}.tif" for p in range(1, patients + 1) for k in projection_indices(projections)]


def _read_marker(split_dir: Path) -> dict | None:
    try:
        return json.loads((split_dir / MARKER_NAME).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _check_size(size: int) -> None:
    """Views the bundle can read: at least ``MIN_IMAGE_SIZE`` pixels a side (the networks' smallest input)."""
    if not isinstance(size, int) or size < MIN_IMAGE_SIZE:
        raise ValueError(f"size must be a whole number of at least {MIN_IMAGE_SIZE} pixels, got {size!r}")


def _check_arguments(patients: int, projections: int, size: int, seed: int, split: str, voxel_mm: float) -> None:
    if not 1 <= patients <= 999:
        raise ValueError(f"patients must be 1..999 (three-digit ids), got {patients}")
    projection_indices(projections)
    _check_size(size)
    if not seed >= 0:  # numpy's generators take seeds of 0 or more
        raise ValueError(f"seed must be 0 or more, got {seed}")
    if not split or Path(split).name != split or split == "..":
        raise ValueError(f"split must be a plain folder name such as 'train', got {split!r}")
    if not 0.5 <= voxel_mm <= 8.0:
        raise ValueError(f"voxel_mm must be within 0.5..8 mm, got {voxel_mm}")


def generate_dataset(
    out_dir: str | os.PathLike,
    patients: int = 8,
    projections: int = 8,
    size: int = 448,
    seed: int = 0,
    split: str = "train",
    voxel_mm: float | None = None,
    progress: bool = True,
) -> Path:
    """Write ``patients`` phantoms x ``projections`` views in the PENGWIN layout under ``out_dir``.

    Args:
        out_dir: the PENGWIN root to write (``<out_dir>/<split>/input|output/images/x-ray``).
        patients: number of phantoms, ids 001 upwards.
        projections: views per phantom (indices spread over 0..499, see the module docstring).
        size: detector size in pixels (square images).
        seed: seed of everything random; the split name is mixed in.
        split: split folder name.
        voxel_mm: phantom voxel size; by default :func:`default_voxel_mm` of ``size``.
        progress: show a progress bar.

    Returns:
        The root written (``out_dir``).

    Raises:
        ValueError: for bad arguments, or when the split folder holds PENGWIN files the generator did not
            write (it never mixes its files into someone else's data).
    """
    voxel_mm = float(voxel_mm) if voxel_mm is not None else default_voxel_mm(size)
    _check_arguments(patients, projections, size, seed, split, voxel_mm)
    root = Path(out_dir)
    split_dir = root / split
    image_dir, label_dir = split_dir / IMAGE_SUBDIR, split_dir / LABEL_SUBDIR
    existing = [p for folder in (image_dir, label_dir) if folder.is_dir() for p in list_tiffs(folder)]
    if existing and _read_marker(split_dir) is None:
        raise ValueError(f"{split_dir}: holds .tif files not written by the synthetic generator; use an empty folder")
    arguments = _dataset_arguments(patients, projections, size, seed, split, voxel_mm)
    write_json_atomic(split_dir / MARKER_NAME, {**arguments, "complete": False})
    expected = set(_expected_names(patients, projections))
    for stale in existing:
        if PENGWIN_NAME.fullmatch(tiff_stem(stale)) and stale.name not in expected:
            stale.unlink()

    split_code = zlib.crc32(split.encode())
    indices = projection_indices(projections)
    with tqdm(total=patients * projections, desc="pengwin-synth", unit="image", disable=not progress) as bar:
        for patient in range(1, patients + 1):
            phantom = build_phantom(np.random.default_rng([seed, split_code, patient]), voxel_mm)
            scene = Scene.from_arrays(phantom.mu, phantom.labels, phantom.grid)
            for index in indices:
                rng = np.random.default_rng([seed, split_code, patient, index, 1])
                rendered = render_projection(scene, size, index, rng)
                name = f"{patient:03d}_{index:04d}.tif"
                _write_tiff(image_dir / name, rendered.image)
                _write_tiff(label_dir / name, rendered.bitmap)
                bar.update()
    write_json_atomic(split_dir / MARKER_NAME, {**arguments, "complete": True})
    return root


def ensure_synthetic_dataset(
    out_dir: str | os.PathLike,
    patients: int,
    projections: int,
    size: int,
    seed: int,
    split: str = "train",
    voxel_mm: float | None = None,
    progress: bool = True,
) -> Path:
    """Return ``out_dir``, generating the dataset first unless it is already complete for these arguments.

    Completeness is read from the marker file that :func:`generate_dataset` writes last, and every expected
    file must exist; anything else (missing marker, other arguments, a missing file) regenerates.
    """
    voxel_mm = float(voxel_mm) if voxel_mm is not None else default_voxel_mm(size)
    root = Path(out_dir)
    split_dir = root / split
    marker = _read_marker(split_dir)
    wanted = {**_dataset_arguments(patients, projections, size, seed, split, voxel_mm), "complete": True}
    if marker == wanted and all(
        (split_dir / sub / name).is_file()
        for name in _expected_names(patients, projections)
        for sub in (IMAGE_SUBDIR, LABEL_SUBDIR)
    ):
        return root
    return generate_dataset(root, patients, projections, size, seed, split, voxel_mm, progress)


# ---------------------------------------------------------------------------------------------------------
# a user's own CT


def hu_to_mu(hu: np.ndarray) -> np.ndarray:
    """Linear attenuation (1/mm) from Hounsfield units: ``mu = MU_WATER * max(0, 1 + HU / 1000)``.

    This is the definition of HU solved for ``mu`` at one effective energy (about 70 keV, the phantom's
    ``MU_WATER``): air (-1000) gives 0, water 0, cortical bone (+1500) 2.5 times water.
    """
    return (MU_WATER * np.clip(1.0 + hu.astype(np.float32) / 1000.0, 0.0, None)).astype(np.float32)


def _read_volume(path: Path) -> tuple[np.ndarray, VoxelGrid, tuple]:
    """Read a volume with ITK and reorder it to ``[Y, Z, X]`` in LPS world order with increasing coordinates."""
    import itk  # imported here: ITK is slow to import and only this path needs it

    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        image = itk.imread(str(path))
    except Exception as err:  # ITK raises RuntimeError subclasses with long messages
        raise ValueError(f"{path}: not a readable volume ({type(err).__name__}: {err})") from err
    array = np.asarray(itk.array_from_image(image))
    if array.ndim != 3:
        raise ValueError(f"{path}: expected a 3D scalar volume, got array shape {array.shape}")
    spacing = np.asarray(image.GetSpacing(), np.float64)  # index axes i, j, k
    origin = np.asarray(image.GetOrigin(), np.float64)
    direction = np.asarray(itk.array_from_matrix(image.GetDirection()), np.float64)  # columns: index axes
    world_axis = np.abs(direction).argmax(axis=0)  # world axis of each index axis
    signs = np.sign(direction[world_axis, np.arange(3)])
    if sorted(world_axis) != [0, 1, 2] or not np.allclose(np.abs(direction), np.eye(3)[world_axis].T, atol=1e-3):
        raise ValueError(
            f"{path}: oblique orientation {direction.tolist()} is not supported; resample it to axis-aligned"
        )
    numpy_axis = {0: 2, 1: 1, 2: 0}  # itk index axis i, j, k -> numpy axis of array [k, j, i]
    order, world_origin, world_spacing = [], np.zeros(3), np.zeros(3)
    for world in (1, 2, 0):  # [Y, Z, X]
        index_axis = int(np.flatnonzero(world_axis == world)[0])
        axis = numpy_axis[index_axis]
        order.append(axis)
        count = array.shape[axis]
        world_spacing[world] = spacing[index_axis]
        world_origin[world] = origin[world]
        if signs[index_axis] < 0:
            array = np.flip(array, axis=axis)
            world_origin[world] = origin[world] - spacing[index_axis] * (count - 1)
    array = np.ascontiguousarray(np.transpose(array, order))
    grid = VoxelGrid(tuple(array.shape), tuple(world_origin.tolist()), tuple(world_spacing.tolist()))
    return array, grid, (tuple(spacing), tuple(origin), direction.round(6).tolist())


def render_from_ct(
    ct_path: str | os.PathLike,
    fragment_label_path: str | os.PathLike,
    out_image_path: str | os.PathLike,
    out_label_path: str | os.PathLike,
    size: int = 448,
    seed: int = 0,
    tools: int = 0,
    noise: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Render one PENGWIN-style X-ray and bit map from a CT (HU) and its fragment label volume.

    Both volumes are read with ITK (NIfTI ``.nii``/``.nii.gz``, ``.mha``, ...) with their spacing and
    orientation, and must share the same grid. Label voxels hold the PENGWIN bit index
    ``10 * (category - 1) + fragment`` (0 = background). HU become attenuation with :func:`hu_to_mu`.
    The view is drawn like the generator's (seeded): SDD 1000..1200 mm, within 45 degrees of AP, centred
    within 50 mm of a fragment; ``tools`` metal tools (0..10) are placed in the bone near the centre.

    Returns:
        The image (float32) and bit map (uint32) written to ``out_image_path`` and ``out_label_path``.
    """
    if not 0 <= tools <= MAX_TOOLS:
        raise ValueError(f"tools must be 0..{MAX_TOOLS}, got {tools}")
    _check_size(size)
    ct_path, label_path = Path(ct_path), Path(fragment_label_path)
    hu, grid, ct_space = _read_volume(ct_path)
    labels, label_grid, label_space = _read_volume(label_path)
    if labels.shape != hu.shape or not np.allclose(
        np.asarray(grid.spacing + grid.origin), np.asarray(label_grid.spacing + label_grid.origin), atol=1e-3
    ):
        raise ValueError(
            f"{label_path}: grid {label_space} (shape {labels.shape}) does not match the CT {ct_path}: "
            f"{ct_space} (shape {hu.shape})"
        )
    if not np.issubdtype(labels.dtype, np.integer) and not np.array_equal(labels, np.round(labels)):
        raise ValueError(f"{label_path}: label values must be whole numbers (PENGWIN bit indices)")
    if labels.min() < 0 or labels.max() > NUM_CHANNELS:
        raise ValueError(f"{label_path}: label values must be 0..{NUM_CHANNELS}, found {labels.min()}..{labels.max()}")
    if not labels.any():
        raise ValueError(f"{label_path}: the label volume holds no fragment")
    scene = Scene.from_arrays(hu_to_mu(hu), labels.astype(np.uint8), grid)
    rng = np.random.default_rng([seed, 2])
    for _ in range(_MAX_VIEW_ATTEMPTS):
        geometry = draw_geometry(rng, scene, size)
        placed = draw_tools(rng, scene, geometry.isocentre, tools)
        image, bitmap = render_view(scene, geometry, placed, rng if noise else None)
        if bitmap.any():
            break
    else:
        raise RuntimeError(f"{label_path}: no view out of {_MAX_VIEW_ATTEMPTS} showed a fragment")
    _write_tiff(Path(out_image_path), image)
    _write_tiff(Path(out_label_path), bitmap)
    return image, bitmap


def main(argv: Sequence[str] | None = None) -> None:
    """Console command ``pengwin-synth``: write a synthetic PENGWIN dataset."""
    parser = argparse.ArgumentParser(
        prog="pengwin-synth",
        description="Write synthetic PENGWIN Task 2 X-rays and fragment bit maps (for demos and tests only).",
    )
    parser.add_argument("--out", required=True, type=Path, help="PENGWIN root to write")
    parser.add_argument("--patients", type=int, default=8, help="number of phantoms (default 8)")
    parser.add_argument("--projections", type=int, default=8, help="views per phantom (default 8)")
    parser.add_argument("--size", type=int, default=448, help="detector size in pixels (default 448)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--split", default="train", help="split folder name (default train)")
    parser.add_argument("--voxel-mm", type=float, default=None, help="phantom voxel size (default by --size)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    try:
        root = generate_dataset(
            args.out, args.patients, args.projections, args.size, args.seed, args.split, args.voxel_mm,
            progress=not args.no_progress,
        )
    except (OSError, ValueError) as err:
        raise SystemExit(f"pengwin-synth: {err}") from None
    print(f"wrote {args.patients * args.projections} image/label pairs under {root / args.split}")


if __name__ == "__main__":
    main()
