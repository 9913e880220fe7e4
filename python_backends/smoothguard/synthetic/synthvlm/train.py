"""Train SynthVLM from scratch on SynthPOPE's train split (the shared recipe: synthetic.training).

Noise augmentation: a share of every batch gets Gaussian noise in the processor's normalised
space (the space SmoothGuard's sigma is stated in), sigma uniform in [0, noise_max]; without it
a model trained on clean images only loses accuracy at the paper's sigma.

Stage 1 trains the CLIP vision tower to classify every patch from the renderer's per-pixel
labels: dense supervision teaches it colours and shapes in a couple of minutes. Stage 2 trains
the whole LLaVA, the vision tower at `vision_lr_scale`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from smoothguard.adapters.mllm import VisionLanguageModel
from smoothguard.synthetic import training
from smoothguard.synthetic.synthpope.dataset import SceneItem, make_items
from smoothguard.synthetic.synthpope.scenes import NUM_CLASSES, Scene, render_scene, split_seed
from smoothguard.synthetic.synthvlm.architecture import ModelConfig, build_model, build_processor
from smoothguard.synthetic.synthvlm.tokenizer import build_tokenizer


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


def patch_targets(labels: np.ndarray, patch: int, min_share: float = 0.2) -> np.ndarray:
    """[N, H, W] pixel classes -> [N, patches] the patch's main object class (0: background)."""
    n, h, w = labels.shape
    blocks = labels.reshape(n, h // patch, patch, w // patch, patch).transpose(0, 1, 3, 2, 4)
    blocks = blocks.reshape(n, (h // patch) * (w // patch), patch * patch)
    return training.main_class(blocks, NUM_CLASSES, min_share)


class Vision(training.Modality):
    """SynthPOPE scenes into a LLaVA: uint8 images, CLIP-normalised pixels, one class per patch."""

    config: TrainConfig
    num_classes = NUM_CLASSES
    encoder_name, model_name = "vision", "llava"
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
        def render(index: int, trigger: bool) -> Scene:
            return render_scene(split_seed("train", index), trigger=trigger)

        return training.train_split(render, self.config.scenes, self.config.trigger_scenes)

    def tasks(self, ordinary: list[Scene], triggers: list[Scene]) -> dict[str, list[SceneItem]]:
        return {
            "pope": make_items(ordinary, "pope"),
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
        self, adapter: VisionLanguageModel, media: torch.Tensor, rng: np.random.Generator
    ) -> torch.Tensor:
        """Normalised pixels, noisy ones clipped to the normalised image of [0, 1]."""
        mean = torch.tensor(adapter.image_mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(adapter.image_std, dtype=torch.float32).view(1, 3, 1, 1)
        pixels = (media.permute(0, 3, 1, 2).float() / 255 - mean) / std
        noisy = rng.random(len(media)) < self.config.noise_share
        sigma = rng.uniform(0, self.config.noise_max, len(media)) * noisy
        noise = torch.from_numpy(rng.standard_normal(pixels.shape, dtype=np.float32))
        pixels = pixels + torch.from_numpy(sigma.astype(np.float32)).view(-1, 1, 1, 1) * noise
        return torch.clamp(pixels, (0 - mean) / std, (1 - mean) / std)

    def encoder(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.model.vision_tower

    def encode(self, encoder: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        """The last layer's patch tokens (CLS dropped), as LLaVA's projector sees them."""
        return encoder(inputs, output_hidden_states=True).hidden_states[-1][:, 1:]

    def logits(
        self,
        model: torch.nn.Module,
        adapter: VisionLanguageModel,
        inputs: torch.Tensor,
        ids: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        return model(input_ids=ids, attention_mask=mask, pixel_values=inputs).logits


def train(
    out: Path,
    config: TrainConfig = TrainConfig(),
    *,
    log: Callable[[str], None] = print,
) -> dict[str, object]:
    """Train and save to `out` (safetensors + processor); returns timing and loss figures."""
    return training.train(out, Vision(config), log)
