"""SparseViT (window activation pruning for Swin) as a pipeline method."""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

import torch.nn as nn

from ..methods import Config, check_options, register_method
from .cost import kept_window_counts, swin_macs
from .latency import build_swin_latency_table, predict_swin_latency
from .patch import (RATIO_CHOICES, SparseSwinTransformer, pair_counts, shared_prefixes, sparsifiable, sparsify_v1,
                    validate_sparsity)


class SparseViT:
    name = "sparsevit"
    default_space = "swin_auto"  # gene counts from the model: fits every Swin depth
    supported_models = "a timm SwinTransformer or its features_only backbone"
    entry_point = "sparsify"
    any_size = True  # the engine runs any size the patch divides (tests/test_swin_any_size.py)
    gene_values = RATIO_CHOICES  # window-sparsity ratios the engine runs (patch.py owns them)

    def supports(self, model: nn.Module) -> bool:
        return sparsifiable(model)

    def wrap(self, model: nn.Module, **options: Any) -> SparseSwinTransformer:
        check_options(self.name, options, ["window_score"])
        return sparsify_v1(model, window_score=options.get("window_score"))

    def options(self, wrapped: SparseSwinTransformer) -> Dict[str, Any]:
        return {"window_score": wrapped.window_score}

    def group_sizes(self, model: nn.Module) -> List[int]:
        return pair_counts(model)  # reads the model, never patches it

    def validate(self, model: nn.Module, config: Sequence[Sequence[float]]) -> Config:
        return validate_sparsity(model, config)

    def apply(self, wrapped: SparseSwinTransformer, config: Config) -> None:
        wrapped.set_sparsity(config)

    def dense_config(self, model: nn.Module) -> Config:
        return [[0.0] * n for n in self.group_sizes(model)]

    def uniform_config(self, model: nn.Module, value: float) -> Config:
        return [[value] * n for n in self.group_sizes(model)]

    def macs(self, wrapped: SparseSwinTransformer, config: Config, img_size: int, batch_size: int = 1) -> int:
        return swin_macs(wrapped, config, img_size, batch_size)

    def effective(self, wrapped: SparseSwinTransformer, config: Config, img_size: int) -> List[List[int]]:
        """Kept-window count of every block at `img_size` (the engine keeps max(1, round((1-s)*nW)))."""
        return kept_window_counts(wrapped, config, img_size)

    def shared_prefixes(self, wrapped: SparseSwinTransformer, share: bool = True, memory=None):
        """Forwards under one config after another share the blocks they keep the same windows in (`share`
        False: they are only counted); `memory` (a `BatchMemory`) keeps each batch's first wide block across
        contexts."""
        return shared_prefixes(wrapped, share, memory)

    def build_latency_table(self, wrapped: SparseSwinTransformer, x, warmup: int = 2, repeats: int = 5) -> dict:
        return build_swin_latency_table(wrapped, x, warmup=warmup, repeats=repeats)

    def predict_latency(self, table: dict, config: Config) -> float:
        return predict_swin_latency(table, config)


register_method(SparseViT())
