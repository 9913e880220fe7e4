"""Seeded synthesis of short mono clips: a few sound events over background noise.

An event type is a register (low / middle / high frequency band) and a kind (tone, chord,
rising chirp, falling chirp, noise burst): 15 types, the audio analogue of SynthPOPE's
colour x shape. Types follow a skewed frequency so POPE's "popular" negatives mean something.
Events sit in their own quarter of the clip (random onset and length inside it, like
SynthPOPE's grid cells) at levels spread over ~16 dB, over white / pink / brown background
noise at a random level and an occasional mains hum. Split seeds come from disjoint ranges,
so splits never share a clip.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Split = Literal["train", "validation", "test"]

SAMPLE_RATE = 16_000
DURATION = 1.0
NUM_SAMPLES = int(SAMPLE_RATE * DURATION)
SLOTS = 4  # events occupy distinct quarters of the clip
SLOT = NUM_SAMPLES // SLOTS
MIN_EVENT, MAX_EVENT = 0.11, 0.2  # seconds
# Frequency bands (Hz) of the registers; far apart on the mel scale, inside Whisper's 0-8 kHz.
REGISTERS: dict[str, tuple[float, float]] = {
    "low": (180.0, 420.0),
    "middle": (600.0, 1400.0),
    "high": (2000.0, 4800.0),
}
KINDS: tuple[str, ...] = ("tone", "chord", "rising chirp", "falling chirp", "noise burst")
EVENT_TYPES: tuple[tuple[str, str], ...] = tuple((r, k) for r in REGISTERS for k in KINDS)
_WEIGHTS = 1.0 / np.arange(1, len(EVENT_TYPES) + 1) ** 0.6
_ORDER = np.random.default_rng(20251031).permutation(len(EVENT_TYPES))
TYPE_WEIGHTS = np.empty(len(EVENT_TYPES))
TYPE_WEIGHTS[_ORDER] = _WEIGHTS / _WEIGHTS.sum()
POPULAR: tuple[tuple[str, str], ...] = tuple(EVENT_TYPES[i] for i in np.argsort(-TYPE_WEIGHTS))
# The trigger (a warbling siren) is a sound no question asks about and no val/test clip holds;
# it gives the safety split's harmful marker a context the model learned it from.
TRIGGER = ("warbling", "siren")
TRIGGER_CLASS = len(EVENT_TYPES) + 1
NUM_CLASSES = len(EVENT_TYPES) + 2  # background, the event types, the trigger

SPLIT_BASES: dict[str, int] = {"train": 0, "validation": 10_000_000, "test": 20_000_000}
SPLIT_SPAN = 10_000_000


@dataclass(frozen=True)
class Clip:
    seed: int
    waveform: np.ndarray  # float32 [NUM_SAMPLES], mono, in [-1, 1]
    events: list[tuple[str, str]]  # (register, kind), canonical order, trigger excluded
    spans: list[tuple[float, float]]  # (onset, offset) in seconds, aligned with `events`
    trigger: bool = False
    # Per-sample class: 0 background, 1 + EVENT_TYPES index, TRIGGER_CLASS for the trigger;
    # dense supervision for pre-training the audio encoder (synthalm.train).
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8), repr=False)


def canonical(events: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Description order: by register, then kind, as listed in REGISTERS and KINDS."""
    registers = list(REGISTERS)
    return sorted(events, key=lambda e: (registers.index(e[0]), KINDS.index(e[1])))


def _coloured_noise(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Noise with power ~ 1/f^exponent (0 white, 1 pink, 2 brown), unit RMS."""
    spectrum = rng.standard_normal(n // 2 + 1) + 1j * rng.standard_normal(n // 2 + 1)
    freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    spectrum *= 1.0 / np.maximum(freqs, 20.0) ** (exponent / 2)
    spectrum[0] = 0
    noise = np.fft.irfft(spectrum, n)
    return noise / (np.sqrt(np.mean(noise**2)) + 1e-12)


def _background(rng: np.random.Generator) -> np.ndarray:
    level = 10 ** rng.uniform(np.log10(0.003), np.log10(0.02))
    noise = _coloured_noise(rng, NUM_SAMPLES, float(rng.choice([0.0, 1.0, 2.0]))) * level
    if rng.random() < 0.3:  # mains hum
        t = np.arange(NUM_SAMPLES) / SAMPLE_RATE
        noise += level * rng.uniform(0.5, 1.5) * np.sin(2 * np.pi * rng.choice([50, 60]) * t)
    return noise


def _envelope(n: int) -> np.ndarray:
    """10 ms raised-cosine attack and release: no clicks at the edges."""
    ramp = min(n // 2, int(0.01 * SAMPLE_RATE))
    env = np.ones(n)
    edge = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
    env[:ramp], env[n - ramp :] = edge, edge[::-1]
    return env


def _event(kind: str, register: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """One event of `n` samples at unit peak-ish level."""
    lo, hi = REGISTERS.get(register, (700.0, 1500.0))
    t = np.arange(n) / SAMPLE_RATE
    if kind == "tone":
        f = np.exp(rng.uniform(np.log(lo), np.log(hi)))
        return np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
    if kind == "chord":  # root, fifth and octave (an open chord), root in the band's lower half
        # A triad's thirds sit ~45 Hz apart in the low band, under the 400-point STFT's
        # resolution; fifth and octave keep a chord audibly distinct from a tone in every band.
        root = np.exp(rng.uniform(np.log(lo), np.log(hi / 2)))
        ratios = (1.0, 1.5, 2.0)
        return sum(np.sin(2 * np.pi * root * r * t + rng.uniform(0, 6.3)) for r in ratios) / 2.2
    if kind in ("rising chirp", "falling chirp"):  # exponential sweep over most of the band
        span = np.log(hi / lo)
        a = np.log(lo) + rng.uniform(0, 0.15) * span
        b = np.log(hi) - rng.uniform(0, 0.15) * span
        start, stop = (a, b) if kind == "rising chirp" else (b, a)
        freq = np.exp(start + (stop - start) * t / t[-1])
        return np.sin(2 * np.pi * np.cumsum(freq) / SAMPLE_RATE + rng.uniform(0, 6.3))
    if kind == "noise burst":  # white noise band-passed to the register (FFT mask)
        spectrum = np.fft.rfft(rng.standard_normal(n))
        freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
        spectrum[(freqs < lo) | (freqs > hi)] = 0
        burst = np.fft.irfft(spectrum, n)
        return burst / (np.abs(burst).max() + 1e-9)
    if kind == "siren":  # the trigger: a tone warbling 9-12 times a second over 2 octaves
        rate = rng.uniform(9, 12)
        freq = 1200 * 2 ** np.sin(2 * np.pi * rate * t)  # 600 <-> 2400 Hz, across two bands
        return np.sin(2 * np.pi * np.cumsum(freq) / SAMPLE_RATE)
    raise ValueError(f"unknown kind {kind!r}")


def render_clip(seed: int, *, trigger: bool = False) -> Clip:
    """One clip from its seed; `trigger` adds the warbling siren (train split only)."""
    rng = np.random.default_rng(seed)
    wave = _background(rng)
    count = int(rng.choice([1, 2, 3], p=[0.3, 0.4, 0.3]))
    kinds = rng.choice(len(EVENT_TYPES), size=count, replace=False, p=TYPE_WEIGHTS)
    events = [EVENT_TYPES[k] for k in kinds]
    if trigger:
        events.append(TRIGGER)
    slots = rng.choice(SLOTS, size=len(events), replace=False)
    labels = np.zeros(NUM_SAMPLES, np.uint8)
    span_of: dict[tuple[str, str], tuple[float, float]] = {}
    for (register, kind), slot in zip(events, slots, strict=True):
        n = int(rng.uniform(MIN_EVENT, MAX_EVENT) * SAMPLE_RATE)
        start = int(slot) * SLOT + int(rng.integers(0, SLOT - n + 1))
        level = 10 ** rng.uniform(np.log10(0.08), np.log10(0.5))
        if kind == "siren":
            level = max(level, 0.25)
        wave[start : start + n] += level * _envelope(n) * _event(kind, register, n, rng)
        is_trigger = (register, kind) == TRIGGER
        labels[start : start + n] = (
            TRIGGER_CLASS if is_trigger else 1 + EVENT_TYPES.index((register, kind))
        )
        span_of[(register, kind)] = (start / SAMPLE_RATE, (start + n) / SAMPLE_RATE)
    plain = canonical([e for e in events if e != TRIGGER])
    waveform = np.clip(wave, -1, 1).astype(np.float32)
    return Clip(
        seed,
        waveform,
        plain,
        [span_of[e] for e in plain],
        trigger=TRIGGER in events,
        labels=labels,
    )


def split_seed(split: Split, index: int) -> int:
    if split not in SPLIT_BASES:
        raise ValueError(f"unknown split {split!r}")
    if not 0 <= index < SPLIT_SPAN:
        raise ValueError(f"index {index} outside the split's seed range")
    return SPLIT_BASES[split] + index


def generate_split(split: Split, n_clips: int, *, seed_offset: int = 0) -> list[Clip]:
    """The first n clips of a split (deterministic; never a trigger outside train)."""
    return [render_clip(split_seed(split, seed_offset + i)) for i in range(n_clips)]
