"""Exact analytic MACs of a window-sparse Swin forward pass.

Counts the multiply-accumulates of every matrix product the model executes for a config: patch-embed
convolution, patch-merging reductions, window scoring (C per token, only in stages that prune: a dot
product for the L2 scores, a sum of |x| for mean-abs), and per block, for its kept windows only: QKV,
Q·K^T, attention·V, output projection and MLP (a block that keeps every window is timm's block, whose MLP
skips padding tokens); then the classifier, if the model has one (a ``features_only`` backbone has none). Normalisations, softmax, activations and additions are elementwise
and not counted (the same convention as fvcore's matmul/conv counters; tests check the two agree).
"""
from __future__ import annotations

import math
from typing import List

import torch.nn as nn

from ..layers import MacBreakdown
from .patch import SparseSwinTransformer, kept_windows, swin_stages


def kept_window_counts(model: SparseSwinTransformer, config: List[List[float]], img_size) -> List[List[int]]:
    """Windows each block keeps under `config` at `img_size`: what the config executes. Configs with the
    same counts are the same network (e.g. 0.4, 0.5 and 0.6 all keep 2 of a block's 4 windows)."""
    img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    config = model.validate_sparsity(config)
    pe = model.patch_embed.proj
    H, W = img_size[0] // pe.stride[0], img_size[1] // pe.stride[1]
    counts = []
    for s, stage in enumerate(swin_stages(model)):
        if getattr(stage.downsample, "reduction", None) is not None:
            H, W = (H + 1) // 2, (W + 1) // 2
        counts.append([kept_windows(math.ceil(H / b.window_size[0]) * math.ceil(W / b.window_size[1]),
                                    config[s][i // 2]) for i, b in enumerate(stage.blocks)])
    return counts


def swin_macs(model: SparseSwinTransformer, config: List[List[float]], img_size, batch_size: int = 1,
              breakdown: bool = False):
    """MACs of one forward of `model` under `config` at `img_size` (int or (H, W))."""
    img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    config = model.validate_sparsity(config)
    macs = MacBreakdown()
    pe = model.patch_embed.proj
    kh, kw = pe.kernel_size
    H, W = img_size[0] // pe.stride[0], img_size[1] // pe.stride[1]
    macs.add("patch_embed", H * W * pe.in_channels * kh * kw * pe.out_channels)

    for s, stage in enumerate(swin_stages(model)):
        merge = getattr(stage.downsample, "reduction", None)
        if merge is not None:
            H, W = (H + 1) // 2, (W + 1) // 2
            macs.add("patch_merging", H * W * merge.in_features * merge.out_features)
        pruning = False
        for b, block in enumerate(stage.blocks):
            wh, ww = block.window_size  # timm already clamped it to the block's resolution
            n_win = math.ceil(H / wh) * math.ceil(W / ww)
            N = wh * ww
            k = kept_windows(n_win, config[s][b // 2])
            pruning |= k < n_win
            attn = block.attn
            C = attn.qkv.in_features
            A = attn.proj.in_features  # heads * head_dim
            tokens = k * N  # padding tokens of the kept windows included
            macs.add("qkv", tokens * C * attn.qkv.out_features)
            macs.add("attention", 2 * k * N * N * A)  # Q·K^T and attn·V over all heads
            macs.add("proj", tokens * A * C)
            # before a stage's first pruned block the engine runs timm's block, whose MLP skips the padding
            mlp_tokens = tokens if pruning else H * W
            macs.add("mlp", mlp_tokens * (block.mlp.fc1.in_features * block.mlp.fc1.out_features
                                          + block.mlp.fc2.in_features * block.mlp.fc2.out_features))
        if pruning:
            macs.add("scoring", H * W * stage.blocks[0].attn.qkv.in_features)

    fc = getattr(getattr(model, "head", None), "fc", None)
    if isinstance(fc, nn.Linear):
        macs.add("head", fc.in_features * fc.out_features)
    macs.total *= batch_size
    macs.parts = {k: v * batch_size for k, v in macs.parts.items()}
    return macs if breakdown else macs.total
