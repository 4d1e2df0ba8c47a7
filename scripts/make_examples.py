"""Write the synthetic examples in examples/: a numeric-features table and a folder of tiny images.

Both have two levels (coarse -> fine) and are seeded, so running this again writes the same data:
    python scripts/make_examples.py
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# coarse -> fine classes of each example
SENSOR_CLASSES = {"normal": ["idle", "running"], "fault": ["overheat", "vibration"]}
SHAPE_CLASSES = {"round": ["circle", "ring"], "angular": ["square", "triangle"]}


def write_features(path: Path, per_class: int = 15, dims: int = 6, seed: int = 0) -> None:
    """A sensor-reading table: one Gaussian cluster per fine class, fine classes of a coarse class close by."""
    rng = np.random.default_rng(seed)
    rows = []
    for coarse, fines in SENSOR_CLASSES.items():
        centre = rng.normal(0.0, 3.0, dims)
        for fine in fines:
            fine_centre = centre + rng.normal(0.0, 1.5, dims)
            for point in fine_centre + rng.normal(0.0, 0.5, (per_class, dims)):
                rows.append([f"{v:.3f}" for v in point] + [coarse, fine])
    order = rng.permutation(len(rows))
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([f"x{i}" for i in range(1, dims + 1)] + ["state", "condition"])
        writer.writerows(rows[i] for i in order)


def _draw(shape: str, rng: np.random.Generator, size: int) -> Image.Image:
    image = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(image)
    r = rng.uniform(0.25, 0.4) * size
    cx, cy = rng.uniform(r, size - r, 2)
    box = [cx - r, cy - r, cx + r, cy + r]
    if shape == "circle":
        draw.ellipse(box, fill=255)
    elif shape == "ring":
        draw.ellipse(box, outline=255, width=2)
    elif shape == "square":
        draw.rectangle(box, fill=255)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=255)
    return image


def write_images(root: Path, per_class: int = 8, size: int = 16, seed: int = 0) -> None:
    """root/<coarse>/<fine>/NN.png: white shapes of random size and position on black."""
    rng = np.random.default_rng(seed)
    for coarse, fines in SHAPE_CLASSES.items():
        for fine in fines:
            folder = root / coarse / fine
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                _draw(fine, rng, size).save(folder / f"{i:02d}.png", optimize=True)


if __name__ == "__main__":
    write_features(EXAMPLES / "tiny_features.csv")
    write_images(EXAMPLES / "tiny_images")
