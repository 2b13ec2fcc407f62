"""SparseViT window pruning for Swin V2 (timm `SwinTransformerV2`) as a pipeline method.

Its own registry name (`sparsevit-v2`) rather than a second model family behind `sparsevit`: the method
name travels in model files, search spaces and sparsity-config files, and one name per engine keeps a
file's method telling which engine runs it. The config and its checks are V1's (one window-sparsity
ratio per block pair per stage, non-decreasing inside a stage, from the V1 ratio choices), so the
method is V1's with the V2 engine and cost model. V1's latency table serves V2 unchanged: it times each
stage's own `sparse_block` (the V2 block in a V2 stage) and timm's own blocks where nothing is pruned.
"""
from __future__ import annotations

from typing import Any

import torch.nn as nn

from ..methods import Config, check_options, register_method
from ..swin.method import SparseViT
from .cost import swinv2_macs
from .patch import SparseSwinTransformerV2, sparsifiable_v2, sparsify_v2


class SparseViTV2(SparseViT):
    name = "sparsevit-v2"
    default_space = "swinv2_auto"  # gene counts from the model: fits every Swin V2 depth
    supported_models = "a timm SwinTransformerV2 or its features_only backbone"

    def supports(self, model: nn.Module) -> bool:
        return sparsifiable_v2(model)

    def wrap(self, model: nn.Module, **options: Any) -> SparseSwinTransformerV2:
        check_options(self.name, options, ["window_score"])
        return sparsify_v2(model, window_score=options.get("window_score"))

    def macs(self, wrapped: SparseSwinTransformerV2, config: Config, img_size: int, batch_size: int = 1) -> int:
        return swinv2_macs(wrapped, config, img_size, batch_size)


register_method(SparseViTV2())
