"""Each policy, each reason."""

from __future__ import annotations

import pytest

from smoothguard.core.aggregate import Selection
from smoothguard.core.certify import Certificate
from smoothguard.core.policy import Decision, decide, decide_certified
from smoothguard.core.settings import DefenseSettings

SETTINGS = DefenseSettings(min_agreement=0.6, refusal_text="REFUSED", abstain_text="ABSTAIN")
CANDS = ["orig", "a", "b", "c", "d"]

OK = Selection(2, (4, 1), 0.8, False, False, (1, 1, 1, 1, 0))
LOW = Selection(0, (3, 2), 0.6 - 1e-9, False, False, (1, 1, 1, 0, 0))
OUTVOTED = Selection(3, (4, 1), 0.8, True, False, (0, 1, 1, 1, 1))
BOTH = Selection(3, (3, 2), 0.4, True, False, (0, 1, 1, 1, 0))


@pytest.mark.parametrize(
    ("sel", "reason"),
    [
        (OK, "ok"),
        (LOW, "low_agreement"),
        (OUTVOTED, "original_outvoted"),
        (BOTH, "original_outvoted"),
    ],
)
def test_answer_always_returns_the_chosen_candidate(sel: Selection, reason: str) -> None:
    assert decide(sel, CANDS, "answer", SETTINGS) == Decision(
        CANDS[sel.chosen_index], "answered", reason
    )


@pytest.mark.parametrize("sel", [OK, LOW, OUTVOTED])
def test_monitor_returns_the_unperturbed_answer(sel: Selection) -> None:
    d = decide(sel, CANDS, "monitor", SETTINGS)
    assert d.text == "orig" and d.decision == "monitored"
    assert d.reason == decide(sel, CANDS, "answer", SETTINGS).reason


@pytest.mark.parametrize(
    ("policy", "text", "kind"),
    [("abstain", "ABSTAIN", "abstained"), ("refuse", "REFUSED", "refused")],
)
def test_abstain_and_refuse(policy: str, text: str, kind: str) -> None:
    assert decide(OK, CANDS, policy, SETTINGS) == Decision("b", "answered", "ok")
    assert decide(LOW, CANDS, policy, SETTINGS) == Decision(text, kind, "low_agreement")
    assert decide(OUTVOTED, CANDS, policy, SETTINGS) == Decision(text, kind, "original_outvoted")


def test_agreement_exactly_at_threshold_is_ok() -> None:
    sel = Selection(0, (3, 2), 0.6, False, False, (1, 1, 1, 0, 0))
    assert decide(sel, CANDS, "refuse", SETTINGS).decision == "answered"


def test_default_abstain_text_is_empty() -> None:
    assert decide(LOW, CANDS, "abstain", DefenseSettings()).text == ""


def test_all_empty_selection_abstains_by_default() -> None:
    sel = Selection(0, (0, 0), 0.0, False, False, (0, 0, 0))
    assert decide(sel, ["", "", ""], "refuse", SETTINGS) == Decision(
        "REFUSED", "refused", "low_agreement"
    )


def test_rejects_unknown_policy_and_mismatched_candidates() -> None:
    with pytest.raises(ValueError, match="policy"):
        decide(OK, CANDS, "ignore", SETTINGS)
    with pytest.raises(ValueError, match="candidates"):
        decide(OK, CANDS[:3], "answer", SETTINGS)


def test_a_certificate_decides_a_certify_request() -> None:
    settings = DefenseSettings(abstain_text="(no certified answer)")
    yes = Certificate("yes", 0.1, 0.93, {"yes": 10}, {"yes": 100})
    assert decide_certified(yes, settings) == Decision("yes", "answered", "certified")
    none = Certificate(None, 0.0, 0.4, {"yes": 5, "no": 5}, {"yes": 55, "no": 45})
    assert decide_certified(none, settings) == Decision(
        "(no certified answer)", "abstained", "not_certified"
    )
