"""Question and answer wording, and POPE's three ways of picking an absent event.

Kept apart from the item bookkeeping so the model's vocabulary (synthalm.tokenizer) and the
benchmark share one source of truth for every word either can say.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from smoothguard.synthetic.synthaudio.clips import EVENT_TYPES, POPULAR, Clip, canonical

SAMPLINGS: tuple[str, ...] = ("random", "popular", "adversarial")
DESCRIBE_PROMPT = "Describe the audio."
NOTHING = "nothing"
POPULAR_POOL = 3


def pope_prompt(register: str, kind: str) -> str:
    return f"Is there a {register} {kind} in the audio?"


def describe_text(events: Sequence[tuple[str, str]]) -> str:
    """Canonical description, e.g. "a low tone , a middle chord and a high noise burst"."""
    names = [f"a {r} {k}" for r, k in canonical(list(events))]
    if len(names) <= 1:
        return names[0] if names else NOTHING
    return " , ".join(names[:-1]) + " and " + names[-1]


def negative_event(clip: Clip, sampling: str, rng: np.random.Generator) -> tuple[str, str]:
    """An event type absent from the clip, chosen the way POPE's `sampling` does.

    random: any absent type; popular: among the most frequent types overall; adversarial: an
    absent type sharing the register or the kind of a present event (the near misses: a
    rising chirp asked about in the wrong band, or another kind in the right band).
    """
    present = set(clip.events)
    absent = [e for e in EVENT_TYPES if e not in present]
    if sampling == "popular":
        pool = [e for e in POPULAR if e not in present][:POPULAR_POOL]
    elif sampling == "adversarial":
        pool = [e for e in absent if any(e[0] == p[0] or e[1] == p[1] for p in present)]
        pool = pool or absent
    elif sampling == "random":
        pool = absent
    else:
        raise ValueError(f"unknown sampling {sampling!r}")
    return pool[int(rng.integers(len(pool)))]
