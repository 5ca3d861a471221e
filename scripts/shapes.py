"""A generated CIFAR-shaped dataset where features matter: ten kinds of shapes.

Run: python scripts/shapes.py OUT.npz [--train 50000] [--test 10000] [--seed 0]

Each 32 x 32 RGB image holds one shape (the class: disc, ring, square, frame,
triangle, plus, cross, horizontal bar, vertical bar, diamond) of random size,
position, small rotation and colour, on a random two-colour gradient
background with a distractor blob and pixel noise. Where the shape sits
changes from image to image, so a pixel template can only blur; edges and
local patterns (HOG, k-means patches) carry the class. It is a test bed made
for this tool, not a stand-in for CIFAR-10's accuracy figures.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = (
    "disc", "ring", "square", "frame", "triangle",
    "plus", "cross", "hbar", "vbar", "diamond",
)  # fmt: skip
SIZE = 32


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple]:
    if kind in ("square", "frame"):
        pts = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
    elif kind == "triangle":
        pts = [(0, -1.1), (1, 0.8), (-1, 0.8)]
    elif kind == "diamond":
        pts = [(0, -1.2), (0.8, 0), (0, 1.2), (-0.8, 0)]
    else:
        raise ValueError(kind)
    c, s = np.cos(angle), np.sin(angle)
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in pts]


def draw_one(kind: str, rng: np.random.Generator) -> np.ndarray:
    """One 32 x 32 x 3 uint8 image of a shape of ``kind``."""
    scale = 4  # drawn at 4x and downsampled: smooth edges
    big = SIZE * scale
    a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0, 1, big)[:, None, None]
    vertical = rng.random() < 0.5
    ramp = t if vertical else t.transpose(1, 0, 2)
    background = (a + (b - a) * ramp).astype(np.uint8)
    background = np.broadcast_to(background, (big, big, 3)).copy()
    im = Image.fromarray(background)
    draw = ImageDraw.Draw(im)
    # a small distractor blob in some other colour
    dx, dy = rng.uniform(0, big, 2).tolist()
    dr = rng.uniform(2, 5) * scale
    draw.ellipse([dx - dr, dy - dr, dx + dr, dy + dr], fill=tuple(rng.integers(0, 256, 3).tolist()))
    colour = tuple(int(v) for v in rng.integers(0, 256, 3))
    r = rng.uniform(5, 11) * scale
    cx, cy = rng.uniform(r * 0.8, big - r * 0.8, 2)
    angle = rng.uniform(-0.3, 0.3)
    width = int(max(scale * 2, r * 0.35))
    box = [cx - r, cy - r, cx + r, cy + r]
    if kind == "disc":
        draw.ellipse(box, fill=colour)
    elif kind == "ring":
        draw.ellipse(box, outline=colour, width=width)
    elif kind in ("square", "triangle", "diamond"):
        draw.polygon(_polygon(kind, cx, cy, r * 0.8, angle), fill=colour)
    elif kind == "frame":
        pts = _polygon("frame", cx, cy, r * 0.8, angle)
        draw.line([*pts, pts[0]], fill=colour, width=width, joint="curve")
    elif kind in ("plus", "cross", "hbar", "vbar"):
        base = {"plus": (0.0, np.pi / 2), "cross": (np.pi / 4, -np.pi / 4)}.get(
            kind, (0.0,) if kind == "hbar" else (np.pi / 2,)
        )
        for theta in base:
            c, s = np.cos(theta + angle), np.sin(theta + angle)
            ends = [(cx - r * c, cy - r * s), (cx + r * c, cy + r * s)]
            draw.line(ends, fill=colour, width=width)
    small = np.asarray(im.resize((SIZE, SIZE), Image.Resampling.BOX), dtype=np.float32)
    small += rng.normal(0, 12, small.shape).astype(np.float32)
    return np.clip(np.rint(small), 0, 255).astype(np.uint8)


def make(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, len(CLASSES), n).astype(np.int64)
    images = np.empty((n, SIZE, SIZE, 3), np.uint8)
    for i, label in enumerate(labels):
        images[i] = draw_one(CLASSES[label], rng)
    return images, labels


def write(path: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    X_train, y_train = make(n_train, rng)
    X_test, y_test = make(n_test, rng)
    np.savez(path, X_train=X_train, y_train=y_train, X_test=X_test, y_test=y_test,
             class_names=np.array(CLASSES))  # fmt: skip
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=50_000)
    parser.add_argument("--test", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(write(args.out, args.train, args.test, args.seed))


if __name__ == "__main__":
    main()
