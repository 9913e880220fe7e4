"""A convolutional vision tower made cheaper to run, with the same function.

A frozen model's batch norms are affine maps with fixed statistics, so each folds into the
convolution before it (one op instead of two), and oneDNN runs those convolutions faster on
channels-last tensors. On the default SynthVLM (a ResNet tower, 2-core EPYC) a 10-row generate
drops from 44.7 to 41.3 ms on two threads and from 51.0 to 45.5 on one, with the same answers
(benchmarks/mllm_rows.py; docs/performance.md).
Towers without such pairs (ViTs, patch-sequence models) are left as they are.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fold_batch_norms(model: nn.Module) -> int:
    """Fold every `convolution` -> `normalization` pair (Hugging Face's convolutional layers:
    ResNet, RegNet, BiT) whose norm is a BatchNorm2d into the convolution; returns how many.
    Only for a model in eval mode: a training batch norm uses the batch's statistics."""
    if model.training:
        raise ValueError("batch norms fold only in eval mode")
    folded = 0
    for layer in model.modules():
        conv = getattr(layer, "convolution", None)
        norm = getattr(layer, "normalization", None)
        if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
            if norm.running_mean is None or norm.running_var is None:
                continue  # no fixed statistics: nothing to fold
            # In float32 whatever the model's dtype: a half-precision rsqrt of a small
            # variance would round the folded weights twice.
            fused = fuse_conv_bn_eval(copy.deepcopy(conv).float(), copy.deepcopy(norm).float())
            layer.convolution = fused.to(conv.weight.dtype)
            layer.normalization = nn.Identity()
            folded += 1
    return folded


def for_inference(model: nn.Module) -> bool:
    """Fold the batch norms and, where any folded, lay the weights out channels-last; True
    when the model's pixel inputs should then be channels-last too."""
    if fold_batch_norms(model) == 0:
        return False
    model.to(memory_format=torch.channels_last)
    return True
