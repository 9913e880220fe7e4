"""CERTIFY's arithmetic against SciPy (the oracle), and its decisions on constructed draws."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from smoothguard.core.certify import (
    answer_class,
    binomial_two_sided_p,
    certify,
    clopper_pearson_lower,
    normalize_answer_set,
    pixel_radius_scale,
    predict,
)


@settings(max_examples=200, deadline=None)
@given(
    trials=st.integers(1, 400),
    share=st.floats(0.0, 1.0),
    alpha=st.sampled_from([0.1, 0.05, 0.01, 0.001]),
)
def test_lower_bound_is_scipys_beta_quantile(trials: int, share: float, alpha: float) -> None:
    successes = round(share * trials)
    expected = 0.0 if successes == 0 else stats.beta.ppf(alpha, successes, trials - successes + 1)
    assert clopper_pearson_lower(successes, trials, alpha) == pytest.approx(expected, abs=1e-9)


def test_lower_bound_covers_the_true_share_as_often_as_it_promises() -> None:
    """Coverage by simulation: the bound exceeds the true p in at most ~alpha of trials."""
    rng = np.random.default_rng(7)
    p, n, alpha = 0.8, 100, 0.05
    draws = rng.binomial(n, p, size=2000)
    misses = sum(clopper_pearson_lower(int(k), n, alpha) > p for k in draws)
    assert misses / len(draws) <= alpha + 0.015


@pytest.mark.parametrize(
    ("text", "expected"),
    [("Yes", "yes"), ("no.", "no"), ("  YES, there is a red circle", "yes"), ("maybe", None),
     ("", None), ("there is no red circle", None), ("No!", "no")],
)  # fmt: skip
def test_answer_class_reads_the_first_word(text: str, expected: str | None) -> None:
    assert answer_class(text) == expected


def test_certifies_a_clear_majority_with_cohens_radius() -> None:
    sigma, alpha = 0.25, 0.001
    result = certify(["yes"] * 10, ["yes"] * 95 + ["no"] * 5, sigma=sigma, alpha=alpha)
    p_lower = stats.beta.ppf(alpha, 95, 6)
    assert result.label == "yes" and result.certified
    assert result.p_lower == pytest.approx(p_lower, abs=1e-9)
    assert result.radius == pytest.approx(sigma * stats.norm.ppf(p_lower), rel=1e-9)
    assert result.estimation_counts == {"yes": 95, "no": 5}


def test_abstains_when_the_bound_is_not_above_a_half() -> None:
    result = certify(["no"] * 10, ["no"] * 55 + ["yes"] * 45, sigma=0.5, alpha=0.001)
    assert result.label is None and result.radius == 0.0 and not result.certified
    assert result.p_lower < 0.5


def test_answers_outside_the_set_count_against_the_choice() -> None:
    """Off-set answers are not dropped: dropping them would inflate the top class's share."""
    inside = certify(["yes"] * 10, ["yes"] * 100, sigma=0.25, alpha=0.001)
    diluted = certify(["yes"] * 10, ["yes"] * 60 + ["a red square"] * 40, sigma=0.25, alpha=0.001)
    assert diluted.radius < inside.radius
    assert diluted.p_lower == pytest.approx(stats.beta.ppf(0.001, 60, 41), abs=1e-9)


def test_selection_decides_the_class_not_estimation() -> None:
    """The class comes from the selection draws; if estimation disagrees, it abstains."""
    result = certify(["no"] * 6 + ["yes"] * 4, ["yes"] * 100, sigma=0.25, alpha=0.001)
    assert result.label is None and result.estimation_counts.get("no", 0) == 0


def test_no_answer_in_the_set_abstains() -> None:
    result = certify(["a blue cross"] * 5, ["yes"] * 100, sigma=0.25, alpha=0.001)
    assert result.label is None and result.selection_counts == {}


@pytest.mark.parametrize("bad", [dict(sigma=0.0), dict(alpha=0.0), dict(alpha=1.0)])
def test_refuses_meaningless_settings(bad: dict[str, float]) -> None:
    kwargs = {"sigma": 0.25, "alpha": 0.001} | bad
    with pytest.raises(ValueError):
        certify(["yes"], ["yes"], **kwargs)


def test_radius_grows_with_sigma_and_draws() -> None:
    small = certify(["yes"] * 10, ["yes"] * 100, sigma=0.25, alpha=0.001).radius
    wide = certify(["yes"] * 10, ["yes"] * 100, sigma=0.5, alpha=0.001).radius
    many = certify(["yes"] * 10, ["yes"] * 1000, sigma=0.25, alpha=0.001).radius
    assert wide == pytest.approx(2 * small) and many > small > 0
    assert math.isfinite(many)


def test_pixel_radius_scale_follows_the_noise_unit() -> None:
    clip_std = (0.26862954, 0.26130258, 0.27577711)
    assert pixel_radius_scale("pixel", clip_std) == 1.0
    assert pixel_radius_scale("normalized", clip_std) == 0.26130258  # the smallest channel std
    for unit, std in [("normalized", (0.2, 0.0, 0.3)), ("normalized", ()), ("furlongs", (1.0,))]:
        with pytest.raises(ValueError):
            pixel_radius_scale(unit, std)


def test_normalized_noise_radius_holds_in_pixels_on_a_linear_classifier() -> None:
    """For f(x) = [w . x > b] smoothed by N(0, diag(s^2)) the exact pixel-L2 radius is
    margin / ||w|| at any w; min(s) * inv_Phi(p) must never exceed it, and equals it when w
    points along the least-noisy channel (the bound is tight there)."""
    from statistics import NormalDist

    std = np.array([0.3, 0.2, 0.25])
    sigma = 0.5
    scale = pixel_radius_scale("normalized", tuple(std))
    rng = np.random.default_rng(3)
    for w in [np.array([0.0, 1.0, 0.0]), *rng.normal(size=(50, 3))]:
        margin = 0.05
        # P(w . (x + d) > b) with d ~ N(0, diag((sigma s)^2)) is Phi(margin / ||sigma s w||)
        p = NormalDist().cdf(margin / float(np.linalg.norm(sigma * std * w)))
        certified = scale * sigma * NormalDist().inv_cdf(p)
        exact = margin / float(np.linalg.norm(w))
        assert certified <= exact + 1e-12
    w = np.array([0.0, 1.0, 0.0])
    p = NormalDist().cdf(0.05 / float(np.linalg.norm(sigma * std * w)))
    assert scale * sigma * NormalDist().inv_cdf(p) == pytest.approx(0.05)


def test_answer_sets_are_single_lower_case_words() -> None:
    assert normalize_answer_set(["Yes", " NO "]) == ("yes", "no")
    assert normalize_answer_set(("a1",)) == ("a1",)
    for bad, message in [
        ([], "1 to 16"),
        (["x"] * 17, "1 to 16"),
        (["yes", "YES"], "twice"),
        (["not sure"], "single words"),
        (["oui!"], "single words"),
        (["z" * 33], "at most 32"),
    ]:
        with pytest.raises(ValueError, match=message):
            normalize_answer_set(bad)


@settings(max_examples=300, deadline=None)
@given(trials=st.integers(1, 300), share=st.floats(0.0, 1.0))
def test_two_sided_p_value_is_scipys_binomtest(trials: int, share: float) -> None:
    successes = round(share * trials)
    expected = stats.binomtest(successes, trials, 0.5).pvalue
    assert binomial_two_sided_p(successes, trials) == pytest.approx(expected, rel=1e-9, abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(
    yes=st.integers(0, 120),
    no=st.integers(0, 120),
    other=st.integers(0, 20),
    alpha=st.sampled_from([0.1, 0.01, 0.001]),
)
def test_predict_answers_when_binomtest_rejects_a_tie(
    yes: int, no: int, other: int, alpha: float
) -> None:
    if yes + no + other == 0:
        return
    result = predict(["Yes."] * yes + ["no"] * no + ["a cat"] * other, alpha=alpha)
    if yes + no == 0:
        assert result.abstained
        return
    p_value = stats.binomtest(max(yes, no), yes + no, 0.5).pvalue
    assert result.p_value == pytest.approx(p_value, rel=1e-9, abs=1e-12)
    expected = None if p_value > alpha else ("yes" if yes > no else "no")
    assert result.label == expected and result.counts.get("yes", 0) == yes


def test_predict_is_wrong_at_most_alpha_of_the_time() -> None:
    """Simulated: draws with the top class at 0.6 rarely make PREDICT name the other one."""
    rng = np.random.default_rng(3)
    wrong = 0
    for _ in range(500):
        k = int(rng.binomial(100, 0.6))
        wrong += predict(["yes"] * k + ["no"] * (100 - k), alpha=0.05).label == "no"
    assert wrong / 500 <= 0.05


def test_predict_refuses_nothing_to_count() -> None:
    with pytest.raises(ValueError, match="draws"):
        predict([], alpha=0.01)
    with pytest.raises(ValueError, match="alpha"):
        predict(["yes"], alpha=0.0)
