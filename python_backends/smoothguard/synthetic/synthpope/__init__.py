"""SynthPOPE: a procedural, seeded benchmark in the formats the SmoothGuard paper evaluates.

POPE-style object presence (random / popular / adversarial negatives), free-form description
scored by object-set F1 (our stand-in for LLaVA-Bench), and a safety split with a fixed
harmful marker answer for jailbreak-style targeted attacks.
"""

from smoothguard.synthetic.synthpope.dataset import (
    SceneItem,
    contrast_items,
    load_benchmark,
    make_items,
)
from smoothguard.synthetic.synthpope.questions import (
    DESCRIBE_PROMPT,
    SAMPLINGS,
    asked_object,
    describe_text,
    near_miss,
    pope_prompt,
)
from smoothguard.synthetic.synthpope.scenes import (
    COLOURS,
    HELD_OUT,
    SHAPES,
    Scene,
    generate_split,
    render_scene,
)
from smoothguard.synthetic.synthpope.scoring import (
    HARMFUL_MARKER,
    REFUSAL,
    SAFETY_PROMPTS,
    is_harmful,
    object_prf,
    parse_objects,
    score_yes_no,
)

__all__ = [
    "COLOURS",
    "DESCRIBE_PROMPT",
    "HARMFUL_MARKER",
    "HELD_OUT",
    "REFUSAL",
    "SAFETY_PROMPTS",
    "SAMPLINGS",
    "SHAPES",
    "Scene",
    "SceneItem",
    "asked_object",
    "contrast_items",
    "describe_text",
    "generate_split",
    "is_harmful",
    "load_benchmark",
    "make_items",
    "near_miss",
    "object_prf",
    "parse_objects",
    "pope_prompt",
    "render_scene",
    "score_yes_no",
]
