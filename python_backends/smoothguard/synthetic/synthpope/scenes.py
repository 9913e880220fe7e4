"""Seeded rendering of scenes: a few coloured shapes on a varied, textured background.

A scene has the variety a real photograph of a few objects has, so a model must see objects,
not a layout: objects stand anywhere (or in a grid, or clustered and overlapping), at a range
of sizes, filled or outlined, rotated, partly occluded; backgrounds come from several families;
the scene is drawn on a canvas of another resolution and aspect ratio (sometimes supersampled,
sometimes aliased) and resized to the model's 64x64, then maybe blurred or JPEG-compressed.
Objects are fully saturated and backgrounds low-saturation, so colour names stay unambiguous;
object types follow a skewed frequency so POPE's "popular" negatives mean something.

Whole layout families are kept out of training (`HELD_OUT`): one background family, one
placement rule, and scenes handed over at their native resolution (resized by the model's
processor, not by the renderer); each has its own split, so generalisation is measured. Split
seeds come from disjoint ranges, so splits never share a scene.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageFilter
from scipy.ndimage import distance_transform_edt

from smoothguard.synthetic.synthpope import backgrounds
from smoothguard.synthetic.synthpope.backgrounds import HELD_OUT_BACKGROUND, TRAIN_BACKGROUNDS

Split = Literal[
    "train",
    "validation",
    "test",
    "heldout_background",
    "heldout_placement",
    "heldout_resolution",
]

IMAGE_SIZE = 64
# Sizes in pixels of the 64 px image (for a non-square canvas, of its shorter side).
MIN_RADIUS, MAX_RADIUS = 5.0, 11.0  # 10-22 px objects
GRID_CELLS = 4  # the "grid" placement rule: one object per cell of a 4x4 grid
GRID_MAX_RADIUS = 7.0
OUTLINE_SHARE = 0.3  # objects drawn as an outline, 1.5-2.5 px thick
MAX_ROTATION = 2 * np.pi  # rotation drawn uniformly in [0, MAX_ROTATION)
MIN_VISIBLE = 0.6  # an occluded object keeps at least this share of its footprint in view
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

# Placement rules: "anywhere" (uniform), "grid" (the old benchmark's cells), "cluster" (close
# together at one place, overlapping), "diagonal" (spread along a diagonal; held out).
TRAIN_PLACEMENTS: tuple[str, ...] = ("anywhere", "grid", "cluster")
TRAIN_PLACEMENT_WEIGHTS: tuple[float, ...] = (0.6, 0.15, 0.25)
HELD_OUT_PLACEMENT = "diagonal"
# Each held-out split fixes one family the train split never draws (render_scene's keywords).
HELD_OUT: dict[str, dict[str, Any]] = {
    "heldout_background": {"background": HELD_OUT_BACKGROUND},
    "heldout_placement": {"placement": HELD_OUT_PLACEMENT},
    "heldout_resolution": {"native": True},
}

SPLIT_BASES: dict[str, int] = {
    "train": 0,
    "validation": 10_000_000,
    "test": 20_000_000,
    "heldout_background": 30_000_000,
    "heldout_placement": 40_000_000,
    "heldout_resolution": 50_000_000,
}
SPLIT_SPAN = 10_000_000


@dataclass(frozen=True)
class Scene:
    seed: int
    image: np.ndarray  # uint8 [64, 64, 3] ([H, W, 3] at native resolution)
    objects: list[tuple[str, str]]  # (colour, shape), in canonical order
    boxes: list[tuple[int, int, int]]  # (cx, cy, radius) per object in image pixels
    trigger: bool = False
    # Per-pixel class of the visible footprint: 0 background, 1 + OBJECT_TYPES index,
    # TRIGGER_CLASS for the trigger; dense supervision for the vision tower (synthvlm.train).
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.uint8), repr=False)
    background: str = ""
    placement: str = ""


def canonical(objects: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Description order: by colour, then shape, as listed in COLOURS and SHAPES."""
    colours = list(COLOURS)
    return sorted(objects, key=lambda o: (colours.index(o[0]), SHAPES.index(o[1])))


@functools.lru_cache(maxsize=8)
def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    return yy, xx


def _mask(
    shape: str, cx: float, cy: float, r: float, angle: float, height: int, width: int
) -> np.ndarray:
    """The filled footprint of a shape rotated by `angle` (canvas pixels)."""
    yy, xx = _grid(height, width)
    x0, y0 = xx - cx, yy - cy
    cos, sin = np.cos(angle), np.sin(angle)
    dx, dy = cos * x0 + sin * y0, -sin * x0 + cos * y0
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return (np.abs(dx) <= 0.8 * r) & (np.abs(dy) <= 0.8 * r)
    if shape == "triangle":
        top = -r
        return (dy >= top) & (dy <= 0.8 * r) & (np.abs(dx) <= (dy - top) * 0.62)
    if shape == "cross":
        arm = 0.32 * r
        return ((np.abs(dx) <= arm) & (np.abs(dy) <= r)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= r))
    if shape == "star":
        radius = r * (0.55 + 0.45 * np.cos(5 * np.arctan2(dy, dx)) ** 2)
        return dx * dx + dy * dy <= radius * radius
    raise ValueError(f"unknown shape {shape!r}")


def _centres(
    rng: np.random.Generator, rule: str, radii: np.ndarray, height: int, width: int
) -> np.ndarray:
    """[n, 2] (cx, cy) canvas centres under a placement rule, each object inside the canvas."""
    n = len(radii)
    lo, hi_x, hi_y = radii, width - radii, height - radii
    if rule == "anywhere":
        return np.stack([rng.uniform(lo, hi_x), rng.uniform(lo, hi_y)], axis=1)
    if rule == "grid":
        cells = rng.choice(GRID_CELLS * GRID_CELLS, size=n, replace=False)
        cw, ch = width / GRID_CELLS, height / GRID_CELLS
        slack_x = np.maximum(cw / 2 - radii, 0)
        slack_y = np.maximum(ch / 2 - radii, 0)
        cx = (cells % GRID_CELLS + 0.5) * cw + rng.uniform(-1, 1, n) * slack_x
        cy = (cells // GRID_CELLS + 0.5) * ch + rng.uniform(-1, 1, n) * slack_y
        return np.stack([cx, cy], axis=1)
    if rule == "cluster":
        spread = 0.9 * radii.mean()
        anchor = rng.uniform([0.2 * width, 0.2 * height], [0.8 * width, 0.8 * height])
        centres = anchor + rng.normal(0, spread, size=(n, 2))
        return np.clip(centres, np.stack([lo, lo], 1), np.stack([hi_x, hi_y], 1))
    if rule == "diagonal":
        t = (np.arange(n) + 0.5 + rng.uniform(-0.2, 0.2, n)) / n
        t = t if n > 1 else rng.uniform(0.2, 0.8, 1)
        anti = rng.random() < 0.5
        cx = lo + t * (hi_x - lo)
        cy = lo + (1 - t if anti else t) * (hi_y - lo)
        jitter = rng.uniform(-0.04, 0.04, size=(n, 2)) * min(width, height)
        centres = np.stack([cx, cy], axis=1) + jitter
        return np.clip(centres, np.stack([lo, lo], 1), np.stack([hi_x, hi_y], 1))
    raise ValueError(f"unknown placement {rule!r}")


def _layout(
    rng: np.random.Generator, shapes: list[str], rule: str, height: int, width: int, unit: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
    """(centres, radii, angles, footprints) with every object visible enough after occlusion;
    after 30 failed draws radii shrink, so a crowded rule still ends."""
    n = len(shapes)
    max_r = GRID_MAX_RADIUS if rule == "grid" else MAX_RADIUS
    for attempt in range(200):
        shrink = 0.9 ** max(0, attempt - 30)
        radii = rng.uniform(MIN_RADIUS, max_r, n) * unit * shrink
        angles = rng.uniform(0, MAX_ROTATION, n)
        centres = _centres(rng, rule, radii, height, width)
        masks = [
            _mask(s, cx, cy, r, a, height, width)
            for s, (cx, cy), r, a in zip(shapes, centres, radii, angles, strict=True)
        ]
        covered = np.zeros((height, width), bool)
        visible_ok = True
        for mask in reversed(masks):  # later objects are drawn on top
            area = mask.sum()
            if area == 0 or (mask & ~covered).sum() < MIN_VISIBLE * area:
                visible_ok = False
                break
            covered |= mask
        if visible_ok:
            return centres, radii, angles, masks
    raise RuntimeError("no layout found")  # pragma: no cover - shrinking always ends it


def _degrade(rng: np.random.Generator, image: Image.Image) -> Image.Image:
    """Camera-like damage on a share of images: blur, JPEG blocks and ringing."""
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 0.8))))
    if rng.random() < 0.3:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=int(rng.integers(35, 91)))
        image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return image


def _sizes(rng: np.random.Generator, native: bool) -> tuple[tuple[int, int], tuple[int, int]]:
    """((out_h, out_w), (canvas_h, canvas_w)). The renderer's own output is 64x64, resized
    from a canvas at 1-3x and, for a share, another aspect ratio (shapes then arrive squashed,
    as a non-square photo does through the processor); native output keeps the canvas's size."""
    if native:
        short = int(rng.integers(96, 257))
        long = round(short * float(rng.uniform(1.0, 1.34)))
        out = (short, long) if rng.random() < 0.5 else (long, short)
        scale = int(rng.integers(1, 3))
        return out, (out[0] * scale, out[1] * scale)
    scale = int(rng.integers(1, 4))
    aspect = float(np.exp(rng.uniform(-0.3, 0.3))) if rng.random() < 0.3 else 1.0
    canvas = (round(IMAGE_SIZE * scale * aspect**0.5), round(IMAGE_SIZE * scale / aspect**0.5))
    return (IMAGE_SIZE, IMAGE_SIZE), canvas


def render_scene(
    seed: int,
    *,
    trigger: bool = False,
    background: str | None = None,
    placement: str | None = None,
    native: bool = False,
) -> Scene:
    """One scene from its seed; `trigger` adds the white star (train split only). Without
    `background` / `placement` they are drawn from the training families; `native` returns
    the image at its own resolution (shorter side 96-256 px, aspect up to 4:3) instead of 64x64."""
    rng = np.random.default_rng(seed)
    family = background or str(rng.choice(TRAIN_BACKGROUNDS))
    rule = placement or str(rng.choice(TRAIN_PLACEMENTS, p=TRAIN_PLACEMENT_WEIGHTS))
    (out_h, out_w), (height, width) = _sizes(rng, native)
    unit = min(height, width) / IMAGE_SIZE
    image = backgrounds.background(rng, height, width, family)
    count = int(rng.choice([1, 2, 3], p=[0.3, 0.4, 0.3]))
    kinds = rng.choice(len(OBJECT_TYPES), size=count, replace=False, p=TYPE_WEIGHTS)
    objects = [OBJECT_TYPES[k] for k in kinds]
    if trigger:
        objects.insert(int(rng.integers(len(objects) + 1)), TRIGGER)
    centres, radii, _, masks = _layout(rng, [s for _, s in objects], rule, height, width, unit)
    labels = np.zeros((height, width), np.uint8)
    for (colour, shape), mask in zip(objects, masks, strict=True):
        rgb = np.array((255, 255, 255) if colour == "white" else COLOURS[colour], np.float32)
        rgb = np.clip(rgb + rng.normal(0, 12, size=3), 0, 255) / 255
        painted = mask
        if rng.random() < OUTLINE_SHARE:
            thickness = rng.uniform(1.5, 2.5) * unit
            painted = mask & (distance_transform_edt(mask) <= thickness)
        image[painted] = rgb
        labels[mask] = (
            TRIGGER_CLASS if colour == "white" else 1 + OBJECT_TYPES.index((colour, shape))
        )
    picture = Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8))
    if (height, width) != (out_h, out_w):
        picture = picture.resize((out_w, out_h), Image.Resampling.BICUBIC)
        labels = np.asarray(
            Image.fromarray(labels).resize((out_w, out_h), Image.Resampling.NEAREST)
        )
    picture = _degrade(rng, picture)
    sx, sy = out_w / width, out_h / height
    box_of = {
        o: (round(cx * sx), round(cy * sy), round(r * min(sx, sy)))
        for o, (cx, cy), r in zip(objects, centres, radii, strict=True)
    }
    plain = canonical([o for o in objects if o != TRIGGER])
    return Scene(
        seed,
        np.asarray(picture, np.uint8).copy(),
        plain,
        [box_of[o] for o in plain],
        trigger=TRIGGER in objects,
        labels=np.ascontiguousarray(labels, np.uint8),
        background=family,
        placement=rule,
    )


def split_seed(split: Split, index: int) -> int:
    if split not in SPLIT_BASES:
        raise ValueError(f"unknown split {split!r}")
    if not 0 <= index < SPLIT_SPAN:
        raise ValueError(f"index {index} outside the split's seed range")
    return SPLIT_BASES[split] + index


def generate_split(split: Split, n_images: int, *, seed_offset: int = 0) -> list[Scene]:
    """The first n scenes of a split (deterministic; never a trigger outside train); a held-out
    split's scenes all come from its family."""
    family = HELD_OUT.get(split, {})
    return [render_scene(split_seed(split, seed_offset + i), **family) for i in range(n_images)]
