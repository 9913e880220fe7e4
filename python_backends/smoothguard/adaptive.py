"""Adaptive sampling: ask a few noisy copies first and the rest only when they disagree.

Most benign requests get the same answer from every copy; for them the first few samples
already carry the whole vote. An adversarial image is fragile under noise, so its copies
disagree and the request goes on to the full N. "Agree" is strict: every answer of the first
round, normalised for case, spacing and trailing punctuation, is the same non-empty string.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_SPACES = re.compile(r"\s+")


def first_round(num_samples: int, *, adaptive: bool, initial: int) -> int:
    """How many samples to ask for before looking at agreement."""
    if not adaptive or num_samples <= initial:
        return num_samples
    return max(2, initial)


def normalise(text: str) -> str:
    return _SPACES.sub(" ", text.strip().lower()).rstrip(" .!?")


def unanimous(texts: Sequence[str]) -> bool:
    """True when the first round may stop: all answers equal and non-empty."""
    answers = {normalise(t) for t in texts}
    return len(answers) == 1 and "" not in answers
