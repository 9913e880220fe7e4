"""Certified mode on a real tritonserver: CERTIFY through the smoothguard ensemble, its radius
against core.certify on the returned answers, and the seeded certificate against the in-process
pipeline's (docs/certified.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from smoothguard.core.certify import certify, pixel_radius_scale
from smoothguard.core.settings import DefenseSettings, resolve_options
from smoothguard.synthetic.synthpope import generate_split
from smoothguard.synthetic.synthpope.questions import pope_prompt
from smoothguard_client import DefendedAnswer, SmoothGuardClient, SmoothGuardError

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
SIGMA = 0.25  # in the server's noise_unit ("normalized" in the cpu profile)
SEED = 2024


@pytest.fixture(scope="module")
def client(triton: Any) -> Any:
    with SmoothGuardClient(triton.grpc_url, timeout_s=300) as client:
        yield client


@pytest.fixture(scope="module")
def settings(triton: Any) -> DefenseSettings:
    return DefenseSettings.from_profile(triton.profile["defense"])


@pytest.fixture(scope="module")
def mllm_path(triton: Any) -> Path:
    path = Path(triton.profile["mllm"]["model_path"])
    return path if path.is_absolute() else REPO_ROOT / path


@pytest.fixture(scope="module")
def item() -> tuple[np.ndarray, str]:
    """A SynthPOPE yes/no question about an object the scene holds."""
    scene = generate_split("test", 1)[0]
    return scene.image, pope_prompt(*scene.objects[0])


@pytest.fixture(scope="module")
def served(client: Any, item: tuple[np.ndarray, str]) -> DefendedAnswer:
    image, prompt = item
    return client.ask(image, prompt, certify=True, sigma=SIGMA, seed=SEED, return_candidates=True)


def test_a_yes_no_item_is_certified_with_the_radius_core_certify_gives(
    served: DefendedAnswer, settings: DefenseSettings, mllm_path: Path
) -> None:
    from smoothguard.adapters.preprocess import read_image_input_spec

    n0 = settings.certify_selection_draws
    assert served.num_samples_used == len(served.candidates) == settings.certify_draws == 111
    assert served.original_text == served.candidates[0]  # the clean copy, as always
    scale = pixel_radius_scale(settings.noise_unit, read_image_input_spec(mllm_path).std)
    expected = certify(
        served.candidates[1 : 1 + n0],
        served.candidates[1 + n0 :],
        sigma=SIGMA * scale,
        alpha=settings.certify_alpha,
    )
    assert expected.label in ("yes", "no")
    assert served.certified and served.text == expected.label
    assert (served.decision, served.reason) == ("answered", "certified")
    assert served.certified_radius == pytest.approx(expected.radius, rel=1e-6)
    assert served.certified_radius > 0


def test_the_seeded_certificate_is_the_in_process_pipelines(
    served: DefendedAnswer,
    settings: DefenseSettings,
    mllm_path: Path,
    item: tuple[np.ndarray, str],
) -> None:
    from smoothguard.adapters.mllm import VisionLanguageModel
    from smoothguard.adapters.preprocess import ImagePreprocessor
    from smoothguard.core.pipeline import SmoothGuard

    vlm = VisionLanguageModel.load(mllm_path, device="cpu")
    pre = ImagePreprocessor.load(mllm_path)
    guard = SmoothGuard(
        lambda copies, prompt, tokens: vlm.generate(copies, prompt, max_new_tokens=tokens),
        lambda texts: np.zeros(
            (len(texts), 1), np.float32
        ),  # CERTIFY votes by class, not embedding
        image_mean=pre.mean,
        image_std=pre.std,
        settings=settings,
    )
    image, prompt = item
    options = resolve_options(settings, certify=True, sigma=SIGMA, seed=SEED)
    local = guard.certify(pre([image])[0], prompt, options, batch=32)
    n0 = settings.certify_selection_draws
    served_cert = certify(
        served.candidates[1 : 1 + n0],
        served.candidates[1 + n0 :],
        sigma=SIGMA * pixel_radius_scale(settings.noise_unit, pre.std),
        alpha=settings.certify_alpha,
    )
    assert local == served_cert  # label, radius, p_lower and both sets of counts
    assert served.certified and local.label == served.text
    assert served.certified_radius == pytest.approx(local.radius, rel=1e-6)


def test_answers_outside_the_answer_set_abstain(
    client: Any, settings: DefenseSettings, item: tuple[np.ndarray, str]
) -> None:
    image, prompt = item  # answered yes or no: neither is in this set
    answer = client.ask(image, prompt, certify=True, answer_set=("red", "green"), sigma=SIGMA)
    assert (answer.decision, answer.reason) == ("abstained", "not_certified")
    assert answer.text == settings.abstain_text
    assert not answer.certified and answer.certified_radius == 0.0
    assert answer.num_samples_used == settings.certify_draws


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"adaptive": True}, "ADAPTIVE cannot be combined with CERTIFY: certify needs every draw"),
        ({"num_samples": 10}, "NUM_SAMPLES must be left out with CERTIFY, or be 111"),
        ({"answer_set": ("not sure",)}, "ANSWER_SET answers must be single words"),
    ],
    ids=["adaptive", "num-samples", "answer-set"],
)
def test_certify_refusals_are_invalid_argument(
    client: Any, item: tuple[np.ndarray, str], options: dict[str, Any], message: str
) -> None:
    image, prompt = item
    with pytest.raises(SmoothGuardError) as info:
        client.ask(image, prompt, certify=True, **options)
    assert info.value.is_invalid_argument and message in info.value.message


def test_other_requests_report_no_certificate(client: Any, item: tuple[np.ndarray, str]) -> None:
    image, prompt = item
    answer = client.ask(image, prompt, num_samples=3, seed=1)
    assert answer.reason != "certified" and answer.num_samples_used == 3
    assert not answer.certified and answer.certified_radius == 0.0
