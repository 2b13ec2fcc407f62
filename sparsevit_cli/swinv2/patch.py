"""Window-sparse execution of timm's SwinTransformerV2 (SparseViT on Swin V2).

Everything but the block itself is the V1 engine's (`sparsevit_cli.swin.patch`): the window score,
computed once per stage at the stage input after patch merging; one consistent order for the plain and
the shifted grid; `round((1 - s) * nW)` kept windows per block; the index tables that gather a block's
kept windows straight from the flat stage buffer and scatter the results back; timm's own shifted-window
masks; padding in timm's order (roll, then pad). What V2 changes is the block:

* post-norm residuals: ``x = x + norm1(attn(x))`` and ``x = x + norm2(mlp(x))``;
* cosine attention with a learnt logit scale and a log-spaced continuous position bias (an MLP), which
  this engine does not re-implement: the kept windows go through timm's own `WindowAttention.forward`,
  with the shifted-window mask of each kept window gathered alongside it;
* no norm before attention, so padding tokens must be zero at the attention input (timm pads the raw
  map with zeros), not after a norm as in V1.

At sparsity 0 a block computes what timm's block computes, on the same windows, in the same order.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn as nn
from timm.models.swin_transformer_v2 import SwinTransformerV2, SwinTransformerV2Block

from ..errors import UserError
from ..swin.patch import (SparseSwinTransformer, WindowGrid, _exporting, _kept_token_masks, check_window_score,
                          kept_windows, window_orders)


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
    if _exporting():
        return flat.index_copy(0, flat_idx, x.view(B * k * N, C)).view(B, L, C)
    flat.index_copy_(0, flat_idx, x.view(B * k * N, C))
    return buf


class SparseSwinTransformerV2(SparseSwinTransformer):
    """Mixin that makes a timm SwinTransformerV2 (or the user's subclass of it) run every block on its
    top-scoring windows: the V1 mixin's configuration, index tables, window masks and stage loop, with the
    V2 block (`sparse_block_v2_`)."""

    def _stage_forward(self, stage_idx: int, x: torch.Tensor) -> torch.Tensor:
        stage = self.layers[stage_idx]
        x = stage.downsample(x)
        B, H, W, C = x.shape
        grids = self._grids(stage_idx, H, W, x.device)
        keeps = [kept_windows(g.num_windows, self.block_sparsity(stage_idx, i)) for i, g in enumerate(grids)]
        # the stage buffer: one dummy row per image for padding tokens (the only full copy)
        buf = torch.cat([x.reshape(B, H * W, C), x.new_zeros(B, 1, C)], dim=1)
        prunes = any(k < g.num_windows for k, g in zip(keeps, grids))
        orders: Dict[int, torch.Tensor] = window_orders(self.window_score, buf, grids) if prunes else {}
        if self._kept_recorder is not None:
            self._kept_recorder.append(_kept_token_masks(grids, keeps, orders, B, H, W))
        for block, grid, k in zip(stage.blocks, grids, keeps):
            buf = sparse_block_v2_(block, buf, grid, None if k == grid.num_windows else orders[id(grid)][:, :k])
        return buf[:, : H * W].reshape(B, H, W, C)


def sparsify_v2(model: nn.Module, sparsity=None, window_score: Optional[str] = None) -> SparseSwinTransformerV2:
    """Make a timm SwinTransformerV2 window-sparse, in place (same object, parameters and state-dict keys).

    `sparsity` defaults to 0 (exactly the dense model) for a new one; an already sparse model keeps its
    settings unless new ones are given."""
    if not isinstance(model, SparseSwinTransformerV2):
        if not isinstance(model, SwinTransformerV2):
            raise UserError(f"SparseViT-V2 needs a timm SwinTransformerV2, got {type(model).__name__}")
        if window_score is not None:
            check_window_score(window_score)  # before patching: a bad name leaves the model untouched
        model.__class__ = sparse_v2_class(type(model))
        model._grid_cache = {}
        model.set_sparsity(0.0 if sparsity is None else sparsity)
    elif sparsity is not None:
        model.set_sparsity(sparsity)
    if window_score is not None:
        model.set_window_score(window_score)
    return model


_SPARSE_V2_CLASSES: Dict[type, type] = {}


def sparse_v2_class(cls: type) -> type:
    """`Sparse<cls>`: the V2 mixin in front of `cls` (one class per base, cached), as ToMe's make_tome_class."""
    if cls not in _SPARSE_V2_CLASSES:
        _SPARSE_V2_CLASSES[cls] = type(f"Sparse{cls.__name__}", (SparseSwinTransformerV2, cls),
                                       {"__module__": cls.__module__, "__doc__": SparseSwinTransformerV2.__doc__})
    return _SPARSE_V2_CLASSES[cls]
