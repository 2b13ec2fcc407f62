"""Latency lookup table for PSViT on a timm ViT/DeiT, built once on the target device.

Every block is timed at every token count it can run at in the search space (dense activations of one
random batch, pooled as the config would pool them), in each mode it can run in: ``attn`` (timm's block),
``explicit`` (explicit softmax attention, because the next block shares) and ``share`` (V only, reused
probabilities); plus each pooling step and the fixed part (patch embedding, final norm, head: dense time
minus the dense blocks). A prediction sums the parts a config executes.
"""
from __future__ import annotations

from typing import Any, Dict, List

import torch

from ..layers import Config
from ..timing import time_fn
from .patch import PSViTTransformer, decode_genes, pool_positions, pool_tokens, pooled_grid, psvit_block


def _levels(grid, n_candidates: int) -> List[List[int]]:
    """Grids reachable by pooling 0, 1, ... times (at most n_candidates, never below 1x1)."""
    levels = [list(grid)]
    while len(levels) <= n_candidates and levels[-1][0] * levels[-1][1] > 1:
        levels.append(list(pooled_grid(tuple(levels[-1]))))
    return levels


@torch.inference_mode()
def build_psvit_latency_table(model: PSViTTransformer, x: torch.Tensor, warmup: int = 2,
                              repeats: int = 5) -> Dict[str, Any]:
    """Time every block at every token count and mode the search encoding can give it, each pooling
    step, and the fixed part, on x's device."""
    device = x.device
    model.eval()
    saved = model.psvit_plan
    depth = model.depth
    grid = model.grid(tuple(x.shape[-2:]))
    positions = pool_positions(depth)
    levels = _levels(grid, len(positions))
    try:
        model.set_config(None)
        total_dense = time_fn(lambda: model(x), device, warmup, repeats)
        h, _ = model._embed(x)
        blocks_ms: List[Dict[str, Dict[str, float]]] = []
        pool_ms: List[float] = []
        level_inputs = {0: h}
        for i, block in enumerate(model.blocks):
            reachable = min(sum(p <= i for p in positions), len(levels) - 1)
            per_level: Dict[str, Dict[str, float]] = {}
            for lv in range(reachable + 1):
                if lv not in level_inputs:  # first block that can run at this level: pool the dense input
                    prev = level_inputs[lv - 1]
                    g = tuple(levels[lv - 1])
                    level_inputs[lv] = pool_tokens(prev, g, model.num_prefix_tokens)[0]
                    pool_ms.append(time_fn(lambda p=prev, g=g: pool_tokens(p, g, model.num_prefix_tokens),
                                         device, warmup, repeats))
                inp = level_inputs[lv]
                modes = {"attn": time_fn(lambda: block(inp), device, warmup, repeats)}
                if i + 1 < depth and i % 2 == 0:  # the next block (odd) may share: explicit attention
                    modes["explicit"] = (time_fn(lambda: psvit_block(block, inp, None, True), device, warmup, repeats)
                                         if block.attn.fused_attn else modes["attn"])
                if i % 2 == 1:
                    B, N, _ = inp.shape
                    probs = torch.softmax(torch.randn(B, block.attn.num_heads, N, N, device=device,
                                                      dtype=inp.dtype), dim=-1)
                    modes["share"] = time_fn(lambda: psvit_block(block, inp, probs, False), device, warmup, repeats)
                per_level[str(lv)] = modes
            blocks_ms.append(per_level)
            level_inputs = {lv: block(t) for lv, t in level_inputs.items()}  # dense outputs feed the next block
    finally:
        model.psvit_plan = saved
    parts = sum(b["0"]["attn"] for b in blocks_ms)
    # timing noise (a busy machine) can make the blocks timed one by one add up to more than the whole model:
    # the fixed part is then 0, never negative, and the table's dense time is its parts' sum, so every prediction
    # is a sum of non-negative parts and the dense config predicts the table's dense time
    fixed = max(0.0, total_dense - parts)
    return {"fixed_ms": fixed, "blocks_ms": blocks_ms, "pool_ms": pool_ms, "levels": levels, "depth": depth,
            "grid": list(grid), "pool_positions": positions, "dense_ms": fixed + parts,
            "batch_size": int(x.shape[0]), "img_size": int(x.shape[-1]), "device": str(device),
            "dtype": str(x.dtype).replace("torch.", "")}


def predict_psvit_latency(table: Dict[str, Any], config: Config) -> float:
    """Milliseconds of one forward under the search-gene `config`, from a table of the same model."""
    depth = table["depth"]
    pool, share = decode_genes(depth, tuple(table["grid"]), config)
    ms = table["fixed_ms"]
    level = 0
    for i in range(depth):
        if pool[i]:
            ms += table["pool_ms"][level]
            level += 1
        if share[i]:
            mode = "share"
        elif i + 1 < depth and share[i + 1]:
            mode = "explicit"
        else:
            mode = "attn"
        ms += table["blocks_ms"][i][str(level)][mode]
    return ms
