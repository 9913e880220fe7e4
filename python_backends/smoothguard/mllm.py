"""Any local Hugging Face image-text-to-text checkpoint behind one small interface.

The server's `mllm` model, the in-process pipeline and the attacks all use this class, so a
user's own checkpoint (e.g. llava-1.5-7b-hf on disk) works wherever ours does. Only
fixed-resolution processors are supported: the prompt's token ids then depend on the prompt
alone, so they are built once per prompt and the caller's (possibly noisy) pixel values are
swapped in.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch


class VisionLanguageModel:
    def __init__(self, processor: object, model: torch.nn.Module, device: str) -> None:
        self.processor = processor
        self.model = model
        self.device = device
        self.tokenizer = processor.tokenizer
        image_processor = processor.image_processor
        probe = image_processor(images=[np.zeros((8, 8, 3), np.uint8)], return_tensors="np")
        values = probe["pixel_values"]
        if values.ndim != 4:
            raise ValueError("only fixed-resolution image processors ([B,3,H,W]) are supported")
        self.image_size: tuple[int, int] = (int(values.shape[2]), int(values.shape[3]))
        mean = np.broadcast_to(np.asarray(image_processor.image_mean, np.float64), (3,))
        std = np.broadcast_to(np.asarray(image_processor.image_std, np.float64), (3,))
        self.image_mean: tuple[float, float, float] = tuple(float(v) for v in mean)  # type: ignore[assignment]
        self.image_std: tuple[float, float, float] = tuple(float(v) for v in std)  # type: ignore[assignment]
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else self.tokenizer.eos_token_id)
        eos = self.tokenizer.eos_token_id
        self.eos_id = None if eos is None else int(eos)
        self._prompt_ids = lru_cache(maxsize=1024)(self._encode_prompt)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> VisionLanguageModel:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        processor = AutoProcessor.from_pretrained(str(path))
        model = AutoModelForImageTextToText.from_pretrained(str(path), dtype=dtype)
        model = model.to(device).eval()
        model.requires_grad_(False)
        return cls(processor, model, device)

    def preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """uint8 HxWx3 images -> float32 [B,3,H,W], resized and normalised for the model."""
        out = self.processor.image_processor(images=list(images), return_tensors="np")
        return torch.from_numpy(np.ascontiguousarray(out["pixel_values"], dtype=np.float32))

    def _encode_prompt(self, prompt: str) -> tuple[int, ...]:
        conversation = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}
        ]
        text = self.processor.apply_chat_template(conversation, add_generation_prompt=True)
        blank = np.zeros((*self.image_size, 3), np.uint8)
        encoded = self.processor(images=[blank], text=[text], return_tensors="np")
        return tuple(int(t) for t in encoded["input_ids"][0])

    def _left_padded(self, rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row) :] = 1
        return ids.to(self.device), mask.to(self.device)

    @staticmethod
    def _broadcast(prompts: str | Sequence[str], rows: int) -> list[str]:
        if isinstance(prompts, str):
            return [prompts] * rows
        if len(prompts) != rows:
            raise ValueError(f"{len(prompts)} prompts for {rows} images")
        return list(prompts)

    def _pixels(self, pixel_values: torch.Tensor | np.ndarray) -> torch.Tensor:
        values = torch.as_tensor(pixel_values, dtype=torch.float32)
        if values.ndim != 4 or tuple(values.shape[1:]) != (3, *self.image_size):
            raise ValueError(
                f"pixel_values must be [B, 3, {self.image_size[0]}, {self.image_size[1]}], "
                f"got {list(values.shape)}"
            )
        return values.to(self.device, self.model.dtype)

    def generate(
        self,
        pixel_values: torch.Tensor | np.ndarray,
        prompts: str | Sequence[str],
        max_new_tokens: int = 32,
    ) -> list[str]:
        """Greedy answers, one per row; batched with left padding."""
        values = self._pixels(pixel_values)
        texts = self._broadcast(prompts, values.shape[0])
        ids, mask = self._left_padded([self._prompt_ids(t) for t in texts])
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids,
                attention_mask=mask,
                pixel_values=values,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=self.pad_id,
            )
        new_tokens = out[:, ids.shape[1] :]
        decoded = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        return [text.strip() for text in decoded]

    def answer_logprob(
        self,
        pixel_values: torch.Tensor,
        prompts: str | Sequence[str],
        answers: Sequence[str],
    ) -> torch.Tensor:
        """[B] sum of log p(answer tokens, then end-of-sequence); differentiable in pixels."""
        values = self._pixels(pixel_values)
        texts = self._broadcast(prompts, values.shape[0])
        if len(answers) != values.shape[0]:
            raise ValueError(f"{len(answers)} answers for {values.shape[0]} images")
        prompt_rows = [list(self._prompt_ids(t)) for t in texts]
        answer_rows = []
        for answer in answers:
            tokens = self.tokenizer(answer, add_special_tokens=False)["input_ids"]
            answer_rows.append(tokens + ([self.eos_id] if self.eos_id is not None else []))
        ids, mask = self._left_padded(
            [p + a for p, a in zip(prompt_rows, answer_rows, strict=True)]
        )
        logits = self.model(input_ids=ids, attention_mask=mask, pixel_values=values).logits
        logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        targets = ids[:, 1:]
        picked = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        answer_mask = torch.zeros_like(picked)
        width = ids.shape[1]
        for i, row in enumerate(answer_rows):
            answer_mask[i, width - 1 - len(row) :] = 1.0
        return (picked * answer_mask).sum(dim=1)
