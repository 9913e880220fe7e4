"""The denoiser's recipe: the network is the identity until trained, its output a valid image,
and a seeded run is reproducible bit for bit and learns to take noise away."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from smoothguard.adapters.denoiser_unet import UNet, UNetConfig
from smoothguard.synthetic.denoiser.train import (
    TrainConfig,
    add_noise,
    render_scenes,
    save,
    to_pixels,
    train_model,
)

TINY = UNetConfig(channels=(8, 16), groups=4, embed=8, unshuffle=2)
CONFIG = TrainConfig(
    scenes=24,
    steps=25,
    batch_size=8,
    lr=3e-3,
    warmup=2,
    threads=1,
    loss="mse",
    model=TINY,
    max_minutes=5,
)


@pytest.fixture(autouse=True, scope="module")
def restore_threads() -> Iterator[None]:
    """train_model sets torch's thread count (1 here); put the session's back afterwards."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return render_scenes("train", CONFIG.scenes)[0]


def test_untrained_net_is_identity_and_output_is_an_image() -> None:
    torch.manual_seed(0)
    net = UNet(UNetConfig()).requires_grad_(False)
    x = torch.rand(2, 3, 64, 64)
    assert torch.equal(net(x, torch.tensor([0.0, 0.3])), x)  # zero output layer
    wild = torch.randn(3, 3, 32, 48) * 2
    out = net(wild, torch.tensor([0.0, 0.25, 0.6]))
    assert out.shape == wild.shape
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_config_round_trips() -> None:
    config = UNetConfig(channels=(8, 16, 24), unshuffle=2, sigma_max=0.5)
    assert UNetConfig.from_dict(config.to_dict()) == config
    assert config.multiple == 8


def test_training_is_reproducible_and_lowers_the_loss(images: np.ndarray, tmp_path) -> None:
    first, record = train_model(CONFIG, images, progress=False)
    second, _ = train_model(CONFIG, images, progress=False)
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert not any(p.requires_grad for p in first.parameters())
    assert record["steps"] == CONFIG.steps and not record["stopped_early"]

    # Against the untrained net (the identity), on a fixed noisy batch it never trained on.
    clean = to_pixels(images[:8])
    noisy = add_noise(clean, np.full(8, 0.3), True, np.random.default_rng(123))
    sigma = torch.full((8,), 0.3)
    before = float(((noisy - clean) ** 2).mean())
    with torch.no_grad():
        after = float(((first(noisy, sigma) - clean) ** 2).mean())
    assert after < 0.9 * before, (before, after)
    assert record["loss_last"] < record["loss_first"]

    save(first, tmp_path, CONFIG)
    from smoothguard.adapters.denoiser import Denoiser

    loaded = Denoiser.load(tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(noisy, sigma), first(noisy, sigma))


def test_another_seed_gives_other_weights(images: np.ndarray) -> None:
    short = dataclasses.replace(CONFIG, steps=3)
    a, _ = train_model(short, images, progress=False)
    b, _ = train_model(dataclasses.replace(short, seed=1), images, progress=False)
    assert not torch.equal(a.out.weight, b.out.weight)


def test_feature_term_switches_on_when_asked(images: np.ndarray) -> None:
    # 4 steps, the frozen SynthVLM's image tokens from the third on
    config = dataclasses.replace(CONFIG, steps=4, loss="mse+features", model_aware_from=0.5)
    model, record = train_model(config, images, progress=False)
    assert record["steps"] == 4 and record["extra_first"] > 0
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_unknown_loss_is_refused(images: np.ndarray) -> None:
    with pytest.raises(ValueError, match="loss must be one of"):
        train_model(dataclasses.replace(CONFIG, loss="l1"), images, progress=False)
    with pytest.raises(ValueError, match="feature layers"):
        bad = dataclasses.replace(CONFIG, loss="mse+features", feature_layers=("pixels",))
        train_model(bad, images, progress=False)
