"""The shipped denoiser behind its adapter: loads offline, returns images of the input's size,
lets gradients through, takes most of the noise away, and leaves clean images alone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from smoothguard.adapters.denoiser import Denoiser
from smoothguard.synthetic.synthpope import generate_split

MODEL = Path(__file__).resolve().parents[3] / "models" / "denoiser"
# Denoised-to-noisy MSE ratio the shipped model must stay under on validation scenes: measured
# 0.075 / 0.058 (clipped / not) at sigma 0.25 and 0.064 / 0.038 at 0.5; the floors leave 2x.
MSE_RATIO = {0.25: 0.15, 0.5: 0.12}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def denoiser() -> Denoiser:
    return Denoiser.load(MODEL)


@pytest.fixture(scope="module")
def clean() -> torch.Tensor:
    images = np.stack([s.image for s in generate_split("validation", 48)])
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255


def test_checkpoint_describes_itself(denoiser: Denoiser) -> None:
    config = json.loads((MODEL / "config.json").read_text())
    assert config["denoiser"] == "smoothguard-unet" and config["sigma_unit"] == "pixel"
    assert config["sigma_max"] >= 0.5 and config["image_size"] == 64
    assert (MODEL / "model.safetensors").stat().st_size < 2_000_000
    assert not denoiser.network.training
    assert not any(p.requires_grad for p in denoiser.network.parameters())


@pytest.mark.parametrize("size", [(64, 64), (63, 70), (5, 3), (97, 64)])
def test_output_is_an_image_of_the_input_size(denoiser: Denoiser, size: tuple[int, int]) -> None:
    gen = torch.Generator().manual_seed(0)
    pixels = torch.rand(3, 3, *size, generator=gen) + 0.5 * torch.randn(3, 3, *size, generator=gen)
    with torch.no_grad():
        out = denoiser(pixels, torch.tensor([0.0, 0.25, 0.5]))
    assert out.shape == pixels.shape
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    with torch.no_grad():
        assert torch.equal(denoiser(pixels, 0.25)[1], out[1])  # a float is every row's sigma


def test_gradients_reach_the_input(denoiser: Denoiser) -> None:
    pixels = torch.rand(2, 3, 63, 70).requires_grad_(True)
    denoiser(pixels, 0.25).square().sum().backward()
    assert pixels.grad is not None and bool(torch.isfinite(pixels.grad).all())
    assert float(pixels.grad.abs().sum()) > 0


@pytest.mark.parametrize("sigma", [0.25, 0.5])
@pytest.mark.parametrize("clip", [True, False])
def test_takes_most_of_the_noise_away(
    denoiser: Denoiser, clean: torch.Tensor, sigma: float, clip: bool
) -> None:
    gen = torch.Generator().manual_seed(int(sigma * 100))
    noisy = clean + sigma * torch.randn(clean.shape, generator=gen)
    if clip:
        noisy = noisy.clamp(0, 1)
    with torch.no_grad():
        denoised = denoiser(noisy, sigma)
    ratio = float(((denoised - clean) ** 2).mean() / ((noisy - clean) ** 2).mean())
    assert ratio < MSE_RATIO[sigma], ratio


def test_near_identity_on_clean_images(denoiser: Denoiser, clean: torch.Tensor) -> None:
    with torch.no_grad():
        out = denoiser(clean, 0.0)
    assert float(((out - clean) ** 2).mean()) < 1e-3  # PSNR > 30 dB


def test_bad_directories_are_value_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a directory"):
        Denoiser.load(tmp_path / "absent")
    with pytest.raises(ValueError, match="lacks"):
        Denoiser.load(tmp_path)
    shutil.copy(MODEL / "config.json", tmp_path / "config.json")
    with pytest.raises(ValueError, match=r"model\.safetensors"):
        Denoiser.load(tmp_path)
    shutil.copy(MODEL / "model.safetensors", tmp_path / "model.safetensors")
    Denoiser.load(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "denoiser": "mystery"}))
    with pytest.raises(ValueError, match="unknown denoiser kind"):
        Denoiser.load(tmp_path)


def test_bad_sigma_is_refused(denoiser: Denoiser) -> None:
    with pytest.raises(ValueError, match="sigma"):
        denoiser(torch.rand(2, 3, 8, 8), torch.tensor([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="non-negative"):
        denoiser(torch.rand(1, 3, 8, 8), -0.1)
