"""Adaptive sampling: ask a few noisy copies first and the rest only when they disagree.

Most benign requests get the same answer from every copy; for them the first few samples
already carry the whole vote. Where an adversarial image is fragile under noise (the paper's
premise), its copies disagree and the request goes on to the full N; where it is not, the
first round agrees on the adversarial answer and stops, so the evaluation reports adaptive ASR
next to full-N ASR (on SynthPOPE within half a point). "Agree" is strict: every answer of the
first round, normalised for case, spacing and trailing punctuation, is the same non-empty
string.
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
