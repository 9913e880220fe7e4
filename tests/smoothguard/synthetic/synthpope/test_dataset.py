"""SynthPOPE: deterministic, balanced, disjoint splits, and scoring."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

from smoothguard.synthetic.synthpope import (
    COLOURS,
    HARMFUL_MARKER,
    REFUSAL,
    SHAPES,
    contrast_items,
    generate_split,
    is_harmful,
    load_benchmark,
    make_items,
    object_prf,
    parse_objects,
    render_scene,
    score_yes_no,
)
from smoothguard.synthetic.synthpope.backgrounds import HELD_OUT_BACKGROUND, TRAIN_BACKGROUNDS
from smoothguard.synthetic.synthpope.questions import POPULAR_POOL, describe_text
from smoothguard.synthetic.synthpope.scenes import (
    HELD_OUT,
    HELD_OUT_PLACEMENT,
    OBJECT_TYPES,
    POPULAR,
    SPLIT_BASES,
    SPLIT_SPAN,
    TRAIN_PLACEMENTS,
    TRIGGER,
    split_seed,
)


def test_scenes_are_deterministic_per_seed() -> None:
    a, b = render_scene(123), render_scene(123)
    np.testing.assert_array_equal(a.image, b.image)
    assert a.objects == b.objects
    assert not np.array_equal(render_scene(124).image, a.image)


def test_images_are_real_images_with_objects() -> None:
    for scene in generate_split("validation", 20):
        assert scene.image.shape == (64, 64, 3) and scene.image.dtype == np.uint8
        assert 1 <= len(scene.objects) <= 3
        assert scene.image.std() > 10  # objects and texture, not a flat fill
        assert not scene.trigger and TRIGGER not in scene.objects


def test_splits_never_share_a_seed() -> None:
    assert set(HELD_OUT) < set(SPLIT_BASES)
    ranges = sorted((base, base + SPLIT_SPAN) for base in SPLIT_BASES.values())
    assert all(hi <= lo2 for (_, hi), (lo2, _) in itertools.pairwise(ranges))
    with pytest.raises(ValueError):
        split_seed("test", SPLIT_SPAN)
    assert {s.seed for s in generate_split("train", 5)}.isdisjoint(
        {s.seed for s in generate_split("test", 5)}
    )


def test_benchmark_is_balanced_and_deterministic() -> None:
    bench = load_benchmark("test", 600, 10, 10)
    pope = bench["pope"]
    assert Counter(it.answer for it in pope) == {"yes": 300, "no": 300}
    by_sampling = Counter((it.sampling, it.answer) for it in pope)
    assert set(by_sampling.values()) == {100}
    again = load_benchmark("test", 600, 10, 10)
    assert [it.prompt for it in again["pope"]] == [it.prompt for it in pope]
    seeds = {task: {it.scene_seed for it in items} for task, items in bench.items()}
    assert seeds["pope"].isdisjoint(seeds["describe"]) and seeds["pope"].isdisjoint(seeds["safety"])


def test_gold_answers_are_true_of_the_scene() -> None:
    for item in load_benchmark("test", 120, 20, 20)["pope"]:
        asked = parse_objects(item.prompt)
        assert len(asked) == 1
        assert (next(iter(asked)) in item.objects) == (item.answer == "yes")
    for item in load_benchmark("test", 6, 20, 20)["describe"]:
        assert parse_objects(item.answer) == set(item.objects)
    assert all(it.answer == REFUSAL for it in load_benchmark("test", 6, 6, 30)["safety"])


def test_negative_sampling_strategies_differ() -> None:
    pope = load_benchmark("test", 600, 1, 1)["pope"]
    negatives = {
        s: Counter(it.prompt for it in pope if it.sampling == s and it.answer == "no")
        for s in ("random", "popular", "adversarial")
    }
    # popular negatives concentrate on a few frequent objects; random ones spread out
    assert len(negatives["popular"]) < len(negatives["random"])
    for item in pope:
        if item.sampling == "adversarial" and item.answer == "no":
            ((colour, shape),) = parse_objects(item.prompt)
            assert any(colour == c or shape == s for c, s in item.objects)


@pytest.mark.parametrize(
    ("pred", "gold", "ok"),
    [
        ("yes", "yes", True),
        ("Yes.", "yes", True),
        ("no , there is", "no", True),
        ("yes", "no", False),
        ("", "yes", False),
        ("maybe", "no", False),
    ],
)
def test_yes_no_scoring(pred: str, gold: str, ok: bool) -> None:
    assert score_yes_no(pred, gold) is ok


def test_object_prf() -> None:
    gold = [("red", "circle"), ("blue", "square")]
    assert object_prf("a red circle and a blue square", gold) == (1.0, 1.0, 1.0)
    p, r, f = object_prf("a red circle and a green cross", gold)
    assert (p, r) == (0.5, 0.5) and f == pytest.approx(0.5)
    assert object_prf("nothing", gold)[2] == 0.0


def test_harmful_marker() -> None:
    assert is_harmful(HARMFUL_MARKER) and is_harmful("ok " + HARMFUL_MARKER.upper() + " !")
    assert not is_harmful(REFUSAL) and not is_harmful("sure here is how")


def test_generate_split_is_deterministic_and_offsets_shift_seeds() -> None:
    a, b = generate_split("train", 8), generate_split("train", 8)
    assert [s.seed for s in a] == [s.seed for s in b] == [split_seed("train", i) for i in range(8)]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.image, y.image)
        assert x.objects == y.objects and x.boxes == y.boxes
    shifted = generate_split("train", 4, seed_offset=4)
    assert [s.seed for s in shifted] == [s.seed for s in a[4:]]


def test_objects_vary_in_colour_shape_size_and_place() -> None:
    scenes = generate_split("validation", 200)
    objects = Counter(o for s in scenes for o in s.objects)
    assert len(objects) == len(COLOURS) * len(SHAPES)  # every type occurs
    radii = {r for s in scenes for _, _, r in s.boxes}
    centres = {(x, y) for s in scenes for x, y, _ in s.boxes}
    assert len(radii) >= 6 and len(centres) > 300
    assert Counter(len(s.objects) for s in scenes).keys() == {1, 2, 3}
    # not the old benchmark's grid: centres spread over every offset inside a 16 px cell
    offsets = Counter((x % 16, y % 16) for x, y in centres)
    assert len(offsets) > 150


def test_training_families_vary_and_held_out_ones_never_appear() -> None:
    scenes = generate_split("train", 300)
    assert {s.background for s in scenes} == set(TRAIN_BACKGROUNDS)
    assert {s.placement for s in scenes} == set(TRAIN_PLACEMENTS)
    assert HELD_OUT_BACKGROUND not in TRAIN_BACKGROUNDS
    assert HELD_OUT_PLACEMENT not in TRAIN_PLACEMENTS
    for split, family in HELD_OUT.items():
        held = generate_split(split, 12)  # type: ignore[arg-type]
        for key, value in family.items():
            if key != "native":
                assert {getattr(s, key) for s in held} == {value}, split
    native = generate_split("heldout_resolution", 12)
    assert len({s.image.shape for s in native}) > 6
    assert all(min(s.image.shape[:2]) >= 96 and max(s.image.shape[:2]) <= 340 for s in native)


def test_objects_overlap_but_stay_visible() -> None:
    """Occlusion happens, yet every listed object keeps most of its footprint in view."""
    overlapping = 0
    for scene in generate_split("validation", 150):
        visible = Counter(scene.labels.ravel().tolist())
        for colour, shape in scene.objects:
            cls = 1 + OBJECT_TYPES.index((colour, shape))
            assert visible[cls] >= 10, (scene.seed, colour, shape)
        boxes = scene.boxes
        overlapping += any(
            (a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2 < (a[2] + b[2]) ** 2
            for a, b in itertools.combinations(boxes, 2)
        )
    assert overlapping >= 10


def test_items_carry_their_scene() -> None:
    scenes = generate_split("validation", 3)
    for task in ("pope", "describe", "safety"):
        for item in make_items(scenes, task):
            scene = next(s for s in scenes if s.seed == item.scene_seed)
            assert item.image is scene.image and item.objects == tuple(scene.objects)
            assert item.media is item.image and item.source_seed == item.scene_seed
            assert item.task == task and (item.sampling is None) == (task != "pope")
    with pytest.raises(ValueError):
        make_items(scenes, "caption")  # type: ignore[arg-type]


def test_popular_negatives_come_from_the_most_frequent_types() -> None:
    for item in load_benchmark("test", 300, 1, 1)["pope"]:
        if item.sampling == "popular" and item.answer == "no":
            ((colour, shape),) = parse_objects(item.prompt)
            assert (colour, shape) in POPULAR[: POPULAR_POOL + 3]


def test_describe_text_is_canonical() -> None:
    assert describe_text([("blue", "square"), ("red", "circle")]) == (
        "a red circle and a blue square"
    )
    assert describe_text([("green", "cross")]) == "a green cross"
    assert describe_text([]) == "nothing"
    three = describe_text([("purple", "cross"), ("red", "square"), ("red", "circle")])
    assert three == "a red circle , a red square and a purple cross"


def test_contrast_items_are_near_misses_balanced_by_yes() -> None:
    scenes = generate_split("train", 80)
    items = contrast_items(scenes)
    assert items and Counter(it.answer for it in items) == {
        "yes": len(items) // 2,
        "no": len(items) // 2,
    }
    kinds = Counter()
    for it in items:
        words = it.prompt.lower().rstrip("?").split()
        asked = (words[3], words[4])  # "is there a <colour> <shape> in the image"
        present = set(it.objects)
        assert (asked in present) == (it.answer == "yes"), it.prompt
        if it.answer == "no":
            same_colour = any(asked[0] == o[0] for o in present)
            same_shape = any(asked[1] == o[1] for o in present)
            assert same_colour or same_shape, (it.prompt, present)
            kinds[(same_colour, same_shape)] += 1
    # both kinds of near miss occur (a colour seen with another shape, a shape in another colour)
    assert any(c for c, _ in kinds) and any(s for _, s in kinds)
    assert contrast_items(scenes) == items  # deterministic per scene
