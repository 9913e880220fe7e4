"""Background families: low-saturation textures, so an object's colour name stays unambiguous.

Each family is a different kind of structure (periodic, smooth, two-tone, spotted), so a model
that learnt objects rather than one texture's statistics keeps answering when a family it never
saw comes along; `HELD_OUT_BACKGROUND` is such a family, drawn only for its held-out split.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Pattern = Callable[[np.random.Generator, np.ndarray, np.ndarray], np.ndarray]


def _stripes(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    angle, freq = rng.uniform(0, np.pi), rng.uniform(3, 10)
    return np.sin(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle)))


def _checker(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    cells = rng.integers(3, 9)
    return ((np.floor(xx * cells) + np.floor(yy * cells)) % 2) * 2 - 1


def _gradient(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    angle = rng.uniform(0, 2 * np.pi)
    return (xx * np.cos(angle) + yy * np.sin(angle)) * 2 - 1


def _blotches(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Smooth noise: a coarse random grid, bilinearly interpolated."""
    n = int(rng.integers(3, 9))
    coarse = rng.normal(size=(n + 1, n + 1)).astype(np.float32) / 1.5
    fx, fy = xx * n, yy * n
    ix, iy = np.minimum(fx.astype(int), n - 1), np.minimum(fy.astype(int), n - 1)
    tx, ty = fx - ix, fy - iy
    top = coarse[iy, ix] * (1 - tx) + coarse[iy, ix + 1] * tx
    bottom = coarse[iy + 1, ix] * (1 - tx) + coarse[iy + 1, ix + 1] * tx
    return top * (1 - ty) + bottom * ty


def _horizon(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Two tones split by a soft, tilted edge (sky and ground)."""
    level, tilt, soft = rng.uniform(0.25, 0.75), rng.uniform(-0.4, 0.4), rng.uniform(0.01, 0.1)
    return np.tanh((yy - level - tilt * (xx - 0.5)) / soft)


def _dots(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """A faint regular dot lattice (much fainter and smaller than any object)."""
    pitch, size = rng.uniform(0.07, 0.15), rng.uniform(0.15, 0.3)
    fx, fy = (xx / pitch) % 1 - 0.5, (yy / pitch) % 1 - 0.5
    return np.where(fx * fx + fy * fy < size * size, 1.0, -0.3)


def _plain(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    return np.zeros_like(xx)


def _plaid(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Woven bands in two directions at once (held out: never drawn for training)."""
    freq = rng.uniform(2, 6, size=2)
    return 0.5 * (np.sin(2 * np.pi * freq[0] * xx) + np.sin(2 * np.pi * freq[1] * yy)) + 0.5 * (
        np.sin(2 * np.pi * 3 * freq[0] * xx) > 0.6
    )


FAMILIES: dict[str, Pattern] = {
    "stripes": _stripes,
    "checker": _checker,
    "gradient": _gradient,
    "blotches": _blotches,
    "horizon": _horizon,
    "dots": _dots,
    "plain": _plain,
    "plaid": _plaid,
}
HELD_OUT_BACKGROUND = "plaid"
TRAIN_BACKGROUNDS: tuple[str, ...] = tuple(f for f in FAMILIES if f != HELD_OUT_BACKGROUND)


def background(rng: np.random.Generator, height: int, width: int, family: str) -> np.ndarray:
    """float32 [H, W, 3] in [0, 1]: a grey base, a faint tint, the family's pattern, grain."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    xx, yy = (xx + 0.5) / width, (yy + 0.5) / height
    base = rng.uniform(0.2, 0.8)
    tint = rng.uniform(-0.06, 0.06, size=3)
    pattern = FAMILIES[family](rng, xx, yy).astype(np.float32)
    amplitude = rng.uniform(0.03, 0.14)
    # A second, weak tint on the pattern itself: textures in two hues, still low saturation.
    hue = 1 + rng.uniform(-0.3, 0.3, size=3)
    grain = rng.normal(0, rng.uniform(0.005, 0.03), size=(height, width, 1))
    image = base + tint + amplitude * pattern[..., None] * hue + grain
    return np.clip(image, 0, 1).astype(np.float32)
