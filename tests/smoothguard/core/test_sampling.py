"""Sampling rounds and failure modes, as the generate step and the in-process pipeline use them."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smoothguard.core.sampling import Failed, Sampling, SamplingError
from smoothguard.core.settings import DefenseSettings, resolve_options

UNAVAILABLE, INTERNAL = 14, 13  # any codes: the core passes them on untouched


def drive(sampling: Sampling, answer: dict[int, str | Failed] | list[str]) -> list[range]:
    """Ask every round the way the callers do; returns the rounds asked."""
    asked = []
    for indices in sampling:
        asked.append(indices)
        sampling.record([answer[i] for i in indices])
    return asked


def fail(index: int, code: int = UNAVAILABLE) -> Failed:
    return Failed(index, f"boom {index}", code)


def sampling(n: int, *, adaptive: bool = False, initial: int = 3, mode: str = "closed"):
    return Sampling(n, adaptive=adaptive, initial=initial, failure_mode=mode)


def test_without_adaptive_one_round_asks_every_copy() -> None:
    s = sampling(5)
    assert drive(s, ["a", "b", "c", "d", "e"]) == [range(5)]
    assert s.answers() == ["a", "b", "c", "d", "e"]


def test_adaptive_stops_after_a_unanimous_first_round() -> None:
    s = sampling(8, adaptive=True)
    assert drive(s, ["Yes.", "yes", " YES "] + ["no"] * 5) == [range(3)]
    assert s.answers() == ["Yes.", "yes", " YES "]


def test_adaptive_asks_the_rest_on_disagreement_in_order() -> None:
    answers = ["no", "yes", "no", "yes", "yes", "yes", "yes", "yes"]
    s = sampling(8, adaptive=True)
    assert drive(s, answers) == [range(3), range(3, 8)]
    assert s.answers() == answers


def test_empty_answers_are_not_agreement() -> None:
    s = sampling(6, adaptive=True)
    assert drive(s, [""] * 6) == [range(3), range(3, 6)]


def test_few_samples_need_no_second_round() -> None:
    s = sampling(3, adaptive=True, initial=4)
    assert drive(s, ["a", "b", "c"]) == [range(3)]


def test_unanimity_looks_only_at_the_answers_that_succeeded() -> None:
    s = sampling(6, adaptive=True, mode="open")
    assert drive(s, {0: "yes", 1: fail(1), 2: "yes"}) == [range(3)]
    assert s.answers() == ["yes", "yes"]
    s = sampling(6, adaptive=True, mode="open")
    everything = {0: "yes", 1: fail(1), 2: "no", 3: "yes", 4: fail(4), 5: "no"}
    assert drive(s, everything) == [range(3), range(3, 6)]
    assert s.answers() == ["yes", "no", "yes", "no"]


def test_fail_closed_fails_with_the_first_failing_copy() -> None:
    s = sampling(5)
    drive(s, {0: "a", 1: "b", 2: fail(2, INTERNAL), 3: "d", 4: fail(4)})
    with pytest.raises(SamplingError) as info:
        s.answers()
    assert info.value.message == "2 of 5 MLLM calls failed (failure_mode=closed); sample 2: boom 2"
    assert str(info.value) == info.value.message
    assert info.value.code == INTERNAL


def test_fail_open_votes_with_the_rest() -> None:
    s = sampling(5, mode="open")
    drive(s, {0: "a", 1: "b", 2: fail(2), 3: "d", 4: fail(4)})
    assert s.answers() == ["a", "b", "d"]


@pytest.mark.parametrize("mode", ["open", "closed"])
def test_losing_the_clean_copy_always_fails(mode: str) -> None:
    s = sampling(4, mode=mode)
    drive(s, {0: fail(0, INTERNAL), 1: "b", 2: fail(2), 3: "d"})
    with pytest.raises(SamplingError) as info:
        s.answers()
    assert info.value.message == (
        f"2 of 4 MLLM calls failed (failure_mode={mode}); the unperturbed sample: boom 0"
    )
    assert info.value.code == INTERNAL  # copy 0's own code, not the other failure's


def test_failures_count_only_the_copies_asked() -> None:
    s = sampling(8, adaptive=True)
    drive(s, {0: "yes", 1: fail(1), 2: "yes"})
    with pytest.raises(SamplingError, match=r"^1 of 3 MLLM calls failed"):
        s.answers()


def test_for_request_reads_the_options_and_settings() -> None:
    settings_ = DefenseSettings(adaptive_initial=2, failure_mode="open")
    options = resolve_options(settings_, num_samples=6, adaptive=True)
    s = Sampling.for_request(options, settings_)
    assert (s.num_samples, s.failure_mode) == (6, "open")
    assert drive(s, ["no", "yes", "a", "b", "c", "d"]) == [range(2), range(2, 6)]


def test_certify_requests_fail_closed_whatever_the_server_says() -> None:
    """A dropped draw would bias CERTIFY's count and shift its selection/estimation split."""
    settings_ = DefenseSettings(
        failure_mode="open", certify_selection_draws=2, certify_estimation_draws=3
    )
    s = Sampling.for_request(resolve_options(settings_, certify=True), settings_)
    assert (s.num_samples, s.failure_mode) == (6, "closed")
    drive(s, {0: "yes", 1: "yes", 2: fail(2), 3: "yes", 4: "no", 5: "yes"})
    with pytest.raises(SamplingError, match="failure_mode=closed"):
        s.answers()


def test_the_protocol_is_checked() -> None:
    s = sampling(4, adaptive=True)
    with pytest.raises(RuntimeError, match="no round"):
        s.record(["a"])
    first = s.next_round()
    assert first == range(3)
    with pytest.raises(RuntimeError, match="never recorded"):
        s.next_round()
    with pytest.raises(RuntimeError, match="answers"):
        s.answers()
    with pytest.raises(ValueError, match=r"2 answers for round 0\.\.2 of 3 copies"):
        s.record(["a", "b"])
    with pytest.raises(ValueError, match="copy 2 recorded as copy 1"):
        s.record(["a", fail(2), "c"])
    with pytest.raises(TypeError, match="copy 1"):
        s.record(["a", b"b", "c"])  # type: ignore[list-item]
    s.record(["a", "b", "c"])
    with pytest.raises(RuntimeError, match="answers"):
        s.answers()  # the second round is due


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"num_samples": 0}, "num_samples"), ({"failure_mode": "ajar"}, "failure_mode")],
)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    args = {"num_samples": 4, "adaptive": False, "initial": 2, "failure_mode": "closed"} | kwargs
    with pytest.raises(ValueError, match=message):
        Sampling(**args)


answer = st.one_of(st.sampled_from(["yes", "Yes.", "no", "", "a red circle"]), st.none())


@settings(max_examples=200, deadline=None)
@given(
    outcomes=st.lists(answer, min_size=1, max_size=12),
    adaptive=st.booleans(),
    initial=st.integers(2, 6),
    mode=st.sampled_from(["open", "closed"]),
)
def test_rounds_and_failure_modes_hold_for_any_answers(
    outcomes: list[str | None], adaptive: bool, initial: int, mode: str
) -> None:
    """None stands for a failed call. Whatever the answers: the rounds cover a prefix of the
    copies, in order, each copy once; a failure fails the request exactly when the mode is
    closed or copy 0 failed; otherwise the answers are the successes, in order."""
    n = len(outcomes)
    by_index = {i: fail(i) if o is None else o for i, o in enumerate(outcomes)}
    s = sampling(n, adaptive=adaptive, initial=initial, mode=mode)
    rounds = drive(s, by_index)
    asked = [i for r in rounds for i in r]
    assert asked == list(range(len(asked))) and 1 <= len(rounds) <= 2
    if not adaptive or n <= initial:
        assert rounds == [range(n)]
    else:
        first = [o for o in outcomes[:initial] if o is not None]
        agreed = len({o.strip(" .").lower() for o in first}) == 1 and first[0].strip() != ""
        assert rounds == ([range(initial)] if agreed else [range(initial), range(initial, n)])
    got = [outcomes[i] for i in asked]
    if None not in got:
        assert s.answers() == got
    elif mode == "closed" or got[0] is None:
        with pytest.raises(SamplingError) as info:
            s.answers()
        which = 0 if got[0] is None else got.index(None)
        assert info.value.message.startswith(f"{got.count(None)} of {len(got)} MLLM calls")
        assert info.value.message.endswith(f": boom {which}")
    else:
        assert s.answers() == [g for g in got if g is not None]
