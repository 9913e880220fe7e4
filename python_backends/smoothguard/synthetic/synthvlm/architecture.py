"""The model's Hugging Face form: a small FastVLM (the LLaVA recipe with a convolutional
vision tower: ResNet + MLP projector + Llama language model) and a LlavaProcessor
(CLIPImageProcessor with CLIP mean/std, word-level tokenizer, chat template), so AutoProcessor
/ AutoModelForImageTextToText load it like any hub checkpoint and the generic adapter
(smoothguard.adapters.mllm) needs no special case for it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from smoothguard.synthetic.synthpope.scenes import IMAGE_SIZE
from smoothguard.synthetic.synthvlm.tokenizer import IMAGE_TOKEN

if TYPE_CHECKING:
    from transformers import (
        FastVlmForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

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
    """Sizes of the two towers; the defaults are what ships (trained in <= 30 min on 2 cores).

    The vision tower is a small ResNet (a 7x7 stride-2 stem, max-pool, basic blocks; batch
    norm): convolutions see a shape the same wherever it stands, so the tower learns shapes on
    scenes where objects stand anywhere. A from-scratch CLIP ViT, a Swin and a ConvNeXt of the
    same budget learnt colours but not shapes there (issue 18; numbers in the model card). Its
    last feature map is one token per `patch_size` px cell (64 image tokens at 8 px), handed to
    the language model as FastVLM hands its convolutional tower's map (flattened row by row).
    """

    image_size: int = IMAGE_SIZE
    patch_size: int = 8  # px per image token: the tower's total stride
    vision_width: int = 128  # the last stage's channels (the image tokens' width)
    vision_depths: tuple[int, ...] = (2, 2)  # basic blocks per stage; later stages stride 2
    width: int = 128
    layers: int = 2
    mlp: int = 352
    heads: int = 4


def vision_config(config: ModelConfig) -> Any:
    """A ResNetConfig whose stride (4 from the stem, 2 per later stage) is `patch_size`."""
    from transformers import ResNetConfig

    stages = len(config.vision_depths)
    stride = 4 * 2 ** (stages - 1)
    if stride != config.patch_size:
        raise ValueError(f"{stages} stages make {stride} px tokens, not {config.patch_size}")
    widths = [config.vision_width // 2 ** (stages - 1 - i) for i in range(stages)]
    vision = ResNetConfig(
        num_channels=3,
        embedding_size=widths[0] // 2,
        hidden_sizes=widths,
        depths=list(config.vision_depths),
        layer_type="basic",
        downsample_in_first_stage=False,
    )
    vision.hidden_size = widths[-1]  # the projector's input width (FastVLM reads it)
    return vision


def build_processor(
    tokenizer: PreTrainedTokenizerFast, config: ModelConfig = ModelConfig()
) -> LlavaProcessor:
    from transformers import CLIPImageProcessor, LlavaProcessor

    # CLIPImageProcessor's defaults are OpenAI CLIP's mean/std, the space the paper's sigma is
    # stated in; only the resolution is ours. Any image is resized whole to the model's square
    # (no centre crop: an object near the edge of a 200x150 photo must not be cut away); the
    # renderer trains on such squashed aspect ratios.
    side = config.image_size
    image_processor = CLIPImageProcessor(
        size={"height": side, "width": side},
        do_center_crop=False,
        crop_size={"height": side, "width": side},
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=config.patch_size,
        vision_feature_select_strategy="full",  # one token per cell, no CLS
        num_additional_image_tokens=0,
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
    )


def build_model(
    tokenizer: PreTrainedTokenizerFast, config: ModelConfig = ModelConfig()
) -> FastVlmForConditionalGeneration:
    """Randomly initialised; the caller seeds torch first (init is drawn from torch's RNG)."""
    from transformers import FastVlmConfig, FastVlmForConditionalGeneration, LlamaConfig

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
    fast = FastVlmConfig(
        vision_config=vision_config(config),
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=(config.image_size // config.patch_size) ** 2,
        projector_hidden_act="gelu",
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = FastVlmForConditionalGeneration(fast)
    for key in ("pad_token_id", "eos_token_id", "bos_token_id"):
        setattr(model.generation_config, key, getattr(tokenizer, key))
    return model
