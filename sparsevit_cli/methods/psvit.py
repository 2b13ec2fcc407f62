"""PSViT (token pooling + attention sharing for plain ViTs / DeiT) as a pipeline method.

The method's config is the structured *search-gene* encoding of `models/psvit.py` (every gene
combination decodes to a valid layer plan, so the search needs no repair)::

    [[pool genes], [share genes]]    # values 0.0 / 1.0
    # 12 blocks: pool genes = before blocks [4, 6, 8]; share genes = pairs (0,1) (2,3) ... (10,11)
    [[1.0, 0.0, 1.0], [0.0, 0.0, 1.0, 1.0, 1.0, 1.0]]
    # -> pool before blocks 4 and 8; blocks 5, 7, 9, 11 reuse the attention of blocks 4, 6, 8, 10

`group_sizes(model)` is [len(pool_positions(depth)), depth // 2] ([3, 6] for DeiT/ViT-S/B with 12
blocks). `uniform_config(model, value)` maps value in [0, 1] to a config of comparable aggressiveness:
round(value * n) of the n genes of each group are switched on, the latest ones first (the deepest pooling
candidates, the deepest block pairs); 0 is dense, 1 pools at every candidate and shares in every pair.

Latency table: every block is timed at every token count it can run at in this space (dense
activations of one random batch, pooled as the config would pool them), in each mode it can run in:
``attn`` (timm's block), ``explicit`` (explicit softmax attention, because the next block shares) and
``share`` (V only, reused probabilities); plus each pooling step and the fixed part (patch embedding,
final norm, head: dense time minus the dense blocks). A prediction sums the parts a config executes.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

import torch
import torch.nn as nn

from ..errors import UserError
from ..models.psvit import (PSViTTransformer, decode_genes, gene_sizes, pool_positions, pool_tokens, psvit,
                            psvit_block, pooled_grid, validate_genes)
from ..models.psvit_cost import psvit_macs
from ..models.swin_latency import _time
from .base import Config, check_options, register_method


def _depth(model: nn.Module) -> int:
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise UserError(f"PSViT needs a timm VisionTransformer (DeiT/ViT), got {type(model).__name__}")
    return len(blocks)


def _grid(model: nn.Module, img_size=None):
    if isinstance(model, PSViTTransformer):
        return model.grid(img_size)
    pe = model.patch_embed
    if img_size is None:
        return tuple(pe.grid_size)
    img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    return img_size[0] // pe.patch_size[0], img_size[1] // pe.patch_size[1]


class PSViT:
    name = "psvit"
    default_space = "psvit_deit"

    def wrap(self, model: nn.Module, **options: Any) -> PSViTTransformer:
        check_options(self.name, options, [])
        return psvit(model)

    def options(self, wrapped: PSViTTransformer) -> Dict[str, Any]:
        return {}

    def group_sizes(self, model: nn.Module) -> List[int]:
        return gene_sizes(_depth(model))

    def validate(self, model: nn.Module, config: Sequence[Sequence[float]]) -> Config:
        return validate_genes(_depth(model), config)

    def decode(self, model: nn.Module, config: Config, img_size=None) -> Config:
        """Search genes -> layer plan [[pool per block], [share per block]] for `model`."""
        return decode_genes(_depth(model), _grid(model, img_size), config)

    def apply(self, wrapped: PSViTTransformer, config: Config) -> None:
        wrapped.set_config(self.decode(wrapped, config))

    def dense_config(self, model: nn.Module) -> Config:
        return [[0.0] * n for n in self.group_sizes(model)]

    def uniform_config(self, model: nn.Module, value: float) -> Config:
        value = float(value)
        if not 0.0 <= value <= 1.0:
            raise UserError(f"PSViT uniform setting must be in [0, 1] (0 = dense, 1 = pool and share "
                            f"everywhere the space allows), got {value:g}")
        out = []
        for n in self.group_sizes(model):
            on = int(value * n + 0.5)
            out.append([0.0] * (n - on) + [1.0] * on)
        return out

    def macs(self, wrapped: PSViTTransformer, config: Config, img_size: int, batch_size: int = 1) -> int:
        return psvit_macs(wrapped, self.decode(wrapped, config, img_size), img_size, batch_size)

    def build_latency_table(self, wrapped: PSViTTransformer, x, warmup: int = 2, repeats: int = 5) -> dict:
        return build_psvit_latency_table(wrapped, x, warmup=warmup, repeats=repeats)

    def predict_latency(self, table: dict, config: Config) -> float:
        return predict_psvit_latency(table, config)


# ---- latency lookup table ------------------------------------------------------------------------------
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
        total_dense = _time(lambda: model(x), device, warmup, repeats)
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
                    pool_ms.append(_time(lambda p=prev, g=g: pool_tokens(p, g, model.num_prefix_tokens),
                                         device, warmup, repeats))
                inp = level_inputs[lv]
                modes = {"attn": _time(lambda: block(inp), device, warmup, repeats)}
                if i + 1 < depth and i % 2 == 0:  # the next block (odd) may share: explicit attention
                    modes["explicit"] = (_time(lambda: psvit_block(block, inp, None, True), device, warmup, repeats)
                                         if block.attn.fused_attn else modes["attn"])
                if i % 2 == 1:
                    B, N, _ = inp.shape
                    probs = torch.softmax(torch.randn(B, block.attn.num_heads, N, N, device=device,
                                                      dtype=inp.dtype), dim=-1)
                    modes["share"] = _time(lambda: psvit_block(block, inp, probs, False), device, warmup, repeats)
                per_level[str(lv)] = modes
            blocks_ms.append(per_level)
            level_inputs = {lv: block(t) for lv, t in level_inputs.items()}  # dense outputs feed the next block
    finally:
        model.psvit_plan = saved
    fixed = total_dense - sum(b["0"]["attn"] for b in blocks_ms)
    return {"fixed_ms": fixed, "blocks_ms": blocks_ms, "pool_ms": pool_ms, "levels": levels, "depth": depth,
            "grid": list(grid), "pool_positions": positions, "dense_ms": total_dense,
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


register_method(PSViT())
