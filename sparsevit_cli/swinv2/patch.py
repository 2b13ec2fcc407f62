"""Window-sparse execution of timm's SwinTransformerV2 (SparseViT on Swin V2).

`sparsify_v2(model)` patches a timm `SwinTransformerV2` in place (class swap: same object, parameters and
state-dict keys). Everything but the block itself is the V1 engine's stage (`sparsevit_cli.swin.patch`,
`SparseSwinStage`): a stage with nothing pruned is timm's own stage; the window score ranks windows once
per stage, one consistent order for the plain and the shifted grid; a block pair at sparsity `s` keeps
`kept_windows(nW, s)` windows per image, gathered straight from the flat stage buffer through index
tables and scattered back; timm's own shifted-window masks; padding in timm's order (roll, then pad).
What V2 changes is the block (`sparse_block_v2_`, plugged into the stage as `sparse_block`):

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
from timm.models.swin_transformer_v2 import SwinTransformerV2, SwinTransformerV2Block

from ..errors import UserError
from ..swin.patch import (SparseSwinStage, SparseSwinTransformer, WindowGrid, check_window_score, sparse_class,
                          sparsify)


def sparse_block_v2_(block: SwinTransformerV2Block, buf: torch.Tensor, grid: WindowGrid,
                     window_ids: Optional[torch.Tensor]) -> torch.Tensor:
    """Run the V2 `block` on the kept windows of `buf` (B, H*W + 1, C), writing the results back in place
    (out of place while a graph is being exported); returns the updated buffer.

    window_ids: (B, k) kept windows per image, or None for every window in grid order."""
    B, L, C = buf.shape
    N = grid.index.shape[1]
    idx = grid.index.expand(B, -1, -1) if window_ids is None else grid.index[window_ids]
    k = idx.shape[1]
    flat_idx = (idx + (torch.arange(B, device=buf.device) * L).view(B, 1, 1)).reshape(-1)
    flat = buf.view(B * L, C)
    x = flat.index_select(0, flat_idx).view(B * k, N, C)

    h = x
    if grid.valid is not None:  # timm pads the raw map with zeros; the dummy row holds stale outputs
        valid = grid.valid.to(x.dtype)
        h = x * (valid.repeat(B, 1, 1) if window_ids is None else valid[window_ids].view(B * k, N, 1))
    mask = None
    if grid.mask is not None:  # (nW, N, N) for all windows, else one mask per kept window
        mask = grid.mask.to(x.dtype)
        if window_ids is not None:
            mask = mask[window_ids].view(B * k, N, N)
    x = x + block.drop_path1(block.norm1(block.attn(h, mask=mask)))
    x = x + block.drop_path2(block.norm2(block.mlp(x)))
    # graph exporters (ONNX, tracing, torch.export) need the out-of-place update (V1's `_exporting`)
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting():
        return flat.index_copy(0, flat_idx, x.view(B * k * N, C)).view(B, L, C)
    flat.index_copy_(0, flat_idx, x.view(B * k * N, C))
    return buf


class SparseSwinV2Stage(SparseSwinStage):
    """Mixin that makes a timm SwinTransformerV2Stage run each block on its top-scoring windows: V1's stage
    (ranking, timm's own stage or blocks where nothing is pruned, index tables, kept-window masks) with the
    V2 block plugged in."""

    sparse_block = staticmethod(sparse_block_v2_)


class SparseSwinTransformerV2(SparseSwinTransformer):
    """Mixin that makes a timm SwinTransformerV2 (or the user's subclass of it) run every block on its
    top-scoring windows; its stages are `SparseSwinV2Stage`s. `sparsify_v2` puts it in front of the
    model's own class, the way ToMe's `make_tome_class` does."""


def sparsify_v2(model: nn.Module, sparsity=None, window_score: Optional[str] = None) -> SparseSwinTransformerV2:
    """Make a timm SwinTransformerV2 window-sparse, in place (same object, parameters and state-dict keys).

    `sparsity` defaults to 0 (exactly the dense model) for a new one; an already sparse model keeps its
    settings unless new ones are given (V1's `sparsify` applies them)."""
    if not isinstance(model, SparseSwinTransformerV2):
        if not isinstance(model, SwinTransformerV2):
            raise UserError(f"SparseViT-V2 needs a timm SwinTransformerV2, got {type(model).__name__}")
        if window_score is not None:
            check_window_score(window_score)  # before patching: a bad name leaves the model untouched
        model.__class__ = sparse_class(type(model), SparseSwinTransformerV2)
        model._grid_cache = {}
        for stage in model.layers:
            stage.__class__ = sparse_class(type(stage), SparseSwinV2Stage)
            stage._grid_cache = {}
        sparsity = 0.0 if sparsity is None else sparsity
    return sparsify(model, sparsity, window_score)
