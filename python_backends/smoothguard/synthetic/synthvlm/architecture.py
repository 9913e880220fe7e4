"""The model's Hugging Face form: a small LLaVA (CLIP vision tower + Llama language model)
and a LlavaProcessor (CLIPImageProcessor with CLIP mean/std, word-level tokenizer, chat
template), so AutoProcessor / AutoModelForImageTextToText load it like any hub checkpoint and
the generic adapter (smoothguard.adapters.mllm) needs no special case for it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from smoothguard.synthetic.synthpope.scenes import IMAGE_SIZE
from smoothguard.synthetic.synthvlm.tokenizer import IMAGE_TOKEN

if TYPE_CHECKING:
    from transformers import LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast

# LLaVA-1.5's template shape ("USER: <image>\n... ASSISTANT:"), so prompts look like the
# paper's; the image placeholder is expanded by the processor to one token per patch.
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}USER: "
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image> "
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %} {% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the two towers; the defaults are what ships (trained in <= 15 min on 2 cores)."""

    image_size: int = IMAGE_SIZE
    patch_size: int = 16
    vision_width: int = 128
    vision_layers: int = 3
    vision_mlp: int = 256
    width: int = 128
    layers: int = 2
    mlp: int = 352
    heads: int = 4


def build_processor(
    tokenizer: PreTrainedTokenizerFast, config: ModelConfig = ModelConfig()
) -> LlavaProcessor:
    from transformers import CLIPImageProcessor, LlavaProcessor

    # CLIPImageProcessor's defaults are OpenAI CLIP's mean/std, the space the paper's sigma is
    # stated in; only the resolution is ours.
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": config.image_size},
        crop_size={"height": config.image_size, "width": config.image_size},
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=config.patch_size,
        vision_feature_select_strategy="default",  # drop CLS: one token per patch
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
    )


def build_model(
    tokenizer: PreTrainedTokenizerFast, config: ModelConfig = ModelConfig()
) -> LlavaForConditionalGeneration:
    """Randomly initialised; the caller seeds torch first (init is drawn from torch's RNG)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig
    from transformers import LlavaForConditionalGeneration as Llava

    vision = CLIPVisionConfig(
        hidden_size=config.vision_width,
        intermediate_size=config.vision_mlp,
        num_hidden_layers=config.vision_layers,
        num_attention_heads=config.heads,
        image_size=config.image_size,
        patch_size=config.patch_size,
        projection_dim=config.width,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.width,
        intermediate_size=config.mlp,
        num_hidden_layers=config.layers,
        num_attention_heads=config.heads,
        num_key_value_heads=config.heads,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    llava = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = Llava(llava)
    for key in ("pad_token_id", "eos_token_id", "bos_token_id"):
        setattr(model.generation_config, key, getattr(tokenizer, key))
    return model
