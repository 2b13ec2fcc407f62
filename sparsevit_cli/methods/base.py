"""The small interface every compression method implements to plug into the shared pipeline.

A *config* is always a list of groups, each a list of gene values (e.g. SparseViT: one group per Swin
stage, one sparsity ratio per block pair). The search space (search_spaces/*.yaml) says which values each
gene may take; the method says what the values mean, how to apply them to a model and what they cost.
"""
from __future__ import annotations

from typing import Any, Dict, List, Protocol, Sequence

import torch.nn as nn

Config = List[List[float]]


class Method(Protocol):
    #: registry name, also the `method:` key of search spaces and config files
    name: str
    #: packaged search space used when the user names none (`adapt`, `search`)
    default_space: str

    def wrap(self, model: nn.Module, **options: Any) -> nn.Module:
        """Return a model that can run any config of this method, sharing `model`'s parameters.
        `options` are the method's settings (e.g. SparseViT's `window_score`); unknown ones raise
        UserError. Wrapping an already wrapped model only changes the options given."""

    def options(self, wrapped: nn.Module) -> Dict[str, Any]:
        """The wrapped model's settings, as `wrap` takes them (stored in model files)."""

    def group_sizes(self, model: nn.Module) -> List[int]:
        """Number of genes per group for this model (e.g. Swin-T: [1, 1, 3, 1] block pairs)."""

    def validate(self, model: nn.Module, config: Sequence[Sequence[float]]) -> Config:
        """Check `config` for this model; raise UserError naming what is wrong. Returns it normalised."""

    def apply(self, wrapped: nn.Module, config: Config) -> None:
        """Make `wrapped` run `config` from the next forward on."""

    def macs(self, wrapped: nn.Module, config: Config, img_size: int, batch_size: int = 1) -> int:
        """Exact multiply-accumulates of one forward pass of `wrapped` under `config`."""

    def dense_config(self, model: nn.Module) -> Config:
        """The config that computes exactly what the dense timm model computes."""

    def uniform_config(self, model: nn.Module, value: float) -> Config:
        """Every gene set to `value` (e.g. uniform sparsity)."""

    def build_latency_table(self, wrapped: nn.Module, x, warmup: int = 2, repeats: int = 5) -> dict:
        """Time the model's parts on x's device once (JSON-able), for `predict_latency`."""

    def predict_latency(self, table: dict, config: Config) -> float:
        """Milliseconds of one forward under `config`, predicted from a latency table."""


METHODS: Dict[str, Method] = {}


def check_options(method: str, options: Dict[str, Any], known: Sequence[str]) -> None:
    """UserError for a method option the method does not have (a typo in `method_options:`)."""
    from ..errors import UserError
    unknown = sorted(set(options) - set(known))
    if unknown:
        have = ", ".join(known) if known else "none"
        raise UserError(f"method '{method}' has no option {unknown[0]!r} (its options: {have})")


def register_method(method: Method) -> Method:
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    from ..errors import UserError
    _load_builtin_methods()
    if name not in METHODS:
        raise UserError(f"unknown method '{name}' (known: {', '.join(sorted(METHODS))})")
    return METHODS[name]


def method_for_model(model: nn.Module) -> Method:
    """The method that applies to a timm model (SparseViT for Swin, PSViT for plain ViTs)."""
    from timm.models.swin_transformer import SwinTransformer
    from ..errors import UserError
    _load_builtin_methods()
    families = {SwinTransformer: "sparsevit"}
    try:
        from timm.models.vision_transformer import VisionTransformer
        families[VisionTransformer] = "psvit"
    except ImportError:  # pragma: no cover
        pass
    for cls, name in families.items():
        if isinstance(model, cls) and name in METHODS:
            return METHODS[name]
    raise UserError(f"no method supports {type(model).__name__}: SparseViT needs a timm SwinTransformer"
                    + (", PSViT a timm VisionTransformer" if "psvit" in METHODS else ""))


def _load_builtin_methods() -> None:
    # importing a method module registers it
    import importlib
    for mod in ("sparsevit", "psvit"):
        try:
            importlib.import_module(f"{__package__}.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"{__package__}.{mod}":
                raise
