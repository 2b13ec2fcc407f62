"""PSViT (token pooling + attention sharing for plain ViTs / DeiT) as a pipeline method.

The method's config is the structured *search-gene* encoding of `patch.py` (every gene
combination decodes to a valid layer plan, so the search needs no repair)::

    [[pool genes], [share genes]]    # values 0.0 / 1.0
    # 12 blocks: pool genes = before blocks [4, 6, 8]; share genes = pairs (0,1) (2,3) ... (10,11)
    [[1.0, 0.0, 1.0], [0.0, 0.0, 1.0, 1.0, 1.0, 1.0]]
    # -> pool before blocks 4 and 8; blocks 5, 7, 9, 11 reuse the attention of blocks 4, 6, 8, 10

`group_sizes(model)` is [len(pool_positions(depth)), depth // 2] ([3, 6] for DeiT/ViT-S/B with 12
blocks). `uniform_config(model, value)` maps value in [0, 1] to a config of comparable aggressiveness:
round(value * n) of the n genes of each group are switched on, the latest ones first (the deepest pooling
candidates, the deepest block pairs); 0 is dense, 1 pools at every candidate and shares in every pair.

The latency table lives in `latency.py`.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

import torch.nn as nn

from ..errors import UserError
from ..methods import Config, check_options, register_method
from .cost import psvit_macs
from .latency import build_psvit_latency_table, predict_psvit_latency
from .patch import GENE_VALUES, PSViTTransformer, decode_genes, gene_sizes, psvit, validate_genes


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
    supported_models = "a timm VisionTransformer (ViT/DeiT)"
    entry_point = "psvit"
    any_size = False  # a fixed position embedding and token-count dependent pooling
    gene_values = GENE_VALUES  # binary genes: off / on

    def supports(self, model: nn.Module) -> bool:
        from timm.models.vision_transformer import VisionTransformer
        return isinstance(model, VisionTransformer)

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

    def effective(self, wrapped: PSViTTransformer, config: Config, img_size: int) -> Config:
        """The layer plan the genes decode to at `img_size` (a pooling gene on a 1x1 grid runs nothing)."""
        return self.decode(wrapped, config, img_size)

    def build_latency_table(self, wrapped: PSViTTransformer, x, warmup: int = 2, repeats: int = 5) -> dict:
        return build_psvit_latency_table(wrapped, x, warmup=warmup, repeats=repeats)

    def predict_latency(self, table: dict, config: Config) -> float:
        return predict_psvit_latency(table, config)


register_method(PSViT())
