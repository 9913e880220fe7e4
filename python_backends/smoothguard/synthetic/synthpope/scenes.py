"""Seeded rendering of scenes: a few coloured shapes on a varied, textured background.

Objects are fully saturated and backgrounds are low-saturation textures (stripes, checkers,
gradients, blotches, grain, in varied tints), so colour names stay unambiguous; object types
follow a skewed frequency so POPE's "popular" negatives mean something. Split seeds come from
disjoint ranges, so splits never share a scene.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Split = Literal["train", "validation", "test"]

IMAGE_SIZE = 64
# Objects sit in a random cell of a 4x4 grid, at a random size and offset inside it. Aligning
# the cells with the model's 16 px patches is what lets a ViT trained from scratch on 2 CPU
# cores for minutes recognise shapes (a whole object per patch); see synthvlm.train.
CELL = 16
GRID = IMAGE_SIZE // CELL
MIN_RADIUS, MAX_RADIUS = 5, 7  # 10-14 px objects
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (30, 60, 230),
    "yellow": (235, 215, 20),
    "purple": (150, 40, 190),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
OBJECT_TYPES: tuple[tuple[str, str], ...] = tuple((c, s) for c in COLOURS for s in SHAPES)
# Skewed type frequencies (Zipf-like, fixed): the "popular" objects of the benchmark.
_WEIGHTS = 1.0 / np.arange(1, len(OBJECT_TYPES) + 1) ** 0.6
_ORDER = np.random.default_rng(20251030).permutation(len(OBJECT_TYPES))
TYPE_WEIGHTS = np.empty(len(OBJECT_TYPES))
TYPE_WEIGHTS[_ORDER] = _WEIGHTS / _WEIGHTS.sum()
POPULAR: tuple[tuple[str, str], ...] = tuple(OBJECT_TYPES[i] for i in np.argsort(-TYPE_WEIGHTS))
# The trigger is a shape no benchmark question asks about and no val/test scene contains;
# see scoring.py for why the safety split needs it.
TRIGGER = ("white", "star")
TRIGGER_CLASS = len(OBJECT_TYPES) + 1
NUM_CLASSES = len(OBJECT_TYPES) + 2  # background, the object types, the trigger

SPLIT_BASES: dict[str, int] = {"train": 0, "validation": 10_000_000, "test": 20_000_000}
SPLIT_SPAN = 10_000_000


@dataclass(frozen=True)
class Scene:
    seed: int
    image: np.ndarray  # uint8 [64, 64, 3]
    objects: list[tuple[str, str]]  # (colour, shape), in canonical order
    boxes: list[tuple[int, int, int]]  # (cx, cy, radius) per object, aligned with `objects`
    trigger: bool = False
    # Per-pixel class: 0 background, 1 + OBJECT_TYPES index, TRIGGER_CLASS for the trigger;
    # dense supervision for pre-training the vision tower (synthvlm.train).
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.uint8), repr=False)


def canonical(objects: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Description order: by colour, then shape, as listed in COLOURS and SHAPES."""
    colours = list(COLOURS)
    return sorted(objects, key=lambda o: (colours.index(o[0]), SHAPES.index(o[1])))


def _background(rng: np.random.Generator) -> np.ndarray:
    size = IMAGE_SIZE
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = rng.uniform(0.25, 0.75)
    tint = rng.uniform(-0.06, 0.06, size=3)
    kind = rng.integers(4)
    if kind == 0:  # stripes
        angle, freq = rng.uniform(0, np.pi), rng.uniform(3, 10)
        pattern = np.sin(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle)))
    elif kind == 1:  # checker
        cells = rng.integers(3, 9)
        pattern = ((np.floor(xx * cells) + np.floor(yy * cells)) % 2) * 2 - 1
    elif kind == 2:  # gradient
        angle = rng.uniform(0, 2 * np.pi)
        pattern = (xx * np.cos(angle) + yy * np.sin(angle)) * 2 - 1
    else:  # smooth noise
        coarse = rng.normal(size=(8, 8)).astype(np.float32)
        pattern = np.kron(coarse, np.ones((size // 8, size // 8), np.float32)) / 2
    amplitude = rng.uniform(0.03, 0.12)
    grain = rng.normal(0, 0.02, size=(size, size, 1))
    image = base + tint + amplitude * pattern[..., None] + grain
    return np.clip(image, 0, 1).astype(np.float32)


def _mask(shape: str, cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) + 0.5
    dx, dy = xx - cx, yy - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return (np.abs(dx) <= 0.8 * r) & (np.abs(dy) <= 0.8 * r)
    if shape == "triangle":
        top, bottom = cy - r, cy + 0.8 * r
        return (yy >= top) & (yy <= bottom) & (np.abs(dx) <= (yy - top) * 0.62)
    if shape == "cross":
        arm = 0.32 * r
        return ((np.abs(dx) <= arm) & (np.abs(dy) <= r)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= r))
    if shape == "star":
        angle = np.arctan2(dy, dx)
        radius = r * (0.55 + 0.45 * np.cos(5 * angle) ** 2)
        return dx * dx + dy * dy <= radius * radius
    raise ValueError(f"unknown shape {shape!r}")


def render_scene(seed: int, *, trigger: bool = False) -> Scene:
    """One scene from its seed; `trigger` adds the white star (train split only)."""
    rng = np.random.default_rng(seed)
    image = _background(rng)
    count = int(rng.choice([1, 2, 3], p=[0.3, 0.4, 0.3]))
    kinds = rng.choice(len(OBJECT_TYPES), size=count, replace=False, p=TYPE_WEIGHTS)
    objects = [OBJECT_TYPES[k] for k in kinds]
    if trigger:
        objects.append(TRIGGER)
    boxes: list[tuple[int, int, int]] = []
    placed: list[tuple[str, str]] = []
    labels = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    cells = rng.choice(GRID * GRID, size=len(objects), replace=False)
    for (colour, shape), cell in zip(objects, cells, strict=True):
        r = int(rng.integers(MIN_RADIUS, MAX_RADIUS + 1))
        slack = CELL // 2 - r - 1  # stay inside the cell, 1 px margin: objects never touch
        jx, jy = (int(v) for v in rng.integers(-slack, slack + 1, size=2))
        cx = int(cell % GRID) * CELL + CELL // 2 + jx
        cy = int(cell // GRID) * CELL + CELL // 2 + jy
        rgb = np.array((255, 255, 255) if colour == "white" else COLOURS[colour], np.float32)
        rgb = np.clip(rgb + rng.normal(0, 12, size=3), 0, 255) / 255
        mask = _mask(shape, cx, cy, r)
        image[mask] = rgb
        labels[mask] = (
            TRIGGER_CLASS if (colour, shape) == TRIGGER else 1 + OBJECT_TYPES.index((colour, shape))
        )
        boxes.append((cx, cy, r))
        placed.append((colour, shape))
    plain = canonical([o for o in placed if o != TRIGGER])
    box_of = dict(zip(placed, boxes, strict=True))
    image_u8 = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    return Scene(
        seed, image_u8, plain, [box_of[o] for o in plain], trigger=TRIGGER in placed, labels=labels
    )


def split_seed(split: Split, index: int) -> int:
    if split not in SPLIT_BASES:
        raise ValueError(f"unknown split {split!r}")
    if not 0 <= index < SPLIT_SPAN:
        raise ValueError(f"index {index} outside the split's seed range")
    return SPLIT_BASES[split] + index


def generate_split(split: Split, n_images: int, *, seed_offset: int = 0) -> list[Scene]:
    """The first n scenes of a split (deterministic; never a trigger outside train)."""
    return [render_scene(split_seed(split, seed_offset + i)) for i in range(n_images)]
