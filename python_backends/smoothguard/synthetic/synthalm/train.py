"""Train SynthALM from scratch on SynthAudio's train split (the shared recipe: synthetic.training).

Stage 1 trains the audio encoder to classify every encoder output frame (40 ms: background,
one of the 15 event types, or the trigger) from the synthesiser's per-sample labels; dense
supervision teaches a from-scratch encoder bands and sweeps fast. Stage 2 trains the whole
Qwen2-Audio, the encoder at `audio_lr_scale`.

Noise augmentation in both stages: a share of every batch gets the defense's own noise,
``waveform + sigma * RMS(waveform) * N(0, 1)`` with sigma uniform in [0, noise_max], clipped to
[-1, 1] (smoothguard.core.audio's "relative" unit), so a single noisy copy is still answered well.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from smoothguard.synthetic import training
from smoothguard.synthetic.synthalm.architecture import ModelConfig, build_model, build_processor
from smoothguard.synthetic.synthalm.model import AudioLanguageModel
from smoothguard.synthetic.synthalm.tokenizer import build_tokenizer
from smoothguard.synthetic.synthaudio.clips import (
    EVENT_TYPES,
    NUM_CLASSES,
    Clip,
    render_clip,
    split_seed,
)
from smoothguard.synthetic.synthaudio.dataset import ClipItem, make_items
from smoothguard.synthetic.synthaudio.questions import pope_prompt


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    pretrain_steps: int = 400
    pretrain_batch_size: int = 64
    pretrain_lr: float = 2e-3
    audio_lr_scale: float = 0.5
    steps: int = 3200
    batch_size: int = 48
    lr: float = 2e-3
    warmup: int = 150
    weight_decay: float = 0.01
    clips: int = 16000
    trigger_clips: int = 2500
    noise_share: float = 0.5  # stage 2
    pretrain_noise_share: float = 0.5  # stage 1 (the tower alone)
    noise_max: float = 0.8
    mix: tuple[float, float, float] = (0.6, 0.28, 0.12)  # pope, describe, safety
    # Extra yes/no pairs per clip whose "no" is a near miss (a present event's register with
    # another kind, or its kind in another register): the model hears the events (its
    # descriptions are right) but without these it answers "yes" to a high chord when there
    # is a high tone.
    near_miss_pairs: int = 2
    max_minutes: float = 40.0
    threads: int = 1  # see README: one thread beats two on a shared 2-core box
    model: ModelConfig = field(default_factory=ModelConfig)


def near_miss_items(clips: list[Clip], pairs: int, seed: int = 11) -> list[ClipItem]:
    """Per clip, `pairs` x (a present event -> yes, a near miss of one -> no)."""
    items: list[ClipItem] = []
    rng = np.random.default_rng(seed)
    for clip in clips:
        present = set(clip.events)
        common = {"waveform": clip.waveform, "clip_seed": clip.seed, "events": tuple(clip.events)}
        for _ in range(pairs):
            event = clip.events[int(rng.integers(len(clip.events)))]
            misses = [
                e
                for e in EVENT_TYPES
                if e not in present and (e[0] == event[0]) != (e[1] == event[1])
            ]
            if not misses:
                continue
            miss = misses[int(rng.integers(len(misses)))]
            for asked, answer in ((event, "yes"), (miss, "no")):
                items.append(
                    ClipItem(
                        prompt=pope_prompt(*asked),
                        answer=answer,
                        task="pope",
                        sampling="near-miss",
                        **common,
                    )
                )
    return items


def frame_targets(labels: np.ndarray, frame: int, min_share: float = 0.3) -> np.ndarray:
    """[N, T] sample classes -> [N, T // frame] each frame's main class (0: background)."""
    n, t = labels.shape
    blocks = labels[:, : (t // frame) * frame].reshape(n, t // frame, frame)
    return training.main_class(blocks, NUM_CLASSES, min_share)


class Audio(training.Modality):
    """SynthAudio clips into a Qwen2-Audio: float16 waveforms, log-mels, one class per frame."""

    config: TrainConfig
    num_classes = NUM_CLASSES
    encoder_name, model_name = "audio", "qwen2-audio"
    made = "synthesised {} train clips"
    frozen = ("model.audio_tower.embed_positions",)  # Whisper's sinusoids: fixed

    @property
    def encoder_lr_scale(self) -> float:
        return self.config.audio_lr_scale

    def build(self) -> tuple[Any, torch.nn.Module, AudioLanguageModel]:
        tokenizer = build_tokenizer()
        processor = build_processor(tokenizer, self.config.model)
        model = build_model(tokenizer, self.config.model)
        return processor, model, AudioLanguageModel(processor, model, "cpu")

    def sources(self) -> tuple[list[Clip], list[Clip]]:
        def render(index: int, trigger: bool) -> Clip:
            return render_clip(split_seed("train", index), trigger=trigger)

        return training.train_split(render, self.config.clips, self.config.trigger_clips)

    def tasks(self, ordinary: list[Clip], triggers: list[Clip]) -> dict[str, list[ClipItem]]:
        near_misses = near_miss_items(ordinary, self.config.near_miss_pairs)
        return {
            "pope": make_items(ordinary, "pope") + near_misses,
            "describe": make_items(ordinary, "describe"),
            "safety": make_items(ordinary, "safety") + make_items(triggers, "safety"),
        }

    def tensors(
        self, sources: list[Clip], adapter: AudioLanguageModel
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # float16 halves the pool's memory; its ~-66 dB rounding is far below the background.
        waves = torch.from_numpy(np.stack([c.waveform for c in sources])).half()
        frame = adapter.num_samples // self.config.model.audio_tokens
        labels = frame_targets(np.stack([c.labels for c in sources]), frame)
        return waves, torch.from_numpy(labels)

    def inputs(
        self,
        adapter: AudioLanguageModel,
        media: torch.Tensor,
        rng: np.random.Generator,
        noise_share: float,
    ) -> torch.Tensor:
        """Log-mel features of the waveforms, noisy ones with the defense's relative noise."""
        waves = media.float()
        noisy = rng.random(len(media)) < noise_share
        sigma = torch.from_numpy(
            (rng.uniform(0, self.config.noise_max, len(media)) * noisy).astype(np.float32)
        )
        noise = torch.from_numpy(rng.standard_normal(waves.shape, dtype=np.float32))
        rms = waves.pow(2).mean(dim=1, keepdim=True).sqrt().clamp(min=adapter.rms_floor)
        return adapter.features((waves + (sigma.view(-1, 1) * rms) * noise).clamp(-1, 1))

    def encoder(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.model.audio_tower

    def encode(self, encoder: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        return encoder(inputs).last_hidden_state

    def logits(
        self,
        model: torch.nn.Module,
        adapter: AudioLanguageModel,
        inputs: torch.Tensor,
        ids: torch.Tensor,
        mask: torch.Tensor,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        frames = torch.ones((ids.shape[0], adapter.frames), dtype=torch.long)
        return model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=position_ids,
            input_features=inputs,
            feature_attention_mask=frames,
        ).logits


def train(
    out: Path,
    config: TrainConfig = TrainConfig(),
    *,
    log: Callable[[str], None] = print,
) -> dict[str, object]:
    """Train and save to `out` (safetensors + processor); returns timing and loss figures."""
    return training.train(out, Audio(config), log)
