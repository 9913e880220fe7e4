"""Denoised smoothing served: the denoise step between noise and generate on a real
tritonserver gives the in-process pipeline's seeded answers, and the evaluation refuses to
measure a server whose denoise step is not the one it attacks."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from smoothguard.synthetic.synthpope import generate_split
from smoothguard.synthetic.synthpope.questions import pope_prompt
from smoothguard_client import SmoothGuardClient

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
DENOISER = REPO_ROOT / "models" / "denoiser"
SIGMA = 0.25  # pixel units


@pytest.fixture(scope="module")
def served(
    start_triton: Callable[..., Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    overrides = ["overlays=[]", f"denoiser.model_path={DENOISER}", "defense.noise_unit=pixel"]
    running = start_triton(tmp_path_factory.mktemp("triton-denoise"), overrides)
    try:
        yield running
    finally:
        running.server.stop()


def test_seeded_answers_equal_the_in_process_pipeline_with_the_denoiser(served: Any) -> None:
    from smoothguard.adapters.denoise_copies import CopyDenoiser
    from smoothguard.adapters.embedder import SentenceEncoder
    from smoothguard.adapters.mllm import VisionLanguageModel
    from smoothguard.core.pipeline import SmoothGuard
    from smoothguard.core.settings import DefenseSettings, resolve_options

    settings = DefenseSettings.from_profile(served.profile["defense"])
    vlm = VisionLanguageModel.load(REPO_ROOT / "models" / "synthvlm")
    guard = SmoothGuard(
        lambda copies, prompt, tokens: vlm.generate(copies, prompt, max_new_tokens=tokens),
        SentenceEncoder(served.profile["embedder"]["model_path"]).encode,
        image_mean=vlm.image_mean,
        image_std=vlm.image_std,
        settings=settings,
        denoise=CopyDenoiser.load(DENOISER, vlm.image_mean, vlm.image_std),
    )
    scenes = generate_split("test", 2)
    with SmoothGuardClient(served.grpc_url, timeout_s=300) as client:
        assert client.defense_steps() == ["noise", "denoise", "generate", "embedder", "aggregate"]
        for index, scene in enumerate(scenes):
            prompt = pope_prompt(*scene.objects[0]) if index == 0 else "Describe the image."
            answer = client.ask(
                scene.image, prompt, sigma=SIGMA, seed=10 + index, return_candidates=True
            )
            options = resolve_options(settings, sigma=SIGMA, seed=10 + index)
            local = guard.defend(vlm.preprocess([scene.image]).numpy()[0], prompt, options)
            assert answer.candidates == local.candidates
            assert (answer.text, answer.agreement) == (local.text, pytest.approx(local.agreement))


def test_the_evaluation_refuses_a_server_whose_denoiser_it_would_not_attack(
    served: Any, tmp_path: Path
) -> None:
    from smoothguard.evaluation.answering import ServedMismatch, served_answerer
    from smoothguard.evaluation.config import EvalConfig

    plain = EvalConfig(out=tmp_path, served=served.grpc_url, noise_unit="pixel")
    with pytest.raises(ServedMismatch, match="has a denoise step"):
        served_answerer(plain, log=lambda _: None)
    with_denoiser = EvalConfig(
        out=tmp_path, served=served.grpc_url, noise_unit="pixel", denoiser=DENOISER
    )
    assert served_answerer(with_denoiser, log=lambda _: None) is not None
