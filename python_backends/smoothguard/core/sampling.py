"""One request's sampling rounds and failure mode, for every caller that asks the MLLM.

The Triton generate step (async BLS calls that may fail one by one) and the in-process
pipeline (a plain callable) both ask for the copies a round at a time and hand the answers
back here, so when to stop early (smoothguard.core.adaptive) and what a failed call does to
the request are written once and cannot drift apart between the server and the evaluation.

    sampling = Sampling.for_request(options, settings)
    for indices in sampling:  # a range of copy indices per round
        sampling.record(ask(indices))  # one str, or a Failed, per index
    texts = sampling.answers()  # raises SamplingError where the request fails
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from smoothguard.core.adaptive import first_round, unanimous
from smoothguard.core.settings import FAILURE_MODES, DefenseSettings, RequestOptions


@dataclass(frozen=True)
class Failed:
    """A copy whose model call failed, kept in its place: the vote must know whether the
    unperturbed copy 0 is among the losses, and the caller which call failed and why."""

    index: int
    message: str
    code: int  # the failing call's own error code (a Triton code in the server), passed on


class SamplingError(Exception):
    """The request fails. `code` is the failing call's, so a caller sees the real cause (an
    UNAVAILABLE MLLM stays UNAVAILABLE) instead of a generic internal error."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


Answer = str | Failed


class Sampling:
    """Which copies to ask, round by round, and the answers the vote may use.

    Adaptive sampling asks a first round and the rest only when the first round's answers
    (those that succeeded) are not unanimous. A failed copy fails the request under
    failure_mode "closed"; under "open" the vote goes on with the answers that succeeded,
    except that losing the unperturbed copy 0 always fails it (the policy compares it with
    the noisy consensus, so there is nothing to vote about without it).
    """

    def __init__(
        self, num_samples: int, *, adaptive: bool, initial: int, failure_mode: str
    ) -> None:
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if failure_mode not in FAILURE_MODES:
            raise ValueError(f"failure_mode must be one of {FAILURE_MODES}, got {failure_mode!r}")
        self.num_samples = num_samples
        self.failure_mode = failure_mode
        self._first = first_round(num_samples, adaptive=adaptive, initial=initial)
        self._answers: list[Answer] = []
        self._pending: range | None = None

    @classmethod
    def for_request(cls, options: RequestOptions, settings: DefenseSettings) -> Sampling:
        """A certify request always fails closed: its bound counts every draw, and a draw
        dropped because the model failed on it would bias the count (and shift the split
        between selection and estimation draws)."""
        return cls(
            options.num_samples,
            adaptive=options.adaptive,
            initial=settings.adaptive_initial,
            failure_mode="closed" if options.certify else settings.failure_mode,
        )

    def __iter__(self) -> Iterator[range]:
        while (indices := self.next_round()) is not None:
            yield indices

    def next_round(self) -> range | None:
        """The copies to ask next, or None once the answers are complete."""
        if self._pending is not None:
            raise RuntimeError(f"round {_span(self._pending)} was asked but never recorded")
        self._pending = self._upcoming()
        return self._pending

    def record(self, answers: Sequence[Answer]) -> None:
        """The round's answers, in the order of its indices."""
        indices = self._pending
        if indices is None:
            raise RuntimeError("no round is waiting for answers")
        if len(answers) != len(indices):
            raise ValueError(
                f"{len(answers)} answers for round {_span(indices)} of {len(indices)} copies"
            )
        for index, answer in zip(indices, answers, strict=True):
            if isinstance(answer, Failed):
                if answer.index != index:
                    raise ValueError(f"Failed for copy {answer.index} recorded as copy {index}")
            elif not isinstance(answer, str):
                raise TypeError(f"copy {index}: an answer is a str or a Failed, not {answer!r}")
        self._answers += answers
        self._pending = None

    def answers(self) -> list[str]:
        """The answers to vote with, copy 0 first; raises SamplingError where the failure mode
        fails the request."""
        if self._pending is not None or self._upcoming() is not None:
            raise RuntimeError("answers() before every round was asked and recorded")
        failures = [a for a in self._answers if isinstance(a, Failed)]
        if not failures:
            return self._texts()
        clean = self._answers[0]
        if self.failure_mode == "closed" or isinstance(clean, Failed):
            first = clean if isinstance(clean, Failed) else failures[0]
            which = "the unperturbed sample" if first is clean else f"sample {first.index}"
            raise SamplingError(
                f"{len(failures)} of {len(self._answers)} MLLM calls failed "
                f"(failure_mode={self.failure_mode}); {which}: {first.message}",
                first.code,
            )
        return self._texts()  # fail open: vote with the rest

    def _upcoming(self) -> range | None:
        asked = len(self._answers)
        if asked == 0:
            return range(self._first)
        if asked == self._first < self.num_samples and not unanimous(self._texts()):
            return range(self._first, self.num_samples)
        return None

    def _texts(self) -> list[str]:
        return [a for a in self._answers if isinstance(a, str)]


def _span(indices: range) -> str:
    return f"{indices.start}..{indices.stop - 1}"
