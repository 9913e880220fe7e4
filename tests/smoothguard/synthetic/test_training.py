"""The shared recipe still makes what shipped: the builders' files equal models/*, and a short
seeded run of each twin gives the figures (and, on the pinned torch build, the weights) recorded
before the twins' loops were merged, so a change of data, RNG order or optimiser shows here."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from smoothguard.synthetic.synthalm import tokenizer as alm_tokenizer
from smoothguard.synthetic.synthalm import train as alm_train
from smoothguard.synthetic.synthvlm import tokenizer as vlm_tokenizer
from smoothguard.synthetic.synthvlm import train as vlm_train

MODELS = Path(__file__).resolve().parents[3] / "models"
SHORT = {"pretrain_steps": 4, "pretrain_batch_size": 8, "steps": 5, "batch_size": 8, "threads": 1}
# Recorded twice on torch 2.13.0+cpu (x86_64), identical both times (synthvlm: re-recorded for
# SynthPOPE v2, the ResNet tower and contrast items, and again for stage 2's frozen tower).
# Other torch builds or CPUs may round the last bits differently: losses then agree to
# ~1e-6, and the weights' digest is checked only on the pinned build.
PINNED_TORCH = "2.13.0+cpu"
PINNED: dict[str, tuple[Callable[..., dict[str, object]], object, dict[str, float], str]] = {
    "synthvlm": (
        vlm_train.train,
        dataclasses.replace(vlm_train.TrainConfig(), **SHORT, scenes=24, trigger_scenes=6),
        {"stage1_loss": 2.677927553653717, "final_loss": 4.0468346118927006},
        "2591e206272e8c1eac076b44171299f2a51b5657e4581e792924f1c52489a780",
    ),
    "synthalm": (
        alm_train.train,
        dataclasses.replace(alm_train.TrainConfig(), **SHORT, clips=24, trigger_clips=6),
        {"stage1_loss": 3.0674232244491577, "final_loss": 4.044682168960572},
        "dcf5697c55b064df237d72b5a3b273c331a7a07ad1e153d1e96b453b51b87fae",
    ),
}


@pytest.mark.parametrize(
    ("name", "build"),
    [("synthvlm", vlm_tokenizer.build_tokenizer), ("synthalm", alm_tokenizer.build_tokenizer)],
)
def test_tokenizer_builder_makes_the_shipped_tokenizer(
    name: str, build: Callable[[], object], tmp_path: Path
) -> None:
    build().save_pretrained(tmp_path)  # type: ignore[attr-defined]
    shipped = (MODELS / name / "tokenizer.json").read_bytes()
    assert (tmp_path / "tokenizer.json").read_bytes() == shipped


@pytest.mark.parametrize("name", sorted(PINNED))
def test_short_seeded_run_is_the_recorded_one(name: str, tmp_path: Path) -> None:
    train, config, losses, digest = PINNED[name]
    record = train(tmp_path, config, log=lambda _: None)
    assert record["steps"] == 5 and record["stage1_steps"] == 4 and not record["stopped_early"]
    for key, value in losses.items():
        assert record[key] == pytest.approx(value, rel=1e-5), key
    if torch.__version__ == PINNED_TORCH:
        weights = hashlib.sha256((tmp_path / "model.safetensors").read_bytes()).hexdigest()
        assert weights == digest
    written = {p.name for p in tmp_path.iterdir()} - {"model.safetensors"}
    assert "config.json" in written and "tokenizer.json" in written
    for file in sorted(written):  # the shipped model's config, processor and tokenizer
        assert (tmp_path / file).read_bytes() == (MODELS / name / file).read_bytes(), file
