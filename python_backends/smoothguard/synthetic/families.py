"""Tiny random-weight checkpoints of the two model families the SmoothGuard paper evaluates.

LLaVA-1.5 (CLIP ViT-L/14-336 + Llama) and Qwen2.5-VL (window-attention ViT + mrope Qwen2),
built from their configuration classes with the real vision geometry (input size, patch and
merge sizes, windows, image-token counts) and toy widths, and saved in the hub repositories'
layout. CI serves them to prove the serving path handles both families without a download:
what differs between the families (pixel layout, token expansion, position ids) is all here,
only the widths are not.
"""

from __future__ import annotations

import itertools
import json
import string
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smoothguard.synthetic.synthpope.questions import (
    DESCRIBE_PROMPT,
    NOTHING,
    describe_text,
    pope_prompt,
)
from smoothguard.synthetic.synthpope.scenes import OBJECT_TYPES
from smoothguard.synthetic.synthpope.scoring import HARMFUL_MARKER, REFUSAL, SAFETY_PROMPTS

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

FAMILIES: tuple[str, ...] = ("llava15", "qwen2_5_vl")
# The square our server resizes images to; None where the processor fixes it (336 crop).
SERVE_IMAGE_SIZE: dict[str, int | None] = {"llava15": None, "qwen2_5_vl": 112}
SYSTEM_PROMPT = "You are a helpful assistant."

# llava-1.5-hf's format: "USER: <image>\n{prompt} ASSISTANT:" (images first, then the text).
LLAVA_CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] != 'system' %}{{ m['role'].upper() + ': ' }}"
    "{% endif %}{% if m['content'] is string %}{{ m['content'] + ' ' }}{% else %}"
    "{% for c in m['content'] if c['type'] == 'image' %}{{ '<image>\n' }}{% endfor %}"
    "{% for c in m['content'] if c['type'] == 'text' %}{{ c['text'] + ' ' }}{% endfor %}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
# Qwen2.5-VL-Instruct's ChatML format, with its default system turn.
QWEN_CHAT_TEMPLATE = (
    "{% for m in messages %}{% if loop.first and m['role'] != 'system' %}"
    "{{ '<|im_start|>system\n" + SYSTEM_PROMPT + "<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + m['role'] + '\n' }}{% if m['content'] is string %}"
    "{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif c['type'] == 'video' %}{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# The real tokenizer's order (other specials of Qwen's between them are left out).
QWEN_SPECIALS: tuple[str, ...] = (
    *("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>"),
    *("<|image_pad|>", "<|video_pad|>"),
)


def corpus() -> list[str]:
    """SynthPOPE's questions and answers and the chat templates' words: what CI will say.

    Special tokens stay out: the BPE trainer would learn merges for their spelling.
    """
    pairs = itertools.combinations(OBJECT_TYPES, 2)
    return [
        *(pope_prompt(c, s) for c, s in OBJECT_TYPES),
        *(describe_text([o]) for o in OBJECT_TYPES),
        *(describe_text(list(p)) for p in pairs),
        *SAFETY_PROMPTS,
        DESCRIBE_PROMPT,
        NOTHING,
        HARMFUL_MARKER,
        REFUSAL,
        *("yes", "no", "Yes", "No", "Yes.", "No."),  # answers open the reply
        *("USER:", " ASSISTANT:", "system", "user", "assistant", "\n", SYSTEM_PROMPT),
    ]


def _finish(core: Tokenizer, specials: Sequence[str], **kwargs: Any) -> PreTrainedTokenizerFast:
    """Append `specials` after the trained vocabulary (the hub repositories' layout) and wrap.

    padding_side goes through the constructor: set afterwards, save_pretrained drops it.
    """
    from transformers import PreTrainedTokenizerFast

    core.add_special_tokens(list(specials))
    return PreTrainedTokenizerFast(tokenizer_object=core, padding_side="left", **kwargs)


def llama_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """SentencePiece-style BPE ("▁" marks a word start) with `<s>` prepended, like Llama's.

    Printable ASCII is in the alphabet, so any English prompt round-trips without `<unk>`.
    `<image>` and `<pad>` follow the vocabulary, where llava-1.5-hf added them.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    core.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    alphabet = [c for c in string.printable if not c.isspace() or c == "\n"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>"],  # ids 0-2, as in Llama
        initial_alphabet=alphabet,
        show_progress=False,
    )
    core.train_from_iterator(corpus(), trainer=trainer)
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", core.token_to_id("<s>"))]
    )
    return _finish(
        core,
        ["<image>", "<pad>"],
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
        chat_template=LLAVA_CHAT_TEMPLATE,
    )


def qwen2_tokenizer(vocab_size: int = 768) -> PreTrainedTokenizerFast:
    """Byte-level BPE like Qwen2's (any text round-trips); no BOS, `<|im_end|>` ends a turn.

    The ChatML and vision tokens follow the vocabulary in the real tokenizer's order.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(corpus(), trainer=trainer)
    return _finish(
        core,
        QWEN_SPECIALS,
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        extra_special_tokens=list(QWEN_SPECIALS[1:]),
        chat_template=QWEN_CHAT_TEMPLATE,
    )


def _ids(tokenizer: PreTrainedTokenizerFast, bos: str) -> dict[str, int]:
    """The special ids every config (top, text, generation) repeats."""
    return {
        "bos_token_id": tokenizer.convert_tokens_to_ids(bos),
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def build_llava15(out: Path) -> None:
    """llava-1.5: CLIP ViT at 336 px / 14 px patches (576 tokens + CLS, penultimate layer, CLS
    dropped), a two-layer GELU projector and a Llama text model."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tokenizer = llama_tokenizer()
    ids = _ids(tokenizer, "<s>")
    vision = CLIPVisionConfig(
        image_size=336,
        patch_size=14,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        projection_dim=32,
        hidden_act="quick_gelu",
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        **ids,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.image_token_id,
        image_seq_length=576,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
        **ids,
    )
    _save(LlavaForConditionalGeneration(config), ids, out)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, do_convert_rgb=True
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLS
        chat_template=LLAVA_CHAT_TEMPLATE,
        image_token="<image>",
    )
    processor.save_pretrained(out)
    # transformers 5 nests the image processor in processor_config.json; the hub repository
    # also has it on its own, which AutoImageProcessor and older loaders read.
    image_processor.save_pretrained(out)
    _stamp_processor_class(out, "LlavaProcessor")


def build_qwen2_5_vl(out: Path) -> None:
    """Qwen2.5-VL: 14 px patches, 2x2 merges, 112 px attention windows with full attention in
    some blocks, a Qwen2 text model with 3-D mrope; saved as the hub repository is laid out
    (a Qwen2_5_VLProcessor needs torchvision's video processor, so the parts go separately)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    tokenizer = qwen2_tokenizer()
    ids = _ids(tokenizer, "<|endoftext|>")
    # The real 7B's geometry (its widths are 1280 / 3584, depth 32 with full attention in
    # blocks 7, 15, 23, 31): windows of 112 px, i.e. 4x4 merged tokens.
    vision = dict(
        depth=4,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=64,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        fullatt_block_indexes=[1, 3],
        tokens_per_second=2,
    )
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 176,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,  # head_dim 16: mrope sections cover its 8 frequencies
        "num_key_value_heads": 2,
        "max_position_embeddings": 32768,
        "max_window_layers": 2,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
        "tie_word_embeddings": False,
        **ids,
    }
    token = tokenizer.convert_tokens_to_ids
    config = Qwen2_5_VLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=token("<|image_pad|>"),
        video_token_id=token("<|video_pad|>"),
        vision_start_token_id=token("<|vision_start|>"),
        vision_end_token_id=token("<|vision_end|>"),
        tie_word_embeddings=False,
        **ids,
    )
    _save(Qwen2_5_VLForConditionalGeneration(config), ids, out)
    side = SERVE_IMAGE_SIZE["qwen2_5_vl"]
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=14,
        merge_size=2,
        temporal_patch_size=2,
        min_pixels=56 * 56,
        max_pixels=side * side,  # a square of the serving side is kept as it is
    )
    image_processor.save_pretrained(out)
    _stamp_processor_class(out, "Qwen2_5_VLProcessor")
    tokenizer.save_pretrained(out)


def _stamp_processor_class(out: Path, name: str) -> None:
    """Name the processor in preprocessor_config.json as hub checkpoints do: transformers 5
    no longer writes the key (and ignores it on load), but older loaders and tools read it."""
    path = out / "preprocessor_config.json"
    config = {**json.loads(path.read_text()), "processor_class": name}
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _save(model: PreTrainedModel, ids: dict[str, int], out: Path) -> None:
    """Greedy decoding stops and pads with the tokenizer's ids, not the config class defaults."""
    for key, value in ids.items():
        setattr(model.generation_config, key, value)
    model.save_pretrained(out)


BUILDERS: dict[str, Callable[[Path], None]] = {
    "llava15": build_llava15,
    "qwen2_5_vl": build_qwen2_5_vl,
}


def build_checkpoint(family: str, out: Path, seed: int = 0) -> Path:
    """Write `family`'s tiny checkpoint into `out` (created) and return it.

    Weights are drawn from torch's RNG seeded with `seed`, so a rebuild is byte-identical.
    """
    if family not in BUILDERS:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    import torch

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    BUILDERS[family](out)
    for path in out.iterdir():
        path.chmod(0o644)  # safetensors writes 0600; the checkpoint is meant to be shared
    return out
