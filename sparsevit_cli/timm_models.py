"""Build timm models and load local timm-format checkpoints, turning every failure into one clear line."""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, Dict, Optional

import timm
import torch
import torch.nn as nn

from .errors import UserError, first_line


def create_timm_model(name: str, img_size: Optional[int] = None, **model_args: Any) -> nn.Module:
    """timm.create_model with the checks a user needs (unknown name, impossible image size)."""
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:5] if name else []
        hint = f" (did you mean: {', '.join(close)})" if close else ""
        raise UserError(f"unknown timm model '{name}'{hint}")
    if img_size is not None:
        model_args["img_size"] = img_size
    try:
        model = timm.create_model(name, pretrained=False, **model_args)
    except (TypeError, ValueError, AssertionError, RuntimeError) as e:
        raise UserError(f"cannot build '{name}' with {model_args}: {first_line(e)}")
    if img_size is not None:
        check_img_size(model, img_size)
    return model


def check_img_size(model: nn.Module, img_size: int) -> None:
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if img_size <= 0:
        raise UserError(f"image size must be positive, got {img_size}")
    if patch is not None:
        p = patch[0] if isinstance(patch, (tuple, list)) else patch
        if img_size % p:
            raise UserError(f"image size {img_size} is not a multiple of the patch size {p}")


def read_state_dict(path: str | os.PathLike) -> Dict[str, torch.Tensor]:
    """Read a state dict from a .pth/.pt/.bin (torch) or .safetensors file; unwrap 'model'/'state_dict'."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint '{path}' not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            sd = load_file(str(path))
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt/truncated files raise many different types
        raise UserError(f"checkpoint '{path}' cannot be read: {first_line(e)}")
    if not isinstance(sd, dict):
        raise UserError(f"checkpoint '{path}' does not hold a state dict")
    for key in ("state_dict_ema", "model_ema", "model", "state_dict"):
        if key in sd and isinstance(sd[key], dict):
            sd = sd[key]
            break
    return sd


def state_dict_problem(e: RuntimeError) -> str:
    """The first concrete problem of a load_state_dict error (e.g. 'size mismatch for head.weight: ...');
    the error's first line only names the model class."""
    lines = [line.strip() for line in str(e).splitlines()[1:] if line.strip()]
    return lines[0] if lines else first_line(e)


def load_timm_checkpoint(model: nn.Module, path: str | os.PathLike, reset_head: bool = False) -> None:
    """Load a timm-format checkpoint with timm's own key filter/resizing rules (e.g. relative position
    tables and patch embeddings resized to the model's window/patch size), strictly."""
    sd = read_state_dict(path)
    filter_fn = getattr(importlib.import_module(_family_module(model)), "checkpoint_filter_fn", None)
    if filter_fn is not None:
        try:
            sd = filter_fn(sd, model)
        except Exception as e:
            raise UserError(f"checkpoint '{path}' does not match the model ({type(model).__name__}): {first_line(e)}")
    if reset_head:
        head = {k for k in sd if k.startswith("head.")}
        for k in head:
            sd.pop(k)
    try:
        result = model.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # shape mismatches raise even when not strict
        raise UserError(f"checkpoint '{path}' does not match the model: {state_dict_problem(e)}")
    missing = [k for k in result.missing_keys if not (reset_head and k.startswith("head."))]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s) e.g. {missing[0]}")
    if result.unexpected_keys:
        problems.append(f"{len(result.unexpected_keys)} unexpected key(s) e.g. {result.unexpected_keys[0]}")
    if problems:
        raise UserError(f"checkpoint '{path}' does not match the model: {'; '.join(problems)}")


def _family_module(model: nn.Module) -> str:
    """timm module that defines the model's family (where its checkpoint_filter_fn lives)."""
    for cls in type(model).__mro__:
        if cls.__module__.startswith("timm.models."):
            return cls.__module__
    return type(model).__module__
