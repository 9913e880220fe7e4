"""SynthAudio: deterministic, balanced, disjoint splits, real events, and scoring."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

from smoothguard.synthetic.synthaudio import (
    EVENT_TYPES,
    HARMFUL_MARKER,
    NUM_SAMPLES,
    REFUSAL,
    event_prf,
    generate_split,
    is_harmful,
    load_benchmark,
    make_items,
    parse_events,
    render_clip,
)
from smoothguard.synthetic.synthaudio.clips import (
    POPULAR,
    SPLIT_BASES,
    SPLIT_SPAN,
    TRIGGER,
    split_seed,
)
from smoothguard.synthetic.synthaudio.questions import POPULAR_POOL, describe_text


def test_clips_are_deterministic_per_seed() -> None:
    a, b = render_clip(123), render_clip(123)
    np.testing.assert_array_equal(a.waveform, b.waveform)
    assert a.events == b.events and a.spans == b.spans
    assert not np.array_equal(render_clip(124).waveform, a.waveform)


def test_clips_are_mono_float32_with_audible_events() -> None:
    for clip in generate_split("validation", 20):
        assert clip.waveform.shape == (NUM_SAMPLES,) and clip.waveform.dtype == np.float32
        assert np.abs(clip.waveform).max() <= 1.0 and np.isfinite(clip.waveform).all()
        assert 1 <= len(clip.events) <= 3
        assert not clip.trigger and TRIGGER not in clip.events
        inside = clip.labels > 0
        quiet = clip.waveform[~inside].std()
        loud = clip.waveform[inside].std()
        assert loud > 2 * quiet  # events stand out from the background
        for onset, offset in clip.spans:
            assert 0 <= onset < offset <= 1.0


def test_spans_do_not_overlap() -> None:
    for clip in generate_split("validation", 50):
        spans = sorted(clip.spans)
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))


def test_trigger_only_on_request() -> None:
    clip = render_clip(split_seed("train", 5_000_000), trigger=True)
    assert clip.trigger and TRIGGER not in clip.events
    assert int(clip.labels.max()) == len(EVENT_TYPES) + 1


def test_splits_never_share_a_seed() -> None:
    ranges = sorted((base, base + SPLIT_SPAN) for base in SPLIT_BASES.values())
    assert all(hi <= lo2 for (_, hi), (lo2, _) in itertools.pairwise(ranges))
    with pytest.raises(ValueError):
        split_seed("test", SPLIT_SPAN)
    with pytest.raises(ValueError):
        split_seed("dev", 0)  # type: ignore[arg-type]
    assert {c.seed for c in generate_split("train", 5)}.isdisjoint(
        {c.seed for c in generate_split("test", 5)}
    )


def test_benchmark_is_balanced_and_deterministic() -> None:
    bench = load_benchmark("test", 300, 5, 5)
    pope = bench["pope"]
    assert Counter(it.answer for it in pope) == {"yes": 150, "no": 150}
    assert set(Counter((it.sampling, it.answer) for it in pope).values()) == {50}
    again = load_benchmark("test", 300, 5, 5)
    assert [it.prompt for it in again["pope"]] == [it.prompt for it in pope]
    seeds = {task: {it.clip_seed for it in items} for task, items in bench.items()}
    assert seeds["pope"].isdisjoint(seeds["describe"]) and seeds["pope"].isdisjoint(seeds["safety"])


def test_gold_answers_are_true_of_the_clip() -> None:
    for item in load_benchmark("test", 120, 1, 1)["pope"]:
        asked = parse_events(item.prompt)
        assert len(asked) == 1
        assert (next(iter(asked)) in item.events) == (item.answer == "yes")
    for item in load_benchmark("test", 6, 20, 1)["describe"]:
        assert parse_events(item.answer) == set(item.events)
    assert all(it.answer == REFUSAL for it in load_benchmark("test", 6, 1, 30)["safety"])


def test_negative_sampling_strategies_differ() -> None:
    pope = load_benchmark("test", 600, 1, 1)["pope"]
    negatives = {
        s: Counter(it.prompt for it in pope if it.sampling == s and it.answer == "no")
        for s in ("random", "popular", "adversarial")
    }
    assert len(negatives["popular"]) < len(negatives["random"])
    for item in pope:
        if item.answer != "no":
            continue
        ((register, kind),) = parse_events(item.prompt)
        if item.sampling == "adversarial":
            assert any(register == r or kind == k for r, k in item.events)
        if item.sampling == "popular":
            assert (register, kind) in POPULAR[: POPULAR_POOL + 3]


def test_every_event_type_occurs_at_varied_times() -> None:
    clips = generate_split("validation", 200)
    types = Counter(e for c in clips for e in c.events)
    assert len(types) == len(EVENT_TYPES)
    onsets = {round(on, 2) for c in clips for on, _ in c.spans}
    assert len(onsets) > 50
    assert Counter(len(c.events) for c in clips).keys() == {1, 2, 3}


def test_items_carry_their_clip() -> None:
    clips = generate_split("validation", 3)
    for task in ("pope", "describe", "safety"):
        for item in make_items(clips, task):
            clip = next(c for c in clips if c.seed == item.clip_seed)
            assert item.waveform is clip.waveform and item.events == tuple(clip.events)
            assert item.media is item.waveform and item.source_seed == item.clip_seed
            assert not hasattr(item, "image") and not hasattr(item, "scene_seed")
    with pytest.raises(ValueError):
        make_items(clips, "caption")  # type: ignore[arg-type]


def test_event_scoring_and_marker() -> None:
    gold = [("low", "tone"), ("high", "rising chirp")]
    assert event_prf("a low tone and a high rising chirp", gold) == (1.0, 1.0, 1.0)
    p, r, f = event_prf("a low tone and a high falling chirp", gold)
    assert (p, r) == (0.5, 0.5) and f == pytest.approx(0.5)
    assert event_prf("nothing", gold)[2] == 0.0
    assert parse_events("A Middle  Noise Burst!") == {("middle", "noise burst")}
    assert describe_text([("high", "tone"), ("low", "chord")]) == "a low chord and a high tone"
    assert is_harmful(HARMFUL_MARKER) and not is_harmful(REFUSAL)
