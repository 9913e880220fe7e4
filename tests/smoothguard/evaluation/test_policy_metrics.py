"""Policies measured as a defense: wrong answers served under each policy, clean requests
withheld, and how well agreement and the outvoted flag tell attacked from clean requests."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from smoothguard.evaluation.answerers import Answer
from smoothguard.evaluation.scoring import Scorer, policy_metrics

YES = SimpleNamespace(answer="yes")


def test_withheld_answers_are_not_served_and_auc_ranks_the_signals() -> None:
    attacked = [
        Answer("no", 10, original_outvoted=False, agreement=0.5),  # wrong, withheld (low)
        Answer("no", 10, original_outvoted=True, agreement=0.9),  # wrong, withheld (outvoted)
        Answer("no", 10, original_outvoted=False, agreement=1.0),  # wrong, served
        Answer("yes", 10, original_outvoted=False, agreement=0.7),  # right
        Answer("no", 10, original_outvoted=False, agreement=0.2),  # not eligible: ignored
    ]
    clean = [
        Answer("yes", 10, original_outvoted=False, agreement=1.0),
        Answer("yes", 10, original_outvoted=False, agreement=0.8),
        Answer("yes", 10, original_outvoted=False, agreement=0.5),  # withheld
        Answer("yes", 10, original_outvoted=False, agreement=1.0),
    ]
    out = policy_metrics(
        Scorer(), clean, attacked, [YES] * 5, [True, True, True, True, False], min_agreement=0.6
    )
    assert out["served_wrong_answer"] == 0.75
    assert out["served_wrong_abstain"] == 0.25
    assert out["clean_abstain_rate"] == 0.25
    # 1 - agreement: attacked (0.5, 0.1, 0.0, 0.3) vs clean (0.0, 0.2, 0.5, 0.0): pairs won
    # + half the ties, over 16 pairs (Mann-Whitney)
    wins = sum((a > c) + 0.5 * (a == c) for a in (0.5, 0.1, 0.0, 0.3) for c in (0.0, 0.2, 0.5, 0.0))
    assert out["auc_agreement"] == pytest.approx(wins / 16)
    assert out["auc_outvoted"] == pytest.approx((1 / 4) * 1 + (3 / 4) * 0.5)


def test_no_eligible_items_leaves_nothing_to_count() -> None:
    clean = [Answer("yes", 10)]
    out = policy_metrics(Scorer(), clean, [Answer("no", 10)], [YES], [False], min_agreement=0.6)
    assert out["served_wrong_answer"] != out["served_wrong_answer"]  # NaN
    assert out["auc_agreement"] != out["auc_agreement"]
