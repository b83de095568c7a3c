"""A seeded procedural pelvis phantom with random fractures, on a coarse voxel grid.

The anatomy is built from analytic signed distance functions (ellipsoids, capsules, a bent plate, blended
with a smooth minimum), so that a dense cortical shell (the outer ``cortex_mm`` of every bone) and a lighter
cancellous interior come for free, with a one-voxel partial-volume edge that keeps projections smooth at
coarse voxels. Labelled bones: sacrum (SA), left hip (LI, patient's left = +x) and right hip (RI), each
with iliac wing, acetabulum, pubic and ischial rami. Unlabelled: L4/L5 vertebrae and proximal femora.
Soft tissue: a body outline with a fat layer and thighs, a bladder and some bowel gas. Sizes vary per
patient. Each labelled bone is then cut into a few large pieces by random planes or curved cuts, small chips
break off along the fracture lines, and every piece moves a little away from its gap; a bone has 1..10
fragments, fragment 1 the largest.

Attenuation values are linear attenuation coefficients in 1/mm at an effective energy near 90 keV
(water 0.0168/mm), which gives line integrals through the pelvis like those of the real files.
Phantom data is for demos and tests only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from custom_transforms.constants import MAX_FRAGMENTS, fragment_bit
from .projector import VoxelGrid

__all__ = ["MU_WATER", "MU_FAT", "MU_CANCELLOUS", "MU_CORTICAL", "Phantom", "build_phantom", "fracture_bone"]

MU_WATER = 0.0168
MU_FAT = 0.0150
MU_MUSCLE = 0.0175
MU_CANCELLOUS = 0.0225
MU_CORTICAL = 0.036
MU_MARROW = 0.0160

# Fracture statistics, calibrated with ``pengwin-fingerprint`` against the real PENGWIN views
# (bundle/docs/synthetic_data.md).
#: large pieces per bone are drawn from this distribution (index 0 = one piece: the bone stays whole). Anatomy:
#: pelvic ring fractures break a bone into a few large parts, rarely more than four; every PENGWIN CT shows a
#: fractured pelvis, so four bones in five are broken.
_FRAGMENT_COUNT_PROBABILITIES = np.array([0.2, 0.3, 0.25, 0.13, 0.06, 0.03, 0.015, 0.01, 0.0, 0.005])
#: small chips broken off along the fracture lines of a broken bone (inclusive range, capped so that a bone has
#: at most 10 fragments). Measured: 63% of the fragments of the real PENGWIN training set cover less than 1% of
#: the image, so most fragments of a broken bone are chips beside a few large pieces.
CHIPS_PER_FRACTURED_BONE = (4, 9)
#: a chip is the part of a ball of this radius (mm) around a point of a fracture surface that lies in the piece:
#: about 10 to 400 mm^3, which projects to under 1% of a close-up view
CHIP_RADIUS_MM = (2.5, 6.0)
#: how far (mm) a piece moves away from its fracture line, plus up to 1 mm in any direction (anatomy: displaced
#: pelvic fractures move by millimetres to about a centimetre)
DISPLACEMENT_MM = (1.0, 8.0)

Sdf = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclass
class Phantom:
    """A voxel phantom: attenuation ``mu`` (1/mm, float32) and PENGWIN bit indices ``labels`` (uint8).

    Both arrays are ``[Y, Z, X]`` (see :mod:`pengwin_xray.synthetic.projector`); ``fragments`` maps each bit index
    present to its voxel count.
    """

    mu: np.ndarray
    labels: np.ndarray
    grid: VoxelGrid
    fragments: dict[int, int]


# ---------------------------------------------------------------------------------------------------------
# signed distance primitives on broadcastable coordinate arrays (x: [1,1,X], y: [Y,1,1], z: [1,Z,1])


def _ellipsoid(centre: Sequence[float], axes: Sequence[float]) -> Sdf:
    """Approximate signed distance to an axis-aligned ellipsoid (exact on the axes, good near the surface)."""
    cx, cy, cz = centre
    ax, ay, az = axes

    def sdf(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        k0 = np.sqrt(((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 + ((z - cz) / az) ** 2)
        k1 = np.sqrt(((x - cx) / ax**2) ** 2 + ((y - cy) / ay**2) ** 2 + ((z - cz) / az**2) ** 2)
        return k0 * (k0 - 1.0) / np.maximum(k1, 1e-6)

    return sdf


def _capsule(start: Sequence[float], end: Sequence[float], radius: float) -> Sdf:
    """Signed distance to a segment thickened by ``radius``."""
    a = np.asarray(start, np.float32)
    ba = np.asarray(end, np.float32) - a
    length2 = float(ba @ ba)

    def sdf(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        px, py, pz = x - a[0], y - a[1], z - a[2]
        h = np.clip((px * ba[0] + py * ba[1] + pz * ba[2]) / length2, 0.0, 1.0)
        return np.sqrt((px - h * ba[0]) ** 2 + (py - h * ba[1]) ** 2 + (pz - h * ba[2]) ** 2) - radius

    return sdf


def _bent_plate(
    centre: Sequence[float], u_dir: Sequence[float], half_u: float, half_v: float, half_thickness: float, bend: float
) -> Sdf:
    """A thin elliptic plate spanned by ``u_dir`` and +z, bent by ``bend * u**2`` along its normal."""
    c = np.asarray(centre, np.float32)
    u_axis = np.asarray(u_dir, np.float32) / np.linalg.norm(u_dir)
    normal = np.cross(u_axis, np.array([0.0, 0.0, 1.0], np.float32))
    outline = _ellipse_2d(half_u, half_v)

    def sdf(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        px, py, pz = x - c[0], y - c[1], z - c[2]
        u = px * u_axis[0] + py * u_axis[1]
        w = px * normal[0] + py * normal[1]
        return np.maximum(np.abs(w - bend * u * u) - half_thickness, outline(u, pz))

    return sdf


def _ellipse_2d(half_a: float, half_b: float) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """Approximate signed distance to an ellipse in a plane."""

    def sdf(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        k0 = np.sqrt((a / half_a) ** 2 + (b / half_b) ** 2)
        k1 = np.sqrt((a / half_a**2) ** 2 + (b / half_b**2) ** 2)
        return k0 * (k0 - 1.0) / np.maximum(k1, 1e-6)

    return sdf


def _smooth_union(sdfs: Sequence[Sdf], blend: float) -> Sdf:
    """Union of shapes with fillets of about ``blend`` mm where they meet (polynomial smooth minimum)."""

    def sdf(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        result = sdfs[0](x, y, z)
        for other in sdfs[1:]:
            d = other(x, y, z)
            h = np.maximum(blend - np.abs(result - d), 0.0) / blend
            result = np.minimum(result, d) - h * h * blend * 0.25
        return result

    return sdf


def _subtract(shape: Sdf, hole: Sdf) -> Sdf:
    def sdf(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        return np.maximum(shape(x, y, z), -hole(x, y, z))

    return sdf


# ---------------------------------------------------------------------------------------------------------
# anatomy (template millimetres for an average adult; the caller scales and jitters)


class _Anatomy:
    """Random per-patient anatomy: every landmark is a template value jittered and scaled."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.scale = float(rng.uniform(0.88, 1.12))

    def p(self, *xyz: float, jitter: float = 3.0) -> tuple[float, float, float]:
        """A landmark: template point scaled to the patient, moved by up to ``jitter`` mm."""
        moved = np.asarray(xyz) * self.scale + self.rng.uniform(-jitter, jitter, 3)
        return tuple(float(v) for v in moved)

    def s(self, *sizes: float, spread: float = 0.06) -> tuple[float, ...] | float:
        """Sizes scaled to the patient, each varied by about ``spread``."""
        out = tuple(float(v * self.scale * self.rng.uniform(1 - spread, 1 + spread)) for v in sizes)
        return out if len(out) > 1 else out[0]

    def sacrum(self) -> Sdf:
        levels = [  # (y, z) of the segment centres along the curved sacrum, half width, half depth, half height
            ((22, 36), 25, 18, 13),
            ((37, 14), 21, 15, 12),
            ((48, -6), 17, 12, 11),
            ((54, -24), 13, 10, 10),
            ((54, -40), 9, 8, 9),
            ((48, -54), 6, 6, 8),
        ]
        parts: list[Sdf] = []
        for (y, z), half_w, half_d, half_h in levels:
            parts.append(_ellipsoid(self.p(0, y, z, jitter=1.5), self.s(half_w, half_d, half_h)))
        for side in (-1, 1):
            # ala (S1 lateral mass): the sacral base is about 115 mm wide, and the ala lies in front of the ilium
            # at the sacroiliac joint, where the two overlap in an AP view
            parts.append(_ellipsoid(self.p(side * 34, 32, 30), self.s(24, 20, 21)))
            parts.append(_ellipsoid(self.p(side * 28, 43, 10), self.s(18, 14, 16)))
            parts.append(_ellipsoid(self.p(side * 17, 51, -7), self.s(10, 10, 11)))
        return _smooth_union(parts, 10.0)

    def hip(self, side: int) -> tuple[Sdf, tuple[float, float, float], float]:
        """SDF of one hip bone (``side`` +1 = patient's left), the acetabulum centre and the head radius."""
        acetabulum = self.p(side * 94, -6, -12)
        ax, ay, az = acetabulum
        head_radius = self.s(23.0, spread=0.05)
        block = _ellipsoid((ax - side * 11 * self.scale, ay + 2, az), self.s(31, 34, 36))
        socket = _ellipsoid((ax + side * 3, ay - 2, az - 2), (head_radius + 2.5,) * 3)
        si_joint = self.p(side * 52, 46, 24)
        wing_dir = (side * 0.55, -0.83, 0.0)
        pubis = self.p(side * 17, -72, -46, jitter=2.0)
        tuberosity = self.p(side * 62, 6, -80)
        parts = [
            _subtract(block, socket),
            _capsule((ax - side * 14, ay + 8, az + 18), si_joint, self.s(17.0)),  # body of the ilium
            _bent_plate(
                self.p(side * 84, 14, 62, jitter=4.0),
                wing_dir,
                self.s(72.0),
                self.s(52.0),
                self.s(4.5),
                bend=float(side * self.rng.uniform(0.003, 0.006)),
            ),
            _capsule((ax - side * 16, ay - 18, az - 6), (pubis[0] + side * 4, pubis[1] + 2, pubis[2] + 8), 10.5),
            _ellipsoid(pubis, self.s(12, 11, 22)),
            _capsule((pubis[0], pubis[1] + 4, pubis[2] - 12), tuberosity, self.s(8.0)),  # inferior pubic ramus
            _capsule((ax - side * 4, ay + 12, az - 20), tuberosity, self.s(15.0)),  # ischium
            _ellipsoid(tuberosity, self.s(15, 18, 19)),
            _capsule(self.p(side * 70, 24, -30), self.p(side * 48, 40, -36), 5.0),  # ischial spine
        ]
        return _smooth_union(parts, 9.0), acetabulum, head_radius

    def femur(self, acetabulum: tuple[float, float, float], head_radius: float, side: int) -> Sdf:
        ax, ay, az = acetabulum
        neck_end = (ax + side * 36 * self.scale, ay + 6, az - 30 * self.scale)
        return _smooth_union(
            [
                _ellipsoid(acetabulum, (head_radius,) * 3),
                _capsule(acetabulum, neck_end, self.s(15.0)),
                _ellipsoid((ax + side * 47 * self.scale, ay + 10, az - 26 * self.scale), self.s(15, 17, 24)),
                _capsule(neck_end, (ax + side * 62 * self.scale, ay + 14, az - 260), self.s(15.0)),
                _ellipsoid((ax + side * 26 * self.scale, ay + 16, az - 58 * self.scale), self.s(9, 9, 12)),
            ],
            8.0,
        )

    def vertebra(self, z: float) -> Sdf:
        zc = z * self.scale
        body_y = 14.0 * self.scale
        parts = [_ellipsoid((0.0, body_y, zc), self.s(27, 20, 13))]
        for side in (-1, 1):
            parts.append(_capsule((side * 12, body_y + 14, zc), (side * 13, body_y + 32, zc - 3), 5.5))  # pedicle
            parts.append(_capsule((side * 13, body_y + 32, zc - 3), (0, body_y + 44, zc - 8), 5.0))  # lamina
            parts.append(_capsule((side * 14, body_y + 28, zc), (side * 52 * self.scale, body_y + 26, zc), 5.0))
        parts.append(_capsule((0, body_y + 44, zc - 8), (0, body_y + 68, zc - 14), 5.5))  # spinous process
        return _smooth_union(parts, 6.0)


# ---------------------------------------------------------------------------------------------------------
# painting shapes into the volume


class _Canvas:
    """The phantom volume being painted, with helpers that work inside a shape's bounding box only."""

    def __init__(self, grid: VoxelGrid):
        self.grid = grid
        self.mu = np.zeros(grid.shape, np.float32)
        self.labels = np.zeros(grid.shape, np.uint8)
        self.axes = {name: grid.axis(name) for name in "xyz"}

    def box(self, lower: Sequence[float], upper: Sequence[float]) -> tuple[tuple[slice, ...], tuple[np.ndarray, ...]]:
        """Slices ``[Y, Z, X]`` of the world box and broadcastable coordinates inside it."""
        slices, coords = {}, {}
        for index, name in enumerate("xyz"):
            axis = self.axes[name]
            first = int(np.searchsorted(axis, lower[index]))
            last = int(np.searchsorted(axis, upper[index], side="right"))
            slices[name] = slice(first, max(first, last))
            coords[name] = axis[slices[name]]
        x = coords["x"][None, None, :]
        y = coords["y"][:, None, None]
        z = coords["z"][None, :, None]
        return (slices["y"], slices["z"], slices["x"]), (x, y, z)

    def paint_bone(
        self,
        sdf: Sdf,
        lower: Sequence[float],
        upper: Sequence[float],
        cortex_mm: float,
        interior_mu: float = MU_CANCELLOUS,
        label: int = 0,
        keep_out: np.ndarray | None = None,
    ) -> None:
        """Paint a bone: cortical shell, ``interior_mu`` inside, partial-volume edge one voxel wide."""
        region, (x, y, z) = self.box(lower, upper)
        distance = sdf(x, y, z)
        voxel = float(min(self.grid.spacing))
        inside = _coverage(distance, voxel)
        cortex = np.clip(0.5 + (distance + cortex_mm) / voxel, 0.0, 1.0)
        material = interior_mu + (MU_CORTICAL - interior_mu) * cortex
        if keep_out is not None:
            inside[keep_out[region]] = 0.0
        block = self.mu[region]
        self.mu[region] = block + (material - block) * inside
        if label:
            labels = self.labels[region]
            labels[inside >= 0.5] = label


def build_phantom(seed: int | Sequence[int] | np.random.Generator, voxel_mm: float = 2.0) -> Phantom:
    """Build one random fractured pelvis phantom.

    Args:
        seed: seed (or generator) of everything random in the phantom.
        voxel_mm: isotropic voxel size; 1.5 to 2 mm looks plausible, 3 to 4 mm is enough for tests.
    """
    if not 0.5 <= voxel_mm <= 8.0:
        raise ValueError(f"voxel_mm must be within 0.5..8 mm, got {voxel_mm}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    anatomy = _Anatomy(rng)
    scale = anatomy.scale
    half_width = scale * rng.uniform(168.0, 205.0)
    half_depth = scale * rng.uniform(105.0, 140.0)
    body_y = 12.0 * scale
    margin = 12.0
    lower = np.array([-half_width - margin, body_y - half_depth - margin, -205.0 * scale])
    upper = np.array([half_width + margin, body_y + half_depth + margin, 160.0 * scale])
    shape = tuple(int(np.ceil((upper - lower)[i] / voxel_mm)) + 1 for i in (1, 2, 0))
    grid = VoxelGrid(shape=shape, origin=tuple(float(v) for v in lower), spacing=(voxel_mm,) * 3)
    canvas = _Canvas(grid)

    _paint_soft_tissue(canvas, rng, half_width, half_depth, body_y, scale)
    for z in (70.0, 104.0):
        canvas.paint_bone(anatomy.vertebra(z), (-75, -30, z * scale - 30), (75, 110, z * scale + 30), 1.8)
    sacrum = anatomy.sacrum()
    hips = [anatomy.hip(side) for side in (1, -1)]
    for (_, acetabulum, head_radius), side in zip(hips, (1, -1)):
        ax, ay, az = acetabulum
        femur = anatomy.femur(acetabulum, head_radius, side)
        x_range = sorted((ax - side * 30, ax + side * 110))
        canvas.paint_bone(femur, (x_range[0], ay - 40, -260), (x_range[1], ay + 50, az + 30), 4.0, MU_MARROW)
    sacrum_box = ((-80.0 * scale, -10.0, -80.0 * scale), (80.0 * scale, 90.0 * scale, 62.0 * scale))
    canvas.paint_bone(sacrum, *sacrum_box, 1.6, label=fragment_bit(1, 1))
    sacrum_zone = canvas.labels == fragment_bit(1, 1)
    joint_gap = ndimage.binary_dilation(sacrum_zone, iterations=max(1, int(round(2.5 / voxel_mm))))
    for (hip, _, _), side, category in zip(hips, (1, -1), (2, 3)):
        x_range = sorted((side * 8.0, side * 185.0 * scale))
        canvas.paint_bone(
            hip,
            (x_range[0], -110.0 * scale, -110.0 * scale),
            (x_range[1], 95.0 * scale, 125.0 * scale),
            1.8,
            label=fragment_bit(category, 1),
            keep_out=joint_gap,
        )

    for category in (1, 2, 3):
        fracture_bone(canvas.mu, canvas.labels, category, rng, voxel_mm)
    bits, counts = np.unique(canvas.labels[canvas.labels > 0], return_counts=True)
    fragments = {int(b): int(c) for b, c in zip(bits, counts)}
    return Phantom(mu=canvas.mu, labels=canvas.labels, grid=grid, fragments=fragments)


def _paint_soft_tissue(
    canvas: _Canvas, rng: np.random.Generator, half_width: float, half_depth: float, body_y: float, scale: float
) -> None:
    """Body outline (fat layer over muscle), thighs below the crotch, bowel gas and a bladder."""
    (_, _, _), (x, y, z) = canvas.box((-1e4,) * 3, (1e4,) * 3)
    hip_bulge = 1.0 + 0.06 * np.exp(-(((z - (-30.0 * scale)) / (60.0 * scale)) ** 2))
    torso = _ellipse_2d(half_width * hip_bulge, half_depth)(x, y - body_y)
    thigh_radius = 0.52 * half_width
    thighs = np.minimum(
        _ellipse_2d(thigh_radius, 0.9 * half_depth)(x - 0.48 * half_width, y - body_y),
        _ellipse_2d(thigh_radius, 0.9 * half_depth)(x + 0.48 * half_width, y - body_y),
    )
    crotch_z = -135.0 * scale
    blend = np.clip((z - crotch_z) / 25.0 + 0.5, 0.0, 1.0)
    body = torso * blend + thighs * (1.0 - blend)
    fat_mm = rng.uniform(8.0, 35.0)
    voxel = float(min(canvas.grid.spacing))
    canvas.mu[:] = MU_FAT * _coverage(body, voxel) + (MU_MUSCLE - MU_FAT) * _coverage(body + fat_mm, voxel)

    bladder_axes = np.array([42.0, 32.0, 32.0]) * scale * rng.uniform(0.6, 1.2)
    bladder_centre = np.array([0.0, -42.0 * scale, -30.0 * scale + bladder_axes[2] * 0.3])
    _fill(canvas, _ellipsoid(bladder_centre, bladder_axes), bladder_centre, bladder_axes, MU_WATER * 1.02)
    gas_pockets = [
        (np.array([rng.uniform(-110, 110), rng.uniform(-80, 15), rng.uniform(-5, 150)]) * scale, rng.uniform(8, 28, 3))
        for _ in range(int(rng.integers(3, 10)))
    ]
    if rng.random() < 0.5:  # gas in the rectum, in front of the sacrum
        gas_pockets.append((np.array([rng.uniform(-15, 15), 22.0, -30.0]) * scale, np.array([12.0, 10.0, 20.0])))
    for centre, radii in gas_pockets:
        region, _ = canvas.box(centre - radii - 2 * voxel, centre + radii + 2 * voxel)
        inside_body = body[region] < -fat_mm
        _fill(canvas, _ellipsoid(centre, radii), centre, radii, 0.0, where=inside_body)


def _coverage(distance: np.ndarray, voxel: float) -> np.ndarray:
    """Fraction of a voxel inside a shape, from the signed distance at its centre (a one-voxel ramp)."""
    return np.clip(0.5 - distance / voxel, 0.0, 1.0).astype(np.float32)


def _fill(
    canvas: _Canvas, sdf: Sdf, centre: np.ndarray, radii: np.ndarray, value: float, where: np.ndarray | None = None
) -> None:
    """Blend ``value`` into the volume inside an ellipsoid-sized shape, with a partial-volume edge."""
    voxel = float(min(canvas.grid.spacing))
    region, coords = canvas.box(centre - radii - 2 * voxel, centre + radii + 2 * voxel)
    fraction = _coverage(sdf(*coords), voxel)
    if where is not None:
        fraction = fraction * where
    block = canvas.mu[region]
    canvas.mu[region] = block + (value - block) * fraction


# ---------------------------------------------------------------------------------------------------------
# fractures


def fracture_bone(
    mu: np.ndarray,
    labels: np.ndarray,
    category: int,
    rng: np.random.Generator,
    voxel_mm: float,
    max_fragments: int = MAX_FRAGMENTS,
    count: int | None = None,
) -> int:
    """Cut the bone of ``category`` (labelled as its fragment 1) into fragments, in place.

    Random planar or curved cuts split the largest fragment (or chip a piece off it) with a gap of one to
    three millimetres filled with soft tissue; each new piece moves a few millimetres away from the cut;
    pieces that fall apart become fragments of their own, crumbs become soft tissue, and the fragments are
    renumbered by size (fragment 1 the largest). Returns the number of fragments.
    """
    if not 1 <= max_fragments <= MAX_FRAGMENTS:
        raise ValueError(f"max_fragments must be 1..{MAX_FRAGMENTS}, got {max_fragments}")
    bits = [fragment_bit(category, f) for f in range(1, MAX_FRAGMENTS + 1)]
    bone = np.isin(labels, bits)
    if not bone.any():
        return 0
    if count is None:
        weights = _FRAGMENT_COUNT_PROBABILITIES[:max_fragments] / _FRAGMENT_COUNT_PROBABILITIES[:max_fragments].sum()
        count = int(rng.choice(np.arange(1, max_fragments + 1), p=weights))
    pad = int(np.ceil(8.0 / voxel_mm))
    region = tuple(
        slice(max(0, int(idx.min()) - pad), min(n, int(idx.max()) + pad + 1))
        for idx, n in zip(np.nonzero(bone), bone.shape)
    )
    mu_box, label_box = mu[region], labels[region]
    pieces = np.isin(label_box, bits).astype(np.int16)
    coords = np.stack(np.meshgrid(*[np.arange(s.stop - s.start) for s in region], indexing="ij"), -1)
    coords = coords.astype(np.float32) * voxel_mm  # [Y, Z, X] in mm, only relative positions matter
    bone_voxels = int(pieces.sum())
    min_piece = max(int(0.02 * bone_voxels), int(300.0 / voxel_mm**3))
    normals: dict[int, np.ndarray] = {}
    for new_piece in range(2, count + 1):
        for _ in range(20):
            target = _largest_piece(pieces)
            candidates = np.argwhere(pieces == target)
            centre = coords[tuple(candidates[rng.integers(len(candidates))])]
            normal = rng.normal(size=3).astype(np.float32)
            normal /= np.linalg.norm(normal)
            offset = coords - centre
            along = offset @ normal
            across2 = (offset * offset).sum(-1) - along * along
            cut = along + rng.uniform(-1.0, 1.0) / 150.0 * across2
            gap = rng.uniform(1.0, 3.0) / 2 + voxel_mm * 0.35
            local = np.ones_like(cut, bool) if rng.random() < 0.5 else across2 + along**2 < rng.uniform(25, 70) ** 2
            in_target = (pieces == target) & local
            piece = in_target & (cut > gap)
            rest = int((pieces == target).sum()) - int(piece.sum())
            if piece.sum() >= min_piece and rest >= min_piece:
                pieces[in_target & (np.abs(cut) <= gap)] = -1
                pieces[piece] = new_piece
                normals[new_piece] = normal
                break
    pieces = _split_components(pieces, min_piece // 2, max_fragments)
    if int(pieces.max()) > 1:
        chips = int(rng.integers(CHIPS_PER_FRACTURED_BONE[0], CHIPS_PER_FRACTURED_BONE[1] + 1))
        for _ in range(min(chips, max_fragments - int(pieces.max()))):
            direction = _chip_off(pieces, coords, rng, voxel_mm)
            if direction is not None:
                normals[int(pieces.max())] = direction
    mu_box[pieces < 0] = MU_MUSCLE
    pieces[pieces < 0] = 0
    label_box[np.isin(label_box, bits)] = 0
    largest = _largest_piece(pieces)
    for piece in range(1, int(pieces.max()) + 1):
        if piece != largest:
            direction = normals.get(piece, rng.normal(size=3))
            shift_mm = rng.uniform(*DISPLACEMENT_MM) * direction / np.linalg.norm(direction) + rng.uniform(-1.0, 1.0, 3)
            _move(pieces, piece, np.round(shift_mm / voxel_mm).astype(int), mu_box, label_box)
    sizes = np.bincount(pieces.ravel(), minlength=MAX_FRAGMENTS + 1)
    order = [int(p) for p in np.argsort(-sizes[1:], kind="stable") + 1 if sizes[p] > 0]
    for rank, piece in enumerate(order, start=1):
        label_box[pieces == piece] = fragment_bit(category, rank)
    return len(order)


def _chip_off(pieces: np.ndarray, coords: np.ndarray, rng: np.random.Generator, voxel_mm: float) -> np.ndarray | None:
    """Break a small chip off a piece where it meets a fracture gap, in place, as a new piece.

    The chip is the part of the piece inside a ball of :data:`CHIP_RADIUS_MM` around a voxel of the fracture
    surface; the piece's voxels touching the chip become gap, so the chip stands apart. Returns the direction
    (from the piece's centre to the chip) it should move in, or ``None`` when no chip of two voxels or more
    could be cut.
    """
    surface = (pieces > 0) & ndimage.binary_dilation(pieces < 0)
    candidates = np.argwhere(surface)
    if not len(candidates):
        return None
    seed_voxel = candidates[rng.integers(len(candidates))]
    parent = int(pieces[tuple(seed_voxel)])
    radius = rng.uniform(*CHIP_RADIUS_MM)
    reach = int(np.ceil(radius / voxel_mm)) + 1
    box = tuple(slice(max(0, int(i) - reach), min(n, int(i) + reach + 1)) for i, n in zip(seed_voxel, pieces.shape))
    local = pieces[box]
    offset = coords[box] - coords[tuple(seed_voxel)]
    chip = ((offset * offset).sum(-1) <= radius**2) & (local == parent)
    rest = (local == parent) & ~chip
    gap = ndimage.binary_dilation(chip) & rest
    if chip.sum() < 2 or int((pieces == parent).sum()) - int(chip.sum()) - int(gap.sum()) < chip.sum():
        return None
    local[gap] = -1
    local[chip] = int(pieces.max()) + 1
    return coords[box][chip].mean(0) - coords[pieces == parent].mean(0)


def _largest_piece(pieces: np.ndarray) -> int:
    counts = np.bincount(np.clip(pieces, 0, None).ravel())
    counts[0] = 0
    return int(counts.argmax())


def _split_components(pieces: np.ndarray, min_voxels: int, max_fragments: int) -> np.ndarray:
    """Number every connected part of every piece separately, largest first.

    Parts under ``min_voxels`` and parts beyond ``max_fragments`` join the piece they lie next to (across
    the fracture gap) or, where none is near, become gap; so the fragment count stays within the limit.
    """
    parts: list[np.ndarray] = []
    for piece in range(1, int(pieces.max()) + 1):
        components, count = ndimage.label(pieces == piece)
        parts.extend(components == index for index in range(1, count + 1))
    parts.sort(key=lambda mask: -int(mask.sum()))
    large = [mask.sum() >= min_voxels for mask in parts]
    large[0] = True
    kept = [mask for mask, is_large in zip(parts, large) if is_large][:max_fragments]
    result = np.where(pieces < 0, -1, 0).astype(np.int16)
    for number, mask in enumerate(kept, start=1):
        result[mask] = number
    for mask in parts:
        if result[mask].max() > 0:
            continue
        box = tuple(
            slice(max(0, int(i.min()) - 2), int(i.max()) + 3) for i in np.nonzero(mask)
        )  # dilate inside the part's own box only
        near = ndimage.binary_dilation(mask[box], iterations=2) & ~mask[box]
        neighbours = result[box][near]
        neighbours = neighbours[neighbours > 0]
        result[mask] = np.bincount(neighbours).argmax() if neighbours.size else -1
    return result


def _move(pieces: np.ndarray, piece: int, shift: np.ndarray, mu: np.ndarray, labels: np.ndarray) -> None:
    """Translate one piece by whole voxels; the place it leaves becomes soft tissue.

    The piece only lands on voxels that belong to no bone label and to no other piece, so the other
    bones keep their labels.
    """
    mask = pieces == piece
    source = np.argwhere(mask)
    target = source + shift
    inside = np.all((target >= 0) & (target < np.array(mask.shape)), axis=1)
    source, target = source[inside], target[inside]
    values = mu[tuple(source.T)]
    mu[mask] = MU_MUSCLE
    pieces[mask] = 0
    target_index = tuple(target.T)
    free = (pieces[target_index] == 0) & (labels[target_index] == 0)
    mu[tuple(target[free].T)] = values[free]
    pieces[tuple(target[free].T)] = piece
