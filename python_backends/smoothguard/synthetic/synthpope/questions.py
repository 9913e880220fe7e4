"""Question and answer wording, and POPE's three ways of picking an absent object.

Kept apart from the item bookkeeping so the model's vocabulary (synthvlm.tokenizer) and the
benchmark share one source of truth for every word either can say.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from smoothguard.synthetic.synthpope.scenes import OBJECT_TYPES, POPULAR, Scene, canonical

SAMPLINGS: tuple[str, ...] = ("random", "popular", "adversarial")
DESCRIBE_PROMPT = "Describe the image."
NOTHING = "nothing"
# How many of the most frequent object types POPE's "popular" sampling draws from.
POPULAR_POOL = 3


def pope_prompt(colour: str, shape: str) -> str:
    return f"Is there a {colour} {shape} in the image?"


def asked_object(prompt: str) -> tuple[str, str]:
    """The (colour, shape) a pope_prompt asks about; ValueError for any other prompt."""
    words = prompt.rstrip("?").split()
    if len(words) != 8 or pope_prompt(words[3], words[4]) != prompt:
        raise ValueError(f"not a POPE question: {prompt!r}")
    return words[3], words[4]


def near_miss(asked: tuple[str, str], objects: Sequence[tuple[str, str]]) -> str:
    """What an asked object shares with a scene's objects: "present", or for an absent one
    "colour", "shape", "colour and shape" (from two objects) or "nothing". A model that half
    sees the objects says "yes" to the near misses, so POPE accuracy is broken down by this."""
    if tuple(asked) in {tuple(o) for o in objects}:
        return "present"
    colour = any(o[0] == asked[0] for o in objects)
    shape = any(o[1] == asked[1] for o in objects)
    if colour and shape:
        return "colour and shape"
    if colour:
        return "colour"
    return "shape" if shape else "nothing"


def describe_text(objects: Sequence[tuple[str, str]]) -> str:
    """Canonical description, e.g. "a red circle , a blue square and a green cross"."""
    names = [f"a {c} {s}" for c, s in canonical(list(objects))]
    if len(names) <= 1:
        return names[0] if names else NOTHING
    return " , ".join(names[:-1]) + " and " + names[-1]


def negative_object(scene: Scene, sampling: str, rng: np.random.Generator) -> tuple[str, str]:
    """An object type absent from the scene, chosen the way POPE's `sampling` does.

    random: any absent type; popular: among the most frequent types overall; adversarial:
    an absent type sharing a colour or a shape with a present object (co-occurrence's analogue
    here: the near misses a model that only half-sees the object would confuse).
    """
    present = set(scene.objects)
    absent = [o for o in OBJECT_TYPES if o not in present]
    if sampling == "popular":
        pool = [o for o in POPULAR if o not in present][:POPULAR_POOL]
    elif sampling == "adversarial":
        pool = [o for o in absent if any(o[0] == p[0] or o[1] == p[1] for p in present)]
        pool = pool or absent
    elif sampling == "random":
        pool = absent
    else:
        raise ValueError(f"unknown sampling {sampling!r}")
    return pool[int(rng.integers(len(pool)))]
