"""Steps shared by the commands that start from a model file (search, export, visualize)."""
from __future__ import annotations

import os
from typing import Any, Dict, Optional

import torch

from .errors import UserError


def load_model_file(path: str | os.PathLike, config_file: Optional[Dict[str, Any]] = None):
    """(model, method, meta) from a sparsevit model file, running `config_file`'s sparsity if given
    (after checking that the config was made for this method and model)."""
    from .checkpoint import load
    from .methods.base import get_method
    from .models.tasks import backbone_of

    model = load(path)
    meta = model.sparsevit_meta
    method = get_method(meta["method"])
    config = meta.get("sparsity")
    if config_file is not None:
        for key in ("method", "model"):
            if config_file.get(key) not in (None, meta.get(key)):
                raise UserError(f"config is for {key} '{config_file[key]}', the model file holds '{meta.get(key)}'")
        config = config_file["sparsity"]
    config = method.validate(backbone_of(model), config)
    method.apply(backbone_of(model), config)
    model.sparsevit_config = config
    return model, method, meta


def real_inputs(data: str, meta: Dict[str, Any], img_size: int, batch_size: int) -> torch.Tensor:
    """A batch of real validation images (for export checks)."""
    from .data.datasets import build_dataset
    ds = build_dataset(data, meta.get("task", "classification"), "val", img_size, train=False)
    if len(ds) == 0:
        raise UserError(f"no validation images in '{data}'")
    return torch.stack([ds[i % len(ds)][0] for i in range(batch_size)])
