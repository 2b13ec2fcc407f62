"""Per-block latency lookup table for window-sparse Swin, built once on the target device.

Prediction for a config = fixed part (patch embedding, patch merging, norm, head: the dense model's time
minus its blocks) + for every block pair the measured time at its ratio + the overhead of every stage that
prunes (window scoring, the stage buffer and its copy back). Blocks are timed on real stage inputs (the
dense model's activations of one random image batch) and on the path the engine takes: a pair that keeps
every window runs timm's own blocks, a pruned pair runs on the stage buffer, so the kept-window counts,
index tables and masks are exactly the deployed ones.
"""
from __future__ import annotations

from typing import Any, Dict, List

import torch

from ..timing import time_fn
from .patch import RATIO_CHOICES, SparseSwinTransformer, kept_windows, rank_grids, swin_stages


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
    for stage in swin_stages(model):
        h_in = stage.downsample(h)
        B, H, W, C = h_in.shape
        grids = stage.grids(H, W, device)
        windows.append([g.num_windows for g in grids])
        tokens = h_in.reshape(B, H * W, C)
        base = torch.cat([tokens, h_in.new_zeros(B, 1, C)], 1)
        stage_pairs = []
        for p in range(len(range(0, len(stage.blocks), 2))):
            blocks = list(zip(stage.blocks, grids))[2 * p: 2 * p + 2]
            per_ratio = {}
            for r in RATIO_CHOICES:
                keeps = [kept_windows(g.num_windows, r) for _, g in blocks]
                if all(k == g.num_windows for k, (_, g) in zip(keeps, blocks)):
                    def run(blocks=blocks):  # nothing pruned: timm's own blocks, as the engine runs them
                        for blk, _ in blocks:
                            blk(h_in)
                else:
                    ids = [None if k == g.num_windows else torch.arange(k, device=device).expand(B, -1)
                           for k, (_, g) in zip(keeps, blocks)]
                    buf = base.clone()

                    def run(blocks=blocks, ids=ids, buf=buf):
                        for (blk, g), i in zip(blocks, ids):
                            stage.sparse_block(blk, buf, g, i)

                per_ratio[f"{r:g}"] = time_fn(run, device, warmup, repeats)
            stage_pairs.append(per_ratio)
        pairs.append(stage_pairs)

        def overhead():  # what a pruning stage adds: the model's own window score, the buffer, the copy back
            rank_grids(model.window_score, tokens, grids)
            torch.cat([tokens, h_in.new_zeros(B, 1, C)], 1)[:, : H * W].reshape(B, H, W, C)

        scoring.append(time_fn(overhead, device, warmup, repeats))
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
            ms += table["scoring_ms"][s]  # the stage prunes: it scores its windows and fills its buffer
    return ms
