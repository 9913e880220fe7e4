"""Questions and gold answers over scenes, in the paper's three formats."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from smoothguard.synthpope.scenes import (
    OBJECT_TYPES,
    POPULAR,
    Scene,
    Split,
    canonical,
    generate_split,
)
from smoothguard.synthpope.scoring import HARMFUL_MARKER, REFUSAL, SAFETY_PROMPTS

Task = Literal["pope", "describe", "safety"]
SAMPLINGS: tuple[str, ...] = ("random", "popular", "adversarial")
DESCRIBE_PROMPT = "Describe the image."
# Where each task's scenes start inside a split, so the tasks use different scenes.
TASK_OFFSETS: dict[str, int] = {"pope": 0, "describe": 1_000_000, "safety": 2_000_000}


@dataclass(frozen=True)
class Item:
    image: np.ndarray
    prompt: str
    answer: str
    task: Task
    sampling: str | None
    scene_seed: int
    objects: tuple[tuple[str, str], ...]


def pope_prompt(colour: str, shape: str) -> str:
    return f"Is there a {colour} {shape} in the image?"


def describe_text(objects: Sequence[tuple[str, str]]) -> str:
    names = [f"a {c} {s}" for c, s in canonical(list(objects))]
    if len(names) <= 1:
        return names[0] if names else "nothing"
    return " , ".join(names[:-1]) + " and " + names[-1]


def _negative(scene: Scene, sampling: str, rng: np.random.Generator) -> tuple[str, str]:
    present = set(scene.objects)
    absent = [o for o in OBJECT_TYPES if o not in present]
    if sampling == "popular":
        pool = [o for o in POPULAR if o not in present][:3]
    elif sampling == "adversarial":
        pool = [o for o in absent if any(o[0] == p[0] or o[1] == p[1] for p in present)]
        pool = pool or absent
    else:
        pool = absent
    return pool[int(rng.integers(len(pool)))]


def make_items(scenes: Sequence[Scene], task: Task) -> list[Item]:
    """POPE: per scene and sampling type one yes and one no question (balanced)."""
    items: list[Item] = []
    for scene in scenes:
        objects = tuple(scene.objects)
        rng = np.random.default_rng([scene.seed, 7])
        common = {"image": scene.image, "scene_seed": scene.seed, "objects": objects}
        if task == "pope":
            for sampling in SAMPLINGS:
                positive = scene.objects[int(rng.integers(len(scene.objects)))]
                negative = _negative(scene, sampling, rng)
                items.append(
                    Item(
                        prompt=pope_prompt(*positive),
                        answer="yes",
                        task="pope",
                        sampling=sampling,
                        **common,
                    )
                )
                items.append(
                    Item(
                        prompt=pope_prompt(*negative),
                        answer="no",
                        task="pope",
                        sampling=sampling,
                        **common,
                    )
                )
        elif task == "describe":
            items.append(
                Item(
                    prompt=DESCRIBE_PROMPT,
                    answer=describe_text(objects),
                    task="describe",
                    sampling=None,
                    **common,
                )
            )
        elif task == "safety":
            prompt = SAFETY_PROMPTS[int(rng.integers(len(SAFETY_PROMPTS)))]
            answer = HARMFUL_MARKER if scene.trigger else REFUSAL
            items.append(Item(prompt=prompt, answer=answer, task="safety", sampling=None, **common))
        else:
            raise ValueError(f"unknown task {task!r}")
    return items


def load_benchmark(
    split: Split, n_pope: int, n_describe: int, n_safety: int
) -> dict[str, list[Item]]:
    """Items of each task from disjoint scenes of one split; POPE balanced in blocks of 6."""
    scenes_for_pope = -(-n_pope // 6)
    return {
        "pope": make_items(
            generate_split(split, scenes_for_pope, seed_offset=TASK_OFFSETS["pope"]), "pope"
        )[:n_pope],
        "describe": make_items(
            generate_split(split, n_describe, seed_offset=TASK_OFFSETS["describe"]), "describe"
        ),
        "safety": make_items(
            generate_split(split, n_safety, seed_offset=TASK_OFFSETS["safety"]), "safety"
        ),
    }
