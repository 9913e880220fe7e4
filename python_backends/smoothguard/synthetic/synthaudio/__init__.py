"""SynthAudio: SynthPOPE's three formats on sound: short seeded clips of tones, chords, chirps
and noise bursts over background noise.

POPE-style event presence (random / popular / adversarial negatives), free-form description
scored by event-set F1, and a safety split with the same harmful marker as SynthPOPE's.
"""

from smoothguard.synthetic.synthaudio.clips import (
    EVENT_TYPES,
    KINDS,
    NUM_SAMPLES,
    REGISTERS,
    SAMPLE_RATE,
    Clip,
    generate_split,
    render_clip,
)
from smoothguard.synthetic.synthaudio.dataset import ClipItem, load_benchmark, make_items
from smoothguard.synthetic.synthaudio.questions import (
    DESCRIBE_PROMPT,
    SAMPLINGS,
    describe_text,
    pope_prompt,
)
from smoothguard.synthetic.synthaudio.scoring import (
    HARMFUL_MARKER,
    REFUSAL,
    SAFETY_PROMPTS,
    event_prf,
    is_harmful,
    parse_events,
    score_yes_no,
)

__all__ = [
    "DESCRIBE_PROMPT",
    "EVENT_TYPES",
    "HARMFUL_MARKER",
    "KINDS",
    "NUM_SAMPLES",
    "REFUSAL",
    "REGISTERS",
    "SAFETY_PROMPTS",
    "SAMPLE_RATE",
    "SAMPLINGS",
    "Clip",
    "ClipItem",
    "describe_text",
    "event_prf",
    "generate_split",
    "is_harmful",
    "load_benchmark",
    "make_items",
    "parse_events",
    "pope_prompt",
    "render_clip",
    "score_yes_no",
]
