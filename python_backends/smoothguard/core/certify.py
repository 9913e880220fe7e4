"""Certified answers for closed questions: Cohen, Rosenfeld and Kolter's CERTIFY (ICML 2019).

For an answer set the prompt fixes (yes/no), the smoothed model answers the class that noisy
copies answer most often. With probability at least 1 - alpha over the noise, no input within
L2 distance ``sigma * inv_Phi(p_lower)`` of this one makes the smoothed model answer anything
else, where ``p_lower`` is a one-sided Clopper-Pearson lower bound on the top class's share
among independent draws. The class is chosen on separate *selection* draws so that the
estimation draws stay unbiased; when ``p_lower`` is not above 1/2 the answer abstains.

The radius is in the unit of ``sigma``: pixel units ([0, 1] per channel) at the model's input
resolution when the noise is drawn in pixel units; `pixel_radius_scale` states the pixel-unit
radius for noise drawn in the processor's normalised space. Written with the standard library only
(a bisection on the exact binomial tail), so the served models need no SciPy; the tests hold
it against ``scipy.stats.beta.ppf``.

`predict` is Cohen et al.'s PREDICT: the smoothed model's answer at an input, or abstain, wrong
with probability at most alpha. The certified evaluation uses it to check certificates against
attacks (smoothguard.evaluation.certified).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from statistics import NormalDist

YES_NO: tuple[str, ...] = ("yes", "no")
_WORD = re.compile(r"[a-z0-9]+")
# An answer set a request may name: a few short words (each is matched against an answer's
# first word), so that OPTIONS stays small and the counts stay readable.
MAX_ANSWERS = 16
MAX_ANSWER_CHARS = 32


@dataclass(frozen=True)
class Prediction:
    """What PREDICT concluded. `label` None means abstain: the top two classes were not
    told apart at level alpha."""

    label: str | None
    p_value: float
    counts: dict[str, int]

    @property
    def abstained(self) -> bool:
        return self.label is None


@dataclass(frozen=True)
class Certificate:
    """What CERTIFY concluded. `label` None means abstain (radius 0)."""

    label: str | None
    radius: float
    p_lower: float
    selection_counts: dict[str, int]
    estimation_counts: dict[str, int]

    @property
    def certified(self) -> bool:
        return self.label is not None


def answer_class(text: str, classes: Sequence[str] = YES_NO) -> str | None:
    """The class an answer names by its first word ("Yes, there is." -> "yes"); None when
    the answer is outside the set, which counts against every class."""
    words = _WORD.findall(text.lower())
    if not words:
        return None
    return words[0] if words[0] in classes else None


def normalize_answer_set(answers: Sequence[str]) -> tuple[str, ...]:
    """The answer set lower-cased, or ValueError: 1 to MAX_ANSWERS distinct single words of
    letters and digits, since `answer_class` reads an answer's first such word and a phrase
    could never match."""
    if not 1 <= len(answers) <= MAX_ANSWERS:
        raise ValueError(f"must hold 1 to {MAX_ANSWERS} answers, got {len(answers)}")
    out: list[str] = []
    for answer in answers:
        word = answer.strip().lower()
        if not 1 <= len(word) <= MAX_ANSWER_CHARS or _WORD.fullmatch(word) is None:
            raise ValueError(
                f"answers must be single words of letters a-z and digits, at most "
                f"{MAX_ANSWER_CHARS} characters; got {answer[: MAX_ANSWER_CHARS + 8]!r}"
            )
        if word in out:
            raise ValueError(f"names {word!r} twice")
        out.append(word)
    return tuple(out)


def pixel_radius_scale(unit: str, std: Sequence[float]) -> float:
    """The factor that turns a radius in the noise's own unit into pixel-space L2.

    "pixel" noise is isotropic in [0, 1] pixel units: factor 1. "normalized" noise of std
    sigma is drawn on ``(x - mean) / std``, so in pixel space channel c has std
    ``sigma * std[c]``: anisotropic. Cohen et al.'s bound holds in the whitened space, and a
    pixel-space change d moves it by at most ``||d|| / min_c(sigma * std[c])``, so the radius
    valid in pixels is ``min_c(std[c]) * sigma * inv_Phi(p_lower)``: the factor is min(std).
    """
    if unit == "pixel":
        return 1.0
    if unit == "normalized":
        if not std or any(not (math.isfinite(float(s)) and float(s) > 0) for s in std):
            raise ValueError(f"std must be finite and positive per channel, got {tuple(std)}")
        return float(min(float(s) for s in std))
    raise ValueError(f"unit must be 'normalized' or 'pixel', got {unit!r}")


def _log_binom_pmf(k: int, n: int, p: float) -> float:
    if p <= 0.0:
        return 0.0 if k == 0 else -math.inf
    if p >= 1.0:
        return 0.0 if k == n else -math.inf
    return (
        math.lgamma(n + 1)
        - math.lgamma(k + 1)
        - math.lgamma(n - k + 1)
        + k * math.log(p)
        + (n - k) * math.log1p(-p)
    )


def _upper_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), summed in log space: exact, and fast for the
    hundreds of draws a request makes."""
    logs = [_log_binom_pmf(i, n, p) for i in range(k, n + 1)]
    top = max(logs)
    if top == -math.inf:
        return 0.0
    return min(1.0, math.exp(top) * math.fsum(math.exp(v - top) for v in logs))


def clopper_pearson_lower(successes: int, trials: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion: the p at
    which seeing `successes` or more would have had probability alpha."""
    if trials < 1 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials and trials >= 1, got {successes}/{trials}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if successes == 0:
        return 0.0
    lo, hi = 0.0, 1.0  # the tail grows with p: bisect for tail(p) == alpha
    for _ in range(100):
        mid = (lo + hi) / 2
        if _upper_tail(successes, trials, mid) < alpha:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return lo


def _counts(texts: Iterable[str], classes: Sequence[str]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for text in texts:
        label = answer_class(text, classes)
        if label is not None:
            counts[label] += 1
    return counts


def certify(
    selection: Sequence[str],
    estimation: Sequence[str],
    *,
    sigma: float,
    alpha: float,
    classes: Sequence[str] = YES_NO,
) -> Certificate:
    """CERTIFY from the answers to two independent sets of noisy copies (the clean input is
    not among them: the guarantee is about the noise distribution)."""
    if not selection or not estimation:
        raise ValueError("certify needs selection and estimation draws")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0 to certify, got {sigma}")
    chosen = _counts(selection, classes)
    counted = _counts(estimation, classes)
    if not chosen:
        return Certificate(None, 0.0, 0.0, dict(chosen), dict(counted))
    # Ties break by the answer set's order, so the choice is a function of the counts alone.
    label = max(classes, key=lambda c: (chosen[c], -classes.index(c)))
    p_lower = clopper_pearson_lower(counted[label], len(estimation), alpha)
    if p_lower <= 0.5:
        return Certificate(None, 0.0, p_lower, dict(chosen), dict(counted))
    radius = sigma * NormalDist().inv_cdf(p_lower)
    return Certificate(label, radius, p_lower, dict(chosen), dict(counted))


def binomial_two_sided_p(successes: int, trials: int) -> float:
    """The exact two-sided binomial test's p-value against p = 1/2 (as
    ``scipy.stats.binomtest(k, n, 0.5).pvalue``): the tails are symmetric, so it is twice the
    far tail, capped at 1."""
    if trials < 1 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials and trials >= 1, got {successes}/{trials}")
    far = max(successes, trials - successes)
    if 2 * far == trials:
        return 1.0
    return min(1.0, 2.0 * _upper_tail(far, trials, 0.5))


def predict(texts: Sequence[str], *, alpha: float, classes: Sequence[str] = YES_NO) -> Prediction:
    """PREDICT from the answers to independent noisy copies: the most frequent class when a
    two-sided binomial test between the top two rejects a tie at level alpha, else abstain.
    Answers outside the set are not counted (Cohen et al. count the top two classes only)."""
    if not texts:
        raise ValueError("predict needs draws")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    counts = _counts(texts, classes)
    ranked = sorted(classes, key=lambda c: (-counts[c], classes.index(c)))
    top = counts[ranked[0]]
    second = counts[ranked[1]] if len(ranked) > 1 else 0
    if top + second == 0:
        return Prediction(None, 1.0, dict(counts))
    p_value = binomial_two_sided_p(top, top + second)
    label = ranked[0] if p_value <= alpha else None
    return Prediction(label, p_value, dict(counts))
