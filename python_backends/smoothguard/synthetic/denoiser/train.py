"""Train the denoiser on SynthPOPE scenes, and measure it by what the VLM answers after it.

Noise as the server adds it with `noise_unit: pixel`: clean pixels in [0, 1] plus sigma * N(0, 1)
per pixel, sigma ~ U[0, sigma_max] per image (a share of the rows at exactly 0, so clean input
comes back unchanged), half the batches clipped to [0, 1] (`clip: true`) and the rest not.

Losses (`TrainConfig.loss`):
  mse             pixel MSE between the estimate and the clean image.
  mse+features    plus feature matching on the frozen SynthVLM: MSE between its image tokens
                  (the projector's output, what the language model reads; other layers of the
                  vision tower on request) for the denoised vs the clean image, relative to the
                  clean features' energy. An MSE-only denoiser returns the posterior mean, a
                  blur in which small shapes melt into blobs; this term asks for what the VLM
                  reads instead. As in Salman et al., it is switched on after an MSE-only start
                  (`model_aware_from`): the cheaper MSE steps buy a better denoiser first.
  mse+stability   plus Salman et al.'s stability term: KL between the frozen VLM's yes/no answer
                  distribution to a POPE question on the clean vs the denoised image.

The model card (build/train_denoiser.py) compares them by what matters, SynthVLM's POPE accuracy
on denoised copies (`evaluate`).

Deterministic for a seed when the run ends by its step count (the wall-clock cap says so when
it ends it first): every random draw comes from one numpy Generator, weights from
torch.manual_seed, and torch runs with deterministic algorithms.
"""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch.nn import functional as F
from tqdm import tqdm

from smoothguard.adapters.denoiser_unet import KIND, UNet, UNetConfig, parameter_count
from smoothguard.synthetic.synthpope.scenes import Scene, generate_split
from smoothguard.synthetic.training import lr_at

LOSSES: tuple[str, ...] = ("mse", "mse+features", "mse+stability")
# Where the feature term looks: the vision tower's stem (1/4 resolution), its first stage
# (1/4), and the projected image tokens the language model reads (1/8).
FEATURE_LAYERS: tuple[str, ...] = ("stem", "stage1", "tokens")
VAL_SIGMAS: tuple[float, ...] = (0.0, 0.25, 0.5)
DEFAULT_VLM = Path(__file__).resolve().parents[4] / "models" / "synthvlm"


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    scenes: int = 8000
    val_scenes: int = 256
    steps: int = 1000
    batch_size: int = 32
    lr: float = 2e-3
    warmup: int = 20
    weight_decay: float = 1e-4
    sigma_max: float = 0.6  # pixel units
    zero_share: float = 0.1  # rows at sigma exactly 0
    clip_share: float = 0.5  # batches clipped to [0, 1]
    flips: bool = True
    loss: str = "mse+features"
    feature_weight: float = 0.4  # on each layer's MSE relative to the clean features' energy
    feature_layers: tuple[str, ...] = ("tokens",)  # of FEATURE_LAYERS
    model_aware_from: float = 0.5  # share of the steps trained on MSE alone first
    stability_weight: float = 0.05
    max_minutes: float = 10.0  # wall-clock cap on train(), rendering included
    # One torch thread: with another job on the 2 cores, two threads ran ~10x slower per
    # step than one (OpenMP threads waiting on each other); rendering uses `workers` processes.
    threads: int = 1
    workers: int = 2
    vlm: str = str(DEFAULT_VLM)
    model: UNetConfig = field(default_factory=UNetConfig)


# -- data ------------------------------------------------------------------------------------


def _render(job: tuple[str, int, int]) -> tuple[np.ndarray, list[tuple[tuple[str, str], ...]]]:
    split, offset, count = job
    scenes: list[Scene] = generate_split(split, count, seed_offset=offset)  # type: ignore[arg-type]
    return np.stack([s.image for s in scenes]), [tuple(s.objects) for s in scenes]


def render_scenes(
    split: str, n: int, threads: int = 1, chunk: int = 250
) -> tuple[np.ndarray, list[tuple[tuple[str, str], ...]]]:
    """([n, H, W, 3] uint8, each scene's objects): the split's first n scenes, rendered in
    `threads` processes (each scene depends on its seed alone, so any number gives the same)."""
    jobs = [(split, lo, min(chunk, n - lo)) for lo in range(0, n, chunk)]
    if threads <= 1 or len(jobs) == 1:
        parts = [_render(job) for job in jobs]
    else:
        with multiprocessing.get_context("fork").Pool(threads) as pool:
            parts = list(
                tqdm(
                    pool.imap(_render, jobs),
                    total=len(jobs),
                    desc=f"render {split}",
                    unit="chunk",
                    mininterval=1.0,
                )
            )
    return np.concatenate([p[0] for p in parts]), [o for p in parts for o in p[1]]


def to_pixels(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float [B, 3, H, W] in [0, 1]."""
    return torch.as_tensor(images).permute(0, 3, 1, 2).float() / 255


def add_noise(
    clean: torch.Tensor, sigma: np.ndarray, clip: bool, rng: np.random.Generator
) -> torch.Tensor:
    """clean + sigma * N(0, 1) per pixel (sigma per row), optionally clipped to [0, 1]."""
    noise = torch.from_numpy(rng.standard_normal(tuple(clean.shape), dtype=np.float32))
    noisy = clean + torch.from_numpy(sigma.astype(np.float32)).view(-1, 1, 1, 1) * noise
    return noisy.clamp(0.0, 1.0) if clip else noisy


def sample_batch(
    images: torch.Tensor, config: TrainConfig, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray]:
    """(clean, noisy, sigma, scene indices) for one step; flips double the scenes' variety."""
    index = rng.integers(0, len(images), config.batch_size)
    clean = to_pixels(images[index])
    if config.flips:
        flip_w = torch.from_numpy(rng.random(config.batch_size) < 0.5)
        flip_h = torch.from_numpy(rng.random(config.batch_size) < 0.5)
        clean = torch.where(flip_w.view(-1, 1, 1, 1), clean.flip(3), clean)
        clean = torch.where(flip_h.view(-1, 1, 1, 1), clean.flip(2), clean)
    sigma = rng.uniform(0.0, config.sigma_max, config.batch_size)
    sigma *= rng.random(config.batch_size) >= config.zero_share
    clip = bool(rng.random() < config.clip_share)
    noisy = add_noise(clean, sigma, clip, rng)
    return clean, noisy, torch.from_numpy(sigma.astype(np.float32)), index


# -- model-aware terms -----------------------------------------------------------------------


class VlmTerms:
    """The frozen SynthVLM's view of an image: image tokens and yes/no answers."""

    def __init__(self, path: str | Path) -> None:
        from smoothguard.adapters.mllm import VisionLanguageModel

        self.vlm = VisionLanguageModel.load(path)
        self.mean = torch.tensor(self.vlm.image_mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(self.vlm.image_std, dtype=torch.float32).view(1, 3, 1, 1)

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels - self.mean) / self.std

    def features(
        self, pixels: torch.Tensor, layers: tuple[str, ...] = ("tokens",)
    ) -> list[torch.Tensor]:
        """The vision tower's maps and/or the projected image tokens the language model reads
        (what get_image_features returns), in FEATURE_LAYERS order."""
        model = self.vlm.model.model
        tower = model.vision_tower(
            self.normalise(pixels), output_hidden_states=True, return_dict=True
        )
        out = []
        for name in layers:
            if name == "tokens":
                tokens = tower.last_hidden_state.flatten(2).permute(0, 2, 1)
                out.append(model.multi_modal_projector(tokens))
            else:
                out.append(tower.hidden_states[FEATURE_LAYERS.index(name)])
        return out

    def yes_no(self, pixels: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """[B, 2] log-probabilities of "yes" and "no", renormalised over the two."""
        both = torch.cat([pixels, pixels])
        logp = self.vlm.answer_logprob(
            self.normalise(both), prompts + prompts, ["yes"] * len(prompts) + ["no"] * len(prompts)
        )
        return torch.log_softmax(torch.stack(logp.chunk(2), dim=1), dim=1)


def pope_prompts(
    objects: list[tuple[tuple[str, str], ...]], rng: np.random.Generator
) -> Callable[[np.ndarray], list[str]]:
    """A POPE question per drawn scene for the stability term: half about an object present,
    half about a random object type (mostly absent)."""
    from smoothguard.synthetic.synthpope import pope_prompt
    from smoothguard.synthetic.synthpope.scenes import OBJECT_TYPES

    def prompts(index: np.ndarray) -> list[str]:
        asked = []
        for i in index:
            present = objects[int(i)]
            if present and rng.random() < 0.5:
                asked.append(pope_prompt(*present[int(rng.integers(len(present)))]))
            else:
                asked.append(pope_prompt(*OBJECT_TYPES[int(rng.integers(len(OBJECT_TYPES)))]))
        return asked

    return prompts


# -- training --------------------------------------------------------------------------------


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB over the whole batch (peak 1)."""
    mse = float(((a.clamp(0, 1) - b) ** 2).mean())
    return 10 * math.log10(1.0 / max(mse, 1e-12))


@torch.no_grad()
def validate(
    model: UNet, images: np.ndarray, seed: int, batch_size: int = 64
) -> dict[str, dict[str, float | None]]:
    """PSNR of noisy and denoised copies of validation scenes at fixed sigmas (clipped noise)."""
    model.eval()
    clean = to_pixels(images)
    out: dict[str, dict[str, float | None]] = {}
    for sigma in VAL_SIGMAS:
        rng = np.random.default_rng([seed, int(sigma * 1000)])
        noisy = add_noise(clean, np.full(len(clean), sigma), True, rng)
        denoised = torch.cat(
            [
                model(
                    noisy[lo : lo + batch_size],
                    torch.full((len(noisy[lo : lo + batch_size]),), sigma),
                )
                for lo in range(0, len(noisy), batch_size)
            ]
        )
        out[str(sigma)] = {
            "psnr_noisy": round(psnr(noisy, clean), 2) if sigma > 0 else None,
            "psnr_denoised": round(psnr(denoised, clean), 2),
            "mse_denoised": float(((denoised - clean) ** 2).mean()),
        }
    return out


def build(config: TrainConfig) -> UNet:
    model_config = dataclasses.replace(config.model, sigma_max=config.sigma_max)
    return UNet(model_config)


def train_model(
    config: TrainConfig,
    images: np.ndarray,
    log: Callable[[str], None] = print,
    progress: bool = True,
    objects: list[tuple[tuple[str, str], ...]] | None = None,
    deadline: float | None = None,
) -> tuple[UNet, dict[str, Any]]:
    """The training loop on rendered images ([N, H, W, 3] uint8); returns the model (eval mode)
    and the run's record. Seeds torch and numpy itself, so equal inputs give equal weights."""
    if config.loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {config.loss!r}")
    unknown = set(config.feature_layers) - set(FEATURE_LAYERS)
    if unknown:
        raise ValueError(f"feature layers must be among {FEATURE_LAYERS}, got {sorted(unknown)}")
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(config.seed)
    model = build(config).train()
    terms = VlmTerms(config.vlm) if config.loss != "mse" else None
    prompts = None
    if config.loss == "mse+stability":
        if objects is None:
            raise ValueError("the stability loss needs each scene's objects")
        prompts = pope_prompts(objects, rng)
    decay = [p for p in model.parameters() if p.ndim > 1]
    other = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": other, "weight_decay": 0.0},
        ],
        lr=config.lr,
    )
    data = torch.from_numpy(images)
    if deadline is None:
        deadline = started + 60 * config.max_minutes
    losses: list[float] = []
    extras: list[float] = []
    stopped_early = False
    bar = tqdm(
        total=config.steps,
        desc=f"denoiser ({config.loss})",
        unit="step",
        mininterval=1.0,
        disable=not progress,
    )
    for step in range(config.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, config.steps, config.lr, config.warmup)
        clean, noisy, sigma, index = sample_batch(data, config, rng)
        estimate = model.estimate(noisy, sigma)
        mse = F.mse_loss(estimate, clean)
        loss = mse
        model_aware = terms is not None and step >= config.model_aware_from * config.steps
        if model_aware and config.loss == "mse+features":
            with torch.no_grad():
                targets = terms.features(clean, config.feature_layers)
            got = terms.features(estimate.clamp(0, 1), config.feature_layers)
            extra = sum(
                (F.mse_loss(g, t) / t.square().mean() for g, t in zip(got, targets, strict=True)),
                start=torch.zeros(()),
            )
            loss = loss + config.feature_weight * extra
            extras.append(extra.item())
        elif model_aware and prompts is not None:
            asked = prompts(index)
            with torch.no_grad():
                target = terms.yes_no(clean, asked)
            got = terms.yes_no(estimate.clamp(0, 1), asked)
            extra = F.kl_div(got, target, log_target=True, reduction="batchmean")
            loss = loss + config.stability_weight * extra
            extras.append(extra.item())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(mse.item())
        bar.update(1)
        if step % 10 == 0:
            post = {"mse": f"{np.mean(losses[-20:]):.5f}"}
            if extras:
                post["extra"] = f"{np.mean(extras[-20:]):.4f}"
            bar.set_postfix(post)
        if time.perf_counter() > deadline:
            stopped_early = True
            log(f"time budget reached after {step + 1} steps: stopping early")
            break
    bar.close()
    model.eval().requires_grad_(False)
    record: dict[str, Any] = {
        "train_seconds": round(time.perf_counter() - started, 1),
        "steps": len(losses),
        "stopped_early": stopped_early,
        "loss_first": float(np.mean(losses[:10])),
        "loss_last": float(np.mean(losses[-20:])),
        "parameters": parameter_count(model),
    }
    if extras:
        record["extra_first"] = float(np.mean(extras[:10]))
        record["extra_last"] = float(np.mean(extras[-20:]))
    return model, record


def save(model: UNet, out: Path, config: TrainConfig | None = None) -> None:
    """config.json (kind, architecture, units) + model.safetensors: what Denoiser.load reads."""
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    body: dict[str, Any] = {
        "denoiser": KIND,
        "architecture": model.config.to_dict(),
        "sigma_unit": "pixel",
        "sigma_max": model.config.sigma_max,
        "image_size": model.config.image_size,
        "output": "clean estimate in [0, 1] pixels",
    }
    if config is not None:
        body["training"] = {
            k: v for k, v in dataclasses.asdict(config).items() if k not in ("model", "vlm")
        }
    (out / "config.json").write_text(json.dumps(body, indent=2) + "\n")


def train(out: Path, config: TrainConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Render the scenes, train, validate and save to `out`; returns the run's record."""
    started = time.perf_counter()
    images, objects = render_scenes("train", config.scenes, config.workers)
    val, _ = render_scenes("validation", config.val_scenes, config.workers)
    data_seconds = time.perf_counter() - started
    log(f"rendered {len(images)} train and {len(val)} validation scenes in {data_seconds:.1f}s")
    deadline = started + 60 * config.max_minutes  # the cap counts the rendering too
    model, record = train_model(config, images, log, objects=objects, deadline=deadline)
    record["data_seconds"] = round(data_seconds, 1)
    record["validation"] = validate(model, val, config.seed)
    save(model, out, config)
    return record


# -- what matters: the VLM's answers ---------------------------------------------------------

EVAL_SIGMAS: tuple[float, ...] = (0.125, 0.25, 0.5)


def evaluate(
    denoiser: Callable[[torch.Tensor, torch.Tensor | float], torch.Tensor],
    vlm: Any,
    *,
    n_pope: int = 600,
    sigmas: tuple[float, ...] = EVAL_SIGMAS,
    seed: int = 0,
    batch_size: int = 100,
    split: str = "test",
) -> dict[str, Any]:
    """SynthVLM's POPE accuracy on the clean image, one noisy copy, and that copy denoised,
    plus PSNR of the noisy and the denoised copy, per sigma (pixel units).

    The copies are drawn exactly as the defense draws them (core.noise.noisy_copies, pixel
    unit, clipped, one generator per sigma seeded `seed`, `batch_size` images at a time), so the
    noisy column is SynthVLM's own model card's noisy row."""
    from smoothguard.core.noise import make_rng, noisy_copies
    from smoothguard.synthetic.synthpope import load_benchmark, score_yes_no

    started = time.perf_counter()
    items = load_benchmark(split, n_pope, 0, 0)["pope"]  # type: ignore[arg-type]
    mean = torch.tensor(vlm.image_mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(vlm.image_std, dtype=torch.float32).view(1, 3, 1, 1)

    def accuracy(answers: list[str]) -> float:
        return float(
            np.mean([score_yes_no(a, it.answer) for a, it in zip(answers, items, strict=True)])
        )

    def ask(values: list[torch.Tensor]) -> list[str]:
        out: list[str] = []
        for lo, chunk in zip(range(0, len(items), batch_size), values, strict=True):
            prompts = [it.prompt for it in items[lo : lo + batch_size]]
            out += vlm.generate(chunk, prompts, max_new_tokens=4)
        return out

    clean = [
        vlm.preprocess([it.image for it in items[lo : lo + batch_size]])
        for lo in range(0, len(items), batch_size)
    ]
    rows: list[dict[str, Any]] = [{"sigma": 0.0, "pope_clean": accuracy(ask(clean))}]
    for sigma in tqdm(sigmas, desc="evaluate", unit="sigma"):
        rng = make_rng(np, seed)
        noisy, denoised = [], []
        sq_noisy = sq_denoised = 0.0
        for z in clean:
            copy = noisy_copies(
                z.numpy(),
                num_samples=2,
                sigma=sigma,
                unit="pixel",
                clip=True,
                mean=vlm.image_mean,
                std=vlm.image_std,
                rng=rng,
            )[:, 1]
            z_noisy = torch.from_numpy(np.ascontiguousarray(copy))
            x_clean, x_noisy = z * std + mean, z_noisy * std + mean
            with torch.no_grad():
                x_denoised = denoiser(x_noisy, sigma)
            noisy.append(z_noisy)
            denoised.append((x_denoised - mean) / std)
            sq_noisy += float(((x_noisy - x_clean) ** 2).sum())
            sq_denoised += float(((x_denoised - x_clean) ** 2).sum())
        count = sum(z.numel() for z in clean)
        rows.append(
            {
                "sigma": sigma,
                "psnr_noisy": round(10 * math.log10(count / sq_noisy), 2),
                "psnr_denoised": round(10 * math.log10(count / sq_denoised), 2),
                "pope_noisy": accuracy(ask(noisy)),
                "pope_denoised": accuracy(ask(denoised)),
            }
        )
    for row in rows[1:]:
        row["pope_clean"] = rows[0]["pope_clean"]
    return {
        "split": split,
        "pope_items": len(items),
        "noise": "pixel units, clipped to [0, 1] as the server's clip: true clips",
        "seed": seed,
        "seconds": round(time.perf_counter() - started, 1),
        "table": rows,
    }
