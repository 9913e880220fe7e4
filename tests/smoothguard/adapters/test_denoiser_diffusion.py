"""The diffusers-ddpm denoiser kind (one-shot DDPM denoising, Carlini et al. 2023) on a tiny
random UNet2DModel written to tmp_path: the one-shot formula, the timestep rule, gradients, any
image size, and clear errors for a folder it cannot use, all offline."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from ddpm_folder import BETAS, make_folder

from smoothguard.adapters.denoiser import KINDS, OWN_WEIGHTS, Denoiser

MODEL = Path(__file__).resolve().parents[3] / "models" / "denoiser"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """No hub access: HF_HUB_OFFLINE, and any socket connection is recorded and refused."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    attempts: list[Any] = []

    def refuse(self: socket.socket, address: Any) -> None:
        attempts.append(address)
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    yield attempts
    assert attempts == [], f"tried to connect: {attempts}"


def numpy_abar() -> np.ndarray:
    start, end, steps = BETAS
    return np.cumprod(1.0 - np.linspace(start, end, steps, dtype=np.float64))


def numpy_timestep(sigma: float) -> int:
    abar = numpy_abar()
    return int(np.argmin(np.abs(np.sqrt((1 - abar) / abar) - 2 * sigma)))


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder(tmp_path_factory.mktemp("ddpm"))


@pytest.fixture(scope="module")
def zero_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder(tmp_path_factory.mktemp("ddpm0"), zero_out=True)


def test_registered_beside_our_own_and_loads_offline(folder: Path) -> None:
    assert {"smoothguard-unet", "diffusers-ddpm"} <= set(KINDS)
    assert "diffusers-ddpm" in OWN_WEIGHTS
    denoiser = Denoiser.load(folder)
    assert denoiser.kind == "diffusers-ddpm" and denoiser.multiple == 4
    assert not any(p.requires_grad for p in denoiser.network.parameters())
    assert not denoiser.network.training
    assert Denoiser.load(MODEL).kind == "smoothguard-unet"  # the shipped one still loads


def test_the_server_does_not_import_diffusers_for_our_own_kind() -> None:
    code = (
        "import sys; from smoothguard.adapters.denoiser import Denoiser; "
        f"Denoiser.load({str(MODEL)!r}); assert 'diffusers' not in sys.modules, 'imported'"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("sigma", [0.0, 0.01, 0.12, 0.25, 0.5, 1.0, 3.0])
def test_a_zero_network_gives_the_input_back_clamped(zero_folder: Path, sigma: float) -> None:
    """eps = 0 leaves x0 = 2x - 1, i.e. the input: a wrong scale or offset shows here."""
    denoiser = Denoiser.load(zero_folder)
    gen = torch.Generator().manual_seed(1)
    pixels = torch.rand(2, 3, 16, 16, generator=gen) + 0.4 * torch.randn(
        2, 3, 16, 16, generator=gen
    )
    with torch.no_grad():
        out = denoiser(pixels, sigma)
    assert torch.allclose(out, pixels.clamp(0, 1), atol=1e-6, rtol=0)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_the_true_prediction_gives_the_clean_image_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prediction_type: str
) -> None:
    """x_t built from a clean image and known noise with an independent abar: a network that
    answers the truth must give the clean image back (catches a wrong abar or timestep)."""
    denoiser = Denoiser.load(make_folder(tmp_path, prediction_type=prediction_type, zero_out=True))
    gen = torch.Generator().manual_seed(2)
    clean = 0.1 + 0.8 * torch.rand(3, 3, 16, 16, generator=gen)
    eps = torch.randn(3, 3, 16, 16, generator=gen)
    sigma = torch.tensor([0.05, 0.25, 0.5])
    t = [numpy_timestep(float(s)) for s in sigma]
    abar = torch.tensor(numpy_abar()[t], dtype=torch.float32).view(-1, 1, 1, 1)
    a, b = abar.sqrt(), (1 - abar).sqrt()
    x0 = 2 * clean - 1
    # a noisy copy whose x_t = sqrt(abar) (2 noisy - 1) is exactly a x0 + b eps
    noisy = clean + (b / a) * eps / 2
    truth = {"epsilon": eps, "sample": x0, "v_prediction": a * eps - b * x0}[prediction_type]
    seen: list[torch.Tensor] = []

    def oracle(sample: torch.Tensor, timestep: torch.Tensor, **_: Any) -> SimpleNamespace:
        seen.append(timestep)
        assert torch.allclose(sample, a * x0 + b * eps, atol=1e-5)
        return SimpleNamespace(sample=truth)

    monkeypatch.setattr(denoiser.network.unet, "forward", oracle)
    with torch.no_grad():
        out = denoiser(noisy, sigma)
    assert torch.allclose(out, clean, atol=1e-4, rtol=0)
    assert seen[0].tolist() == t


def test_timestep_rule_matches_an_independent_computation(folder: Path) -> None:
    network = Denoiser.load(folder).network
    sigmas = [0.0, 0.03, 0.1, 0.125, 0.25, 0.33, 0.5, 1.0, 2.0, 50.0, 1000.0]
    expected = [numpy_timestep(s) for s in sigmas]
    assert network.timesteps(torch.tensor(sigmas)).tolist() == expected
    assert expected[0] == 0 and expected[-1] == BETAS[2] - 1
    assert len(set(expected)) == len(expected)  # these sigmas are far enough apart


def test_per_row_sigmas_reach_the_unet_as_per_row_timesteps(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    denoiser = Denoiser.load(folder)
    unet = denoiser.network.unet
    seen: list[torch.Tensor] = []
    original = unet.forward

    def spy(sample: torch.Tensor, timestep: torch.Tensor, **kwargs: Any) -> Any:
        seen.append(timestep.clone())
        return original(sample, timestep, **kwargs)

    monkeypatch.setattr(unet, "forward", spy)
    sigma = torch.tensor([0.1, 0.0, 0.5, 0.25])
    pixels = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        rows = denoiser(pixels, sigma)
        one = denoiser(pixels[2:3], 0.5)
    assert seen[0].tolist() == [numpy_timestep(float(s)) for s in sigma]
    assert torch.allclose(rows[2:3], one, atol=1e-5)
    assert torch.equal(rows[1], pixels[1].clamp(0, 1))  # sigma 0: the input, clamped
    assert not torch.allclose(rows[0], pixels[0], atol=1e-3)  # a random UNet changes the rest


def test_gradients_reach_the_pixels(folder: Path) -> None:
    denoiser = Denoiser.load(folder)
    pixels = torch.rand(2, 3, 16, 16).requires_grad_(True)
    denoiser(pixels, torch.tensor([0.25, 0.5])).square().sum().backward()
    assert pixels.grad is not None and bool(torch.isfinite(pixels.grad).all())
    assert float(pixels.grad.abs().sum()) > 0


@pytest.mark.parametrize("size", [(30, 30), (31, 17), (16, 16), (3, 5)])
def test_any_size_is_padded_and_cropped_back(folder: Path, size: tuple[int, int]) -> None:
    denoiser = Denoiser.load(folder)
    pixels = torch.rand(2, 3, *size)
    with torch.no_grad():
        out = denoiser(pixels, 0.25)
    assert out.shape == pixels.shape
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def _rewrite(path: Path, **changes: Any) -> None:
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


def _no_unet(root: Path) -> None:
    for f in (root / "unet").iterdir():
        f.unlink()
    (root / "unet").rmdir()


BREAKS: dict[str, tuple[Any, str]] = {
    "no unet subfolder": (_no_unet, r"is not a local folder"),
    "no weights": (
        lambda r: (r / "unet" / "diffusion_pytorch_model.safetensors").unlink(),
        r"lacks diffusion_pytorch_model\.safetensors \(safetensors only\)",
    ),
    "no scheduler": (
        lambda r: (r / "scheduler" / "scheduler_config.json").unlink(),
        r"lacks scheduler_config\.json",
    ),
    "hub id": (
        lambda r: _rewrite(r / "config.json", unet="google/ddpm-cifar10-32"),
        r"'unet'.*not a local folder.*never a hub id",
    ),
    "outside": (
        lambda r: _rewrite(r / "config.json", scheduler="../elsewhere"),
        r"must be a subfolder",
    ),
    "bad unet json": (
        lambda r: (r / "unet" / "config.json").write_text("{not json"),
        r"unet/config\.json is not valid JSON",
    ),
    "not a UNet2DModel": (
        lambda r: _rewrite(r / "unet" / "config.json", _class_name="UNet2DConditionModel"),
        r"_class_name must be 'UNet2DModel'",
    ),
    "six channels out": (
        lambda r: _rewrite(r / "unet" / "config.json", out_channels=6),
        r"config\.json: out_channels must be 3",
    ),
    "one channel in": (
        lambda r: _rewrite(r / "unet" / "config.json", in_channels=1),
        r"in_channels must be 3",
    ),
    "fourier time": (
        lambda r: _rewrite(r / "unet" / "config.json", time_embedding_type="fourier"),
        r"time_embedding_type 'fourier'",
    ),
    "prediction type": (
        lambda r: _rewrite(r / "scheduler" / "scheduler_config.json", prediction_type="flow"),
        r"scheduler_config\.json: prediction_type 'flow' is not supported",
    ),
    "not a beta schedule": (
        lambda r: _rewrite(
            r / "scheduler" / "scheduler_config.json", _class_name="ScoreSdeVeScheduler"
        ),
        r"scheduler_config\.json: _class_name must be one of",
    ),
    "unknown beta schedule": (
        lambda r: _rewrite(r / "scheduler" / "scheduler_config.json", beta_schedule="zigzag"),
        r"not a usable noise schedule",
    ),
    "weights of another shape": (
        lambda r: _rewrite(r / "unet" / "config.json", block_out_channels=[8, 16, 32]),
        r"not a loadable UNet2DModel checkpoint",
    ),
}


@pytest.mark.parametrize("name", list(BREAKS))
def test_an_unusable_folder_is_a_value_error_naming_the_problem(tmp_path: Path, name: str) -> None:
    root = make_folder(tmp_path / "ddpm")
    Denoiser.load(root)  # usable before the break
    breaks, message = BREAKS[name]
    breaks(root)
    with pytest.raises(ValueError, match=message):
        Denoiser.load(root)


def test_a_hub_id_as_the_checkpoint_is_not_fetched() -> None:
    with pytest.raises(ValueError, match="not a directory"):
        Denoiser.load("google/ddpm-cifar10-32")


def test_a_flat_hub_snapshot_works_from_one_subfolder(tmp_path: Path) -> None:
    """google/ddpm-cifar10-32's layout: the UNet's files and scheduler_config.json together."""
    root = make_folder(tmp_path / "ddpm")
    flat = root / "ddpm-cifar10-32"
    (root / "unet").rename(flat)
    (root / "scheduler" / "scheduler_config.json").rename(flat / "scheduler_config.json")
    _rewrite(root / "config.json", unet="ddpm-cifar10-32", scheduler="ddpm-cifar10-32")
    assert Denoiser.load(root).multiple == 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_it_answers_as_on_the_cpu(folder: Path) -> None:
    pixels = torch.rand(3, 3, 30, 30, generator=torch.Generator().manual_seed(4))
    sigma = torch.tensor([0.0, 0.25, 0.5])
    with torch.no_grad():
        cpu = Denoiser.load(folder)(pixels, sigma)
        gpu = Denoiser.load(folder, device="cuda")(pixels, sigma)
    assert gpu.device.type == "cuda"
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-4)
