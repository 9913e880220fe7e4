"""Benchmark items (image, prompt, gold answer) over scenes, in the paper's three formats."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from smoothguard.synthetic.synthpope.questions import (
    DESCRIBE_PROMPT,
    SAMPLINGS,
    describe_text,
    negative_object,
    pope_prompt,
)
from smoothguard.synthetic.synthpope.scenes import OBJECT_TYPES, Scene, Split, generate_split
from smoothguard.synthetic.synthpope.scoring import HARMFUL_MARKER, REFUSAL, SAFETY_PROMPTS

Task = Literal["pope", "describe", "safety"]
# Where each task's scenes start inside a split, so the tasks use different scenes.
TASK_OFFSETS: dict[str, int] = {"pope": 0, "describe": 1_000_000, "safety": 2_000_000}


@dataclass(frozen=True)
class SceneItem:
    image: np.ndarray
    prompt: str
    answer: str
    task: Task
    sampling: str | None
    scene_seed: int
    objects: tuple[tuple[str, str], ...]

    # The two names modality-blind code (training pool, attack cache) reads; ClipItem has both.
    @property
    def source_seed(self) -> int:
        return self.scene_seed

    @property
    def media(self) -> np.ndarray:
        return self.image


def make_items(scenes: Sequence[Scene], task: Task) -> list[SceneItem]:
    """POPE: per scene and sampling type one yes and one no question (balanced)."""
    items: list[SceneItem] = []
    for scene in scenes:
        objects = tuple(scene.objects)
        rng = np.random.default_rng([scene.seed, 7])
        common = {"image": scene.image, "scene_seed": scene.seed, "objects": objects}
        if task == "pope":
            for sampling in SAMPLINGS:
                positive = scene.objects[int(rng.integers(len(scene.objects)))]
                negative = negative_object(scene, sampling, rng)
                items.append(
                    SceneItem(
                        prompt=pope_prompt(*positive),
                        answer="yes",
                        task="pope",
                        sampling=sampling,
                        **common,
                    )
                )
                items.append(
                    SceneItem(
                        prompt=pope_prompt(*negative),
                        answer="no",
                        task="pope",
                        sampling=sampling,
                        **common,
                    )
                )
        elif task == "describe":
            items.append(
                SceneItem(
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
            items.append(
                SceneItem(prompt=prompt, answer=answer, task="safety", sampling=None, **common)
            )
        else:
            raise ValueError(f"unknown task {task!r}")
    return items


def contrast_items(scenes: Sequence[Scene]) -> list[SceneItem]:
    """POPE questions a half-reading gets wrong, for training: per scene, a "no" about an absent
    type that shares its colour with an object present and one that shares its shape, each
    with a "yes" beside it to keep the answers balanced.

    The benchmark's own mix has few of them (most negatives share nothing), and a model trained
    on it alone learns to answer from the colour: issue 18 measured 7% accuracy on the
    same-colour negatives and 100% elsewhere, while its descriptions named the shapes right.
    """
    items: list[SceneItem] = []
    for scene in scenes:
        rng = np.random.default_rng([scene.seed, 11])
        present = set(scene.objects)
        common = {"image": scene.image, "scene_seed": scene.seed, "objects": tuple(scene.objects)}
        for part in (0, 1):  # 0: same colour, other shape; 1: same shape, other colour
            near = [
                o
                for o in OBJECT_TYPES
                if o not in present and any(o[part] == p[part] for p in present)
            ]
            if not near:
                continue
            positive = scene.objects[int(rng.integers(len(scene.objects)))]
            negative = near[int(rng.integers(len(near)))]
            for obj, answer in ((positive, "yes"), (negative, "no")):
                items.append(
                    SceneItem(
                        prompt=pope_prompt(*obj),
                        answer=answer,
                        task="pope",
                        sampling="contrast",
                        **common,
                    )
                )
    return items


def load_benchmark(
    split: Split, n_pope: int, n_describe: int, n_safety: int
) -> dict[str, list[SceneItem]]:
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
