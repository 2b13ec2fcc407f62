"""Per-block-pair latency lookup table for window-sparse Swin V2, built once on the target device.

The table has V1's format and meaning (`sparsevit_cli.swin.latency`), so V1's `predict_swin_latency`
assembles predictions from it: fixed part (patch embedding, patch merging, final norm, head: the dense
model's time minus its block pairs) + every block pair's time at its ratio + the window-scoring time of
every stage that prunes. Pairs run the V2 block on real stage inputs (the dense model's activations of
the given batch), so kept-window counts, index tables and masks are the deployed ones.
"""
from __future__ import annotations

from typing import Any, Dict, List

import torch

from ..swin.patch import RATIO_CHOICES, kept_windows, window_orders
from ..timing import time_fn
from .patch import SparseSwinTransformerV2, sparse_block_v2_


@torch.inference_mode()
def build_swinv2_latency_table(model: SparseSwinTransformerV2, x: torch.Tensor, warmup: int = 2,
                               repeats: int = 5) -> Dict[str, Any]:
    """Time every block pair at every ratio, every stage's scoring and the fixed part, on x's device. The
    model's config and window score are left as they were."""
    saved = model.sparsity
    try:
        model.eval()
        model.set_sparsity(0.0)
        dense_ms = time_fn(lambda: model(x), x.device, warmup, repeats)
        pairs, scoring, windows = _time_stages(model, x, warmup, repeats)
    finally:
        model.set_sparsity(saved)
    return {"fixed_ms": dense_ms - sum(p["0"] for stage in pairs for p in stage), "pairs_ms": pairs,
            "scoring_ms": scoring, "windows": windows, "dense_ms": dense_ms, "batch_size": int(x.shape[0]),
            "img_size": int(x.shape[-1]), "device": str(x.device), "dtype": str(x.dtype).replace("torch.", "")}


def _time_stages(model: SparseSwinTransformerV2, x: torch.Tensor, warmup: int, repeats: int):
    pairs: List[List[Dict[str, float]]] = []
    scoring: List[float] = []
    windows: List[List[int]] = []
    h = model.patch_embed(x)
    for s, stage in enumerate(model.layers):
        stage_in = stage.downsample(h)
        B, H, W, C = stage_in.shape
        grids = model._grids(s, H, W, x.device)
        windows.append([g.num_windows for g in grids])
        buf = torch.cat([stage_in.reshape(B, H * W, C), stage_in.new_zeros(B, 1, C)], 1)
        blocks = list(zip(stage.blocks, grids))
        pairs.append([{f"{r:g}": _time_pair(blocks[p: p + 2], buf, r, warmup, repeats)
                       for r in RATIO_CHOICES} for p in range(0, len(blocks), 2)])
        # the model's own window score, exactly as a pruning stage runs it
        scoring.append(time_fn(lambda: window_orders(model.window_score, buf, grids), x.device, warmup, repeats))
        h = stage(h)  # timm's dense stage output feeds the next stage
    return pairs, scoring, windows


def _time_pair(blocks, buf: torch.Tensor, ratio: float, warmup: int, repeats: int) -> float:
    """Milliseconds of one block pair keeping round((1 - ratio) * nW) windows (the first ones: which
    windows does not change the cost)."""
    work = buf.clone()  # blocks write in place; the stage input stays as it was for the next ratio
    ids = []
    for _, grid in blocks:
        k = kept_windows(grid.num_windows, ratio)
        ids.append(None if k == grid.num_windows else torch.arange(k, device=buf.device).expand(buf.shape[0], -1))

    def run():
        for (block, grid), window_ids in zip(blocks, ids):
            sparse_block_v2_(block, work, grid, window_ids)

    return time_fn(run, buf.device, warmup, repeats)
