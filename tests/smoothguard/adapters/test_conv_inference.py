"""Folding a frozen convolutional tower for inference keeps what the model computes."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from smoothguard.adapters.conv_inference import fold_batch_norms, for_inference
from smoothguard.adapters.mllm import VisionLanguageModel
from smoothguard.core.noise import make_rng, noisy_copies
from smoothguard.synthetic.synthpope import generate_split
from smoothguard.synthetic.synthpope.questions import pope_prompt

MODEL = Path(__file__).resolve().parents[3] / "models" / "synthvlm"


class ConvLayer(nn.Module):
    """Hugging Face's convolutional layer shape: convolution, normalization, activation."""

    def __init__(self, cin: int, cout: int, track: bool = True) -> None:
        super().__init__()
        self.convolution = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.normalization = nn.BatchNorm2d(cout, track_running_stats=track)
        self.activation = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.normalization(self.convolution(x)))


def trained_stack(track: bool = True) -> nn.Module:
    torch.manual_seed(0)
    stack = nn.Sequential(ConvLayer(3, 8, track), ConvLayer(8, 4, track))
    stack.train()
    for _ in range(3):  # running statistics away from their initial 0 / 1
        stack(torch.randn(4, 3, 8, 8) * 2 + 1)
    return stack.eval()


def test_folding_keeps_the_function_and_removes_the_norms() -> None:
    stack = trained_stack()
    x = torch.randn(5, 3, 8, 8)
    expected = stack(x)
    folded = copy.deepcopy(stack)
    assert for_inference(folded) is True
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert folded[0].convolution.weight.is_contiguous(memory_format=torch.channels_last)
    got = folded(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(folded(x), expected, rtol=1e-5, atol=1e-5)  # any layout works


def test_half_precision_weights_are_folded_in_float32() -> None:
    half = trained_stack().to(torch.bfloat16)
    exact = copy.deepcopy(half).float()  # the same stored values, folded in float32
    fold_batch_norms(exact)
    fold_batch_norms(half)
    for got, want in zip(half.modules(), exact.modules(), strict=True):
        if isinstance(got, nn.Conv2d):
            assert got.weight.dtype == torch.bfloat16
            # one rounding of the float32 result, not a chain of bfloat16 ones
            assert torch.equal(got.weight, want.weight.to(torch.bfloat16))


def test_training_models_and_norms_without_statistics_are_not_folded() -> None:
    stack = trained_stack()
    stack.train()
    with pytest.raises(ValueError, match="eval mode"):
        fold_batch_norms(stack)
    batch_stats = trained_stack(track=False)
    assert fold_batch_norms(batch_stats) == 0
    assert for_inference(batch_stats) is False
    assert sum(isinstance(m, nn.BatchNorm2d) for m in batch_stats.modules()) == 2


def test_a_tower_without_batch_norms_is_left_alone() -> None:
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LayerNorm(4)).eval()
    weight = plain[0].weight.clone()
    assert for_inference(plain) is False
    assert plain[0].weight.is_contiguous() and torch.equal(plain[0].weight, weight)


@pytest.fixture(scope="module")
def pair(one_torch_thread: None) -> tuple[VisionLanguageModel, VisionLanguageModel]:
    """The shipped model as load() gives it, and the same checkpoint left unfolded."""
    return VisionLanguageModel.load(MODEL), VisionLanguageModel.load(MODEL, fold=False)


def test_the_default_model_loads_folded(
    pair: tuple[VisionLanguageModel, VisionLanguageModel],
) -> None:
    loaded, raw = pair
    assert not any(isinstance(m, nn.BatchNorm2d) for m in loaded.model.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in raw.model.modules()) > 0


def test_folded_model_answers_and_gradients_match_the_checkpoint(
    pair: tuple[VisionLanguageModel, VisionLanguageModel],
) -> None:
    loaded, raw = pair
    for i, scene in enumerate(generate_split("validation", 4)):
        pixels = loaded.preprocess([scene.image]).numpy()[0]
        copies = torch.as_tensor(
            noisy_copies(
                pixels,
                num_samples=4,
                sigma=0.25,
                mean=loaded.image_mean,
                std=loaded.image_std,
                rng=make_rng(np, i),
            )
        )
        for prompt in (pope_prompt(*scene.objects[0]), "Describe the image."):
            assert loaded.generate(copies, prompt, 12) == raw.generate(copies, prompt, 12)
        prompt = pope_prompt(*scene.objects[0])
        grads = []
        for vlm in (loaded, raw):
            x = copies.clone().requires_grad_(True)
            vlm.answer_logprob(x, prompt, ["yes"] * len(x)).sum().backward()
            grads.append(x.grad)
        torch.testing.assert_close(grads[0], grads[1], rtol=1e-3, atol=1e-5)
