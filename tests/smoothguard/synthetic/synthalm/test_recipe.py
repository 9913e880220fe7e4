"""The audio training recipe: vocabulary, features, shapes and gradients, repeatable runs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from smoothguard.synthetic.synthalm.architecture import ModelConfig, build_model, build_processor
from smoothguard.synthetic.synthalm.model import AudioLanguageModel
from smoothguard.synthetic.synthalm.tokenizer import build_tokenizer
from smoothguard.synthetic.synthalm.train import TrainConfig, frame_targets, train
from smoothguard.synthetic.synthaudio import HARMFUL_MARKER, load_benchmark

TINY = ModelConfig(width=32, audio_width=32, mlp=64, audio_mlp=64, layers=1, audio_layers=1)


@pytest.fixture(scope="module")
def tiny() -> AudioLanguageModel:
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    return AudioLanguageModel(build_processor(tokenizer, TINY), build_model(tokenizer, TINY))


def test_tokenizer_knows_every_benchmark_word() -> None:
    tokenizer = build_tokenizer()
    bench = load_benchmark("validation", 60, 30, 30)
    texts = [t for items in bench.values() for it in items for t in (it.prompt, it.answer)]
    for text in [*texts, HARMFUL_MARKER]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.unk_token_id not in ids, text


def test_torch_features_match_the_feature_extractor(tiny: AudioLanguageModel) -> None:
    items = load_benchmark("validation", 6, 1, 1)["pope"]
    waves = tiny.preprocess([it.waveform for it in items])
    reference = tiny.processor.feature_extractor(
        list(waves.numpy()), sampling_rate=16000, return_tensors="np"
    )["input_features"]
    np.testing.assert_allclose(tiny.features(waves).numpy(), reference, atol=1e-4)


def test_preprocess_pads_cuts_and_validates(tiny: AudioLanguageModel) -> None:
    short, long = np.full(100, 0.5, np.float32), np.full(20000, 0.25, np.float32)
    out = tiny.preprocess([short, long])
    assert out.shape == (2, 16000) and out[0, 100:].abs().sum() == 0 and out[1, -1] == 0.25
    with pytest.raises(ValueError):
        tiny.preprocess([np.array([np.nan], np.float32)])
    with pytest.raises(ValueError):
        tiny.generate(torch.zeros(1, 100), "Describe the audio.")


def test_processor_and_model_agree_on_audio_tokens(tiny: AudioLanguageModel) -> None:
    ids = tiny.prompt_ids("Describe the audio.")
    audio_id = tiny.tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    assert ids.count(audio_id) == TINY.audio_tokens == 25
    waves = torch.zeros(2, 16000).normal_(0, 0.05).requires_grad_(True)
    tiny.answer_logprob(waves, "Describe the audio.", ["a low tone", "nothing"]).sum().backward()
    assert waves.grad is not None and waves.grad.abs().sum() > 0
    assert len(tiny.generate(waves.detach(), "Describe the audio.", max_new_tokens=3)) == 2


def test_frame_targets_name_the_main_event() -> None:
    labels = np.zeros((1, 40), np.uint8)
    labels[0, 3:10] = 4  # frame 0: 7 of 10 samples; frame 1 stays 0 (nothing)
    labels[0, 20:22] = 2  # frame 2: a 20% sliver, under the 30% bar
    assert frame_targets(labels, 10).tolist() == [[4, 0, 0, 0]]


def test_training_is_deterministic_under_its_seed(tmp_path: Path) -> None:
    config = dataclasses.replace(
        TrainConfig(),
        pretrain_steps=2,
        pretrain_batch_size=4,
        steps=2,
        batch_size=4,
        clips=12,
        trigger_clips=2,
        threads=1,
        model=TINY,
    )
    weights = []
    for run in ("a", "b"):
        record = train(tmp_path / run, config, log=lambda _: None)
        assert record["steps"] == 2 and not record["stopped_early"]
        weights.append(load_file(tmp_path / run / "model.safetensors"))
    for name, tensor in weights[0].items():
        assert torch.equal(tensor, weights[1][name]), name
    train(tmp_path / "c", dataclasses.replace(config, seed=1), log=lambda _: None)
    changed = load_file(tmp_path / "c" / "model.safetensors")
    assert any(not torch.equal(t, changed[n]) for n, t in weights[0].items())
