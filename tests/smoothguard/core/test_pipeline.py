"""The in-process pipeline wires noise -> generate -> embed -> vote -> policy correctly."""

from __future__ import annotations

import numpy as np
import pytest

from smoothguard.core.pipeline import DefendedAnswer, SmoothGuard
from smoothguard.core.settings import DefenseSettings, resolve_options

MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)
VOCAB = {"cat": [1.0, 0.0, 0.0], "dog": [0.0, 1.0, 0.0], "": [0.0, 0.0, 1.0]}


def embed(texts: list[str]) -> np.ndarray:
    return np.array([VOCAB[t.strip()] for t in texts], dtype=np.float32)


def attacked_model(images: np.ndarray, prompt: str, max_new_tokens: int) -> list[str]:
    """Says "dog" only for the exact adversarial pixels; noise breaks the attack."""
    assert images.ndim == 4 and images.shape[1] == 3 and images.dtype == np.float32
    assert prompt == "what is it?" and max_new_tokens == 16
    return ["dog" if np.array_equal(im, images[0]) else "cat" for im in images]


def image() -> np.ndarray:
    x = np.random.default_rng(0).uniform(size=(3, 8, 8))
    return ((x - 0.5) / 0.25).astype(np.float32)


def options(settings: DefenseSettings, **kw):
    return resolve_options(settings, max_new_tokens=16, seed=kw.pop("seed", 1), **kw)


def test_answer_policy_returns_the_noisy_majority() -> None:
    s = DefenseSettings()
    guard = SmoothGuard(attacked_model, embed, image_mean=MEAN, image_std=STD, settings=s)
    out = guard.defend(image(), "what is it?", options(s, num_samples=6))
    assert isinstance(out, DefendedAnswer)
    assert out.text == "cat" and out.decision == "answered" and out.reason == "original_outvoted"
    assert out.original_text == "dog" and out.original_outvoted
    assert out.cluster_sizes == (5, 1) and out.agreement == pytest.approx(5 / 6)
    assert out.num_samples_used == 6 and out.candidates == ("dog",) + ("cat",) * 5
    assert out.chosen_index == 1 and not out.tie
    assert out.model == "in-process" and 0 < out.latency_s < 60


def test_the_answer_is_the_class_the_client_decodes() -> None:
    """One DefendedAnswer: evaluation code reads in-process and served answers the same way."""
    import json

    from smoothguard_client import DefendedAnswer as ClientAnswer

    assert ClientAnswer is DefendedAnswer
    s = DefenseSettings()
    guard = SmoothGuard(attacked_model, embed, image_mean=MEAN, image_std=STD, settings=s)
    data = guard.defend(image(), "what is it?", options(s, num_samples=3)).to_dict()
    assert data["num_samples_used"] == 3 and data["candidates"][0] == "dog"
    assert json.loads(json.dumps(data)) == data


@pytest.mark.parametrize(
    ("policy", "text", "decision"),
    [("monitor", "dog", "monitored"), ("abstain", "", "abstained"), ("refuse", "NO", "refused")],
)
def test_policies(policy: str, text: str, decision: str) -> None:
    s = DefenseSettings(refusal_text="NO")
    guard = SmoothGuard(attacked_model, embed, image_mean=MEAN, image_std=STD, settings=s)
    out = guard.defend(image(), "what is it?", options(s, num_samples=4, policy=policy))
    assert (out.text, out.decision, out.reason) == (text, decision, "original_outvoted")


def test_benign_image_answers_normally_under_refuse() -> None:
    s = DefenseSettings(policy="refuse")
    guard = SmoothGuard(
        lambda ims, p, m: ["cat"] * len(ims), embed, image_mean=MEAN, image_std=STD, settings=s
    )
    out = guard.defend(image(), "q", options(s))
    assert (out.text, out.decision, out.reason) == ("cat", "answered", "ok")
    assert out.cluster_sizes == (10, 0) and out.agreement == 1.0


def test_noise_settings_reach_the_model() -> None:
    seen: dict[str, np.ndarray] = {}

    def spy(images: np.ndarray, prompt: str, max_new_tokens: int) -> list[str]:
        seen["images"] = images
        return ["cat"] * len(images)

    s = DefenseSettings(noise_unit="pixel", clip=False)
    guard = SmoothGuard(spy, embed, image_mean=MEAN, image_std=STD, settings=s)
    img = np.zeros((3, 32, 32), dtype=np.float32)
    guard.defend(img, "q", options(s, num_samples=5, sigma=0.1))
    ims = seen["images"]
    assert ims.shape == (5, 3, 32, 32)
    np.testing.assert_array_equal(ims[0], img)
    assert abs(float(ims[1:].std()) - 0.1 / 0.25) < 0.03  # pixel sigma 0.1 = 0.4 normalised


def test_seed_makes_the_run_reproducible() -> None:
    seen: list[np.ndarray] = []

    def spy(images: np.ndarray, prompt: str, max_new_tokens: int) -> list[str]:
        seen.append(images.copy())
        return ["cat"] * len(images)

    s = DefenseSettings()
    guard = SmoothGuard(spy, embed, image_mean=MEAN, image_std=STD, settings=s)
    for seed in (7, 7, None):
        guard.defend(image(), "q", options(s, num_samples=3, seed=seed))
    np.testing.assert_array_equal(seen[0], seen[1])
    assert not np.array_equal(seen[0], seen[2])


def test_empty_generations_are_not_chosen() -> None:
    s = DefenseSettings()
    guard = SmoothGuard(
        lambda ims, p, m: ["cat", " ", "", "", "", "cat"],
        embed,
        image_mean=MEAN,
        image_std=STD,
        settings=s,
    )
    out = guard.defend(image(), "q", options(s, num_samples=6))
    assert out.text == "cat" and out.chosen_index == 0
    assert out.cluster_sizes == (2, 4) and out.agreement == pytest.approx(2 / 6)
    assert out.reason == "low_agreement"


def test_single_sample_is_the_undefended_model() -> None:
    s = DefenseSettings()
    guard = SmoothGuard(attacked_model, embed, image_mean=MEAN, image_std=STD, settings=s)
    out = guard.defend(image(), "what is it?", options(s, num_samples=1))
    assert out.text == "dog" and out.cluster_sizes == (1, 0) and out.reason == "ok"


def test_contract_violations_are_errors() -> None:
    s = DefenseSettings()
    short = SmoothGuard(lambda ims, p, m: ["cat"], embed, image_mean=MEAN, image_std=STD)
    with pytest.raises(RuntimeError, match="generate returned 1"):
        short.defend(image(), "q", options(s, num_samples=3))
    bad_embed = SmoothGuard(
        lambda ims, p, m: ["cat"] * len(ims),
        lambda t: np.zeros((1, 3), dtype=np.float32),
        image_mean=MEAN,
        image_std=STD,
    )
    with pytest.raises(RuntimeError, match="embed returned"):
        bad_embed.defend(image(), "q", options(s, num_samples=3))
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        short.defend(image()[None], "q", options(s))


def brightness_model(images: np.ndarray, prompt: str, max_new_tokens: int) -> list[str]:
    """ "yes" when the copy's mean (normalised) is positive: a smooth classifier to certify."""
    return ["yes" if float(im.mean()) > 0 else "no" for im in images]


def test_certify_draws_only_noisy_copies_in_batches_and_certifies() -> None:
    s = DefenseSettings(noise_unit="pixel")
    seen: list[int] = []
    clean = np.full((3, 8, 8), 0.8, np.float32)  # pixel 0.7 in [0, 1]: far above the mean

    def model(images: np.ndarray, prompt: str, max_new_tokens: int) -> list[str]:
        seen.append(len(images))
        assert not any(np.array_equal(im, clean) for im in images), "the clean copy was asked"
        return brightness_model(images, prompt, max_new_tokens)

    guard = SmoothGuard(model, embed, image_mean=MEAN, image_std=STD, settings=s)
    opts = options(s, num_samples=2, sigma=0.25)
    result = guard.certify(
        clean, "is it bright?", opts, selection_draws=10, estimation_draws=100, alpha=0.001,
        batch=32,
    )  # fmt: skip
    assert seen == [32, 32, 32, 14]
    assert result.label == "yes" and result.radius > 0.25  # p_lower > 0.84 at this margin
    assert sum(result.estimation_counts.values()) == 100


def test_certify_abstains_at_the_decision_boundary() -> None:
    s = DefenseSettings(noise_unit="pixel")
    guard = SmoothGuard(brightness_model, embed, image_mean=MEAN, image_std=STD, settings=s)
    boundary = np.zeros((3, 8, 8), np.float32)  # exactly the mean: a coin flip under noise
    result = guard.certify(
        boundary, "is it bright?", options(s, num_samples=2, sigma=0.25),
        selection_draws=10, estimation_draws=100, alpha=0.001,
    )  # fmt: skip
    assert result.label is None and result.radius == 0.0


def test_certify_radius_is_in_pixels_for_normalized_noise() -> None:
    """Same draws in either unit when sigma_pixel = sigma * std (STD is equal per channel):
    the same certificate, and the radius stated in pixels both times."""
    clean = np.full((3, 8, 8), 0.8, np.float32)
    certs = {}
    for unit, sigma in (("pixel", 0.25), ("normalized", 1.0)):
        s = DefenseSettings(noise_unit=unit, sigma_max=2.0)
        guard = SmoothGuard(brightness_model, embed, image_mean=MEAN, image_std=STD, settings=s)
        certs[unit] = guard.certify(clean, "bright?", options(s, num_samples=2, sigma=sigma))
    pixel, normalized = certs["pixel"], certs["normalized"]
    assert pixel.label == normalized.label == "yes"
    assert pixel.estimation_counts == normalized.estimation_counts
    assert normalized.radius == pytest.approx(pixel.radius) and pixel.radius > 0.25


def test_certify_defaults_to_the_settings_and_the_options_answer_set() -> None:
    s = DefenseSettings(noise_unit="pixel", certify_selection_draws=3, certify_estimation_draws=20)
    seen: list[int] = []

    def model(images: np.ndarray, prompt: str, max_new_tokens: int) -> list[str]:
        seen.append(len(images))
        return ["Bright." if float(im.mean()) > 0 else "dark" for im in images]

    guard = SmoothGuard(model, embed, image_mean=MEAN, image_std=STD, settings=s)
    clean = np.full((3, 8, 8), 0.8, np.float32)
    opts = resolve_options(s, certify=True, answer_set=["dark", "bright"], sigma=0.25, seed=1)
    result = guard.certify(clean, "bright or dark?", opts)
    assert seen == [23] and result.label == "bright"
    assert sum(result.estimation_counts.values()) == 20


def test_predict_answers_away_from_the_boundary_and_abstains_at_it() -> None:
    s = DefenseSettings(noise_unit="pixel")
    guard = SmoothGuard(brightness_model, embed, image_mean=MEAN, image_std=STD, settings=s)
    opts = options(s, num_samples=2, sigma=0.25)
    bright = guard.predict(np.full((3, 8, 8), 0.8, np.float32), "bright?", opts, draws=50,
                           alpha=0.001)  # fmt: skip
    assert bright.label == "yes" and sum(bright.counts.values()) == 50
    boundary = guard.predict(np.zeros((3, 8, 8), np.float32), "bright?", opts, draws=50,
                             alpha=0.001)  # fmt: skip
    assert boundary.label is None


@pytest.mark.parametrize(
    ("unit", "level"),
    [("pixel", 0.2), ("normalized", 0.2 * 0.25)],
)
def test_a_denoiser_sees_every_noisy_copy_at_the_pixel_level_and_never_the_clean_one(
    unit: str, level: float
) -> None:
    """Denoised smoothing: copies 1..N-1 go through the denoiser at the noise's pixel level
    (for normalized noise sigma x the RMS of std); copy 0, the clean image, passes untouched
    and the model sees what the denoiser returned."""
    calls: list[tuple[np.ndarray, float]] = []
    seen: dict[str, np.ndarray] = {}

    def denoise(copies: np.ndarray, sigma: float) -> np.ndarray:
        calls.append((copies.copy(), sigma))
        return np.full_like(copies, 0.5)

    def spy(images: np.ndarray, prompt: str, max_new_tokens: int) -> list[str]:
        seen["images"] = images.copy()
        return ["cat"] * len(images)

    s = DefenseSettings(noise_unit=unit)
    guard = SmoothGuard(spy, embed, image_mean=MEAN, image_std=STD, settings=s, denoise=denoise)
    img = image()
    guard.defend(img, "q", options(s, num_samples=4, sigma=0.2))
    ((copies, sigma),) = calls
    assert copies.shape == (3, 3, 8, 8) and sigma == pytest.approx(level)
    assert not np.array_equal(copies[0], img)  # noisy, as drawn
    np.testing.assert_array_equal(seen["images"][0], img)
    assert (seen["images"][1:] == 0.5).all()
    # certify draws only noisy copies, all of them denoised
    calls.clear()
    guard.certify(img, "q", options(s, sigma=0.2), selection_draws=3, estimation_draws=5)
    assert sum(len(c) for c, _ in calls) == 8
