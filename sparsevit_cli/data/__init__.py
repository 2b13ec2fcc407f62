"""The data layer: the built-in demo data set (`demo`) and the data sets / loaders the trainer and the
search read (`datasets`).

Names are re-exported lazily so that `sparsevit demo-data` (numpy + PIL only) does not pay for
importing torch, torchvision and timm.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "write_demo_data": "demo",
    "demo_metadata": "demo",
    "read_demo_index": "demo",
    "render_example": "demo",
    "ImageFolderClassification": "datasets",
    "SegmentationFolder": "datasets",
    "build_dataset": "datasets",
    "build_loader": "datasets",
    "epoch_batches": "datasets",
    "iterate": "datasets",
    "read_image": "datasets",
    "DATASETS": "datasets",
    "IGNORE_INDEX": "datasets",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
