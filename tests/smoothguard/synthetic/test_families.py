"""The tiny LLaVA-1.5 and Qwen2.5-VL checkpoints load back through the Auto classes as the hub
ones do, keep the real vision geometry, generate, pass gradients to the pixels (what the attacks
need) and rebuild byte for byte."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoImageProcessor,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
)

from smoothguard.synthetic.families import FAMILIES, SERVE_IMAGE_SIZE, build_checkpoint
from smoothguard.synthetic.synthpope.questions import DESCRIBE_PROMPT, describe_text, pope_prompt
from smoothguard.synthetic.synthpope.scoring import HARMFUL_MARKER, REFUSAL

PROMPTS = [pope_prompt("red", "circle"), DESCRIBE_PROMPT]
ANSWERS = ["yes", "no", describe_text([("red", "circle"), ("blue", "cross")]), REFUSAL]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {family: build_checkpoint(family, root / family) for family in FAMILIES}


def images(n: int, side: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in range(n)
    ]


def messages(prompt: str) -> list[dict[str, object]]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]


def assert_left_padded(mask: torch.Tensor) -> None:
    """The prompts differ in length, so one row is padded, and on the left."""
    assert mask[:, -1].all() and not mask[:, 0].all()


def load_model(path: Path) -> torch.nn.Module:
    return AutoModelForImageTextToText.from_pretrained(path, local_files_only=True).eval()


def test_files_are_small_and_complete(checkpoints: dict[str, Path]) -> None:
    for family, path in checkpoints.items():
        names = {p.name for p in path.iterdir()}
        assert {
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "chat_template.jinja",
        } <= names
        assert "preprocessor_config.json" in names, family
        assert sum(p.stat().st_size for p in path.iterdir()) < 5 * 2**20, family


def test_llava15_geometry_generate_and_gradients(checkpoints: dict[str, Path]) -> None:
    path = checkpoints["llava15"]
    processor = AutoProcessor.from_pretrained(path)
    assert type(processor).__name__ == "LlavaProcessor"
    assert type(AutoImageProcessor.from_pretrained(path, backend="pil")).__name__.startswith("CLIP")
    model = load_model(path)
    vision = model.config.vision_config
    assert (vision.image_size, vision.patch_size) == (336, 14)
    assert model.config.vision_feature_layer == -2
    assert model.config.vision_feature_select_strategy == "default"
    texts = [
        processor.apply_chat_template(messages(p), add_generation_prompt=True) for p in PROMPTS
    ]
    assert texts[0] == f"USER: <image>\n{PROMPTS[0]} ASSISTANT:"
    batch = processor(images=images(2, 200), text=texts, padding=True, return_tensors="pt")
    assert batch["pixel_values"].shape == (2, 3, 336, 336)
    assert (batch["input_ids"] == model.config.image_token_index).sum(1).tolist() == [576, 576]
    assert_left_padded(batch["attention_mask"])
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=4, do_sample=False)
    assert out.shape == (2, batch["input_ids"].shape[1] + 4)
    pixels = batch["pixel_values"].clone().requires_grad_(True)
    inputs = {k: v for k, v in batch.items() if k != "pixel_values"}
    model(**inputs, pixel_values=pixels).logits.sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0


def test_qwen2_5_vl_geometry_generate_and_gradients(checkpoints: dict[str, Path]) -> None:
    path = checkpoints["qwen2_5_vl"]
    image_processor = AutoImageProcessor.from_pretrained(path, backend="pil")
    assert type(image_processor).__name__ == "Qwen2VLImageProcessorPil"
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = load_model(path)
    vision = model.config.vision_config
    assert (vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size) == (14, 2, 2)
    assert (vision.window_size, list(vision.fullatt_block_indexes)) == (112, [1, 3])
    side = SERVE_IMAGE_SIZE["qwen2_5_vl"]
    single = image_processor(images=images(1, side), return_tensors="pt")
    assert single["pixel_values"].shape == (64, 1176)
    assert single["image_grid_thw"].tolist() == [[1, 8, 8]]
    tokens = 64 // 4
    texts = [
        tokenizer.apply_chat_template(messages(p), add_generation_prompt=True, tokenize=False)
        for p in PROMPTS
    ]
    assert texts[1] == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        f"<|vision_start|><|image_pad|><|vision_end|>{PROMPTS[1]}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    texts = [t.replace("<|image_pad|>", "<|image_pad|>" * tokens) for t in texts]
    batch = dict(tokenizer(texts, padding=True, return_tensors="pt"))
    batch.update(image_processor(images=images(2, side), return_tensors="pt"))
    assert (batch["input_ids"] == model.config.image_token_id).sum(1).tolist() == [tokens] * 2
    assert_left_padded(batch["attention_mask"])
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=4, do_sample=False)
    assert out.shape == (2, batch["input_ids"].shape[1] + 4)
    pixels = batch.pop("pixel_values").clone().requires_grad_(True)
    model(**batch, pixel_values=pixels).logits.sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0


def test_config_ids_match_the_tokenizers(checkpoints: dict[str, Path]) -> None:
    llava = AutoTokenizer.from_pretrained(checkpoints["llava15"])
    config = load_model(checkpoints["llava15"]).config
    assert (llava.bos_token, llava.eos_token, llava.unk_token, llava.pad_token) == (
        "<s>",
        "</s>",
        "<unk>",
        "<pad>",
    )
    assert config.image_token_index == llava.convert_tokens_to_ids("<image>")
    assert config.text_config.pad_token_id == llava.pad_token_id
    qwen = AutoTokenizer.from_pretrained(checkpoints["qwen2_5_vl"])
    config = load_model(checkpoints["qwen2_5_vl"]).config
    ids = qwen.convert_tokens_to_ids
    assert config.image_token_id == ids("<|image_pad|>")
    assert config.video_token_id == ids("<|video_pad|>")
    assert (config.vision_start_token_id, config.vision_end_token_id) == (
        ids("<|vision_start|>"),
        ids("<|vision_end|>"),
    )
    for c in (config, config.text_config):
        assert (c.bos_token_id, c.eos_token_id, c.pad_token_id) == (
            ids("<|endoftext|>"),
            ids("<|im_end|>"),
            ids("<|endoftext|>"),
        )


@pytest.mark.parametrize("family", FAMILIES)
def test_tokenizer_round_trips_answers(checkpoints: dict[str, Path], family: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(checkpoints[family])
    assert tokenizer.padding_side == "left"
    assert tokenizer.chat_template
    assert 256 <= len(tokenizer) <= 1024
    texts = [*ANSWERS, HARMFUL_MARKER, *PROMPTS, "What's unusual about this picture? (2 words)"]
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    for text, ids in zip(texts, encoded, strict=True):
        assert tokenizer.unk_token_id not in ids, text
        assert tokenizer.decode(ids) == text
    answers = tokenizer(["yes", "no"], add_special_tokens=False)["input_ids"]
    assert [len(ids) for ids in answers] == [1, 1]  # a reply's first token decides yes/no
    # subwords, not characters
    assert sum(map(len, encoded[:-1])) < sum(map(len, texts[:-1])) / 3


def test_rebuild_is_byte_identical(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    for family, path in checkpoints.items():
        again = build_checkpoint(family, tmp_path / family)
        for name in ("model.safetensors", "tokenizer.json", "config.json"):
            assert (again / name).read_bytes() == (path / name).read_bytes(), (family, name)


def test_unknown_family_names_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="llava15, qwen2_5_vl"):
        build_checkpoint("llava16", tmp_path)
