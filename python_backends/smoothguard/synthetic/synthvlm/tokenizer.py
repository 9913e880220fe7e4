"""A word-level tokenizer over SynthPOPE's closed vocabulary, built locally with `tokenizers`.

One token per word keeps the language model tiny and makes every answer (the harmful marker
included) a short, exactly reproducible token sequence, which targeted attacks need.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from smoothguard.synthetic.synthpope.questions import DESCRIBE_PROMPT, NOTHING
from smoothguard.synthetic.synthpope.scenes import COLOURS, SHAPES
from smoothguard.synthetic.synthpope.scoring import HARMFUL_MARKER, REFUSAL, SAFETY_PROMPTS

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

IMAGE_TOKEN = "<image>"
SPECIALS: tuple[str, ...] = ("<pad>", "<s>", "</s>", "<unk>", IMAGE_TOKEN)
# Words of the chat template and the question formats that the sources below do not spell.
EXTRA_WORDS = "user assistant is there a in the image yes no and , . ? : !"
_WORD = re.compile(r"\w+|[^\w\s]+")


def vocabulary() -> list[str]:
    """Specials, then every word of the benchmark's prompts and answers (lower-cased, sorted)."""
    text = " ".join(
        [
            EXTRA_WORDS,
            NOTHING,
            " ".join(COLOURS),
            " ".join(SHAPES),
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
        extra_special_tokens={"image_token": IMAGE_TOKEN},
    )
    tokenizer.padding_side = "left"
    return tokenizer
