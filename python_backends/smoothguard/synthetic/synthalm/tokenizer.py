"""SynthALM's tokenizer: the shared word-level builder over SynthAudio's words."""

from __future__ import annotations

from typing import TYPE_CHECKING

from smoothguard.synthetic.synthaudio.clips import KINDS, REGISTERS
from smoothguard.synthetic.synthaudio.questions import DESCRIBE_PROMPT, NOTHING
from smoothguard.synthetic.synthaudio.scoring import HARMFUL_MARKER, REFUSAL, SAFETY_PROMPTS
from smoothguard.synthetic.tokenizers import build_word_tokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

AUDIO_TOKEN = "<|AUDIO|>"
AUDIO_BOS = "<|audio_bos|>"
AUDIO_EOS = "<|audio_eos|>"


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Every word of the benchmark's prompts and answers, and Qwen2-Audio's three markers."""
    markers = {
        "audio_token": AUDIO_TOKEN,
        "audio_bos_token": AUDIO_BOS,
        "audio_eos_token": AUDIO_EOS,
    }
    words = (NOTHING, *REGISTERS, *KINDS, HARMFUL_MARKER, REFUSAL, *SAFETY_PROMPTS, DESCRIBE_PROMPT)
    return build_word_tokenizer(markers, ["audio", *words])
