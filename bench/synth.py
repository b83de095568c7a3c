"""Benchmark of the synthetic PENGWIN generator on 2 CPU threads.

Prints, in one run:

1. the slab-wise projector (``project_volume``: 2D ``grid_sample`` per coronal slab) against a naive
   baseline that samples the 3D volume trilinearly at points along every ray (3D ``grid_sample``), same
   phantom, same views, at 224 px so that the baseline stays quick; with their agreement;
2. end-to-end ``generate_dataset`` throughput (phantom building, views, tools, noise, both TIFFs) at 448 px
   (the claim: at most 1 s per image and 200 images within 5 minutes) and at 224 px, and the training
   default ``patients=12, projections=8, size=224``.

``--example-image PATH`` also writes the README picture (the real ``101_0000.tif`` beside a default 448 px
synthetic view and its fragment overlay).

Run: ``.venv/bin/python bench/synth.py`` (about 3 to 4 minutes; ``--quick`` for a smaller run).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from custom_transforms import read_fragment_label, read_xray_image
from custom_transforms.constants import VALID_BITS_MASK, channel_category_fragment, fragment_name
from pengwin_xray.datalist import IMAGE_SUBDIR, LABEL_SUBDIR
from pengwin_xray.synthetic import generate_dataset
from pengwin_xray.synthetic.dataset import Scene, draw_geometry
from pengwin_xray.synthetic.phantom import build_phantom
from pengwin_xray.synthetic.projector import ConeBeamGeometry, project_volume

#: the bundle's ``scripts`` are importable from the bundle folder only (as ``python -m monai.bundle`` runs them)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bundle"))

from scripts.writers import FRAGMENT_PALETTE, display_image  # noqa: E402


def naive_projection(scene: Scene, geometry: ConeBeamGeometry) -> tuple[torch.Tensor, np.ndarray]:
    """Baseline: trilinear (and nearest, for labels) 3D sampling at one-voxel steps along every ray."""
    grid = scene.grid
    step = float(min(grid.spacing))
    lower = np.array(grid.origin)
    upper = lower + np.array(grid.spacing) * (np.array(grid.shape)[[2, 0, 1]] - 1)
    corners = np.array([[c[0], c[1], c[2]] for c in np.array(np.meshgrid(*zip(lower, upper))).reshape(3, -1).T])
    distances = np.linalg.norm(corners - geometry.source, axis=1)
    t_values = torch.arange(distances.min(), distances.max(), step, dtype=torch.float32)
    rays = geometry.ray_directions().float()
    source = torch.as_tensor(geometry.source, dtype=torch.float32)
    scale = torch.as_tensor(2.0 / (upper - lower), dtype=torch.float32)
    low = torch.as_tensor(lower, dtype=torch.float32)
    mu = scene.mu[None, None]
    labels = scene.labels[None, None]
    total = torch.zeros(geometry.size, geometry.size)
    bits = torch.zeros(geometry.size, geometry.size, dtype=torch.int32)
    for chunk in torch.split(t_values, 16):
        points = source + chunk[:, None, None, None] * rays  # [K, H, W, 3] world (x, y, z)
        normalised = (points - low) * scale - 1.0
        sample_grid = normalised[..., [0, 2, 1]][None]  # grid_sample wants (W=x, H=z, D=y)
        total += F.grid_sample(mu, sample_grid, align_corners=True)[0, 0].sum(0)
        nearest = F.grid_sample(labels, sample_grid, mode="nearest", align_corners=True)[0, 0]
        for slab in torch.bitwise_left_shift(1, nearest.to(torch.int32)):
            bits |= slab
    return total * step, (bits.numpy().astype(np.int64) & VALID_BITS_MASK).astype(np.uint32)


def compare_projectors(views: int, size: int) -> None:
    phantom = build_phantom(np.random.default_rng(0), 2.0)
    scene = Scene.from_arrays(phantom.mu, phantom.labels, phantom.grid)
    geometries = [draw_geometry(np.random.default_rng(v), scene, size) for v in range(views)]
    timings, results = {}, {}
    for name, project in (("slab-wise 2D", lambda g: project_volume(scene.mu, scene.labels, scene.grid, g)),
                          ("naive 3D", lambda g: naive_projection(scene, g))):
        project(geometries[0])  # warm-up
        start = time.perf_counter()
        results[name] = [project(g) for g in geometries]
        timings[name] = (time.perf_counter() - start) / views
    fast, slow = results["slab-wise 2D"], results["naive 3D"]
    relative = np.mean([float((a[0] - b[0]).abs().mean() / b[0].abs().mean()) for a, b in zip(fast, slow)])
    agree = np.mean([float((a[1] == b[1]).mean()) for a, b in zip(fast, slow)])
    print(f"projector, {size} px, phantom {phantom.mu.shape} at 2 mm, {views} views (line integral + bit map):")
    for name, seconds in timings.items():
        print(f"  {name:13s} {seconds:.3f} s/view")
    print(f"  speed-up {timings['naive 3D'] / timings['slab-wise 2D']:.1f}x; mean |difference| of line integrals "
          f"{100 * relative:.2f}%; bit maps equal on {100 * agree:.1f}% of pixels")


def time_generation(patients: int, projections: int, size: int) -> float:
    with tempfile.TemporaryDirectory() as folder:
        start, cpu_start = time.perf_counter(), time.process_time()
        generate_dataset(folder, patients=patients, projections=projections, size=size, seed=11, progress=False)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    images = patients * projections
    print(f"generate_dataset(patients={patients}, projections={projections}, size={size}): {seconds:.1f} s, "
          f"{images / seconds:.2f} images/s, {seconds / images:.3f} s/image "
          f"(CPU {cpu / images:.3f} s/image over both threads)")
    return seconds


def write_example_image(path: Path, real_image: Path) -> None:
    """The README picture: a real PENGWIN X-ray beside a default-generator 448 px view and its fragments, both
    shown as the organisers displayed them."""
    from PIL import Image, ImageDraw

    with tempfile.TemporaryDirectory() as folder:
        root = generate_dataset(folder, patients=1, projections=8, size=448, seed=0, progress=False)
        labels = {path.name: read_fragment_label(path) for path in sorted((root / "train" / LABEL_SUBDIR).iterdir())}
        # the view with the most fragments (the first such on ties): it shows the chips along the fracture lines
        name = max(labels, key=lambda n: bin(int(np.bitwise_or.reduce(labels[n], axis=None))).count("1"))
        raw, bitmap = read_xray_image(root / "train" / IMAGE_SUBDIR / name), labels[name]
    synthetic = np.repeat(display_image(raw)[..., None], 3, axis=2)
    overlay = synthetic.copy()
    bits = [b for b in range(1, 31) if ((bitmap >> b) & 1).any()]
    colours = {bit: FRAGMENT_PALETTE[bit - 1] / 255.0 for bit in bits}  # the inference overlay's colours
    for bit in bits:
        mask = ((bitmap >> bit) & 1).astype(bool)
        overlay[mask] = 0.55 * overlay[mask] + 0.45 * colours[bit]
    panels = [np.repeat(display_image(read_xray_image(real_image))[..., None], 3, axis=2), synthetic, overlay]
    canvas = Image.fromarray((np.concatenate(panels, axis=1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for column, caption in enumerate([f"real PENGWIN {real_image.name}", f"synthetic {name} (default generator)",
                                      f"its {len(bits)} fragments"]):
        draw.text((448 * column + 6, 6), caption, fill=(255, 255, 0))
    for row, bit in enumerate(bits):
        top = 24 + 14 * row
        draw.rectangle([2 * 448 + 6, top, 2 * 448 + 16, top + 10], fill=tuple(int(255 * c) for c in colours[bit]))
        draw.text((2 * 448 + 22, top), fragment_name(*channel_category_fragment(bit - 1)), fill=(255, 255, 255))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, optimize=True)
    print(f"wrote {path} ({path.stat().st_size // 1024} KB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller workloads")
    parser.add_argument("--example-image", type=Path, default=None, help="also write the README picture here")
    parser.add_argument("--real-image", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" /
                        "pengwin_real" / "101_0000.tif", help="the real X-ray of that picture")
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(f"torch threads: {torch.get_num_threads()}; load average before the run: {os.getloadavg()[0]:.1f} "
          "(timings above ~2 are shared with other processes)")
    compare_projectors(views=3 if args.quick else 6, size=224)
    if args.quick:
        time_generation(2, 8, 448)
        time_generation(2, 8, 224)
    else:
        seconds = time_generation(25, 8, 448)
        verdict = "meets" if seconds / 200 <= 1.0 and seconds <= 300 else "MISSES"
        print(f"  200 images of 448 px: {seconds:.0f} s ({verdict} the target of <= 1 s/image and <= 300 s)")
        time_generation(4, 8, 224)
        time_generation(12, 8, 224)
    if args.example_image is not None:
        write_example_image(args.example_image, args.real_image)


if __name__ == "__main__":
    main()
