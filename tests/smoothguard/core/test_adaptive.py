"""Adaptive sampling: when a first round may stop, and how many samples it asks for."""

from __future__ import annotations

import numpy as np
import pytest

from smoothguard.core.adaptive import first_round, normalise, unanimous
from smoothguard.core.pipeline import SmoothGuard
from smoothguard.core.settings import DefenseSettings, resolve_options


@pytest.mark.parametrize(
    ("n", "adaptive", "initial", "expected"),
    [(10, False, 4, 10), (10, True, 4, 4), (3, True, 4, 3), (10, True, 2, 2), (1, True, 4, 1)],
)
def test_first_round(n: int, adaptive: bool, initial: int, expected: int) -> None:
    assert first_round(n, adaptive=adaptive, initial=initial) == expected


def test_unanimous_is_strict() -> None:
    assert unanimous(["Yes.", "yes", " YES "])
    assert not unanimous(["yes", "no", "yes"])
    assert not unanimous(["", ""])
    assert not unanimous(["a red circle", "a red circle and a blue square"])
    assert normalise("A  red circle .") == "a red circle"


def guard(answers: list[str], calls: list[int]) -> SmoothGuard:
    def generate(pixels: np.ndarray, prompt: str, max_new_tokens: int) -> list[str]:
        start = sum(calls)
        calls.append(len(pixels))
        return answers[start : start + len(pixels)]

    def embed(texts: list[str]) -> np.ndarray:
        return np.array([[1.0, 0.0] if t == "yes" else [0.0, 1.0] for t in texts], np.float32)

    settings = DefenseSettings(adaptive_initial=3)
    return SmoothGuard(
        generate, embed, image_mean=(0.5,) * 3, image_std=(0.25,) * 3, settings=settings
    )


def test_pipeline_stops_early_only_on_agreement() -> None:
    pixels = np.zeros((3, 4, 4), np.float32)
    options = resolve_options(DefenseSettings(), num_samples=8, adaptive=True, seed=1)
    calls: list[int] = []
    out = guard(["yes"] * 8, calls).defend(pixels, "q", options)
    assert calls == [3] and out.num_samples_used == 3 and out.text == "yes"
    calls = []
    out = guard(["no", "yes", "yes", "yes", "yes", "yes", "no", "yes"], calls).defend(
        pixels, "q", options
    )
    assert calls == [3, 5] and out.num_samples_used == 8
    assert out.original_outvoted and out.text == "yes"
