"""sparsevit: search where to skip computation in vision transformers.

    import timm, torch
    import sparsevit_cli as sv
    model = timm.create_model("swin_tiny_patch4_window7_224").eval()
    sv.sparsify(model, sparsity=0.5)      # in place, like ToMe: same object, weights and state-dict keys
    logits = model(torch.randn(2, 3, 224, 224))
    vit = sv.psvit(timm.create_model("deit_small_patch16_224"))   # PSViT: token pooling + attention sharing
    model = sv.load("runs/pipeline/finetune/model.safetensors")   # a model file from the CLI, ready to run

docs/api.md has the whole API. Names are resolved on first use, so `import sparsevit_cli` (and
`sparsevit --help`) does not pay for importing torch and timm; `dir(sparsevit_cli)` lists them all.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any, List

__version__ = "0.1.0"

#: public name -> module that defines it
_EXPORTS = {
    "sparsify": ".methods",
    "SparseSwinTransformer": ".swin.patch",
    "RATIO_CHOICES": ".swin.patch",
    "WINDOW_SCORES": ".swin.patch",
    "OUTPUT_FMTS": ".swin.patch",
    "psvit": ".vit.patch",
    "PSViTTransformer": ".vit.patch",
    "load": ".model_file",
    "save_model": ".model_file",
    "ModelMeta": ".model_file",
    "get_method": ".methods",
    "method_for_model": ".methods",
    "UserError": ".errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> List[str]:
    """The public API, resolved lazily or not (so `dir()` and tab completion show `sparsify`, `load`, ...),
    and the module's dunder names; not the helpers this file imports."""
    return sorted(set(__all__) | {n for n in globals() if n.startswith("__")})
