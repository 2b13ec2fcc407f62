"""Exact analytic MACs of a window-sparse Swin V2 forward pass.

Swin V2 runs the matrix products V1 runs (patch embedding, patch merging, window scoring, and per block
QKV, Q·K^T, attention·V, projection and MLP for the kept windows only; the classifier), which the V1
cost model counts; cosine attention adds only elementwise work. What V2 adds is the continuous position
bias: every block runs its two-layer MLP (2 -> hidden -> heads) on the (2Wh-1)(2Ww-1) relative offsets
of its window once per forward, whatever the batch and the number of kept windows.
"""
from __future__ import annotations

from typing import List

import torch.nn as nn

from ..layers import MacBreakdown
from ..swin.cost import swin_macs
from ..swin.patch import swin_stages
from .patch import SparseSwinTransformerV2


def position_bias_macs(model: nn.Module) -> int:
    """MACs of every block's continuous-position-bias MLP, run once per forward pass."""
    total = 0
    for stage in swin_stages(model):
        for block in stage.blocks:
            offsets = block.attn.relative_coords_table.shape[1] * block.attn.relative_coords_table.shape[2]
            total += offsets * sum(m.in_features * m.out_features for m in block.attn.cpb_mlp
                                   if isinstance(m, nn.Linear))
    return total


def swinv2_macs(model: SparseSwinTransformerV2, config: List[List[float]], img_size, batch_size: int = 1,
                breakdown: bool = False):
    """MACs of one forward of `model` under `config` at `img_size` (int or (H, W))."""
    macs: MacBreakdown = swin_macs(model, config, img_size, batch_size, breakdown=True)
    macs.add("position_bias", position_bias_macs(model))  # per forward, not per image
    return macs if breakdown else macs.total
