"""Exact analytic MACs of a PSViT forward pass (token pooling + attention sharing on a timm ViT).

Counts the multiply-accumulates of every matrix product the model executes for a layer plan: the
patch-embed convolution, then per block at its token count N (class token included): QKV (only the V
third in a block that shares attention), Q·K^T and attention·V (only attention·V when sharing), the
attention gate if the model has one, the output projection and every Linear of the MLP; then the
classifier. Token pooling is an average (additions and one scaling per output), normalisations, softmax
and activations are elementwise: none of them is counted, the same convention as fvcore's
matmul/conv/linear counters (tests check the two agree; fvcore has no handle for SDPA, so the tests
register one that counts its two products).
"""
from __future__ import annotations

from typing import Sequence

import torch.nn as nn

from .patch import PSViTTransformer, attn_dim, plan_grids, validate_plan
from ..layers import MacBreakdown


def _linear_macs(module: nn.Module) -> int:
    """MACs per token of all Linear layers inside `module` (Mlp, GluMlp, SwiGLU, ...)."""
    return sum(m.in_features * m.out_features for m in module.modules() if isinstance(m, nn.Linear))


def psvit_macs(model: PSViTTransformer, plan: Sequence[Sequence[float]], img_size, batch_size: int = 1,
               breakdown: bool = False):
    """MACs of one forward of `model` under the layer plan `plan` ([[pool_i], [share_i]]) at `img_size`
    (int or (H, W))."""
    grid = model.grid(img_size)
    plan = validate_plan(model.depth, grid, plan)
    macs = MacBreakdown()
    pe = model.patch_embed.proj
    kh, kw = pe.kernel_size
    macs.add("patch_embed", grid[0] * grid[1] * pe.in_channels * kh * kw * pe.out_channels // pe.groups)

    for i, (block, (h, w)) in enumerate(zip(model.blocks, plan_grids(grid, plan))):
        n = model.num_prefix_tokens + h * w
        attn = block.attn
        C = attn.qkv.in_features
        A = attn_dim(attn)
        shared = bool(plan[1][i])
        if shared:
            macs.add("v", n * C * A)
            macs.add("attention", n * n * A)  # attention·V only
        else:
            macs.add("qkv", n * C * attn.qkv.out_features)
            macs.add("attention", 2 * n * n * A)  # Q·K^T and attention·V over all heads
        if getattr(attn, "gate", None) is not None:
            macs.add("gate", n * _linear_macs(attn.gate))
        macs.add("proj", n * attn.proj.in_features * attn.proj.out_features)
        macs.add("mlp", n * _linear_macs(block.mlp))

    if isinstance(model.head, nn.Linear):
        macs.add("head", model.head.in_features * model.head.out_features)
    macs.total *= batch_size
    macs.parts = {k: v * batch_size for k, v in macs.parts.items()}
    return macs if breakdown else macs.total
