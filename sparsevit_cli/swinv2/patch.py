"""Window-sparse execution of timm's SwinTransformerV2 (SparseViT on Swin V2).

`sparsify_v2(model)` (what the public `sparsevit_cli.sparsify` runs for a V2 model) patches a timm `SwinTransformerV2`,
or its ``features_only=True`` backbone, in place (class swap: same object, parameters and state-dict keys).
Everything but the block itself is the V1 engine's stage (`sparsevit_cli.swin.patch`, `SparseSwinStage`):
a stage with nothing pruned is timm's own stage and the leading blocks that keep every window are timm's own
blocks; the window score ranks windows once per stage, one consistent order for the plain and the shifted
grid; windows that are all padding (zero input pixels) are never kept; a block pair at sparsity `s` keeps
`kept_windows(R, s)` of an image's R real windows, gathered straight from the
flat stage buffer through index tables and scattered back (`gather_windows` / `scatter_windows`); timm's
own shifted-window masks; padding in timm's order (roll, then pad). What V2 changes is the block
(`sparse_block_v2_`, plugged into the stage as `sparse_block`):

* post-norm residuals: ``x = x + norm1(attn(x))`` and ``x = x + norm2(mlp(x))``;
* cosine attention with a learnt logit scale and a log-spaced continuous position bias (an MLP), which
  this engine does not re-implement: the kept windows go through timm's own `WindowAttention.forward`,
  with the shifted-window mask of each kept window gathered alongside it;
* no norm before attention, so padding tokens must be zero at the attention input (timm pads the raw
  map with zeros), not after a norm as in V1.

At sparsity 0 the model runs timm's stages; a pruned block computes what timm's block computes on the
windows it keeps, and leaves the others untouched.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
from timm.models.swin_transformer_v2 import SwinTransformerV2, SwinTransformerV2Block, SwinTransformerV2Stage

from ..errors import UserError
from ..swin.patch import (SparseSwinStage, SparseSwinTransformer, WindowGrid, configure, family_stages,
                          gather_windows, patch_stages, scatter_windows)


def sparse_block_v2_(block: SwinTransformerV2Block, buf: torch.Tensor, grid: WindowGrid,
                     window_ids: Optional[torch.Tensor]) -> torch.Tensor:
    """Run the V2 `block` on the kept windows of `buf` (B, H*W + 1, C) and write them back
    (`scatter_windows`); returns the updated buffer.

    window_ids: the `Kept` windows, (B, k) kept windows per image, or None for every window in grid order."""
    x, valid, mask, flat_idx = gather_windows(buf, grid, window_ids)
    # timm pads the raw map with zeros; the dummy row holds stale outputs
    h = x if valid is None else x * valid.to(x.dtype)
    x = x + block.drop_path1(block.norm1(block.attn(h, mask=None if mask is None else mask.to(x.dtype))))
    x = x + block.drop_path2(block.norm2(block.mlp(x)))
    return scatter_windows(buf, flat_idx, x)


class SparseSwinV2Stage(SparseSwinStage):
    """Mixin that makes a timm SwinTransformerV2Stage run each block on its top-scoring windows: V1's stage
    (ranking, timm's own stage or blocks where nothing is pruned, index tables, kept-window masks) with the
    V2 block plugged in."""

    sparse_block = staticmethod(sparse_block_v2_)


class SparseSwinTransformerV2(SparseSwinTransformer):
    """Mixin that makes a timm SwinTransformerV2 (or the user's subclass of it, or its ``features_only``
    backbone) run every block on its top-scoring windows; its stages are `SparseSwinV2Stage`s.
    `sparsify_v2` puts it in front of the model's own class, the way ToMe's `make_tome_class` does."""


def sparsifiable_v2(model: nn.Module) -> bool:
    """Whether `model` is a timm Swin V2 or its features_only backbone, sparse or not."""
    return family_stages(model, SwinTransformerV2, SwinTransformerV2Stage) is not None


def sparsify_v2(model: nn.Module, sparsity=None, window_score: Optional[str] = None) -> SparseSwinTransformerV2:
    """Make a timm SwinTransformerV2, or its ``features_only=True`` backbone, window-sparse, in place (same
    object, parameters and state-dict keys).

    `sparsity` defaults to 0 (exactly the dense model) for a new one; an already sparse model keeps its
    settings unless new ones are given."""
    if isinstance(model, SparseSwinTransformerV2):
        return configure(model, sparsity, window_score)
    stages = family_stages(model, SwinTransformerV2, SwinTransformerV2Stage)
    if stages is None:
        raise UserError(f"SparseViT-V2 needs a timm SwinTransformerV2 or its features_only=True backbone, "
                        f"got {type(model).__name__}")
    return patch_stages(model, stages, SparseSwinTransformerV2, SparseSwinV2Stage, sparsity, window_score)
