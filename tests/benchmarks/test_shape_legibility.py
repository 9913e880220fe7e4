"""The shape-legibility benchmark: crops are centred on their object, noise spares the colour
planes, the probes read the right token, and a short run writes every output."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from smoothguard.adapters.mllm import VisionLanguageModel
from smoothguard.core.noise import noisy_copies
from smoothguard.synthetic.synthpope.scenes import COLOURS, SHAPES, render_scene, split_seed

MODEL = Path(__file__).resolve().parents[2] / "models" / "synthvlm"


@pytest.fixture
def script(benchmark_script: Callable[[str], ModuleType]) -> ModuleType:
    return benchmark_script("shape_legibility")


def test_each_crop_is_centred_on_its_object_with_its_colour_beside(script: ModuleType) -> None:
    scenes = [render_scene(split_seed("validation", i)) for i in range(20)]
    x, shapes, radii = script.object_crops(scenes)
    objects = [(o, box) for s in scenes for o, box in zip(s.objects, s.boxes, strict=True)]
    assert x.shape == (len(objects), 6, 32, 32) and len(shapes) == len(radii) == len(objects)
    row = 0
    for scene in scenes:
        for (colour, shape), (cx, cy, radius) in zip(scene.objects, scene.boxes, strict=True):
            centre = x[row, :3, 16, 16].numpy()
            assert np.allclose(centre, scene.image[cy, cx] / 255, atol=1e-6)
            planes = x[row, 3:].flatten(1)
            assert torch.allclose(planes, planes[:, :1].expand_as(planes))
            assert np.allclose(planes[:, 0].numpy(), np.array(COLOURS[colour]) / 255)
            assert shapes[row].item() == SHAPES.index(shape) and radii[row] == radius
            row += 1


def test_noise_spares_the_colour_planes_and_stays_in_range(script: ModuleType) -> None:
    x = torch.rand(8, 6, 32, 32)
    out = script.noisy(x, np.array([0.0] * 4 + [0.5] * 4), np.random.default_rng(0))
    assert torch.equal(out[:, 3:], x[:, 3:]) and torch.equal(out[:4, :3], x[:4, :3])
    assert out.min() >= 0 and out.max() <= 1 and not torch.equal(out[4:], x[4:])


def test_centre_token_is_the_cell_under_the_object_centre(script: ModuleType) -> None:
    vlm = VisionLanguageModel.load(MODEL)
    scenes = [render_scene(split_seed("validation", i)) for i in range(3)]
    tokens, types, radii = script.centre_tokens(vlm, scenes, 0.0, 0)
    scene = scenes[0]
    cx, cy, _ = scene.boxes[0]
    pixels = vlm.preprocess([scene.image])
    with torch.no_grad():
        grid = vlm.model.model.vision_tower(pixels).last_hidden_state[0]
    assert torch.allclose(tokens[0], grid[:, cy // 8, cx // 8], atol=1e-4)
    assert len(tokens) == len(types) == len(radii) == sum(len(s.objects) for s in scenes)
    # under noise: the defense's own noisy copy (drawn and clipped as served), seeded
    noisy, _, _ = script.centre_tokens(vlm, scenes, 0.25, 7)
    copies = noisy_copies(
        vlm.preprocess([s.image for s in scenes]).numpy(),
        num_samples=2,
        sigma=0.25,
        unit="pixel",
        mean=vlm.image_mean,
        std=vlm.image_std,
        rng=np.random.default_rng(7),
    )
    with torch.no_grad():
        grid = vlm.model.model.vision_tower(torch.from_numpy(copies[:, 1])).last_hidden_state[0]
    assert torch.allclose(noisy[0], grid[:, cy // 8, cx // 8], atol=1e-4)
    assert not torch.allclose(noisy[0], tokens[0], atol=1e-2)


def test_a_short_run_writes_results_table_and_plot(script: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["--fit-scenes", "60", "--test-scenes", "30", "--descriptions", "8", "--steps", "3"]
    assert script.main([*args, "--probe-scenes", "40", "--out", str(out)]) == 0
    result = json.loads((out / "results.json").read_text())
    for key in ("legibility", "tower_probe"):
        for sigma in script.SIGMAS:
            row = result[key][str(sigma)]
            assert 0 <= row["accuracy"] <= 1 and row["objects"] > 0
    errors = result["descriptions"]
    assert errors["descriptions"] == 8
    shares = [errors[k]["all"] for k in ("right", "other shape", "missed")]
    assert sum(shares) == pytest.approx(1.0)
    assert "| right |" in (out / "results.md").read_text()
    assert (out / "legibility.png").stat().st_size > 0


@pytest.mark.parametrize("bad", [["--steps", "0"], ["--model-path", "/nonexistent"]])
def test_bad_arguments_are_usage_errors(script: ModuleType, bad: list[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as stop:
        script.main([*bad, "--out", str(tmp_path / "out")])
    assert stop.value.code == 2 and not (tmp_path / "out").exists()
