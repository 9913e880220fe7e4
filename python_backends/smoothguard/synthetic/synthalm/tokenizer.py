"""A word-level tokenizer over SynthAudio's closed vocabulary, built locally with `tokenizers`.

Same reasons as synthvlm.tokenizer: a tiny language model, and every answer (the harmful
marker included) a short, exactly reproducible token sequence for targeted attacks.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from smoothguard.synthetic.synthaudio.clips import KINDS, REGISTERS
from smoothguard.synthetic.synthaudio.questions import DESCRIBE_PROMPT, NOTHING
from smoothguard.synthetic.synthaudio.scoring import HARMFUL_MARKER, REFUSAL, SAFETY_PROMPTS

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

AUDIO_TOKEN = "<|AUDIO|>"
AUDIO_BOS = "<|audio_bos|>"
AUDIO_EOS = "<|audio_eos|>"
SPECIALS: tuple[str, ...] = ("<pad>", "<s>", "</s>", "<unk>", AUDIO_TOKEN, AUDIO_BOS, AUDIO_EOS)
EXTRA_WORDS = "user assistant is there a in the audio yes no and , . ? : !"
_WORD = re.compile(r"\w+|[^\w\s]+")


def vocabulary() -> list[str]:
    """Specials, then every word of the benchmark's prompts and answers (lower-cased, sorted)."""
    text = " ".join(
        [
            EXTRA_WORDS,
            NOTHING,
            " ".join(REGISTERS),
            " ".join(KINDS),
            HARMFUL_MARKER,
            REFUSAL,
            *SAFETY_PROMPTS,
            DESCRIBE_PROMPT,
        ]
    ).lower()
    return [*SPECIALS, *sorted(set(_WORD.findall(text)))]


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Lower-casing, whitespace/punctuation splitting, word-level lookup; left padding."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(vocabulary())}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        extra_special_tokens={
            "audio_token": AUDIO_TOKEN,
            "audio_bos_token": AUDIO_BOS,
            "audio_eos_token": AUDIO_EOS,
        },
    )
    tokenizer.padding_side = "left"
    return tokenizer
