"""Turn the vote into the text a client receives.

``reason`` always states what the evidence says, whatever the policy did with it, so that a
shadow-mode ("monitor") or plain "answer" deployment still reports the requests that an
"abstain" or "refuse" deployment would have stopped:

* ``"original_outvoted"``: the unperturbed answer lost the vote (the typical signature of an
  adversarial image: the attack works on the exact pixels but not on noisy copies). Checked
  first because it is the stronger signal.
* ``"low_agreement"``: the majority share is below ``settings.min_agreement``.
* ``"ok"``: neither.

A certify request (docs/certified.md) is decided by its certificate instead, whatever the
policy: ``"certified"`` answers the certified class, ``"not_certified"`` abstains.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from smoothguard.core.aggregate import Selection
from smoothguard.core.certify import Certificate
from smoothguard.core.settings import POLICIES, DefenseSettings

DecisionKind = Literal["answered", "monitored", "abstained", "refused"]
Reason = Literal["ok", "low_agreement", "original_outvoted"]
CertifyReason = Literal["certified", "not_certified"]


@dataclass(frozen=True)
class Decision:
    text: str
    decision: DecisionKind
    reason: str


def concern(selection: Selection, settings: DefenseSettings) -> Reason:
    """Why the vote is untrustworthy, or "ok"."""
    if selection.original_outvoted:
        return "original_outvoted"
    if selection.agreement < settings.min_agreement:
        return "low_agreement"
    return "ok"


def decide(
    selection: Selection,
    candidates: Sequence[str],
    policy: str,
    settings: DefenseSettings,
) -> Decision:
    """Apply `policy`: answer / monitor (return the original) / abstain / refuse."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    if len(candidates) != len(selection.labels):
        raise ValueError(
            f"{len(candidates)} candidates for a selection over {len(selection.labels)}"
        )
    reason = concern(selection, settings)
    chosen = candidates[selection.chosen_index]
    if policy == "answer":
        return Decision(text=chosen, decision="answered", reason=reason)
    if policy == "monitor":
        return Decision(text=candidates[0], decision="monitored", reason=reason)
    if reason == "ok":
        return Decision(text=chosen, decision="answered", reason=reason)
    if policy == "abstain":
        return Decision(text=settings.abstain_text, decision="abstained", reason=reason)
    return Decision(text=settings.refusal_text, decision="refused", reason=reason)


def decide_certified(certificate: Certificate, settings: DefenseSettings) -> Decision:
    """The certified class word, or the policy module's abstention: an uncertified answer
    to a closed question is exactly what a caller asked not to be given."""
    if certificate.label is not None:
        return Decision(text=certificate.label, decision="answered", reason="certified")
    return Decision(text=settings.abstain_text, decision="abstained", reason="not_certified")
