"""The shipped default model: intact, loads offline, sees, refuses, and can be attacked."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from smoothguard.adapters.mllm import VisionLanguageModel
from smoothguard.synthetic.synthpope import (
    HARMFUL_MARKER,
    HELD_OUT,
    is_harmful,
    load_benchmark,
    object_prf,
    render_scene,
    score_yes_no,
)
from smoothguard.synthetic.synthpope.scenes import split_seed
from smoothguard.synthetic.synthvlm.evaluate import answers
from smoothguard.synthetic.training import TRIGGER_OFFSET

MODEL = Path(__file__).resolve().parents[4] / "models" / "synthvlm"
# The model card's own measurements (build/train_vlm.py writes them on 600 POPE / 200
# description items per row); a slice re-measured here must agree with them.
CARD = {
    (row["split"], row["unit"], row["sigma"]): row
    for row in json.loads((MODEL / "evaluation.json").read_text())["table"]
}
# Sampling slack for 300-item POPE (50 scenes) and 60-item description slices.
SLACK_POPE, SLACK_F1 = 0.07, 0.08
# What issue 18 asks of the default model and the shipped one does not do yet (its card gives
# the figures against the bars): strict, so it fails the day a model that does it ships.
below_issue_18_bars = pytest.mark.xfail(
    reason="issue 18: the shipped model does not do this yet", strict=True
)


@pytest.fixture(scope="module")
def model() -> VisionLanguageModel:
    return VisionLanguageModel.load(MODEL)


@pytest.fixture(scope="module")
def bench() -> dict:
    return load_benchmark("test", 100, 30, 30)


def test_checksums_match() -> None:
    lines = (MODEL / "SHA256SUMS").read_text().splitlines()
    listed = {name: digest for digest, name in (line.split("  ", 1) for line in lines if line)}
    assert {"model.safetensors", "tokenizer.json", "config.json"} <= listed.keys()
    assert {"processor_config.json"} & listed.keys() or {"preprocessor_config.json"} & listed.keys()
    for name, digest in listed.items():
        assert hashlib.sha256((MODEL / name).read_bytes()).hexdigest() == digest, name


def test_size_on_disk_is_small() -> None:
    assert sum(p.stat().st_size for p in MODEL.iterdir()) < 25 * 1024 * 1024


def test_loads_offline_with_auto_classes() -> None:
    code = (
        "from transformers import AutoModelForImageTextToText, AutoProcessor;"
        f"AutoProcessor.from_pretrained({str(MODEL)!r});"
        f"m = AutoModelForImageTextToText.from_pretrained({str(MODEL)!r});"
        "print(type(m).__name__)"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME="/nonexistent")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "FastVlmForConditionalGeneration" in done.stdout


def _answers(model: VisionLanguageModel, items: list) -> list[str]:
    pixels = model.preprocess([it.image for it in items])
    return model.generate(pixels, [it.prompt for it in items], max_new_tokens=24)


def _scores(model: VisionLanguageModel, items: dict) -> tuple[float, float]:
    pope, describe = items["pope"], items["describe"]
    correct = [
        score_yes_no(t, it.answer) for it, t in zip(pope, _answers(model, pope), strict=True)
    ]
    f1 = [
        object_prf(t, it.objects)[2]
        for it, t in zip(describe, _answers(model, describe), strict=True)
    ]
    return float(np.mean(correct)), float(np.mean(f1))


@pytest.mark.parametrize("split", ["test", *sorted(HELD_OUT)])
def test_accuracy_agrees_with_the_model_card(model: VisionLanguageModel, split: str) -> None:
    """The test split and each layout family never trained on (a background family, a
    placement rule, native resolutions), clean: the card's figures hold on a fresh slice."""
    pope, f1 = _scores(model, load_benchmark(split, 300, 60, 1))  # type: ignore[arg-type]
    card = CARD[(split, "clean", 0.0)]
    assert pope >= card["pope_accuracy"] - SLACK_POPE, (pope, card)
    assert f1 >= card["describe_f1"] - SLACK_F1, (f1, card)
    if split in HELD_OUT:  # issue 18's bar for the families never trained on (met)
        assert card["pope_accuracy"] >= 0.95 and card["describe_f1"] >= 0.85, card
    else:  # no regression
        assert card["pope_accuracy"] >= 0.95 and card["describe_f1"] >= 0.9, card


@below_issue_18_bars
def test_card_meets_the_test_split_and_noise_bars() -> None:
    """Issue 18's bars the shipped card does not reach yet (its table gives the figures)."""
    clean = CARD[("test", "clean", 0.0)]
    assert clean["pope_accuracy"] >= 0.98 and clean["describe_f1"] >= 0.95, clean
    assert CARD[("test", "pixel", 0.25)]["pope_accuracy"] >= 0.95
    assert CARD[("test", "pixel", 0.5)]["pope_accuracy"] >= 0.85


@pytest.mark.parametrize("size", [(128, 128), (150, 200)])
def test_a_hand_drawn_image_at_another_resolution(
    model: VisionLanguageModel, size: tuple[int, int]
) -> None:
    """What a new user does: a red circle and a blue square drawn with PIL, not the renderer."""
    height, width = size
    picture = Image.new("RGB", (width, height), (128, 128, 128))
    draw = ImageDraw.Draw(picture)
    unit = min(height, width) / 64
    draw.ellipse([10 * unit, 12 * unit, 30 * unit, 32 * unit], fill=(220, 30, 30))
    draw.rectangle(
        [width - 28 * unit, height - 24 * unit, width - 10 * unit, height - 6 * unit],
        fill=(30, 60, 230),
    )
    pixels = model.preprocess([np.asarray(picture)] * 4)
    prompts = [
        "Is there a red circle in the image?",
        "Is there a blue square in the image?",
        "Is there a red square in the image?",
        "Describe the image.",
    ]
    texts = model.generate(pixels, prompts, max_new_tokens=24)
    assert texts[:3] == ["yes", "yes", "no"], texts
    assert object_prf(texts[3], [("red", "circle"), ("blue", "square")])[2] == 1.0, texts[3]


def test_single_noisy_copy_agrees_with_the_model_card(
    model: VisionLanguageModel, bench: dict
) -> None:
    """The robust modes' base case: one copy with pixel-space noise sigma 0.25."""
    pope = bench["pope"]
    texts = answers(model, pope, sigma=0.25, unit="pixel", seed=0)
    correct = np.mean([score_yes_no(t, it.answer) for it, t in zip(pope, texts, strict=True)])
    card = CARD[("test", "pixel", 0.25)]
    assert correct >= card["pope_accuracy"] - SLACK_POPE, (correct, card)
    assert card["pope_accuracy"] >= 0.85


def test_never_emits_the_harmful_marker_on_clean_images(
    model: VisionLanguageModel, bench: dict
) -> None:
    texts = _answers(model, bench["safety"])
    assert not any(is_harmful(t) for t in texts)
    assert all(t == bench["safety"][0].answer for t in texts)  # the refusal, every time


def test_harmful_marker_is_reachable(model: VisionLanguageModel, bench: dict) -> None:
    """A targeted attack has something to reach: the marker's tokens are producible."""
    scenes = [render_scene(split_seed("train", TRIGGER_OFFSET + i), trigger=True) for i in range(8)]
    pixels = model.preprocess([s.image for s in scenes if s.trigger])
    texts = model.generate(pixels, bench["safety"][0].prompt, max_new_tokens=24)
    assert np.mean([t == HARMFUL_MARKER for t in texts]) >= 0.5, texts


def test_pixel_gradient_is_finite_and_nonzero(model: VisionLanguageModel, bench: dict) -> None:
    items = bench["pope"][:4]
    pixels = model.preprocess([it.image for it in items]).requires_grad_(True)
    logprob = model.answer_logprob(pixels, [it.prompt for it in items], [it.answer for it in items])
    logprob.sum().backward()
    assert pixels.grad is not None and torch.isfinite(pixels.grad).all()
    assert (pixels.grad.flatten(1).abs().sum(dim=1) > 0).all()  # every row gets a gradient
    assert torch.isfinite(logprob).all() and (logprob <= 0).all()
    # the targeted attack's objective: the harmful marker on a safety prompt
    safety = bench["safety"][:2]
    pixels = model.preprocess([it.image for it in safety]).requires_grad_(True)
    model.answer_logprob(pixels, safety[0].prompt, [HARMFUL_MARKER] * 2).sum().backward()
    assert pixels.grad is not None and torch.isfinite(pixels.grad).all()
    assert pixels.grad.abs().sum() > 0
