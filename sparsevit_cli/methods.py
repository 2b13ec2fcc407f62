"""The small interface every compression method implements to plug into the shared pipeline.

A *config* is always a list of groups, each a list of gene values (e.g. SparseViT: one group per Swin
stage, one sparsity ratio per block pair). The search space (search_spaces/*.yaml) says which values each
gene may take; the method says what the values mean, how to apply them to a model and what they cost.
"""
from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Protocol, Sequence, Tuple

import torch.nn as nn

from .errors import UserError
from .layers import Config  # noqa: F401  (re-exported: methods speak in configs)

class Method(Protocol):
    #: registry name, also the `method:` key of search spaces and config files
    name: str
    #: packaged search space used when the user names none (`adapt`, `search`)
    default_space: str

    #: the timm models it runs on, in words (for errors)
    supported_models: str
    #: the public function of the package that applies it to a model (`sparsify`: every SparseViT family,
    #: `psvit`): `sparsify` dispatches to the registered method of its name that supports the model
    entry_point: str
    #: whether the wrapped model runs at any input size, not only the one it was built for (Swin's engine pads
    #: each stage to whole windows; a ViT's position embedding is fixed): `--img-size` of a model file
    any_size: bool
    #: every value a gene of a config may take (search spaces choose among these; a space offering any
    #: other value is refused when it is loaded, not when the model later rejects the config)
    gene_values: Tuple[float, ...]

    def supports(self, model: nn.Module) -> bool:
        """True for the (timm) models this method can wrap."""

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

    def effective(self, wrapped: nn.Module, config: Config, img_size: int) -> Any:
        """What `config` executes at `img_size`, JSON-able (e.g. SparseViT: the kept-window count of every
        block). Two configs with equal effective configs are one network: same output, same cost; the
        search evaluates each network once."""

    # optional: a family whose networks can share their first blocks defines
    #     def shared_prefixes(self, wrapped, share=True, memory=None) -> ContextManager[<counts>]
    # a context in which forwards of `wrapped` on one image batch under one config after another (in the
    # order of their `effective` configs, given to the yielded object's `plan(configs)`, its `current` set to
    # each one's position before its forward) compute each distinct prefix of blocks once, with outputs
    # identical to each config's own forward; the yielded object counts `pairs_run`, `pairs_asked`,
    # `blocks_run`, `blocks_asked`, `windows_run` and `windows_asked` (`evaluate.SharingCounts`); `share=False`
    # only counts; `memory` (a `batch_memory.BatchMemory`, kept across contexts on the same weights) holds what
    # it computes from a batch before any config, for a later context on the same batch. A family without it
    # (PSViT) is evaluated one network at a time (`evaluate.evaluate_images_many`, `shares_prefixes`).

    def build_latency_table(self, wrapped: nn.Module, x, warmup: int = 2, repeats: int = 5) -> dict:
        """Time the model's parts on x's device once (JSON-able), for `predict_latency`."""

    def predict_latency(self, table: dict, config: Config) -> float:
        """Milliseconds of one forward under `config`, predicted from a latency table."""


METHODS: Dict[str, Method] = {}


def shares_prefixes(method: Method) -> bool:
    """Whether `method` evaluates several configs sharing their common prefixes (`shared_prefixes`)."""
    return callable(getattr(method, "shared_prefixes", None))


def check_options(method: str, options: Dict[str, Any], known: Sequence[str]) -> None:
    """UserError for a method option the method does not have (a typo in `method_options:`)."""
    unknown = sorted(set(options) - set(known))
    if unknown:
        have = ", ".join(known) if known else "none"
        raise UserError(f"method '{method}' has no option {unknown[0]!r} (its options: {have})")


def register_method(method: Method) -> Method:
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    _discover_methods()
    if name not in METHODS:
        raise UserError(f"unknown method '{name}' (known: {', '.join(sorted(METHODS))})")
    return METHODS[name]


def method_for_model(model: nn.Module) -> Method:
    """The registered method that supports a timm model (SparseViT for Swin, PSViT for plain ViTs)."""
    _discover_methods()
    for method in METHODS.values():
        if method.supports(model):
            return method
    needs = "; ".join(f"{m.name} needs {m.supported_models}" for m in METHODS.values())
    raise UserError(f"no method supports {type(model).__name__} ({needs})")


def sparsify(model: nn.Module, sparsity=None, window_score: Optional[str] = None,
             output_fmt: Optional[str] = None) -> nn.Module:
    """Make a timm Swin (V1 or V2), or its ``features_only=True`` backbone, window-sparse in place (same object,
    parameters and state-dict keys), by the SparseViT engine of its family: the registered method with
    ``entry_point == "sparsify"`` that supports it (so the families never import each other).

    `sparsity` (one ratio per block pair per stage, or a float for all) defaults to 0, exactly the dense
    model, and `window_score` to the engine's default; an already sparse model keeps its settings unless new
    ones are given.

    `output_fmt` is the layout of a ``features_only`` backbone's stage maps: None keeps timm's (NHWC for a
    Swin), "NCHW" gives what `forward_intermediates` returns (the model's `set_output_fmt`)."""
    _discover_methods()
    methods = [m for m in METHODS.values() if getattr(m, "entry_point", None) == "sparsify"]
    for method in methods:
        if method.supports(model):
            options = {} if window_score is None else {"window_score": window_score}
            wrapped = method.wrap(model, **options)
            if sparsity is not None:
                wrapped.set_sparsity(sparsity)
            if output_fmt is not None:
                wrapped.set_output_fmt(output_fmt)
            return wrapped
    needs = " or ".join(m.supported_models for m in methods)
    raise UserError(f"SparseViT needs {needs}, got {type(model).__name__}")


def _discover_methods() -> None:
    """Import every model family's `method` module once; importing registers it. A new family is a new
    sub-package with a method.py: nothing to list here."""
    if _DISCOVERED:
        return
    root = Path(__file__).parent
    for info in pkgutil.iter_modules([str(root)]):
        if info.ispkg and (root / info.name / "method.py").is_file():
            importlib.import_module(f"{__package__}.{info.name}.method")
    _DISCOVERED.append(True)


_DISCOVERED: List[bool] = []
