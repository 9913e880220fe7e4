"""What a POPE question asks, and what the asked object shares with the scene."""

from __future__ import annotations

import pytest

from smoothguard.synthetic.synthpope import (
    COLOURS,
    SHAPES,
    asked_object,
    load_benchmark,
    near_miss,
    pope_prompt,
)


@pytest.mark.parametrize("colour", sorted(COLOURS))
@pytest.mark.parametrize("shape", SHAPES)
def test_asked_object_inverts_pope_prompt(colour: str, shape: str) -> None:
    assert asked_object(pope_prompt(colour, shape)) == (colour, shape)


@pytest.mark.parametrize(
    "prompt", ["Describe the image.", "Is there a red circle?", "Is there a red big circle in it?"]
)
def test_asked_object_refuses_other_prompts(prompt: str) -> None:
    with pytest.raises(ValueError, match="not a POPE question"):
        asked_object(prompt)


@pytest.mark.parametrize(
    ("asked", "objects", "kind"),
    [
        (("red", "circle"), [("red", "circle"), ("blue", "square")], "present"),
        (("red", "circle"), [("red", "square")], "colour"),
        (("red", "circle"), [("blue", "circle")], "shape"),
        (("red", "circle"), [("red", "square"), ("blue", "circle")], "colour and shape"),
        (("red", "circle"), [("blue", "square")], "nothing"),
        (("red", "circle"), [], "nothing"),
    ],
)
def test_near_miss(asked: tuple[str, str], objects: list[tuple[str, str]], kind: str) -> None:
    assert near_miss(asked, objects) == kind


def test_every_benchmark_yes_item_is_present_and_every_no_item_absent() -> None:
    for item in load_benchmark("test", 120, 1, 1)["pope"]:
        kind = near_miss(asked_object(item.prompt), item.objects)
        assert (kind == "present") == (item.answer == "yes"), (item.prompt, item.objects)
