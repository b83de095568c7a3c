"""The README's overlay figure: one image's predicted fragments next to its ground truth, drawn as inference does.

Run inference on a labelled split first, then, from the repository root::

    python bench/overlay_figure.py --images ROOT/test/input/images/x-ray --labels ROOT/test/output/images/x-ray \
        --predictions PREDICTIONS_DIR --name 010_0125 --scale 3 --out bundle/docs/images/overlay_example.png

Both panels are :func:`scripts.writers.overlay_image` of the same display (the organisers' neg-log window and
CLAHE), the left one from the predicted bit map, the right one from the label.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bundle"))  # the bundle's scripts, as its configs see them

from custom_transforms.bits import decode_fragment_bits  # noqa: E402
from custom_transforms.io import read_fragment_label, read_xray_image  # noqa: E402
from scripts.writers import display_image, overlay_font_size, overlay_image  # noqa: E402


def side_by_side(panels: list[tuple[str, np.ndarray]]) -> Image.Image:
    """Pictures left to right, each under its caption."""
    height = max(picture.shape[0] for _, picture in panels)
    font = ImageFont.load_default(size=overlay_font_size(height))
    caption = font.size + 8
    figure = Image.new("RGB", (sum(picture.shape[1] for _, picture in panels), height + caption), "white")
    draw, x = ImageDraw.Draw(figure), 0
    for title, picture in panels:
        draw.text((x + 4, 4), title, fill="black", font=font)
        figure.paste(Image.fromarray(picture), (x, caption))
        x += picture.shape[1]
    return figure


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, required=True, help="folder of the raw X-rays")
    parser.add_argument("--labels", type=Path, required=True, help="folder of the ground-truth bit maps")
    parser.add_argument("--predictions", type=Path, required=True, help="inference output folder (bit maps)")
    parser.add_argument("--name", required=True, help="file stem of the image to show, e.g. 003_0000")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--scale", type=int, default=1, help="enlarge small images this many times (nearest pixel)")
    args = parser.parse_args(argv)
    enlarge = np.ones((args.scale, args.scale), dtype=np.uint8)
    display = np.kron(display_image(read_xray_image(args.images / f"{args.name}.tif")), enlarge)
    panels = []
    for title, bitmap_path in (("prediction", args.predictions), ("ground truth", args.labels)):
        bitmap = read_fragment_label(bitmap_path / f"{args.name}.tif")
        channels = decode_fragment_bits(bitmap, source=str(bitmap_path / f"{args.name}.tif")).numpy()
        masks = np.kron(channels, enlarge[None]).astype(bool)
        shown = f", shown {args.scale}x: areas in shown pixels" if args.scale > 1 else ""
        panels.append((f"{title} ({args.name}{shown})", overlay_image(display, masks)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    side_by_side(panels).save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
