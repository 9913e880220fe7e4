"""Train SynthVLM from scratch on SynthPOPE's train split, deterministically under a seed.

Noise augmentation: a share of every batch gets Gaussian noise in the processor's normalised
space (the space SmoothGuard's sigma is stated in), sigma uniform in [0, noise_max]; without it
a model trained on clean images only loses accuracy at the paper's sigma.

Two stages, both from scratch: (1) the CLIP vision tower alone, with a throw-away linear head,
learns to classify every patch (background, one of the 20 object types, or the trigger) from
the renderer's per-pixel labels; dense supervision teaches it colours and shapes in a couple of
minutes, which end-to-end training through the language model alone could not do in the
budget. (2) The whole LLaVA learns the answers (loss on answer tokens only), the vision tower
at a lower learning rate so stage 1's features survive the first noisy gradients.

Each stage runs a fixed number of steps, so the result depends on the seed alone; the wall-clock
budget is a guard that stops early (and says so) on a machine slower than planned.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from smoothguard.adapters.mllm import VisionLanguageModel
from smoothguard.synthetic.synthpope.dataset import Item, make_items
from smoothguard.synthetic.synthpope.scenes import NUM_CLASSES, render_scene, split_seed
from smoothguard.synthetic.synthvlm.architecture import ModelConfig, build_model, build_processor
from smoothguard.synthetic.synthvlm.tokenizer import build_tokenizer

TASKS: tuple[str, ...] = ("pope", "describe", "safety")
# Train-split seeds of the scenes that hold the trigger object (the safety split's
# "harmful" context); far from the ordinary scenes' seeds so the two never coincide.
TRIGGER_OFFSET = 5_000_000


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    pretrain_steps: int = 300
    pretrain_batch_size: int = 64
    pretrain_lr: float = 2e-3
    vision_lr_scale: float = 0.25
    steps: int = 2600
    batch_size: int = 48
    lr: float = 2e-3
    warmup: int = 150
    weight_decay: float = 0.01
    scenes: int = 12000
    trigger_scenes: int = 4000
    noise_share: float = 0.5
    noise_max: float = 0.35
    mix: tuple[float, float, float] = (0.47, 0.38, 0.15)  # pope, describe, safety
    max_minutes: float = 13.5
    threads: int = 2
    model: ModelConfig = field(default_factory=ModelConfig)


class _Pool:
    """Pre-rendered train scenes and their items, tokenised once, ready to batch."""

    def __init__(self, vlm: VisionLanguageModel, config: TrainConfig) -> None:
        scenes = [render_scene(split_seed("train", i)) for i in range(config.scenes)]
        triggers = [
            render_scene(split_seed("train", TRIGGER_OFFSET + i), trigger=True)
            for i in range(config.trigger_scenes)
        ]
        everything = scenes + triggers
        row_of_seed = {s.seed: i for i, s in enumerate(everything)}
        self.images = torch.from_numpy(np.stack([s.image for s in everything]))
        self.patch_labels = torch.from_numpy(
            patch_targets(np.stack([s.labels for s in everything]), config.model.patch_size)
        )
        tasks: dict[str, list[Item]] = {
            "pope": make_items(scenes, "pope"),
            "describe": make_items(scenes, "describe"),
            "safety": make_items(scenes, "safety") + make_items(triggers, "safety"),
        }
        eos = [] if vlm.eos_id is None else [vlm.eos_id]
        answers: dict[str, list[int]] = {}
        self.rows: dict[str, list[tuple[int, list[int], list[int]]]] = {}
        for task, items in tasks.items():
            rows = []
            for item in items:
                if item.answer not in answers:
                    ids = vlm.tokenizer(item.answer, add_special_tokens=False)["input_ids"]
                    answers[item.answer] = [*ids, *eos]
                prompt = list(vlm.prompt_ids(item.prompt))
                rows.append((row_of_seed[item.scene_seed], prompt, answers[item.answer]))
            self.rows[task] = rows
        self.vlm = vlm
        self.mean = torch.tensor(vlm.image_mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(vlm.image_std, dtype=torch.float32).view(1, 3, 1, 1)
        self.low, self.high = (0 - self.mean) / self.std, (1 - self.mean) / self.std

    def pixels(
        self, rows: torch.Tensor, rng: np.random.Generator, config: TrainConfig
    ) -> torch.Tensor:
        """Normalised pixels of the given scenes, a share of them with Gaussian noise."""
        images = self.images[rows]
        pixels = (images.permute(0, 3, 1, 2).float() / 255 - self.mean) / self.std
        noisy = rng.random(len(rows)) < config.noise_share
        sigma = rng.uniform(0, config.noise_max, len(rows)) * noisy
        noise = torch.from_numpy(rng.standard_normal(pixels.shape, dtype=np.float32))
        pixels = pixels + torch.from_numpy(sigma.astype(np.float32)).view(-1, 1, 1, 1) * noise
        return torch.clamp(pixels, self.low, self.high)

    def patch_batch(
        self, rng: np.random.Generator, config: TrainConfig
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(pixels, per-patch class) for stage 1."""
        rows = torch.from_numpy(rng.integers(len(self.images), size=config.pretrain_batch_size))
        return self.pixels(rows, rng, config), self.patch_labels[rows].long()

    def batch(
        self, rng: np.random.Generator, config: TrainConfig
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(pixels, input_ids, attention_mask, labels, per-row loss weight)."""
        counts = rng.multinomial(config.batch_size, config.mix)
        picked = []
        for task, count in zip(TASKS, counts, strict=True):
            rows = self.rows[task]
            picked += [rows[k] for k in rng.integers(len(rows), size=count)]
        pixels = self.pixels(torch.tensor([p[0] for p in picked]), rng, config)
        ids, mask = self.vlm.left_pad([p[1] + p[2] for p in picked])
        labels = torch.full_like(ids, -100)
        width = ids.shape[1]
        for i, (_, _, answer) in enumerate(picked):
            labels[i, width - len(answer) :] = torch.tensor(answer)
        # Each answer counts once, however many tokens it has: a yes/no is one decisive token
        # and would otherwise be drowned by the descriptions' many easy ones.
        weight = torch.tensor([1.0 / len(p[2]) for p in picked])
        return pixels, ids, mask, labels, weight


def patch_targets(labels: np.ndarray, patch: int, min_share: float = 0.2) -> np.ndarray:
    """[N, H, W] pixel classes -> [N, patches] the patch's main object class (0: background).

    A patch is labelled with the object covering most of it, if that covers at least
    `min_share` of the patch; a sliver of an object is not enough to name it.
    """
    n, h, w = labels.shape
    blocks = labels.reshape(n, h // patch, patch, w // patch, patch).transpose(0, 1, 3, 2, 4)
    blocks = blocks.reshape(n, (h // patch) * (w // patch), patch * patch)
    best = np.zeros(blocks.shape[:2], np.uint8)
    best_count = np.zeros(blocks.shape[:2], np.int32)
    for cls in range(1, NUM_CLASSES):
        count = (blocks == cls).sum(axis=-1, dtype=np.int32)
        better = count > best_count
        best[better], best_count[better] = cls, count[better]
    best[best_count < min_share * patch * patch] = 0
    return best


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 5% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def pretrain_vision(
    model: torch.nn.Module,
    pool: _Pool,
    rng: np.random.Generator,
    config: TrainConfig,
    deadline: float,
) -> dict[str, float]:
    """Stage 1: per-patch classification with a linear head that is then thrown away."""
    tower = model.model.vision_tower
    head = torch.nn.Linear(tower.config.hidden_size, NUM_CLASSES)
    params = [*tower.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=config.pretrain_lr, weight_decay=config.weight_decay)
    tower.train()
    losses: list[float] = []
    hits: list[float] = []
    bar = tqdm(total=config.pretrain_steps, desc="stage 1: vision", unit="step", mininterval=1.0)
    with bar:
        for step in range(config.pretrain_steps):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, config.pretrain_steps, config.pretrain_lr, 50)
            pixels, target = pool.patch_batch(rng, config)
            hidden = tower(pixels, output_hidden_states=True).hidden_states[-1][:, 1:]
            logits = head(hidden)
            loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            losses.append(loss.item())
            fg = target > 0
            hits.append((logits.argmax(-1)[fg] == target[fg]).float().mean().item())
            bar.update(1)
            if step % 25 == 0:
                bar.set_postfix(
                    loss=f"{np.mean(losses[-50:]):.3f}", fg=f"{np.mean(hits[-50:]):.3f}"
                )
            if time.perf_counter() > deadline:
                break
    return {
        "stage1_steps": len(losses),
        "stage1_loss": float(np.mean(losses[-50:])),
        "stage1_foreground_accuracy": float(np.mean(hits[-50:])),
    }


def answer_loss(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on answer tokens only, each row weighted (see _Pool.batch)."""
    targets = labels[:, 1:]
    per_token = torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2), targets, ignore_index=-100, reduction="none"
    )
    return (per_token.sum(dim=1) * weight).sum() / weight.shape[0]


def train(
    out: Path,
    config: TrainConfig = TrainConfig(),
    *,
    log: Callable[[str], None] = print,
) -> dict[str, object]:
    """Train and save to `out` (safetensors + processor); returns timing and loss figures."""
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    torch.use_deterministic_algorithms(True)
    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer, config.model)
    model = build_model(tokenizer, config.model)
    vlm = VisionLanguageModel(processor, model, "cpu")
    pool = _Pool(vlm, config)
    data_seconds = time.perf_counter() - started
    log(f"rendered {len(pool.images)} train scenes in {data_seconds:.1f}s")
    model.requires_grad_(True).train()
    rng = np.random.default_rng(config.seed)
    deadline = started + 60 * config.max_minutes
    stage1 = pretrain_vision(model, pool, rng, config, deadline)
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        key = (name.startswith("model.vision_tower."), param.ndim >= 2 and "embed" not in name)
        groups.setdefault(key, []).append(param)
    optimizer = torch.optim.AdamW(
        [
            {
                "params": params,
                "weight_decay": config.weight_decay if decays else 0.0,
                "scale": config.vision_lr_scale if vision else 1.0,
            }
            for (vision, decays), params in sorted(groups.items())
        ],
        lr=config.lr,
        betas=(0.9, 0.98),
    )
    losses: list[float] = []
    stopped_early = False
    with tqdm(total=config.steps, desc="stage 2: llava", unit="step", mininterval=1.0) as bar:
        for step in range(config.steps):
            for group in optimizer.param_groups:
                group["lr"] = group["scale"] * lr_at(step, config.steps, config.lr, config.warmup)
            pixels, ids, mask, labels, weight = pool.batch(rng, config)
            logits = model(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits
            loss = answer_loss(logits, labels, weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            losses.append(loss.item())
            bar.update(1)
            if step % 25 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
            if time.perf_counter() > deadline:
                stopped_early = True
                log(f"time budget reached after {step + 1} steps: stopping early")
                break
    model.eval().requires_grad_(False)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return {
        "train_seconds": round(time.perf_counter() - started, 1),
        "data_seconds": round(data_seconds, 1),
        **stage1,
        "steps": len(losses),
        "stopped_early": stopped_early,
        "final_loss": float(np.mean(losses[-100:])),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
