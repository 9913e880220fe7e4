"""Masked mean pooling + L2 norm on NumPy or CuPy: the pooling half of the sentence encoder,
shared by the GPU embedder (after the TensorRT plan) and its parity tests."""

from __future__ import annotations

from typing import Any

from smoothguard.xp import array_module


def mean_pool(hidden: Any, mask: Any) -> Any:
    """``[B, L, D]`` token states and ``[B, L]`` mask -> ``[B, D]`` float32 unit vectors."""
    xp = array_module(hidden)
    if hidden.ndim != 3 or mask.shape != hidden.shape[:2]:
        raise ValueError(f"hidden {hidden.shape} and mask {mask.shape} do not match")
    m = xp.asarray(mask, dtype=xp.float32)[..., None]
    summed = (xp.asarray(hidden, dtype=xp.float32) * m).sum(axis=1)
    pooled = summed / xp.maximum(m.sum(axis=1), 1.0)
    norm = xp.linalg.norm(pooled, axis=1, keepdims=True)
    return (pooled / xp.maximum(norm, 1e-12)).astype(xp.float32)
