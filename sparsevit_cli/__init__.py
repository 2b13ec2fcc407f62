"""sparsevit: search where to skip computation in vision transformers.

    import timm, sparsevit_cli as sv
    model = timm.create_model("swin_tiny_patch4_window7_224", img_size=672)
    sparse = sv.sparsify(model)            # same object and weights, patched in place (like ToMe)
    sparse.set_sparsity([[0.0], [0.2], [0.4, 0.5, 0.6], [0.8]])
    logits = sparse(images)
    vit = sv.psvit(timm.create_model("deit_small_patch16_224"))   # PSViT: token pooling + attention sharing
    model = sv.load("runs/ft/model.safetensors")   # a model file from finetune/adapt, ready to run

Names are resolved on first use, so `import sparsevit_cli` (and `sparsevit --help`) does not pay for
importing torch and timm.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

#: public name -> module that defines it
_EXPORTS = {
    "sparsify": ".methods",
    "SparseSwinTransformer": ".swin.patch",
    "psvit": ".vit.patch",
    "PSViTTransformer": ".vit.patch",
    "load": ".model_file",
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
