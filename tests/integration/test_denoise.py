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


def _serve(start_triton: Callable[..., Any], folder: Path, tmp: Path) -> Any:
    overrides = ["overlays=[]", f"denoiser.model_path={folder}", "defense.noise_unit=pixel"]
    return start_triton(tmp, overrides)


@pytest.fixture(scope="module")
def served(
    start_triton: Callable[..., Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    running = _serve(start_triton, DENOISER, tmp_path_factory.mktemp("triton-denoise"))
    try:
        yield running
    finally:
        running.server.stop()


def _assert_served_equals_in_process(served: Any, denoiser: Path, prompts: list[str]) -> None:
    """Seeded answers and candidates over gRPC equal SmoothGuard in process with `denoiser`."""
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
        denoise=CopyDenoiser.load(denoiser, vlm.image_mean, vlm.image_std),
    )
    scenes = generate_split("test", len(prompts))
    with SmoothGuardClient(served.grpc_url, timeout_s=300) as client:
        assert client.defense_steps() == ["noise", "denoise", "generate", "embedder", "aggregate"]
        for index, (scene, prompt) in enumerate(zip(scenes, prompts, strict=True)):
            prompt = prompt.format(object=pope_prompt(*scene.objects[0]))
            answer = client.ask(
                scene.image, prompt, sigma=SIGMA, seed=10 + index, return_candidates=True
            )
            options = resolve_options(settings, sigma=SIGMA, seed=10 + index)
            local = guard.defend(vlm.preprocess([scene.image]).numpy()[0], prompt, options)
            assert answer.candidates == local.candidates
            assert (answer.text, answer.agreement) == (local.text, pytest.approx(local.agreement))


def test_seeded_answers_equal_the_in_process_pipeline_with_the_denoiser(served: Any) -> None:
    _assert_served_equals_in_process(served, DENOISER, ["{object}", "Describe the image."])


def test_a_diffusers_ddpm_folder_serves_as_the_denoise_step(
    start_triton: Callable[..., Any], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Any local checkpoint with the denoiser interface replaces ours: a (tiny, random)
    diffusers UNet with its DDPM schedule, loaded by the served step as in process."""
    from ddpm_folder import make_folder

    folder = make_folder(tmp_path_factory.mktemp("ddpm"))
    running = _serve(start_triton, folder, tmp_path_factory.mktemp("triton-ddpm"))
    try:
        _assert_served_equals_in_process(running, folder, ["{object}"])
    finally:
        running.server.stop()


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
