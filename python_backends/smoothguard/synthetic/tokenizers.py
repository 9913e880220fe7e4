"""Word-level tokenizers over a benchmark's closed vocabulary, built locally with `tokenizers`.

One token per word keeps the language model tiny and makes every answer (the harmful marker
included) a short, exactly reproducible token sequence, which targeted attacks need. The two
default models differ only in their media tokens and in the words their benchmark spells.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

TEXT_SPECIALS: tuple[str, ...] = ("<pad>", "<s>", "</s>", "<unk>")
# Words of the chat template and the question formats that no benchmark source spells.
TEMPLATE_WORDS = "user assistant is there a in the yes no and , . ? : !"
_WORD = re.compile(r"\w+|[^\w\s]+")


def vocabulary(media_tokens: Iterable[str], texts: Iterable[str]) -> list[str]:
    """Specials, then every word of `texts` and the template (lower-cased, sorted).

    The order is the token ids: it is what makes the shipped tokenizer.json reproducible.
    """
    text = " ".join([TEMPLATE_WORDS, *texts]).lower()
    return [*TEXT_SPECIALS, *media_tokens, *sorted(set(_WORD.findall(text)))]


def build_word_tokenizer(
    media_tokens: Mapping[str, str], texts: Iterable[str]
) -> PreTrainedTokenizerFast:
    """Lower-casing, whitespace/punctuation splitting, word-level lookup; left padding.

    `media_tokens` maps the processor's attribute name (e.g. "image_token") to the token, in
    vocabulary order.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(vocabulary(media_tokens.values(), texts))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        extra_special_tokens=dict(media_tokens),
        padding_side="left",  # a constructor argument, so tokenizer_config.json keeps it
    )
    return tokenizer
