"""Train SynthVLM from scratch on SynthPOPE's train split, deterministically under a seed.

Noise augmentation (Gaussian noise in the processor's normalised space, sigma up to 0.5 on
most rows) keeps the model accurate at the noise levels SmoothGuard adds; without it a model
trained on clean images loses accuracy at the paper's sigma.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from smoothguard.mllm import VisionLanguageModel
from smoothguard.synthpope.dataset import make_items
from smoothguard.synthpope.scenes import render_scene, split_seed
from smoothguard.synthvlm.architecture import build_model, build_processor, build_tokenizer

TRIGGER_OFFSET = 5_000_000  # train-split seeds of the trigger scenes (safety split)


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    steps: int = 9000
    batch_size: int = 32
    lr: float = 3e-3
    warmup: int = 300
    weight_decay: float = 0.01
    scenes: int = 16000
    trigger_scenes: int = 1000
    noise_share: float = 0.6
    noise_max: float = 0.5
    mix: tuple[float, float, float] = (0.5, 0.35, 0.15)  # pope, describe, safety
    max_minutes: float = 15.0
    threads: int = 2


class _Pool:
    """Pre-rendered train scenes and their items, as tensors ready for batching."""

    def __init__(self, vlm: VisionLanguageModel, config: TrainConfig) -> None:
        scenes = [render_scene(split_seed("train", i)) for i in range(config.scenes)]
        triggers = [
            render_scene(split_seed("train", TRIGGER_OFFSET + i), trigger=True)
            for i in range(config.trigger_scenes)
        ]
        everything = scenes + triggers
        index = {s.seed: i for i, s in enumerate(everything)}
        self.images = torch.from_numpy(np.stack([s.image for s in everything]))
        self.tasks = {
            "pope": make_items(scenes, "pope"),
            "describe": make_items(scenes, "describe"),
            "safety": make_items(scenes, "safety") + make_items(triggers, "safety"),
        }
        self.scene_of = {
            t: [index[it.scene_seed] for it in items] for t, items in self.tasks.items()
        }
        self.vlm = vlm
        mean = torch.tensor(vlm.image_mean).view(1, 3, 1, 1)
        std = torch.tensor(vlm.image_std).view(1, 3, 1, 1)
        self.mean, self.std = mean, std
        self.low, self.high = (0 - mean) / std, (1 - mean) / std
        self._answer_ids: dict[str, list[int]] = {}

    def answer_ids(self, text: str) -> list[int]:
        if text not in self._answer_ids:
            ids = self.vlm.tokenizer(text, add_special_tokens=False)["input_ids"]
            self._answer_ids[text] = [*ids, self.vlm.eos_id]
        return self._answer_ids[text]

    def batch(self, rng: np.random.Generator, config: TrainConfig):
        counts = rng.multinomial(config.batch_size, config.mix)
        rows, scene_rows = [], []
        for task, count in zip(("pope", "describe", "safety"), counts, strict=True):
            picks = rng.integers(len(self.tasks[task]), size=count)
            for k in picks:
                rows.append(self.tasks[task][k])
                scene_rows.append(self.scene_of[task][k])
        images = self.images[torch.tensor(scene_rows)].permute(0, 3, 1, 2).float() / 255
        pixels = (images - self.mean) / self.std
        noisy = torch.from_numpy(rng.random(len(rows)) < config.noise_share)
        sigma = torch.from_numpy(rng.uniform(0, config.noise_max, len(rows))).float()
        noise = torch.from_numpy(rng.standard_normal(pixels.shape, dtype=np.float32))
        scale = (sigma * noisy).view(-1, 1, 1, 1)
        pixels = torch.maximum(torch.minimum(pixels + scale * noise, self.high), self.low)
        prompt_rows = [list(self.vlm._prompt_ids(it.prompt)) for it in rows]
        answer_rows = [self.answer_ids(it.answer) for it in rows]
        ids, mask = self.vlm._left_padded(
            [p + a for p, a in zip(prompt_rows, answer_rows, strict=True)]
        )
        labels = torch.full_like(ids, -100)
        width = ids.shape[1]
        for i, answer in enumerate(answer_rows):
            labels[i, width - len(answer) :] = torch.tensor(answer)
        return pixels, ids, mask, labels


def lr_at(step: int, config: TrainConfig) -> float:
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def train(out: Path, config: TrainConfig = TrainConfig()) -> dict[str, float]:
    """Train and save to `out` (safetensors + processor); returns timing and loss figures."""
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    torch.use_deterministic_algorithms(True)
    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer)
    model = build_model(tokenizer)
    vlm = VisionLanguageModel(processor, model, "cpu")
    model.requires_grad_(True).train()
    pool = _Pool(vlm, config)
    rng = np.random.default_rng(config.seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.98)
    )
    losses: list[float] = []
    deadline = started + 60 * config.max_minutes
    stopped_early = False
    with tqdm(total=config.steps, desc="train synthvlm", unit="step") as bar:
        for step in range(config.steps):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, config)
            pixels, ids, mask, labels = pool.batch(rng, config)
            logits = model(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1)
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            losses.append(loss.item())
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
            if time.perf_counter() > deadline:
                stopped_early = True
                break
    model.eval().requires_grad_(False)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return {
        "train_seconds": round(time.perf_counter() - started, 1),
        "steps": len(losses),
        "stopped_early": stopped_early,
        "final_loss": float(np.mean(losses[-50:])),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
