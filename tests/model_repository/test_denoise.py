"""The denoise step (denoised smoothing): copy 0 passes untouched, the noisy copies go through
the shipped denoiser exactly as the in-process pipeline sends them, and bad requests fail alone."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from smoothguard.adapters.denoise_copies import CopyDenoiser
from smoothguard.adapters.preprocess import ImagePreprocessor
from smoothguard.core.noise import make_rng, noisy_copies, pixel_noise_level
from smoothguard.core.settings import DefenseSettings, resolve_options
from smoothguard.synthetic.synthpope import generate_split

REPO_ROOT = Path(__file__).resolve().parents[2]
DENOISER = REPO_ROOT / "models" / "denoiser"
SYNTHVLM = REPO_ROOT / "models" / "synthvlm"
SETTINGS = DefenseSettings(noise_unit="pixel")
PARAMS = {"model_path": str(DENOISER), "mllm_path": str(SYNTHVLM), "image_size": "0"}


@pytest.fixture
def denoise(load_model: Any, pb_utils: ModuleType) -> Any:
    model = load_model("denoise/denoise").TritonPythonModel()
    model.initialize(pb_utils.model_args(SETTINGS.to_parameters() | PARAMS | {"device": "cpu"}))
    return model


@pytest.fixture(scope="module")
def clean() -> np.ndarray:
    return ImagePreprocessor.load(SYNTHVLM)([generate_split("test", 1)[0].image])[0]


def request(pb: ModuleType, copies: np.ndarray, num_samples: int, sigma: float) -> Any:
    options = resolve_options(SETTINGS, num_samples=num_samples, sigma=sigma)
    return pb.Request(
        PIXEL_VALUES=copies, OPTIONS=np.array([options.to_json().encode()], np.object_)
    )


def test_noisy_copies_are_denoised_and_the_clean_one_is_kept(
    denoise: Any, pb_utils: ModuleType, clean: np.ndarray
) -> None:
    pre = ImagePreprocessor.load(SYNTHVLM)
    copies = noisy_copies(
        clean, num_samples=6, sigma=0.25, unit="pixel", clip=True, mean=pre.mean, std=pre.std,
        rng=make_rng(np, 5),
    )  # fmt: skip
    (response,) = denoise.execute([request(pb_utils, copies, 6, 0.25)])
    assert not response.has_error(), response.error().message()
    out = response.output("PIXEL_VALUES")
    assert out.shape == copies.shape and out.dtype == np.float32
    np.testing.assert_array_equal(out[0], clean)
    expected = CopyDenoiser.load(DENOISER, pre.mean, pre.std)(
        copies[1:], pixel_noise_level(0.25, "pixel", pre.std)
    )
    np.testing.assert_array_equal(out[1:], expected)
    # the denoised copies are nearer the clean image than the noisy ones were
    noisy_error = np.mean((copies[1:] - clean) ** 2)
    assert np.mean((out[1:] - clean) ** 2) < 0.5 * noisy_error


def test_bad_requests_fail_alone(denoise: Any, pb_utils: ModuleType, clean: np.ndarray) -> None:
    good = request(pb_utils, np.stack([clean, clean]), 2, 0.25)
    rows = request(pb_utils, np.stack([clean, clean, clean]), 2, 0.25)
    nan = np.stack([clean, clean]).copy()
    nan[1, 0, 0, 0] = np.nan
    size = request(pb_utils, np.zeros((2, 3, 32, 32), np.float32), 2, 0.25)
    responses = denoise.execute([rows, request(pb_utils, nan, 2, 0.25), good, size])
    codes = [r.error().code() if r.has_error() else None for r in responses]
    inv = pb_utils.TritonError.INVALID_ARG
    assert codes == [inv, inv, None, inv]
    assert "3 rows but OPTIONS num_samples is 2" in responses[0].error().message()
