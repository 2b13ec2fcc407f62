"""sparsevit: search where to skip computation in vision transformers.

    import timm, sparsevit_cli as sv
    model = timm.create_model("swin_tiny_patch4_window7_224", img_size=672)
    sparse = sv.sparsify(model)            # same object and weights, patched in place (like ToMe)
    sparse.set_sparsity([[0.0], [0.2], [0.4, 0.5, 0.6], [0.8]])
    logits = sparse(images)
    model = sv.load("runs/ft/model.safetensors")   # a model file from finetune/adapt, ready to run
"""
from .checkpoint import load
from .errors import UserError
from .models.sparse_swin import SparseSwinTransformer, sparsify

__version__ = "0.1.0"
__all__ = ["sparsify", "load", "SparseSwinTransformer", "UserError", "__version__"]
