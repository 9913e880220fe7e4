"""The model's Hugging Face form: a small LLaVA (CLIP vision tower + Llama language model),
a word-level tokenizer built with `tokenizers`, and a LlavaProcessor with a chat template,
so that AutoProcessor / AutoModelForImageTextToText load it like any hub checkpoint."""

from __future__ import annotations

from smoothguard.synthpope.dataset import DESCRIBE_PROMPT, SAMPLINGS  # noqa: F401
from smoothguard.synthpope.scenes import COLOURS, IMAGE_SIZE, SHAPES
from smoothguard.synthpope.scoring import HARMFUL_MARKER, REFUSAL, SAFETY_PROMPTS

PATCH_SIZE = 16
IMAGE_TOKEN = "<image>"
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", IMAGE_TOKEN]
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}USER: "
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image> "
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %} {% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
EXTRA_WORDS = "user assistant is there a in the image describe yes no and nothing , . ? : !"


def vocabulary() -> list[str]:
    """Every word of the benchmark's prompts and answers (lower-cased), then specials."""
    import re

    text = " ".join(
        [
            EXTRA_WORDS,
            " ".join(COLOURS),
            " ".join(SHAPES),
            HARMFUL_MARKER,
            REFUSAL,
            *SAFETY_PROMPTS,
            DESCRIBE_PROMPT,
        ]
    ).lower()
    words = sorted(set(re.findall(r"\w+|[^\w\s]+", text)))
    return SPECIALS + words


def build_tokenizer():  # -> PreTrainedTokenizerFast
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


def build_processor(tokenizer):  # -> LlavaProcessor
    from transformers import CLIPImageProcessor, LlavaProcessor

    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
    )


def build_model(
    tokenizer, *, width: int = 128, vision_width: int = 128, layers: int = 2, vision_layers: int = 3
):
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    vision = CLIPVisionConfig(
        hidden_size=vision_width,
        intermediate_size=4 * vision_width,
        num_hidden_layers=vision_layers,
        num_attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=width,
        intermediate_size=int(2.75 * width),
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model
