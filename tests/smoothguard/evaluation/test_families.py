"""Every attack of the evaluation runs on the paper's two families (checkpoints built here):
LLaVA-1.5 at its 336-px tower and Qwen2.5-VL through its patch sequence. Random weights answer
nothing right, so success is measured on the attack's own objective (log p(push) - log
p(pull)), which each attack must raise within its budget; then the evaluation command's
smoke run goes end to end on each."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from smoothguard.adapters.mllm import VisionLanguageModel
from smoothguard.evaluation.attacks import AttackSpec, pgd, to_unit_pixels
from smoothguard.synthetic.families import FAMILIES, SERVE_IMAGE_SIZE
from smoothguard.synthetic.synthpope import load_benchmark

PUSH, PULL = "no", "yes"


@pytest.fixture(scope="module", params=FAMILIES)
def family(request: pytest.FixtureRequest, family_checkpoint: Callable[[str], Path]):
    path = family_checkpoint(request.param)
    size = SERVE_IMAGE_SIZE[request.param]
    return request.param, path, size, VisionLanguageModel.load(path, image_size=size)


def _margin(model: VisionLanguageModel, images: np.ndarray, prompts: list[str]) -> np.ndarray:
    with torch.no_grad():
        values = model.preprocess(list(images))
        push = model.answer_logprob(values, prompts, [PUSH] * len(prompts))
        pull = model.answer_logprob(values, prompts, [PULL] * len(prompts))
    return (push - pull).numpy()


@pytest.mark.parametrize(
    "spec",
    [
        AttackSpec(eps=16 / 255, steps=4, seed=1),
        AttackSpec(eps=16 / 255, steps=3, eot_samples=2, sigma=0.15, seed=2),
        AttackSpec(eps=32 / 255, steps=3, universal=True, seed=3),
        AttackSpec(eps=2.0, steps=4, norm="l2", seed=4),
    ],
    ids=["pgd", "eot", "universal", "l2"],
)
def test_each_attack_raises_its_objective_within_budget(family, spec: AttackSpec) -> None:
    name, _, _, model = family
    items = load_benchmark("test", 2, 0, 0)["pope"]
    images = np.stack([it.image for it in items])
    prompts = [it.prompt for it in items]
    adv = pgd(model, images, prompts, push=[PUSH] * 2, pull=[PULL] * 2, spec=spec)
    clean = to_unit_pixels(model, list(images)).permute(0, 2, 3, 1).numpy()
    assert adv.shape == (2, *model.image_size, 3), name
    if spec.norm == "l2":
        norms = np.sqrt(((adv - clean) ** 2).reshape(2, -1).sum(axis=1))
        assert (norms <= spec.eps + 1e-4).all()
        attacked = np.clip(np.rint(adv * 255), 0, 255).astype(np.uint8)  # as served
    else:
        assert np.abs(adv.astype(int) - np.rint(clean * 255).astype(int)).max() <= round(
            spec.eps * 255
        )
        attacked = adv
    before = _margin(model, np.rint(clean * 255).astype(np.uint8), prompts)
    after = _margin(model, attacked, prompts)
    assert after.mean() > before.mean(), (name, before, after)


@pytest.mark.parametrize("name", FAMILIES)
def test_the_evaluation_command_runs_on_each_family(
    name: str, family_checkpoint: Callable[[str], Path], tmp_path: Path
) -> None:
    from smoothguard.evaluation.run import main

    size = SERVE_IMAGE_SIZE[name]
    args = ["--smoke", "--no-sweeps", "--model-path", str(family_checkpoint(name))]
    args += ["--out", str(tmp_path), "--n-pope", "2", "--n-describe", "1", "--n-safety", "1"]
    args += ["--steps", "2", "--eot-steps", "2"] + (["--image-size", str(size)] if size else [])
    assert main(args) == 0
    report = (tmp_path / "results.md").read_text()
    for attack in ("pgd-16", "targeted-32", "universal-32", "eot-pgd-16", "eot-targeted-32"):
        assert f"| {attack} " in report
