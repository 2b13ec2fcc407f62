"""The toolkit's self-describing model file: weights in safetensors plus metadata (method, timm model
name and constructor args, image size, sparsity config, task, toolkit version), so that
`sparsevit_cli.load(path)` returns a ready sparse model without any other file.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn as nn

from .errors import UserError, first_line
from .timm_models import state_dict_problem

FORMAT = "sparsevit-model/1"


def save_model(path: str | os.PathLike, model: nn.Module, meta: Dict[str, Any]) -> None:
    """Write `model`'s weights and `meta` atomically to a .safetensors file."""
    from safetensors.torch import save_file
    from . import __version__

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(meta, format=FORMAT, toolkit_version=__version__)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file(state, str(tmp), metadata={"sparsevit": json.dumps(meta)})
    os.replace(tmp, path)


def read_meta(path: str | os.PathLike) -> Optional[Dict[str, Any]]:
    """The toolkit metadata of a model file, or None if it is not one of ours (e.g. a plain timm file)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return None
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("sparsevit")
    except Exception as e:
        raise UserError(f"model file '{path}' cannot be read: {first_line(e)}")
    if raw is None:
        return None
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError:
        raise UserError(f"model file '{path}' has corrupt sparsevit metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), str):
        raise UserError(f"model file '{path}' has sparsevit metadata without a model name")
    return meta


def build_from_meta(meta: Dict[str, Any]) -> Tuple[nn.Module, Any]:
    """Build the (untrained) model a metadata block describes, wrapped by its method."""
    from .methods import get_method
    from .timm_models import create_timm_model
    from .tasks import build_task_model

    method = get_method(meta.get("method", "sparsevit"))
    backbone = create_timm_model(meta["model"], **meta.get("model_args", {}))
    backbone = method.wrap(backbone, **meta.get("method_options", {}))
    model = build_task_model(backbone, meta.get("task", "classification"), meta.get("num_classes"))
    return model, method


def load(path: str | os.PathLike, config=None) -> nn.Module:
    """Load a toolkit model file and return the ready model (eval mode) running its stored sparsity
    config, or `config` if given."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file '{path}' not found")
    meta = read_meta(path)
    if meta is None:
        raise UserError(f"'{path}' is not a sparsevit model file (no sparsevit metadata); "
                        "plain timm checkpoints are passed with --model and --checkpoint")
    model, method = build_from_meta(meta)
    try:  # read_meta only parsed the header; reading the tensors can still fail (I/O, unsupported dtype)
        state = load_file(str(path))
    except Exception as e:
        raise UserError(f"model file '{path}' cannot be read: {first_line(e)}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise UserError(f"model file '{path}' does not match its own metadata: {state_dict_problem(e)}")
    backbone = getattr(model, "backbone", model)
    cfg = config if config is not None else meta.get("sparsity")
    if cfg is not None:
        method.apply(backbone, method.validate(backbone, cfg))
    model.sparsevit_meta = meta
    return model.eval()


def load_model_file(path: str | os.PathLike, config_file: Optional[Dict[str, Any]] = None):
    """(model, method, meta) from a sparsevit model file, running `config_file`'s sparsity if given
    (after checking that the config was made for this method and model)."""
    from .methods import get_method
    from .tasks import backbone_of

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
