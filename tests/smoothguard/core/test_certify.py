"""CERTIFY's arithmetic against SciPy (the oracle), and its decisions on constructed draws."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from smoothguard.core.certify import answer_class, certify, clopper_pearson_lower


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
