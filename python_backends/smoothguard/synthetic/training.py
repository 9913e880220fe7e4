"""The recipe both default models are trained with, from scratch and deterministically.

Two stages: (1) the media encoder alone, with a throw-away linear head, learns to classify
every output token (background, an object or event type, or the trigger) from the benchmark
generator's dense labels, which teaches a from-scratch encoder in minutes what end-to-end
training through the language model alone could not in the budget; (2) the model learns the
answers (loss on answer tokens only, each answer weighted once), the encoder at a lower
learning rate so stage 1's features survive the first noisy gradients, or frozen (a learning
rate scale of 0), which spends stage 2's time on the language model alone. A share of every
batch in both stages carries the defense's own noise, so one noisy copy is still answered well.

Each stage runs a fixed number of steps, so the result depends on the seed alone; the wall-clock
budget is a guard that stops early (and says so) on a machine slower than planned. What differs
between the models (data, encoder, model call) is a `Modality`; the loop here never looks at
an image or a waveform.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from smoothguard.adapters.mllm import VisionLanguageModel

TASKS: tuple[str, ...] = ("pope", "describe", "safety")
# Train-split seed indices of the sources (scenes, clips) that hold the trigger (the safety
# split's "harmful" context); far from the ordinary sources' so the two never coincide.
TRIGGER_OFFSET = 5_000_000


class Modality(ABC):
    """What one model family brings to the recipe: its data, its encoder, its forward call.

    `config` is the model's own TrainConfig (its field names are recorded in training.json);
    the loop reads seed, threads, max_minutes, mix, weight_decay, the two stages' steps,
    batch sizes and learning rates, and `turns` if it has one (questions packed per image row,
    Pool.batch) from it, the hooks whatever else they need.
    """

    num_classes: int  # stage 1's classes: background, the object or event types, the trigger
    encoder_name: str  # progress-bar labels: "stage 1: <encoder_name>", "stage 2: <model_name>"
    model_name: str
    made: str  # log line, formatted with the number of train sources
    frozen: tuple[str, ...] = ()  # submodules never trained (fixed by design)

    def __init__(self, config: Any) -> None:
        self.config = config

    @property
    @abstractmethod
    def encoder_lr_scale(self) -> float:
        """Stage 2's learning rate of the encoder, relative to the language model's."""

    @abstractmethod
    def build(self) -> tuple[Any, torch.nn.Module, VisionLanguageModel]:
        """(processor, randomly initialised model, adapter); torch is seeded before."""

    @abstractmethod
    def sources(self) -> tuple[list[Any], list[Any]]:
        """The train split's (ordinary, trigger-holding) sources, each with a `.seed`."""

    @abstractmethod
    def tasks(self, ordinary: list[Any], triggers: list[Any]) -> dict[str, list[Any]]:
        """Items (with `.source_seed`, `.prompt`, `.answer`) of each of TASKS."""

    @abstractmethod
    def tensors(
        self, sources: list[Any], adapter: VisionLanguageModel
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(stored media, stage 1's class per encoder token) of every source, row by row."""

    @abstractmethod
    def inputs(
        self,
        adapter: VisionLanguageModel,
        media: torch.Tensor,
        rng: np.random.Generator,
        noise_share: float,
    ) -> torch.Tensor:
        """The model's input values for stored media rows, `noise_share` of them noisy (each
        stage passes its own share: a recipe may show the tower more noise than the rest)."""

    @abstractmethod
    def encoder(self, model: torch.nn.Module) -> torch.nn.Module: ...

    @abstractmethod
    def encode(self, encoder: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        """[B, tokens, width] hidden states, one per stage 1 target."""

    @abstractmethod
    def logits(
        self,
        model: torch.nn.Module,
        adapter: VisionLanguageModel,
        inputs: torch.Tensor,
        ids: torch.Tensor,
        mask: torch.Tensor,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Next-token logits; `mask` is [B, T] padding, or [B, 1, T, T] with `position_ids` for
        packed rows (Batch)."""


def main_class(blocks: np.ndarray, num_classes: int, min_share: float) -> np.ndarray:
    """[N, B, K] element classes -> [N, B] each block's main class (0: background).

    A block is labelled with the class covering most of it, if that covers at least
    `min_share` of it: a sliver of an object or an event's edge is not enough to name it.
    """
    best = np.zeros(blocks.shape[:2], np.uint8)
    best_count = np.zeros(blocks.shape[:2], np.int32)
    for cls in range(1, num_classes):
        count = (blocks == cls).sum(axis=-1, dtype=np.int32)
        better = count > best_count
        best[better], best_count[better] = cls, count[better]
    best[best_count < min_share * blocks.shape[-1]] = 0
    return best


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 5% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def answer_loss(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on answer tokens only: `weight` is per row ([B], the mean over rows) or,
    for packed rows, per token ([B, T], already normalised: the loss is the weighted sum)."""
    targets = labels[:, 1:]
    per_token = torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2), targets, ignore_index=-100, reduction="none"
    )
    if weight.ndim == 2:
        return (per_token * weight[:, 1:]).sum()
    return (per_token.sum(dim=1) * weight).sum() / weight.shape[0]


class Batch(NamedTuple):
    """One stage-2 step's rows. `position_ids` is None for one question per row (a 2-D padding
    mask); packed rows carry their own positions and a 4-D additive attention mask."""

    inputs: torch.Tensor
    ids: torch.Tensor
    mask: torch.Tensor
    position_ids: torch.Tensor | None
    labels: torch.Tensor
    weight: torch.Tensor


def pack_turns(
    prefix: Sequence[int], turns: Sequence[tuple[Sequence[int], Sequence[int]]], width: int
) -> tuple[list[int], list[int], list[int], list[int]]:
    """One row holding several (prompt suffix, answer) turns after a shared prefix (the image).

    Returns (ids, positions, segment, labels) of length `width`: segment 0 is the prefix, j the
    j-th turn, -1 padding. Each turn's positions continue the prefix's as if it stood alone, and
    `segment_mask` lets it see only the prefix and itself, so the model computes for each turn
    exactly what it computes for that question alone, while the image's tokens (most of a row)
    are paid for once.
    """
    ids, positions, segment = list(prefix), list(range(len(prefix))), [0] * len(prefix)
    labels = [-100] * len(prefix)
    for j, (suffix, answer) in enumerate(turns, start=1):
        ids += [*suffix, *answer]
        positions += range(len(prefix), len(prefix) + len(suffix) + len(answer))
        segment += [j] * (len(suffix) + len(answer))
        labels += [-100] * len(suffix) + list(answer)
    pad = width - len(ids)
    if pad < 0:
        raise ValueError(f"packed row of {len(ids)} tokens is wider than {width}")
    return ids + [0] * pad, positions + [0] * pad, segment + [-1] * pad, labels + [-100] * pad


def segment_mask(segment: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[B, T] segments (pack_turns) -> [B, 1, T, T] additive mask: causal, and a turn sees the
    prefix and itself only (padding sees padding and the prefix; its outputs are never read)."""
    width = segment.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    same = segment[:, :, None] == segment[:, None, :]
    allowed = causal & (same | (segment == 0)[:, None, :])
    mask = torch.zeros(allowed.shape, dtype=dtype)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


class Pool:
    """The train sources and their items, rendered and tokenised once, ready to batch."""

    def __init__(self, modality: Modality, adapter: VisionLanguageModel) -> None:
        ordinary, triggers = modality.sources()
        everything = ordinary + triggers
        row_of_seed = {s.seed: i for i, s in enumerate(everything)}
        self.media, self.targets = modality.tensors(everything, adapter)
        eos = [] if adapter.eos_id is None else [adapter.eos_id]
        answers: dict[str, list[int]] = {}
        self.rows: dict[str, list[tuple[int, list[int], list[int]]]] = {}
        for task, items in modality.tasks(ordinary, triggers).items():
            rows = []
            for item in items:
                if item.answer not in answers:
                    ids = adapter.tokenizer(item.answer, add_special_tokens=False)["input_ids"]
                    answers[item.answer] = [*ids, *eos]
                prompt = list(adapter.prompt_ids(item.prompt))
                rows.append((row_of_seed[item.source_seed], prompt, answers[item.answer]))
            self.rows[task] = rows
        # Per task, the rows of each source: the other questions about an anchor's image.
        self.of_source: dict[str, dict[int, list[int]]] = {}
        for task, rows in self.rows.items():
            index: dict[int, list[int]] = {}
            for k, row in enumerate(rows):
                index.setdefault(row[0], []).append(k)
            self.of_source[task] = index
        self.modality, self.adapter = modality, adapter

    def target_batch(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, per-token class) for stage 1."""
        config = self.modality.config
        rows = torch.from_numpy(rng.integers(len(self.media), size=config.pretrain_batch_size))
        inputs = self.modality.inputs(
            self.adapter, self.media[rows], rng, config.pretrain_noise_share
        )
        return inputs, self.targets[rows].long()

    def batch(self, rng: np.random.Generator) -> Batch:
        """One stage-2 step: `batch_size` questions by the task mix, or, with `turns` > 1,
        `batch_size` images each asked up to `turns` of its questions in one packed row."""
        config = self.modality.config
        counts = rng.multinomial(config.batch_size, config.mix)
        picked = []
        for task, count in zip(TASKS, counts, strict=True):
            rows = self.rows[task]
            picked += [(task, k) for k in rng.integers(len(rows), size=count)]
        if getattr(config, "turns", 1) > 1:
            return self.packed([self.questions(task, k, rng) for task, k in picked], rng)
        rows = [self.rows[task][k] for task, k in picked]
        media = self.media[torch.tensor([p[0] for p in rows])]
        inputs = self.modality.inputs(self.adapter, media, rng, config.noise_share)
        ids, mask = self.adapter.left_pad([p[1] + p[2] for p in rows])
        labels = torch.full_like(ids, -100)
        width = ids.shape[1]
        for i, (_, _, answer) in enumerate(rows):
            labels[i, width - len(answer) :] = torch.tensor(answer)
        # Each answer counts once, however many tokens it has: a yes/no is one decisive token
        # and would otherwise be drowned by the descriptions' many easy ones.
        weight = torch.tensor([1.0 / len(p[2]) for p in rows])
        return Batch(inputs, ids, mask, None, labels, weight)

    def questions(
        self, task: str, k: int, rng: np.random.Generator
    ) -> list[tuple[int, list[int], list[int]]]:
        """The anchor question and up to `turns` - 1 others about its image, each drawn by the
        task mix from that image's questions not asked yet (any task when its task has none)."""
        config = self.modality.config
        source = self.rows[task][k][0]
        used = {(task, k)}
        for other in rng.choice(len(TASKS), size=config.turns - 1, p=config.mix):
            free = [(TASKS[other], j) for j in self.of_source[TASKS[other]].get(source, [])]
            free = [f for f in free if f not in used] or [
                (t, j)
                for t in TASKS
                for j in self.of_source[t].get(source, [])
                if (t, j) not in used
            ]
            if not free:
                break
            used.add(free[int(rng.integers(len(free)))])
        ordered = [(task, k), *sorted(used - {(task, k)})]
        return [self.rows[t][j] for t, j in ordered]

    def packed(
        self, packs: list[list[tuple[int, list[int], list[int]]]], rng: np.random.Generator
    ) -> Batch:
        """One row per pack (questions about one source): the prompts' common head (the
        template and the image's tokens) once, then each question and its answer (pack_turns)."""
        media = self.media[torch.tensor([pack[0][0] for pack in packs])]
        share = self.modality.config.noise_share
        inputs = self.modality.inputs(self.adapter, media, rng, share)
        shaped = []
        for pack in packs:
            prompts = [prompt for _, prompt, _ in pack]
            common = 0
            while all(len(q) > common and q[common] == prompts[0][common] for q in prompts):
                common += 1
            # every prompt must still have its own tail (the answer is asked after it)
            common = min(common, *(len(q) - 1 for q in prompts))
            shaped.append(
                (
                    prompts[0][:common],
                    [(q[common:], a) for q, (_, _, a) in zip(prompts, pack, strict=True)],
                )
            )
        width = max(len(pre) + sum(len(q) + len(a) for q, a in turns) for pre, turns in shaped)
        ids, positions, segments, labels = zip(
            *(pack_turns(pre, turns, width) for pre, turns in shaped), strict=True
        )
        segment = torch.tensor(segments)
        label = torch.tensor(labels)
        # Each answer counts once (as unpacked rows), and the step is the mean over questions.
        weight = torch.zeros(label.shape)
        questions = sum(len(turns) for _, turns in shaped)
        for i, (_, turns) in enumerate(shaped):
            for j, (_, answer) in enumerate(turns, start=1):
                weight[i][(segment[i] == j) & (label[i] != -100)] = 1.0 / (len(answer) * questions)
        tokens = torch.tensor(ids).masked_fill(segment < 0, self.adapter.pad_id)
        return Batch(inputs, tokens, segment_mask(segment), torch.tensor(positions), label, weight)


def pretrain_encoder(
    model: torch.nn.Module, pool: Pool, rng: np.random.Generator, deadline: float
) -> dict[str, float]:
    """Stage 1: per-token classification with a linear head that is then thrown away."""
    modality, config = pool.modality, pool.modality.config
    encoder = modality.encoder(model)
    head = torch.nn.Linear(encoder.config.hidden_size, modality.num_classes)
    params = [p for p in encoder.parameters() if p.requires_grad] + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.pretrain_lr, weight_decay=config.weight_decay)
    encoder.train()
    started = time.perf_counter()
    losses: list[float] = []
    hits: list[float] = []
    desc = f"stage 1: {modality.encoder_name}"
    with tqdm(total=config.pretrain_steps, desc=desc, unit="step", mininterval=1.0) as bar:
        for step in range(config.pretrain_steps):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, config.pretrain_steps, config.pretrain_lr, 50)
            inputs, target = pool.target_batch(rng)
            logits = head(modality.encode(encoder, inputs))
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
        "stage1_seconds": round(time.perf_counter() - started, 1),
    }


def _optimizer(model: torch.nn.Module, modality: Modality) -> torch.optim.AdamW:
    """AdamW in four groups: encoder or not (learning rate scale) x decayed or not."""
    config = modality.config
    in_encoder = {id(p) for p in modality.encoder(model).parameters()}
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        key = (id(param) in in_encoder, param.ndim >= 2 and "embed" not in name)
        groups.setdefault(key, []).append(param)
    return torch.optim.AdamW(
        [
            {
                "params": params,
                "weight_decay": config.weight_decay if decays else 0.0,
                "scale": modality.encoder_lr_scale if encoder else 1.0,
            }
            for (encoder, decays), params in sorted(groups.items())
        ],
        lr=config.lr,
        betas=(0.9, 0.98),
    )


def train_answers(
    model: torch.nn.Module,
    pool: Pool,
    rng: np.random.Generator,
    deadline: float,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Stage 2: the answers, with stage 1's encoder frozen or at its learning-rate scale."""
    modality, config = pool.modality, pool.modality.config
    if modality.encoder_lr_scale == 0:
        # A frozen encoder keeps stage 1's features and its batch-norm statistics, and costs
        # no backward pass: stage 2's budget goes to the language model.
        modality.encoder(model).requires_grad_(False).eval()
    optimizer = _optimizer(model, modality)
    started = time.perf_counter()
    losses: list[float] = []
    stopped_early = False
    desc = f"stage 2: {modality.model_name}"
    with tqdm(total=config.steps, desc=desc, unit="step", mininterval=1.0) as bar:
        for step in range(config.steps):
            for group in optimizer.param_groups:
                group["lr"] = group["scale"] * lr_at(step, config.steps, config.lr, config.warmup)
            batch = pool.batch(rng)
            logits = modality.logits(
                model, pool.adapter, batch.inputs, batch.ids, batch.mask, batch.position_ids
            )
            loss = answer_loss(logits, batch.labels, batch.weight)
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
    return {
        "steps": len(losses),
        "stopped_early": stopped_early,
        "final_loss": float(np.mean(losses[-100:])),
        "stage2_seconds": round(time.perf_counter() - started, 1),
    }


def train(out: Path, modality: Modality, log: Callable[[str], None]) -> dict[str, object]:
    """Train and save to `out` (safetensors + processor); returns timing and loss figures."""
    config = modality.config
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    torch.use_deterministic_algorithms(True)
    processor, model, adapter = modality.build()
    pool = Pool(modality, adapter)
    data_seconds = time.perf_counter() - started
    log(f"{modality.made.format(len(pool.media))} in {data_seconds:.1f}s")
    model.requires_grad_(True).train()
    for name in modality.frozen:
        model.get_submodule(name).requires_grad_(False)
    rng = np.random.default_rng(config.seed)
    deadline = started + 60 * config.max_minutes
    stage1 = pretrain_encoder(model, pool, rng, deadline)
    stage2 = train_answers(model, pool, rng, deadline, log)
    model.eval().requires_grad_(False)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return {
        "train_seconds": round(time.perf_counter() - started, 1),
        "data_seconds": round(data_seconds, 1),
        **stage1,
        **stage2,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def train_split(
    render: Callable[[int, bool], Any], count: int, triggers: int
) -> tuple[list[Any], list[Any]]:
    """(ordinary, trigger-holding) train sources; `render(index, trigger)` makes one."""
    return (
        [render(i, False) for i in range(count)],
        [render(TRIGGER_OFFSET + i, True) for i in range(triggers)],
    )
