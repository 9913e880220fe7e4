"""Denoised smoothing served: the denoise step between noise and generate on a real
tritonserver gives the in-process pipeline's seeded answers, and the evaluation refuses to
measure a server whose denoise step is not the one it attacks."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
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


def _assert_certificate_equals_in_process(served: Any, denoiser: Path) -> Any:
    """A seeded CERTIFY request draws its 1 + n0 + n copies through the denoise step: its
    certificate equals the in-process pipeline's with the same denoiser."""
    from smoothguard.adapters.denoise_copies import CopyDenoiser
    from smoothguard.adapters.mllm import VisionLanguageModel
    from smoothguard.core.certify import certify, pixel_radius_scale
    from smoothguard.core.pipeline import SmoothGuard
    from smoothguard.core.settings import DefenseSettings, resolve_options

    settings = DefenseSettings.from_profile(served.profile["defense"])
    vlm = VisionLanguageModel.load(REPO_ROOT / "models" / "synthvlm")
    guard = SmoothGuard(
        lambda copies, prompt, tokens: vlm.generate(copies, prompt, max_new_tokens=tokens),
        lambda texts: np.zeros((len(texts), 1), np.float32),  # CERTIFY votes by class
        image_mean=vlm.image_mean,
        image_std=vlm.image_std,
        settings=settings,
        denoise=CopyDenoiser.load(denoiser, vlm.image_mean, vlm.image_std),
    )
    scene = generate_split("test", 1)[0]
    prompt = pope_prompt(*scene.objects[0])
    with SmoothGuardClient(served.grpc_url, timeout_s=300) as client:
        answer = client.ask(
            scene.image, prompt, certify=True, sigma=SIGMA, seed=7, return_candidates=True
        )
    options = resolve_options(settings, certify=True, sigma=SIGMA, seed=7)
    local = guard.certify(vlm.preprocess([scene.image]).numpy()[0], prompt, options, batch=32)
    n0 = settings.certify_selection_draws
    assert local == certify(
        answer.candidates[1 : 1 + n0],
        answer.candidates[1 + n0 :],
        sigma=SIGMA * pixel_radius_scale(settings.noise_unit, vlm.image_std),
        alpha=settings.certify_alpha,
    )
    assert answer.certified == local.certified
    return local


def test_seeded_answers_equal_the_in_process_pipeline_with_the_denoiser(served: Any) -> None:
    _assert_served_equals_in_process(served, DENOISER, ["{object}", "Describe the image."])
    _assert_certificate_equals_in_process(served, DENOISER)


def test_a_diffusers_ddpm_folder_serves_as_the_denoise_step(
    start_triton: Callable[..., Any], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Any local checkpoint with the denoiser interface replaces ours: a tiny diffusers UNet
    with its DDPM schedule, loaded by the served step as in process. Its output is zeroed and
    it predicts the sample, so it turns every noisy copy grey: a served step that skipped it
    would answer (and certify) the scene's object, not the grey copies."""
    from ddpm_folder import make_folder

    folder = make_folder(tmp_path_factory.mktemp("ddpm"), prediction_type="sample", zero_out=True)
    running = _serve(start_triton, folder, tmp_path_factory.mktemp("triton-ddpm"))
    try:
        _assert_served_equals_in_process(running, folder, ["{object}", "Describe the image."])
        # the scene holds the object; only the grey copies say "no"
        assert _assert_certificate_equals_in_process(running, folder).label == "no"
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
