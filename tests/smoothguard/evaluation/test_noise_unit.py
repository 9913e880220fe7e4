"""The evaluation measures the defense in the noise unit the server is configured with."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from smoothguard.evaluation.answering import in_process_answerer
from smoothguard.evaluation.attack_runs import attack_plan
from smoothguard.evaluation.config import EvalConfig


def test_eot_attacks_draw_the_defense_noise_in_its_unit() -> None:
    normalized = attack_plan(EvalConfig())
    pixel = attack_plan(EvalConfig(noise_unit="pixel"))
    assert [r.name for r in normalized] == [r.name for r in pixel]
    for before, after in zip(normalized, pixel, strict=True):
        if after.spec.eot_samples:
            assert after.spec.noise_unit == "pixel"
            assert dataclasses.replace(after.spec, noise_unit="normalized") == before.spec
        else:
            # no noise in the attack: the same attack, so a saved one is replayed, not redone
            assert after.spec == before.spec


def test_the_in_process_defense_adds_noise_in_the_evaluation_unit(tmp_path: Path) -> None:
    class Model:  # only what InProcessAnswerer reads before answering
        image_mean = (0.5, 0.5, 0.5)
        image_std = (0.25, 0.25, 0.25)

    config: Any = EvalConfig(out=tmp_path, noise_unit="pixel", max_new_tokens=5)
    answerer = in_process_answerer(config, Model())
    assert answerer.guard.settings.noise_unit == "pixel"
    assert answerer.settings.max_new_tokens == 5
