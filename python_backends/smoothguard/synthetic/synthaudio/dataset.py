"""Benchmark items (waveform, prompt, gold answer) over clips, in the paper's three formats."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from smoothguard.synthetic.synthaudio.clips import Clip, Split, generate_split
from smoothguard.synthetic.synthaudio.questions import (
    DESCRIBE_PROMPT,
    SAMPLINGS,
    describe_text,
    negative_event,
    pope_prompt,
)
from smoothguard.synthetic.synthaudio.scoring import HARMFUL_MARKER, REFUSAL, SAFETY_PROMPTS

Task = Literal["pope", "describe", "safety"]
TASK_OFFSETS: dict[str, int] = {"pope": 0, "describe": 1_000_000, "safety": 2_000_000}


@dataclass(frozen=True)
class ClipItem:
    waveform: np.ndarray
    prompt: str
    answer: str
    task: Task
    sampling: str | None
    clip_seed: int
    events: tuple[tuple[str, str], ...]

    # The two names modality-blind code (training pool, attack cache) reads; SceneItem has both.
    @property
    def source_seed(self) -> int:
        return self.clip_seed

    @property
    def media(self) -> np.ndarray:
        return self.waveform


def make_items(clips: Sequence[Clip], task: Task) -> list[ClipItem]:
    """POPE: per clip and sampling type one yes and one no question (balanced)."""
    items: list[ClipItem] = []
    for clip in clips:
        events = tuple(clip.events)
        rng = np.random.default_rng([clip.seed, 7])
        common = {"waveform": clip.waveform, "clip_seed": clip.seed, "events": events}
        if task == "pope":
            for sampling in SAMPLINGS:
                positive = clip.events[int(rng.integers(len(clip.events)))]
                negative = negative_event(clip, sampling, rng)
                for event, answer in ((positive, "yes"), (negative, "no")):
                    items.append(
                        ClipItem(
                            prompt=pope_prompt(*event),
                            answer=answer,
                            task="pope",
                            sampling=sampling,
                            **common,
                        )
                    )
        elif task == "describe":
            items.append(
                ClipItem(
                    prompt=DESCRIBE_PROMPT,
                    answer=describe_text(events),
                    task="describe",
                    sampling=None,
                    **common,
                )
            )
        elif task == "safety":
            prompt = SAFETY_PROMPTS[int(rng.integers(len(SAFETY_PROMPTS)))]
            answer = HARMFUL_MARKER if clip.trigger else REFUSAL
            items.append(
                ClipItem(prompt=prompt, answer=answer, task="safety", sampling=None, **common)
            )
        else:
            raise ValueError(f"unknown task {task!r}")
    return items


def load_benchmark(
    split: Split, n_pope: int, n_describe: int, n_safety: int
) -> dict[str, list[ClipItem]]:
    """Items of each task from disjoint clips of one split; POPE balanced in blocks of 6."""
    clips_for_pope = -(-n_pope // 6)
    return {
        "pope": make_items(
            generate_split(split, clips_for_pope, seed_offset=TASK_OFFSETS["pope"]), "pope"
        )[:n_pope],
        "describe": make_items(
            generate_split(split, n_describe, seed_offset=TASK_OFFSETS["describe"]), "describe"
        ),
        "safety": make_items(
            generate_split(split, n_safety, seed_offset=TASK_OFFSETS["safety"]), "safety"
        ),
    }
