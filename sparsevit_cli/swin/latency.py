"""Per-block latency lookup table for window-sparse Swin, built once on the target device.

Prediction for a config = fixed part (patch embedding, patch merging, norm, head: the dense model's time
minus its blocks) + for every block pair the measured time at its ratio + the window-scoring time of
every stage that prunes. Blocks are timed on real stage inputs (the dense model's activations of one
random image batch), so the kept-window counts, index tables and masks are exactly the deployed ones.
"""
from __future__ import annotations

from typing import Any, Dict, List

import torch

from ..timing import time_fn
from .patch import RATIO_CHOICES, SparseSwinTransformer, kept_windows, sparse_block_, window_orders


@torch.inference_mode()
def build_swin_latency_table(model: SparseSwinTransformer, x: torch.Tensor, warmup: int = 2,
                             repeats: int = 5) -> Dict[str, Any]:
    """Measure every block pair at every ratio, the scoring step, and the fixed part, on x's device."""
    saved = model.sparsity
    try:
        return _build_table(model, x, warmup, repeats)
    finally:  # the caller's config stays applied
        model.set_sparsity(saved)


def _build_table(model: SparseSwinTransformer, x: torch.Tensor, warmup: int, repeats: int) -> Dict[str, Any]:
    device = x.device
    model.eval()
    dense_cfg = [[0.0] * n for n in model.pair_counts()]
    model.set_sparsity(dense_cfg)
    total_dense = time_fn(lambda: model(x), device, warmup, repeats)

    pairs: List[List[Dict[str, float]]] = []
    scoring: List[float] = []
    windows: List[List[int]] = []
    h = model.patch_embed(x)
    for s, stage in enumerate(model.layers):
        h_in = stage.downsample(h)
        B, H, W, C = h_in.shape
        grids = model._grids(s, H, W, device)
        windows.append([g.num_windows for g in grids])
        base = torch.cat([h_in.reshape(B, H * W, C), h_in.new_zeros(B, 1, C)], 1)
        stage_pairs = []
        for p in range(len(range(0, len(stage.blocks), 2))):
            blocks = list(zip(stage.blocks, grids))[2 * p: 2 * p + 2]
            per_ratio = {}
            for r in RATIO_CHOICES:
                ids = [None if kept_windows(g.num_windows, r) == g.num_windows else
                       torch.arange(kept_windows(g.num_windows, r), device=device).expand(B, -1)
                       for _, g in blocks]
                buf = base.clone()

                def run():
                    for (blk, g), i in zip(blocks, ids):
                        sparse_block_(blk, buf, g, i)

                per_ratio[f"{r:g}"] = time_fn(run, device, warmup, repeats)
            stage_pairs.append(per_ratio)
        pairs.append(stage_pairs)

        # the model's own window score (e.g. l2-centered), exactly as a pruning stage runs it
        scoring.append(time_fn(lambda: window_orders(model.window_score, base, grids), device, warmup, repeats))
        h = stage(h)  # dense stage output feeds the next stage
    fixed = total_dense - sum(p["0"] for sp in pairs for p in sp)
    return {"fixed_ms": fixed, "pairs_ms": pairs, "scoring_ms": scoring, "windows": windows, "dense_ms": total_dense,
            "batch_size": int(x.shape[0]), "img_size": int(x.shape[-1]), "device": str(device),
            "dtype": str(x.dtype).replace("torch.", "")}


def predict_swin_latency(table: Dict[str, Any], config: List[List[float]]) -> float:
    ms = table["fixed_ms"]
    for s, ratios in enumerate(config):
        for p, r in enumerate(ratios):
            ms += table["pairs_ms"][s][p][f"{r:g}"]
        if any(kept_windows(nw, ratios[b // 2]) < nw for b, nw in enumerate(table["windows"][s])):
            ms += table["scoring_ms"][s]  # the stage prunes, so it scores its windows
    return ms
