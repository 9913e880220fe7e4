"""Any local Hugging Face image-text-to-text checkpoint behind one small interface.

The server's `mllm` model, the in-process pipeline and the attacks all use this class, so a
user's own checkpoint (e.g. llava-1.5-7b-hf on disk) works wherever ours does. Every image
reaches the model at one resolution: the processor's own (LLaVA) or, for dynamic-resolution
families (Qwen2.5-VL), the configured `image_size` (adapters/patch_sequence.py). The prompt's
token ids then depend on the prompt alone, so the processor runs once per prompt (on a blank
image) and the caller's, possibly noisy or adversarial, pixel values are swapped in. That is
also what lets gradients reach the pixels: nothing between `pixel_values` and the logits
leaves torch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import torch

# Processor outputs that are not per-token and must be repeated per row (e.g. image sizes);
# pixel values are never cached, they are the caller's.
_PIXEL_KEYS = frozenset({"pixel_values"})


class VisionLanguageModel:
    """Greedy batched answers and differentiable answer log-likelihoods for one checkpoint."""

    def __init__(self, processor: Any, model: torch.nn.Module, device: str = "cpu") -> None:
        self.processor = processor
        self.model = model
        self.device = device
        self.tokenizer = processor.tokenizer
        image_processor = processor.image_processor
        probe = image_processor(images=[np.zeros((8, 8, 3), np.uint8)], return_tensors="np")
        values = np.asarray(probe["pixel_values"])
        if values.ndim != 4:
            raise ValueError(
                "the image processor gives no [B,3,H,W] pixel values: load dynamic-resolution "
                "checkpoints with VisionLanguageModel.load(path, image_size=...)"
            )
        # [B,3,H,W] -> what the model takes (a patch sequence for Qwen2-VL-style models)
        self._model_pixels = getattr(processor, "model_pixels", None)
        # Set by load() when the tower was folded for inference (adapters/conv_inference.py).
        self._channels_last = False
        self.image_size: tuple[int, int] = (int(values.shape[2]), int(values.shape[3]))
        mean = np.broadcast_to(np.asarray(image_processor.image_mean, np.float64), (3,))
        std = np.broadcast_to(np.asarray(image_processor.image_std, np.float64), (3,))
        self.image_mean: tuple[float, float, float] = (
            float(mean[0]),
            float(mean[1]),
            float(mean[2]),
        )
        self.image_std: tuple[float, float, float] = (float(std[0]), float(std[1]), float(std[2]))
        self._init_text()

    def _init_text(self) -> None:
        """Padding/EOS ids and prompt/answer caches: the text side, shared with audio models."""
        pad = self.tokenizer.pad_token_id
        eos = self.tokenizer.eos_token_id
        self.pad_id = int(pad if pad is not None else (eos if eos is not None else 0))
        self.eos_id = None if eos is None else int(eos)
        self._encoded = lru_cache(maxsize=1024)(self._encode_prompt)
        self._answer = lru_cache(maxsize=4096)(self._encode_answer)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        image_size: int | None = None,
        fold: bool = True,
    ) -> VisionLanguageModel:
        """From a local directory only: never reaches for a hub. `image_size` (mllm.image_size)
        is required by dynamic-resolution checkpoints and must match any other's own. `fold`
        False keeps the checkpoint's modules as stored (benchmarks and tests compare the two)."""
        from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoProcessor

        from smoothguard.adapters.conv_inference import for_inference
        from smoothguard.adapters.patch_sequence import PatchSequenceProcessor, is_patch_sequence
        from smoothguard.adapters.preprocess import check_image_size

        image_processor = AutoImageProcessor.from_pretrained(
            str(path), backend="pil", local_files_only=True
        )
        if is_patch_sequence(image_processor):
            processor = PatchSequenceProcessor.load(path, image_processor, image_size)
        else:
            processor = AutoProcessor.from_pretrained(str(path), local_files_only=True)
        model = AutoModelForImageTextToText.from_pretrained(
            str(path), dtype=dtype, local_files_only=True
        )
        model = model.to(device).eval()
        model.requires_grad_(False)
        vlm = cls(processor, model, device)
        vlm._channels_last = fold and for_inference(model)
        check_image_size(path, vlm.image_size, image_size)
        return vlm

    # -- inputs ------------------------------------------------------------------------------

    def preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """uint8 HxWx3 images -> float32 [B,3,H,W], resized and normalised for the model; the
        layout is stated (channels last), so a 1xWx3 image is never read as channels-first."""
        out = self.processor.image_processor(
            images=list(images), return_tensors="np", input_data_format="channels_last"
        )
        return torch.from_numpy(np.ascontiguousarray(out["pixel_values"], dtype=np.float32))

    def chat_text(self, prompt: str) -> str:
        """The prompt in the checkpoint's own chat template, one image first."""
        conversation = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}
        ]
        return self.processor.apply_chat_template(conversation, add_generation_prompt=True)

    def _encode_prompt(self, prompt: str) -> dict[str, tuple[Any, ...]]:
        blank = np.zeros((*self.image_size, 3), np.uint8)
        encoded = self.processor(images=[blank], text=[self.chat_text(prompt)], return_tensors="np")
        return {
            key: tuple(np.asarray(value)[0].tolist())
            for key, value in encoded.items()
            if key not in _PIXEL_KEYS
        }

    def prompt_ids(self, prompt: str) -> tuple[int, ...]:
        """Token ids of the templated prompt with the image placeholder expanded (cached)."""
        return tuple(int(t) for t in self._encoded(prompt)["input_ids"])

    def _encode_answer(self, prompt: str, answer: str) -> tuple[int, ...]:
        # The answer's ids as they follow the prompt (tokenisers that merge across the boundary
        # or add a leading space would differ from tokenising the answer alone), then EOS.
        text = self.chat_text(prompt)
        head = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        full = self.tokenizer(f"{text} {answer}", add_special_tokens=False)["input_ids"]
        if full[: len(head)] == head and len(full) > len(head):
            ids = full[len(head) :]
        else:
            ids = self.tokenizer(answer, add_special_tokens=False)["input_ids"]
        return (*ids, *(() if self.eos_id is None else (self.eos_id,)))

    def answer_ids(self, prompt: str, answer: str) -> tuple[int, ...]:
        """Token ids of `answer` after `prompt`, ending with EOS (cached)."""
        return self._answer(prompt, answer)

    def left_pad(self, rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ids and attention mask, so every row's next token is at the end."""
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            if row:
                ids[i, width - len(row) :] = torch.as_tensor(row, dtype=torch.long)
                mask[i, width - len(row) :] = 1
        return ids.to(self.device), mask.to(self.device)

    def _batch(
        self, texts: Sequence[str], suffixes: Sequence[Sequence[int]] | None = None
    ) -> dict[str, torch.Tensor]:
        """Model inputs for prompts (plus optional answer ids), without pixel values.

        Per-token extras some processors emit (e.g. token type ids) are left-padded with 0
        alongside the ids; per-image extras are stacked; nothing here is model-specific.
        """
        encoded = [self._encoded(t) for t in texts]
        tails = suffixes if suffixes is not None else [()] * len(texts)
        ids, mask = self.left_pad(
            [list(e["input_ids"]) + list(s) for e, s in zip(encoded, tails, strict=True)]
        )
        inputs: dict[str, torch.Tensor] = {"input_ids": ids, "attention_mask": mask}
        width = ids.shape[1]
        for key in encoded[0]:
            if key in inputs:
                continue
            if len(encoded[0][key]) == len(encoded[0]["input_ids"]):  # per token
                extra = torch.zeros((len(texts), width), dtype=torch.long)
                for i, (e, s) in enumerate(zip(encoded, tails, strict=True)):
                    row = list(e[key]) + [0] * len(s)
                    extra[i, width - len(row) :] = torch.as_tensor(row)
                inputs[key] = extra.to(self.device)
            else:
                inputs[key] = torch.as_tensor([e[key] for e in encoded]).to(self.device)
        return inputs

    @staticmethod
    def _broadcast(prompts: str | Sequence[str], rows: int) -> list[str]:
        if isinstance(prompts, str):
            return [prompts] * rows
        if len(prompts) != rows:
            raise ValueError(f"{len(prompts)} prompts for {rows} images")
        return list(prompts)

    def _pixels(self, pixel_values: torch.Tensor | np.ndarray) -> torch.Tensor:
        values = torch.as_tensor(pixel_values)
        if values.ndim != 4 or tuple(values.shape[1:]) != (3, *self.image_size):
            raise ValueError(
                f"pixel_values must be [B, 3, {self.image_size[0]}, {self.image_size[1]}], "
                f"got {list(values.shape)}"
            )
        return values.to(self.device, self.model.dtype)

    def _model_values(self, values: torch.Tensor) -> torch.Tensor:
        if self._model_pixels is not None:
            return self._model_pixels(values)
        if self._channels_last:
            return values.contiguous(memory_format=torch.channels_last)
        return values

    # -- outputs -----------------------------------------------------------------------------

    def generate(
        self,
        pixel_values: torch.Tensor | np.ndarray,
        prompts: str | Sequence[str],
        max_new_tokens: int = 32,
    ) -> list[str]:
        """Greedy answers, one per row (one prompt is broadcast); batched with left padding."""
        values = self._pixels(pixel_values)
        texts = self._broadcast(prompts, values.shape[0])
        inputs = self._batch(texts)
        with torch.inference_mode():
            out = self.model.generate(
                **inputs,
                pixel_values=self._model_values(values),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=self.pad_id,
            )
        new_tokens = out[:, inputs["input_ids"].shape[1] :]
        decoded = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        return [text.strip() for text in decoded]

    def answer_logprob(
        self,
        pixel_values: torch.Tensor,
        prompts: str | Sequence[str],
        answers: Sequence[str],
    ) -> torch.Tensor:
        """[B] sum of log p(answer tokens, then EOS | image, prompt); differentiable in pixels."""
        values = self._pixels(pixel_values)
        texts = self._broadcast(prompts, values.shape[0])
        if len(answers) != values.shape[0]:
            raise ValueError(f"{len(answers)} answers for {values.shape[0]} images")
        answer_rows = [self.answer_ids(t, a) for t, a in zip(texts, answers, strict=True)]
        inputs = self._batch(texts, answer_rows)
        longest = max(len(r) for r in answer_rows)
        # Left padding puts every answer in the last `longest` positions; logits of the
        # positions just before them are all that is needed (cheap for large vocabularies).
        logits = self.model(
            **inputs, pixel_values=self._model_values(values), logits_to_keep=longest + 1
        ).logits
        logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        targets = inputs["input_ids"][:, -longest:]
        picked = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        keep = torch.zeros_like(picked)
        for i, row in enumerate(answer_rows):
            keep[i, longest - len(row) :] = 1.0
        return (picked * keep).sum(dim=1)
