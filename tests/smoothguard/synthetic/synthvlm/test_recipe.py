"""The training recipe: vocabulary covers the benchmark, shapes line up, runs are repeatable."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from smoothguard.adapters.mllm import VisionLanguageModel
from smoothguard.synthetic.synthpope import HARMFUL_MARKER, load_benchmark
from smoothguard.synthetic.synthvlm.architecture import ModelConfig, build_model, build_processor
from smoothguard.synthetic.synthvlm.tokenizer import build_tokenizer
from smoothguard.synthetic.synthvlm.train import TrainConfig, train
from smoothguard.synthetic.training import answer_loss

# Seconds to train: three steps per stage on 12 scenes, a one-layer model.
TINY = dataclasses.replace(
    TrainConfig(),
    pretrain_steps=3,
    pretrain_batch_size=4,
    steps=3,
    batch_size=4,
    scenes=12,
    trigger_scenes=2,
    threads=1,
    model=ModelConfig(width=32, vision_width=32, mlp=64, layers=1),
)


def test_tokenizer_knows_every_benchmark_word() -> None:
    tokenizer = build_tokenizer()
    bench = load_benchmark("validation", 60, 30, 30)
    texts = [t for items in bench.values() for it in items for t in (it.prompt, it.answer)]
    for text in [*texts, HARMFUL_MARKER]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.unk_token_id not in ids, text
        assert tokenizer.decode(ids) == text.lower().replace("?", " ?").replace(".", " .").strip()


def test_processor_and_model_agree_on_image_tokens() -> None:
    config = ModelConfig(width=32, vision_width=32, mlp=64, layers=1)
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    vlm = VisionLanguageModel(build_processor(tokenizer, config), build_model(tokenizer, config))
    ids = vlm.prompt_ids("Describe the image.")
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    assert ids.count(image_id) == (config.image_size // config.patch_size) ** 2
    # not a constant image: a ReLU tower has no gradient at an all-zero input
    pixels = torch.rand(2, 3, *vlm.image_size).requires_grad_(True)
    vlm.answer_logprob(pixels, "Describe the image.", ["a red circle", "nothing"]).sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0


def test_answer_loss_counts_only_answer_tokens() -> None:
    logits = torch.zeros(1, 4, 10)
    labels = torch.tensor([[-100, -100, 3, 4]])
    loss = answer_loss(logits, labels, torch.tensor([0.5]))
    assert loss.item() == pytest.approx(0.5 * 2 * torch.log(torch.tensor(10.0)).item())


def test_training_is_deterministic_under_its_seed(tmp_path: Path) -> None:
    weights = []
    for run in ("a", "b"):
        record = train(tmp_path / run, TINY, log=lambda _: None)
        assert record["steps"] == 3 and not record["stopped_early"]
        weights.append(load_file(tmp_path / run / "model.safetensors"))
    assert weights[0].keys() == weights[1].keys()
    for name, tensor in weights[0].items():
        assert torch.equal(tensor, weights[1][name]), name
    other = train(tmp_path / "c", dataclasses.replace(TINY, seed=1), log=lambda _: None)
    assert other["steps"] == 3
    changed = load_file(tmp_path / "c" / "model.safetensors")
    assert any(not torch.equal(t, changed[n]) for n, t in weights[0].items())


def test_stage_2_leaves_the_frozen_tower_as_stage_1_made_it(tmp_path: Path) -> None:
    """vision_lr_scale 0 (the shipped recipe): stage 2 changes neither the tower's weights nor
    its batch-norm statistics, and does change the language model; a positive scale trains
    the tower too."""
    assert TrainConfig().vision_lr_scale == 0
    saved = {}
    for name, config in {
        "stage1": dataclasses.replace(TINY, steps=0),
        "frozen": dataclasses.replace(TINY, steps=4),
        "tuned": dataclasses.replace(TINY, steps=4, vision_lr_scale=0.5),
    }.items():
        train(tmp_path / name, config, log=lambda _: None)
        saved[name] = load_file(tmp_path / name / "model.safetensors")
    tower = [n for n in saved["stage1"] if ".vision_tower." in n]
    language = [n for n in saved["stage1"] if ".language_model." in n]
    assert any("running_mean" in n for n in tower) and language
    assert all(torch.equal(saved["stage1"][n], saved["frozen"][n]) for n in tower)
    assert any(not torch.equal(saved["stage1"][n], saved["frozen"][n]) for n in language)
    assert any(not torch.equal(saved["stage1"][n], saved["tuned"][n]) for n in tower)


def test_evaluation_breaks_pope_accuracy_down_by_near_miss() -> None:
    """The per-kind figures come from the same answers as the headline accuracy."""
    from smoothguard.synthetic.synthvlm.evaluate import markdown, score

    items = load_benchmark("test", 60, 3, 3)
    texts = {
        "pope": ["yes"] * len(items["pope"]),  # a model that always says yes
        "describe": ["nothing"] * 3,
        "safety": ["no"] * 3,
    }
    row = score(items, texts)
    by_kind = row["pope_by_kind"]
    assert by_kind["present"]["accuracy"] == 1.0
    assert all(v["accuracy"] == 0.0 for k, v in by_kind.items() if k != "present")
    assert sum(v["items"] for v in by_kind.values()) == len(items["pope"])
    yes = sum(it.answer == "yes" for it in items["pope"])
    assert by_kind["present"]["items"] == yes
    assert row["pope_accuracy"] == pytest.approx(yes / len(items["pope"]))
    table = markdown(
        {"items": {}, "table": [{"split": "test", "unit": "pixel", "sigma": 0.0, **row}]}
    )
    kinds = sorted(by_kind)
    assert "| split | noise | sigma | " + " | ".join(kinds) + " |" in table
    cells = [f"{100 * by_kind[k]['accuracy']:.1f}% ({by_kind[k]['items']})" for k in kinds]
    assert "| test | clean | 0.0 | " + " | ".join(cells) + " |" in table
