"""SynthVLM's tokenizer: the shared word-level builder over SynthPOPE's words."""

from __future__ import annotations

from typing import TYPE_CHECKING

from smoothguard.synthetic.synthpope.questions import DESCRIBE_PROMPT, NOTHING
from smoothguard.synthetic.synthpope.scenes import COLOURS, SHAPES
from smoothguard.synthetic.synthpope.scoring import HARMFUL_MARKER, REFUSAL, SAFETY_PROMPTS
from smoothguard.synthetic.tokenizers import build_word_tokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

IMAGE_TOKEN = "<image>"


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Every word of the benchmark's prompts and answers, and the `<image>` placeholder."""
    words = (NOTHING, *COLOURS, *SHAPES, HARMFUL_MARKER, REFUSAL, *SAFETY_PROMPTS, DESCRIBE_PROMPT)
    return build_word_tokenizer({"image_token": IMAGE_TOKEN}, ["image", *words])
