"""Build timm models and load local timm-format checkpoints, turning every failure into one clear line."""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import timm
import torch
import torch.nn as nn

from .errors import UserError, first_line, shorten


def create_timm_model(name: str, img_size: Optional[int] = None, **model_args: Any) -> nn.Module:
    """timm.create_model with the checks a user needs (unknown name, impossible image size)."""
    if not timm.is_model(name):
        close = similar_model_names(name)
        hint = f" (did you mean: {', '.join(close)})" if close else ""
        raise UserError(f"unknown timm model '{shorten(name)}'{hint}")
    if img_size is not None:
        model_args["img_size"] = img_size
    try:
        model = timm.create_model(name, pretrained=False, **model_args)
    except Exception as e:  # user-given constructor args fail in many ways (IndexError for img_size: [] ...)
        raise UserError(f"cannot build '{name}' with {shorten(model_args, 200)}: {first_line(e)}") from None
    if img_size is not None:
        check_img_size(model, img_size)
    return model


def similar_model_names(name: str, n: int = 5) -> List[str]:
    """timm model names most like `name`: those that contain it (`swin_tiny` -> swin_tiny_patch4_window7_224,
    ...) first, then difflib's closest by similarity (a typo: `swin_tiny_patch4_window7_244`), best first."""
    import difflib

    if not name:
        return []
    names = timm.list_models()
    typed = name.lower()

    def similarity(m: str) -> float:
        return difflib.SequenceMatcher(None, typed, m).ratio()

    containing = sorted((m for m in names if typed in m), key=lambda m: (-similarity(m), m))
    close = difflib.get_close_matches(typed, names, n=n, cutoff=0.5)
    return list(dict.fromkeys(containing + close))[:n]


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
    from .io import check_file, note_input, torch_load_weights
    path = check_file(path, "checkpoint")  # missing, a directory, a FIFO, a name too long: one line
    note_input(path, "checkpoint")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            sd = load_file(str(path))
        except Exception as e:  # corrupt/truncated files raise many different types
            raise UserError(f"checkpoint '{path}' cannot be read: {first_line(e)}")
    else:  # weights only: a file carrying pickled objects is refused, never executed
        sd = torch_load_weights(path, "checkpoint")
    if not isinstance(sd, dict):
        raise UserError(f"checkpoint '{path}' does not hold a state dict")
    for key in ("state_dict_ema", "model_ema", "model", "state_dict"):
        if key in sd and isinstance(sd[key], dict):
            sd = sd[key]
            break
    bad = nonfinite_tensor(sd)
    if bad is not None:  # found now: training would only say "diverged" after its first step
        raise UserError(f"checkpoint '{path}' holds non-finite weights (NaN or inf) in {bad}; start from a "
                        f"healthy checkpoint")
    return sd


def nonfinite_tensor(state: Dict[str, Any]) -> Optional[str]:
    """The name of the first floating-point tensor of `state` holding NaN or inf, else None."""
    for name, t in state.items():
        if torch.is_tensor(t) and (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
            return name
    return None


def state_dict_problem(e: RuntimeError) -> str:
    """The first concrete problem of a load_state_dict error (e.g. 'size mismatch for head.weight: ...');
    the error's first line only names the model class."""
    lines = [line.strip() for line in str(e).splitlines()[1:] if line.strip()]
    return lines[0] if lines else first_line(e)


def classifier_names(model: nn.Module) -> Tuple[str, ...]:
    """The module names of a timm model's classifier(s), from its pretrained config (Swin: head.fc)."""
    names = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or "head"
    return (names,) if isinstance(names, str) else tuple(names)


def _head_keys(sd: Dict[str, torch.Tensor], head: str):
    return [k for k in sd if k.startswith(f"{head}.")]


def load_timm_checkpoint(model: nn.Module, path: str | os.PathLike, reset_head: bool = False,
                         checkpoint: Any = None, asked: Optional[str] = None) -> Optional[str]:
    """Load a checkpoint in any layout `checkpoints.LAYOUTS` reads (timm, official Swin, Hugging Face,
    mmdetection; `checkpoint`: one `checkpoints.read_checkpoint` read already), converted to timm's layout,
    with timm's own key filter/resizing rules (e.g. relative position tables and patch embeddings resized
    to the model's window/patch size), strictly, except for the classifier: one for another number of
    classes than `model`'s (or any, with `reset_head`) is left out, so the model keeps its freshly
    initialised head. `asked`: the model name the user gave; a checkpoint of another architecture is then
    one line saying what the file holds and what was asked. Returns the info line about the head (else
    None); any other mismatch is one UserError line naming it."""
    from .checkpoints import architecture_mismatch, read_checkpoint
    checkpoint = checkpoint if checkpoint is not None else read_checkpoint(path)
    if asked is not None:
        mismatch = architecture_mismatch(checkpoint.architecture, model, asked)
        if mismatch:
            raise UserError(f"checkpoint '{path}': {mismatch}")
    sd = dict(checkpoint.state)
    filter_fn = getattr(importlib.import_module(_family_module(model)), "checkpoint_filter_fn", None)
    if filter_fn is not None:
        try:
            sd = filter_fn(sd, model)
        except Exception as e:  # timm's filter walks the model by the checkpoint's keys: another depth breaks it
            extra = architecture_difference(sd, model)
            raise UserError(f"checkpoint '{path}' does not match the model ({type(model).__name__}): "
                            f"{extra or first_line(e)}") from None
    own = model.state_dict()
    notes = []
    for head in classifier_names(model):
        weight = sd.get(f"{head}.weight")
        mine = own.get(f"{head}.weight")
        other_classes = (weight is not None and mine is not None and weight.shape[0] != mine.shape[0]
                         and weight.shape[1:] == mine.shape[1:])
        if (reset_head or other_classes) and _head_keys(sd, head):
            old = f"{weight.shape[0]} -> " if weight is not None else ""
            new = mine.shape[0] if mine is not None else 0
            notes.append(f"{head}: {old}{new} classes, re-initialised")
            for k in _head_keys(sd, head):
                sd.pop(k)
        elif mine is not None and not _head_keys(sd, head):  # a backbone-only checkpoint (num_classes=0)
            notes.append(f"{head}: not in the checkpoint, {mine.shape[0]} classes initialised")
    try:
        result = model.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # shape mismatches raise even when not strict
        raise UserError(f"checkpoint '{path}' does not match the model: {state_dict_problem(e)}")
    heads = tuple(f"{h}." for h in classifier_names(model))
    missing = [k for k in result.missing_keys if not (notes and k.startswith(heads))]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s) e.g. {missing[0]}")
    if result.unexpected_keys:
        problems.append(f"{len(result.unexpected_keys)} unexpected key(s) e.g. {result.unexpected_keys[0]}")
    if problems:
        why = architecture_difference(sd, model) or "; ".join(problems)
        raise UserError(f"checkpoint '{path}' does not match the model: {why}")
    return "; ".join(notes) or None


def architecture_difference(sd: Dict[str, Any], model: nn.Module) -> Optional[str]:
    """What says a checkpoint is of another architecture than `model`: per-stage block counts that differ
    (a Swin-S checkpoint into a Swin-T), else a module the checkpoint has and the model lacks; None if
    neither shows."""
    import re
    pattern = re.compile(r"^(?:.*\.)?layers\.(\d+)\.blocks\.(\d+)\.")

    def depths(keys) -> Dict[int, int]:
        found: Dict[int, int] = {}
        for k in keys:
            m = pattern.match(k)
            if m:
                found[int(m[1])] = max(found.get(int(m[1]), 0), int(m[2]) + 1)
        return found
    theirs, ours = depths(sd), depths(model.state_dict())
    if theirs and ours and theirs != ours:
        show = lambda d: [d.get(i, 0) for i in range(max(d) + 1)]  # noqa: E731
        return (f"the checkpoint is of another architecture (blocks per stage {show(theirs)}, the model has "
                f"{show(ours)}): a checkpoint of another model size?")
    own = model.state_dict()
    stray = next((k for k in sd if k not in own), None)
    if stray is not None and len(sd) != len(own):
        return (f"the checkpoint is of another architecture ({len(sd)} tensors, the model has {len(own)}; "
                f"e.g. '{stray}' is not in the model)")
    return None


def _family_module(model: nn.Module) -> str:
    """timm module that defines the model's family (where its checkpoint_filter_fn lives)."""
    for cls in type(model).__mro__:
        if cls.__module__.startswith("timm.models."):
            return cls.__module__
    return type(model).__module__


#: the family names of timm's model classes, as people say them
FAMILY_NAMES = {"SwinTransformer": "Swin", "SwinTransformerV2": "Swin V2", "SwinTransformerV2Cr": "Swin V2",
                "VisionTransformer": "ViT", "VisionTransformerDistilled": "DeiT"}


def describe_architecture(model: nn.Module) -> str:
    """The architecture a (timm) model really is, read from the built model rather than its timm name: e.g.
    'Swin (embed 32, depths 2-4)' for `swin_tiny_patch4_window7_224` built with embed_dim=32, depths=[2, 4];
    pass a task model's backbone (`tasks.backbone_of`)."""
    inner = model
    # the timm class it is (an engine-patched model is a subclass of it)
    mro = type(inner).__mro__
    family = next((FAMILY_NAMES[c.__name__] for c in mro if c.__name__ in FAMILY_NAMES),
                  next((c.__name__ for c in mro if c.__module__.startswith("timm.models.")), type(inner).__name__))
    embed = getattr(inner, "embed_dim", None)
    if isinstance(embed, (list, tuple)):
        embed = embed[0]
    layers = getattr(inner, "layers", None)
    blocks = getattr(inner, "blocks", None)
    if layers is not None and all(hasattr(layer, "blocks") for layer in layers):
        depth = "depths " + "-".join(str(len(layer.blocks)) for layer in layers)
    elif blocks is not None:
        depth = f"depth {len(blocks)}"
    else:
        return family
    return f"{family} (embed {embed}, {depth})" if embed is not None else f"{family} ({depth})"
