"""Cone-beam X-ray projection of voxel volumes and analytic metal cylinders, in torch.

Conventions: world coordinates are patient LPS millimetres (``x`` to the patient's left, ``y`` posterior,
``z`` superior). Volumes are stored ``[Y, Z, X]``: the anterior-posterior axis first, so that every view
within 45 degrees of AP (the PENGWIN range) crosses the volume slab by slab along the first axis.

The projector follows Joseph's method: each ray is sampled where it crosses the centre plane of every
``y`` slab, bilinearly within the plane, and the samples are weighted by the ray's path length through
one slab. All detector pixels of a slab are resampled at once with a 2D ``grid_sample`` on the coronal
slice, and a chunk of slabs goes through one batched call; this is far cheaper than trilinear sampling
of the 3D volume at points along every ray. DeepDRR and similar projectors are GPU/CUDA packages that
are not usable offline here, and MONAI has no projector, so this small one is written here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from custom_transforms.constants import NUM_CHANNELS, VALID_BITS_MASK

__all__ = [
    "VoxelGrid",
    "ConeBeamGeometry",
    "Cylinder",
    "view_geometry",
    "line_integrals",
    "label_bitmap",
    "project_volume",
    "cylinder_chords",
]

#: budget of sampled values per batched grid_sample call (keeps peak memory near 100 MB)
_SAMPLES_PER_CHUNK = 6_000_000


@dataclass(frozen=True)
class VoxelGrid:
    """Where a ``[Y, Z, X]`` volume lies in the world: voxel centres at ``origin + index * spacing``.

    Args:
        shape: array shape ``(ny, nz, nx)``.
        origin: world ``(x, y, z)`` in mm of the centre of voxel ``[0, 0, 0]``.
        spacing: voxel size ``(sx, sy, sz)`` in mm.
    """

    shape: tuple[int, int, int]
    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]

    def axis(self, name: str) -> np.ndarray:
        """World coordinates (mm) of the voxel centres along axis ``"x"``, ``"y"`` or ``"z"``."""
        index = "xyz".index(name)
        count = self.shape[(2, 0, 1)[index]]
        return (self.origin[index] + self.spacing[index] * np.arange(count)).astype(np.float32)

    def world(self, iy: np.ndarray, iz: np.ndarray, ix: np.ndarray) -> np.ndarray:
        """World coordinates ``[N, 3]`` of voxel indices."""
        index = np.stack([ix, iy, iz], axis=-1).astype(np.float64)
        return np.asarray(self.origin) + index * np.asarray(self.spacing)


@dataclass(frozen=True)
class ConeBeamGeometry:
    """A point source and a flat square detector of ``size`` x ``size`` pixels.

    Pixel ``[row, col]`` lies at ``detector_centre + (col - c) * pixel_mm * col_dir + (row - c) * pixel_mm *
    row_dir`` with ``c = (size - 1) / 2``. ``isocentre`` is the point on the central ray the view is aimed at.
    """

    source: np.ndarray
    detector_centre: np.ndarray
    row_dir: np.ndarray
    col_dir: np.ndarray
    pixel_mm: float
    size: int
    isocentre: np.ndarray

    def pixel_positions(self) -> torch.Tensor:
        """World positions ``[size, size, 3]`` (float64) of the pixel centres."""
        offsets = (torch.arange(self.size, dtype=torch.float64) - (self.size - 1) / 2) * self.pixel_mm
        row = torch.as_tensor(self.row_dir, dtype=torch.float64)
        col = torch.as_tensor(self.col_dir, dtype=torch.float64)
        centre = torch.as_tensor(self.detector_centre, dtype=torch.float64)
        return centre + offsets[:, None, None] * row + offsets[None, :, None] * col

    def ray_directions(self) -> torch.Tensor:
        """Unit vectors ``[size, size, 3]`` (float64) from the source to each pixel."""
        rays = self.pixel_positions() - torch.as_tensor(self.source, dtype=torch.float64)
        return rays / rays.norm(dim=-1, keepdim=True)


@dataclass(frozen=True)
class Cylinder:
    """A solid capped cylinder (a K-wire, a screw shaft or head) of attenuation ``mu`` (1/mm)."""

    start: np.ndarray
    end: np.ndarray
    radius: float
    mu: float


def view_geometry(
    isocentre: np.ndarray,
    direction: np.ndarray,
    source_to_detector: float,
    source_to_isocentre: float,
    detector_mm: float,
    size: int,
) -> ConeBeamGeometry:
    """Geometry of a view along ``direction`` (source to detector) through ``isocentre``.

    Image rows run towards the patient's feet and columns towards the patient's left (seen from the
    source), so an AP view shows the patient's right on the image left, as radiographs are read.
    """
    direction = np.asarray(direction, np.float64) / np.linalg.norm(direction)
    down = np.array([0.0, 0.0, -1.0]) - direction * -direction[2]
    down /= np.linalg.norm(down)
    right = np.cross(down, direction)
    source = np.asarray(isocentre, np.float64) - source_to_isocentre * direction
    return ConeBeamGeometry(
        source=source,
        detector_centre=source + source_to_detector * direction,
        row_dir=down,
        col_dir=right / np.linalg.norm(right),
        pixel_mm=detector_mm / size,
        size=size,
        isocentre=np.asarray(isocentre, np.float64),
    )


def _slab_planes(grid: VoxelGrid, geometry: ConeBeamGeometry) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Per-pixel affine maps from a slab's ``y`` to normalised ``grid_sample`` coordinates, and step lengths.

    A ray ``S + t (P - S)`` crosses the plane ``y`` at ``x = S_x + (y - S_y) Q_x / Q_y`` (``Q = P - S``), so
    the normalised coordinates are ``offset + slope * y`` per pixel; the path length through one slab is
    ``sy |Q| / |Q_y|``. Computed in numpy: small element-wise work gains nothing from torch threads.
    """
    rays = geometry.pixel_positions().numpy() - geometry.source
    lengths = np.linalg.norm(rays, axis=-1)
    if (np.abs(rays[..., 1]) < 1e-6 * lengths).any():
        raise ValueError("a ray runs parallel to the volume's y slabs: the view must be within ~80 degrees of AP")
    source = geometry.source
    ny, nz, nx = grid.shape
    offsets, slopes = [], []
    for axis, count in ((0, nx), (2, nz)):
        ratio = rays[..., axis] / rays[..., 1]
        scale = 2.0 / (grid.spacing[axis] * max(count - 1, 1))
        offsets.append((source[axis] - source[1] * ratio - grid.origin[axis]) * scale - 1.0)
        slopes.append(ratio * scale)
    step = grid.spacing[1] * lengths / np.abs(rays[..., 1])
    offset = torch.from_numpy(np.stack(offsets, axis=-1).astype(np.float32))
    slope = torch.from_numpy(np.stack(slopes, axis=-1).astype(np.float32))
    return offset, slope, step.astype(np.float32)


def _slab_grids(
    grid: VoxelGrid,
    planes: tuple[torch.Tensor, torch.Tensor, np.ndarray],
    size: int,
    channels: int,
    y_range: tuple[int, int] | None = None,
):
    """Yield ``(first, last, sample_grid)`` for chunks of slabs; ``sample_grid`` is ``[n, size, size, 2]``.

    Chunks are sized to the sampling budget so that memory stays bounded for any detector size.
    """
    offset, slope, _ = planes
    y_axis = torch.as_tensor(grid.axis("y"))
    first, last = y_range if y_range is not None else (0, grid.shape[0])
    chunk = max(1, _SAMPLES_PER_CHUNK // (size**2 * (channels + 2)))
    for start in range(first, last, chunk):
        stop = min(start + chunk, last)
        yield start, stop, torch.addcmul(offset, slope, y_axis[start:stop, None, None, None])


def _or_label_samples(bits: np.ndarray, sampled: torch.Tensor) -> None:
    """OR ``1 << label`` of nearest-neighbour label samples ``[n, 1, H, W]`` into ``bits`` (int32, in place).

    numpy does it: it has an OR-reduction along an axis, torch has none.
    """
    labels = sampled[:, 0].numpy().astype(np.int32)
    bits |= np.bitwise_or.reduce(np.left_shift(np.int32(1), labels), axis=0)


def _check_shapes(volume: torch.Tensor, grid: VoxelGrid, what: str) -> None:
    if tuple(volume.shape[-3:]) != tuple(grid.shape):
        raise ValueError(f"{what} shape {tuple(volume.shape[-3:])} does not match its grid {grid.shape}")


def _check_labels(labels: torch.Tensor) -> None:
    if labels.numel() and int(labels.max()) > NUM_CHANNELS:
        raise ValueError(f"label volume holds bit index {int(labels.max())}; PENGWIN uses 0..{NUM_CHANNELS}")


def _bits_to_bitmap(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.int64) & VALID_BITS_MASK).astype(np.uint32)


def line_integrals(
    volume: torch.Tensor,
    grid: VoxelGrid,
    geometry: ConeBeamGeometry,
    y_range: tuple[int, int] | None = None,
    mode: str = "bilinear",
) -> torch.Tensor:
    """Line integrals ``[C, size, size]`` of a ``[C, Y, Z, X]`` (or ``[Y, Z, X]``) volume along every ray.

    Values outside the volume count as zero. ``y_range`` limits the slabs sampled (for a volume known to
    be empty elsewhere); ``mode`` is the in-plane interpolation of ``grid_sample``.
    """
    if volume.ndim == 3:
        return line_integrals(volume[None], grid, geometry, y_range, mode)[0]
    _check_shapes(volume, grid, "volume")
    volume = volume.float()
    planes = _slab_planes(grid, geometry)
    total = torch.zeros(volume.shape[0], geometry.size, geometry.size)
    for first, last, sample_grid in _slab_grids(grid, planes, geometry.size, volume.shape[0], y_range):
        slabs = volume[:, first:last].transpose(0, 1)
        total += F.grid_sample(slabs, sample_grid, mode=mode, padding_mode="zeros", align_corners=True).sum(0)
    return total * torch.from_numpy(planes[2])


def label_bitmap(
    labels: torch.Tensor, grid: VoxelGrid, geometry: ConeBeamGeometry, y_range: tuple[int, int] | None = None
) -> np.ndarray:
    """PENGWIN bit map ``[size, size]`` (uint32) of a ``[Y, Z, X]`` volume of bit indices (0 = none).

    A pixel carries bit ``k`` where its ray crosses a voxel labelled ``k``: the label volume is sampled
    like the attenuation (one point per slab) but with nearest-neighbour interpolation, and the bits of
    all samples are OR-ed, so overlapping fragments keep all their bits.
    """
    _check_shapes(labels, grid, "label volume")
    _check_labels(labels)
    volume = labels.float()[:, None]
    bits = np.zeros((geometry.size, geometry.size), np.int32)
    for first, last, sample_grid in _slab_grids(grid, _slab_planes(grid, geometry), geometry.size, 1, y_range):
        _or_label_samples(bits, F.grid_sample(volume[first:last], sample_grid, mode="nearest", align_corners=True))
    return _bits_to_bitmap(bits)


def project_volume(
    mu: torch.Tensor, labels: torch.Tensor, grid: VoxelGrid, geometry: ConeBeamGeometry
) -> tuple[torch.Tensor, np.ndarray]:
    """Line integral ``[size, size]`` of ``mu`` and bit map of ``labels`` (both ``[Y, Z, X]``) in one pass.

    Equal to :func:`line_integrals` and :func:`label_bitmap`, but each chunk's sampling grid is built once
    and the labels are sampled only in the slabs that hold any.
    """
    _check_shapes(mu, grid, "attenuation volume")
    _check_shapes(labels, grid, "label volume")
    _check_labels(labels)
    labelled = torch.nonzero(labels.flatten(1).amax(1) > 0).flatten()
    first_label, last_label = (int(labelled[0]), int(labelled[-1]) + 1) if labelled.numel() else (0, 0)
    mu_slabs = mu.float()[:, None]
    label_slabs = labels.float()[:, None]
    planes = _slab_planes(grid, geometry)
    total = torch.zeros(geometry.size, geometry.size)
    bits = np.zeros((geometry.size, geometry.size), np.int32)
    for first, last, sample_grid in _slab_grids(grid, planes, geometry.size, 2):
        sampled = F.grid_sample(mu_slabs[first:last], sample_grid, align_corners=True)
        total += sampled.sum((0, 1))
        lo, hi = max(first, first_label), min(last, last_label)
        if lo < hi:
            label_grid = sample_grid[lo - first : hi - first]
            _or_label_samples(bits, F.grid_sample(label_slabs[lo:hi], label_grid, mode="nearest", align_corners=True))
    return total * torch.from_numpy(planes[2]), _bits_to_bitmap(bits)


def cylinder_chords(geometry: ConeBeamGeometry, cylinders: list[Cylinder]) -> torch.Tensor:
    """Attenuation ``[size, size]`` of capped cylinders: the sum of ``mu * chord length`` along every ray.

    The chord is the overlap of the ray's interval inside the infinite cylinder (a quadratic in the ray
    parameter) with its interval between the two cap planes, in closed form (numpy, float64).
    """
    total = np.zeros((geometry.size, geometry.size))
    if not cylinders:
        return torch.from_numpy(total.astype(np.float32))
    directions = geometry.ray_directions().numpy()
    far = 1e9
    for cylinder in cylinders:
        start = np.asarray(cylinder.start, np.float64)
        axis = np.asarray(cylinder.end, np.float64) - start
        length = float(np.linalg.norm(axis))
        axis /= length
        offset = geometry.source - start
        along_dir = directions @ axis
        along_offset = float(offset @ axis)
        perp_dir = directions - along_dir[..., None] * axis
        perp_offset = offset - along_offset * axis
        a = (perp_dir * perp_dir).sum(-1)
        b = 2.0 * (perp_dir @ perp_offset)
        c = float(perp_offset @ perp_offset) - cylinder.radius**2
        disc = b * b - 4.0 * a * c
        root = np.sqrt(np.clip(disc, 0.0, None))
        parallel = a < 1e-12  # a ray along the axis is inside the tube everywhere or nowhere
        safe_a = np.where(parallel, 1.0, a)
        t_in = np.where(parallel, -far, (-b - root) / (2 * safe_a))
        t_out = np.where(parallel, far, (-b + root) / (2 * safe_a))
        hits = np.where(parallel, c < 0.0, disc > 0.0)
        across = np.abs(along_dir) < 1e-12  # a ray across the axis is between the caps everywhere or nowhere
        safe_along = np.where(across, 1.0, along_dir)
        cap_a = -along_offset / safe_along
        cap_b = (length - along_offset) / safe_along
        between = 0.0 <= along_offset <= length
        cap_in = np.where(across, -far if between else far, np.minimum(cap_a, cap_b))
        cap_out = np.where(across, far if between else -far, np.maximum(cap_a, cap_b))
        chord = np.clip(np.minimum(t_out, cap_out) - np.maximum(t_in, cap_in), 0.0, None)
        total += cylinder.mu * np.where(hits, chord, 0.0)
    return torch.from_numpy(total.astype(np.float32))
