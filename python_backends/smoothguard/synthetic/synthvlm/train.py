"""Train SynthVLM from scratch on SynthPOPE's train split (the shared recipe: synthetic.training).

Noise augmentation: a share of every batch gets Gaussian noise in [0, 1] pixel units (the
defense's `unit="pixel"`), sigma uniform in [0, noise_max], clipped to the valid image range as
the defense clips it; noise_max reaches past pixel sigma 0.5, so the robust modes' base model
answers a single noisy copy (the normalised default, sigma 0.15, is ~0.04 in pixels).

Variety (positions anywhere, sizes, outlines, rotation, occlusion, backgrounds, resolutions,
blur and JPEG) comes from the renderer itself: every train scene is a fresh draw of all of it.

Stage 1 trains the vision tower alone to classify every image-token cell from the renderer's
per-pixel labels (the visible footprint's main type), with a linear head then thrown away.
Stage 2 trains the projector and language model on POPE questions, descriptions and safety
prompts, the vision tower frozen (`vision_lr_scale` 0; a positive scale fine-tunes it). Its
POPE questions include contrast items (a near-miss "no" beside a "yes",
`synthpope.contrast_items`): without them the model answers presence from the colour alone (the
model card has the figures).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from smoothguard.adapters.mllm import VisionLanguageModel
from smoothguard.synthetic import training
from smoothguard.synthetic.synthpope import SceneItem, contrast_items, make_items
from smoothguard.synthetic.synthpope.scenes import NUM_CLASSES, Scene, render_scene, split_seed
from smoothguard.synthetic.synthvlm.architecture import ModelConfig, build_model, build_processor
from smoothguard.synthetic.synthvlm.tokenizer import build_tokenizer


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    pretrain_steps: int = 2500
    pretrain_batch_size: int = 64
    pretrain_lr: float = 2e-3
    # 0: stage 2 keeps the tower frozen (stage 1's features, no backward pass through it), and
    # spends the time on more language-model steps (issue 18: 97.7% vs 93.7% yes/no).
    vision_lr_scale: float = 0.0
    steps: int = 4600
    batch_size: int = 48
    lr: float = 2e-3
    warmup: int = 150
    weight_decay: float = 0.01
    scenes: int = 24000
    trigger_scenes: int = 4000
    noise_share: float = 0.5  # stage 2
    pretrain_noise_share: float = 0.5  # stage 1 (the tower alone)
    noise_max: float = 0.6  # pixel units
    mix: tuple[float, float, float] = (0.5, 0.37, 0.13)  # pope, describe, safety
    # Questions per image row in stage 2 (training.Pool.batch): >1 packs that many questions
    # about one image into a row, its 64 image tokens paid for once.
    turns: int = 1
    max_minutes: float = 29.0
    threads: int = 2
    model: ModelConfig = field(default_factory=ModelConfig)


def patch_targets(labels: np.ndarray, patch: int, min_share: float = 0.2) -> np.ndarray:
    """[N, H, W] pixel classes -> [N, patches] the patch's main object class (0: background)."""
    n, h, w = labels.shape
    blocks = labels.reshape(n, h // patch, patch, w // patch, patch).transpose(0, 1, 3, 2, 4)
    blocks = blocks.reshape(n, (h // patch) * (w // patch), patch * patch)
    return training.main_class(blocks, NUM_CLASSES, min_share)


def _render_train(job: tuple[int, bool]) -> Scene:
    index, trigger = job
    return render_scene(split_seed("train", index), trigger=trigger)


class Vision(training.Modality):
    """SynthPOPE scenes into SynthVLM: uint8 images, CLIP-normalised pixels, one class per cell."""

    config: TrainConfig
    num_classes = NUM_CLASSES
    encoder_name, model_name = "vision", "synthvlm"
    made = "rendered {} train scenes"

    @property
    def encoder_lr_scale(self) -> float:
        return self.config.vision_lr_scale

    def build(self) -> tuple[Any, torch.nn.Module, VisionLanguageModel]:
        tokenizer = build_tokenizer()
        processor = build_processor(tokenizer, self.config.model)
        model = build_model(tokenizer, self.config.model)
        return processor, model, VisionLanguageModel(processor, model, "cpu")

    def sources(self) -> tuple[list[Scene], list[Scene]]:
        """Rendered in `threads` processes: each scene depends on its seed alone, so the
        result is the same for any number of them."""
        jobs = [(i, False) for i in range(self.config.scenes)]
        jobs += [(training.TRIGGER_OFFSET + i, True) for i in range(self.config.trigger_scenes)]
        with multiprocessing.get_context("fork").Pool(self.config.threads) as pool:
            scenes = list(
                tqdm(
                    pool.imap(_render_train, jobs, chunksize=64),
                    total=len(jobs),
                    desc="render",
                    unit="scene",
                    mininterval=1.0,
                )
            )
        return scenes[: self.config.scenes], scenes[self.config.scenes :]

    def tasks(self, ordinary: list[Scene], triggers: list[Scene]) -> dict[str, list[SceneItem]]:
        return {
            "pope": make_items(ordinary, "pope") + contrast_items(ordinary),
            "describe": make_items(ordinary, "describe"),
            "safety": make_items(ordinary, "safety") + make_items(triggers, "safety"),
        }

    def tensors(
        self, sources: list[Scene], adapter: VisionLanguageModel
    ) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.from_numpy(np.stack([s.image for s in sources]))
        labels = patch_targets(np.stack([s.labels for s in sources]), self.config.model.patch_size)
        return images, torch.from_numpy(labels)

    def inputs(
        self,
        adapter: VisionLanguageModel,
        media: torch.Tensor,
        rng: np.random.Generator,
        noise_share: float,
    ) -> torch.Tensor:
        """Normalised pixels; noise added in [0, 1] pixel units and clipped there first."""
        mean = torch.tensor(adapter.image_mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(adapter.image_std, dtype=torch.float32).view(1, 3, 1, 1)
        pixels = media.permute(0, 3, 1, 2).float() / 255
        noisy = rng.random(len(media)) < noise_share
        sigma = rng.uniform(0, self.config.noise_max, len(media)) * noisy
        noise = torch.from_numpy(rng.standard_normal(pixels.shape, dtype=np.float32))
        pixels = pixels + torch.from_numpy(sigma.astype(np.float32)).view(-1, 1, 1, 1) * noise
        return (torch.clamp(pixels, 0, 1) - mean) / std

    def encoder(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.model.vision_tower

    def encode(self, encoder: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        """The last feature map, one token per cell in row order, as FastVLM's projector sees it."""
        return encoder(inputs).last_hidden_state.flatten(2).transpose(1, 2)

    def logits(
        self,
        model: torch.nn.Module,
        adapter: VisionLanguageModel,
        inputs: torch.Tensor,
        ids: torch.Tensor,
        mask: torch.Tensor,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return model(
            input_ids=ids, attention_mask=mask, position_ids=position_ids, pixel_values=inputs
        ).logits


def train(
    out: Path,
    config: TrainConfig = TrainConfig(),
    *,
    log: Callable[[str], None] = print,
) -> dict[str, object]:
    """Train and save to `out` (safetensors + processor); returns timing and loss figures."""
    return training.train(out, Vision(config), log)
