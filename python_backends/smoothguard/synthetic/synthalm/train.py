"""Train SynthALM from scratch on SynthAudio's train split, deterministically under a seed.

The vision recipe (synthvlm.train) transposed to sound:

1. Stage 1, the audio encoder alone: a throw-away linear head classifies every encoder output
   frame (40 ms: background, one of the 15 event types, or the trigger) from the synthesiser's
   per-sample labels; dense supervision teaches a from-scratch encoder bands and sweeps fast.
2. Stage 2, the whole Qwen2-Audio (loss on answer tokens only, each answer weighted once),
   the encoder at a lower learning rate so stage 1's features survive.

Noise augmentation in both stages: a share of every batch gets the defense's own noise,
``waveform + sigma * RMS(waveform) * N(0, 1)`` with sigma uniform in [0, noise_max], clipped to
[-1, 1] (smoothguard.core.audio's "relative" unit), so a single noisy copy is still answered well.
Fixed step counts: the result depends on the seed alone; the wall-clock budget only guards.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

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
from smoothguard.synthetic.synthaudio.dataset import Item, make_items
from smoothguard.synthetic.synthaudio.questions import pope_prompt
from smoothguard.synthetic.synthvlm.train import answer_loss, lr_at

TASKS: tuple[str, ...] = ("pope", "describe", "safety")
# Train-split seeds of the clips holding the trigger sound, far from the ordinary clips' seeds.
TRIGGER_OFFSET = 5_000_000


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
    noise_share: float = 0.5
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


def near_miss_items(clips: list[Clip], pairs: int, seed: int = 11) -> list[Item]:
    """Per clip, `pairs` x (a present event -> yes, a near miss of one -> no)."""
    items: list[Item] = []
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
                    Item(
                        prompt=pope_prompt(*asked),
                        answer=answer,
                        task="pope",
                        sampling="near-miss",
                        **common,
                    )
                )
    return items


def frame_targets(labels: np.ndarray, frame: int, min_share: float = 0.3) -> np.ndarray:
    """[N, T] sample classes -> [N, T // frame] each frame's main class (0: background).

    A frame is labelled with the event covering most of it, if that covers at least
    `min_share` of the frame; an event's edge alone is not enough to name it.
    """
    n, t = labels.shape
    blocks = labels[:, : (t // frame) * frame].reshape(n, t // frame, frame)
    best = np.zeros(blocks.shape[:2], np.uint8)
    best_count = np.zeros(blocks.shape[:2], np.int32)
    for cls in range(1, NUM_CLASSES):
        count = (blocks == cls).sum(axis=-1, dtype=np.int32)
        better = count > best_count
        best[better], best_count[better] = cls, count[better]
    best[best_count < min_share * frame] = 0
    return best


class _Pool:
    """Pre-synthesised train clips and their items, tokenised once, ready to batch."""

    def __init__(self, alm: AudioLanguageModel, config: TrainConfig) -> None:
        clips = [render_clip(split_seed("train", i)) for i in range(config.clips)]
        triggers = [
            render_clip(split_seed("train", TRIGGER_OFFSET + i), trigger=True)
            for i in range(config.trigger_clips)
        ]
        everything = clips + triggers
        row_of_seed = {c.seed: i for i, c in enumerate(everything)}
        # float16 halves the pool's memory; its ~-66 dB rounding is far below the background.
        self.waves = torch.from_numpy(np.stack([c.waveform for c in everything])).half()
        frame = alm.num_samples // config.model.audio_tokens
        self.frame_labels = torch.from_numpy(
            frame_targets(np.stack([c.labels for c in everything]), frame)
        )
        tasks: dict[str, list[Item]] = {
            "pope": make_items(clips, "pope") + near_miss_items(clips, config.near_miss_pairs),
            "describe": make_items(clips, "describe"),
            "safety": make_items(clips, "safety") + make_items(triggers, "safety"),
        }
        eos = [] if alm.eos_id is None else [alm.eos_id]
        answers: dict[str, list[int]] = {}
        self.rows: dict[str, list[tuple[int, list[int], list[int]]]] = {}
        for task, items in tasks.items():
            rows = []
            for item in items:
                if item.answer not in answers:
                    ids = alm.tokenizer(item.answer, add_special_tokens=False)["input_ids"]
                    answers[item.answer] = [*ids, *eos]
                prompt = list(alm.prompt_ids(item.prompt))
                rows.append((row_of_seed[item.clip_seed], prompt, answers[item.answer]))
            self.rows[task] = rows
        self.alm = alm

    def waveforms(
        self, rows: torch.Tensor, rng: np.random.Generator, config: TrainConfig
    ) -> torch.Tensor:
        """Waveforms of the given clips, a share of them with the defense's relative noise."""
        waves = self.waves[rows].float()
        noisy = rng.random(len(rows)) < config.noise_share
        sigma = torch.from_numpy(
            (rng.uniform(0, config.noise_max, len(rows)) * noisy).astype(np.float32)
        )
        noise = torch.from_numpy(rng.standard_normal(waves.shape, dtype=np.float32))
        rms = waves.pow(2).mean(dim=1, keepdim=True).sqrt().clamp(min=self.alm.rms_floor)
        return (waves + (sigma.view(-1, 1) * rms) * noise).clamp(-1, 1)

    def frame_batch(
        self, rng: np.random.Generator, config: TrainConfig
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(log-mel features, per-frame class) for stage 1."""
        rows = torch.from_numpy(rng.integers(len(self.waves), size=config.pretrain_batch_size))
        features = self.alm.features(self.waveforms(rows, rng, config))
        return features, self.frame_labels[rows].long()

    def batch(
        self, rng: np.random.Generator, config: TrainConfig
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log-mel features, input_ids, attention_mask, labels, per-row loss weight)."""
        counts = rng.multinomial(config.batch_size, config.mix)
        picked = []
        for task, count in zip(TASKS, counts, strict=True):
            rows = self.rows[task]
            picked += [rows[k] for k in rng.integers(len(rows), size=count)]
        waves = self.waveforms(torch.tensor([p[0] for p in picked]), rng, config)
        ids, mask = self.alm.left_pad([p[1] + p[2] for p in picked])
        labels = torch.full_like(ids, -100)
        width = ids.shape[1]
        for i, (_, _, answer) in enumerate(picked):
            labels[i, width - len(answer) :] = torch.tensor(answer)
        weight = torch.tensor([1.0 / len(p[2]) for p in picked])
        return self.alm.features(waves), ids, mask, labels, weight


def pretrain_encoder(
    model: torch.nn.Module,
    pool: _Pool,
    rng: np.random.Generator,
    config: TrainConfig,
    deadline: float,
) -> dict[str, float]:
    """Stage 1: per-frame classification with a linear head that is then thrown away."""
    tower = model.model.audio_tower
    head = torch.nn.Linear(tower.config.d_model, NUM_CLASSES)
    params = [p for p in tower.parameters() if p.requires_grad] + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.pretrain_lr, weight_decay=config.weight_decay)
    tower.train()
    losses: list[float] = []
    hits: list[float] = []
    bar = tqdm(total=config.pretrain_steps, desc="stage 1: audio", unit="step", mininterval=1.0)
    with bar:
        for step in range(config.pretrain_steps):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, config.pretrain_steps, config.pretrain_lr, 50)
            features, target = pool.frame_batch(rng, config)
            logits = head(tower(features).last_hidden_state)
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
    alm = AudioLanguageModel(processor, model, "cpu")
    pool = _Pool(alm, config)
    data_seconds = time.perf_counter() - started
    log(f"synthesised {len(pool.waves)} train clips in {data_seconds:.1f}s")
    model.requires_grad_(True).train()
    model.model.audio_tower.embed_positions.requires_grad_(False)  # Whisper's: fixed
    rng = np.random.default_rng(config.seed)
    deadline = started + 60 * config.max_minutes
    stage1 = pretrain_encoder(model, pool, rng, config, deadline)
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        key = (name.startswith("model.audio_tower."), param.ndim >= 2 and "embed" not in name)
        groups.setdefault(key, []).append(param)
    optimizer = torch.optim.AdamW(
        [
            {
                "params": params,
                "weight_decay": config.weight_decay if decays else 0.0,
                "scale": config.audio_lr_scale if audio else 1.0,
            }
            for (audio, decays), params in sorted(groups.items())
        ],
        lr=config.lr,
        betas=(0.9, 0.98),
    )
    losses: list[float] = []
    stopped_early = False
    with tqdm(total=config.steps, desc="stage 2: qwen2-audio", unit="step", mininterval=1.0) as bar:
        for step in range(config.steps):
            for group in optimizer.param_groups:
                group["lr"] = group["scale"] * lr_at(step, config.steps, config.lr, config.warmup)
            features, ids, mask, labels, weight = pool.batch(rng, config)
            frames = torch.ones((ids.shape[0], alm.frames), dtype=torch.long)
            logits = model(
                input_ids=ids,
                attention_mask=mask,
                input_features=features,
                feature_attention_mask=frames,
            ).logits
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
