"""Checkpoints as users have them: one recogniser and converter for every `--checkpoint` and for `load`.

A registry of layouts (`LAYOUTS`): timm, the official microsoft/Swin-Transformer repo (V1 and V2),
Hugging Face transformers Swin / Swinv2 / ViT (a file, or a `save_pretrained` folder with config.json),
and mmdetection / mmsegmentation Swin (a backbone checkpoint, or a whole detector or segmentor whose
`backbone.*` is taken). Each layout says whether a state dict's keys are its own (`detect`) and converts
it to timm's layout (`convert`), exactly: every renamed tensor keeps its values, fused ones are
concatenated in timm's order, and mmdet's reordering of PatchMerging weights for `nn.Unfold` is undone
by the inverse permutation. What a conversion leaves out (a detector's heads, a pooler, per-output norms)
is named in one line. The architecture (family, patch size, widths, depths, heads, window size, classes)
is read from the tensors' shapes, or from the folder's config.json, so a run needs no `--model`.

`read_checkpoint(path)` -> `Checkpoint` (layout, architecture, timm-layout state dict, what was dropped);
`describe_checkpoint(path)` -> rows for `sparsevit info`.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from .errors import UserError, first_line, shorten

#: weights file names of a Hugging Face `save_pretrained` folder, in the order they are looked for
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
HF_CONFIG = "config.json"

#: Swin sizes by (embed_dim, depths): the names papers and model zoos use
SWIN_SIZES = {(96, (2, 2, 6, 2)): ("tiny", "Swin-T"), (96, (2, 2, 18, 2)): ("small", "Swin-S"),
              (128, (2, 2, 18, 2)): ("base", "Swin-B"), (192, (2, 2, 18, 2)): ("large", "Swin-L")}
#: ViT sizes by (embed_dim, depth)
VIT_SIZES = {(192, 12): ("tiny", "ViT-Ti"), (384, 12): ("small", "ViT-S"), (768, 12): ("base", "ViT-B"),
             (1024, 24): ("large", "ViT-L")}
#: the timm model each family is built from when the checkpoint's size has no name of its own (the
#: architecture's constructor args are always given beside it)
BASE_MODEL = {"swin": "swin_tiny_patch4_window7_224", "swinv2": "swinv2_tiny_window8_256",
              "vit": "vit_base_patch16_224"}
#: timm's ViT LayerNorm eps (transformers' ViT config says 1e-12)
TIMM_VIT_EPS = 1e-6
FAMILY_WORDS = {"swin": "Swin", "swinv2": "Swin V2", "vit": "ViT"}


# --------------------------------------------------------------------------------------------- architecture
@dataclass
class Architecture:
    """What a checkpoint says about its model. None: the file does not say (e.g. a ViT's heads without a
    config.json, a timm Swin V2's window size)."""
    family: str                      # swin, swinv2, vit
    patch_size: int
    embed_dim: int
    depths: Tuple[int, ...]          # ViT: one entry
    num_heads: Optional[Tuple[int, ...]]
    window_size: Optional[int]
    num_classes: int
    mlp_ratio: float = 4.0
    img_size: Optional[int] = None
    extra_args: Dict[str, Any] = field(default_factory=dict)
    #: what was assumed because the file does not say it
    assumed: List[str] = field(default_factory=list)

    @property
    def size_name(self) -> Optional[Tuple[str, str]]:
        """(timm's size word, the papers' short name), e.g. ('base', 'Swin-B'); None for another size."""
        if self.family == "vit":
            return VIT_SIZES.get((self.embed_dim, self.depths[0]))
        size = SWIN_SIZES.get((self.embed_dim, tuple(self.depths)))
        return (size[0], size[1].replace("Swin-", "SwinV2-")) if size and self.family == "swinv2" else size

    def describe(self) -> str:
        """'a Swin with embed_dim 128, depths 2-2-18-2 (Swin-B)'."""
        deep = f"depth {self.depths[0]}" if self.family == "vit" else f"depths {'-'.join(map(str, self.depths))}"
        size = self.size_name
        named = f" ({size[1]})" if size else ""
        return f"a {FAMILY_WORDS[self.family]} with embed_dim {self.embed_dim}, {deep}{named}"

    def details(self) -> str:
        """Every field, for `info`."""
        heads = "-".join(map(str, self.num_heads)) if self.num_heads else "not in the file"
        parts = [self.describe(), f"patch {self.patch_size}", f"heads {heads}"]
        if self.family != "vit":
            parts.append(f"window {self.window_size if self.window_size else 'not in the file'}")
        parts += [f"mlp_ratio {self.mlp_ratio:g}", f"{self.num_classes} classes" if self.num_classes
                  else "no classifier"]
        if self.img_size:
            parts.append(f"img_size {self.img_size}")
        return ", ".join(parts)

    def timm_name(self) -> str:
        size = self.size_name
        if size is None:
            return BASE_MODEL[self.family]
        name = {"swin": f"swin_{size[0]}_patch4_window7_224", "swinv2": f"swinv2_{size[0]}_window8_256",
                "vit": f"vit_{size[0]}_patch16_224"}[self.family]
        import timm
        return name if timm.is_model(name) else BASE_MODEL[self.family]

    def model_args(self) -> Dict[str, Any]:
        """timm constructor args that build this architecture (beside `timm_name()`)."""
        args: Dict[str, Any] = {"patch_size": self.patch_size, "embed_dim": self.embed_dim,
                                "mlp_ratio": self.mlp_ratio, "num_classes": self.num_classes}
        if self.family == "vit":
            args["depth"] = self.depths[0]
        else:
            args["depths"] = list(self.depths)
        if self.num_heads:
            args["num_heads"] = self.num_heads[0] if self.family == "vit" else list(self.num_heads)
        if self.window_size:
            args["window_size"] = self.window_size
        if self.img_size:
            args["img_size"] = self.img_size
        args.update(self.extra_args)
        return args


def architecture_of(state: Dict[str, Any], config: Optional[Dict[str, Any]] = None,
                    hints: Optional[Dict[str, Any]] = None) -> Architecture:
    """The architecture of a timm-layout state dict (Swin V1/V2 or ViT), from its tensors' shapes; a
    Hugging Face config.json fills in what shapes cannot say."""
    config, hints = config or {}, hints or {}
    proj = state.get("patch_embed.proj.weight")
    if proj is None or proj.dim() != 4:
        raise ValueError("no patch embedding ('patch_embed.proj.weight')")
    embed_dim, patch = int(proj.shape[0]), int(proj.shape[-1])
    assumed: List[str] = []
    if any(k.startswith("blocks.") for k in state):  # ViT
        depth = _count(state, r"^blocks\.(\d+)\.")[0]
        fc1 = state.get("blocks.0.mlp.fc1.weight")
        heads = config.get("num_attention_heads")
        if heads is None and (embed_dim, depth) in VIT_SIZES:  # the named sizes all have 64-wide heads
            heads = embed_dim // 64
            assumed.append(f"{heads} heads, as every {VIT_SIZES[embed_dim, depth][1]} has (heads are not in the "
                           f"tensors' shapes)")
        pos = state.get("pos_embed")
        prefix = 1 if "cls_token" in state else 0
        img = _side(config.get("image_size"))
        if img is None and pos is not None:
            side = math.isqrt(int(pos.shape[1]) - prefix)
            img = side * patch if side * side == int(pos.shape[1]) - prefix else None
        eps = config.get("layer_norm_eps")
        if eps is not None and eps != TIMM_VIT_EPS:
            assumed.append(f"LayerNorm eps {TIMM_VIT_EPS:g} (timm's ViT) where the file's config says {eps:g}: "
                           f"the same outputs at a trained model's activations")
        extra = {} if prefix else {"class_token": False, "global_pool": "avg"}
        return Architecture("vit", patch, embed_dim, (depth,), (int(heads),) if heads else None, None,
                            _classes(state, "head"),
                            mlp_ratio=(int(fc1.shape[0]) / embed_dim) if fc1 is not None else 4.0,
                            img_size=int(img) if img else None, extra_args=extra, assumed=assumed)
    v2 = any(k.endswith("attn.logit_scale") for k in state)
    blocks = _count(state, r"^layers\.(\d+)\.blocks\.(\d+)\.")
    if not blocks:
        raise ValueError("no Swin blocks ('layers.N.blocks.M.')")
    depths = tuple(blocks[i] for i in range(len(blocks)))
    heads, window = [], hints.get("window_size") or config.get("window_size")
    for i in range(len(depths)):
        if v2:
            scale = state.get(f"layers.{i}.blocks.0.attn.logit_scale")
            heads.append(int(scale.shape[0]) if scale is not None else 0)
        else:
            table = state.get(f"layers.{i}.blocks.0.attn.relative_position_bias_table")
            heads.append(int(table.shape[1]) if table is not None else 0)
            if table is not None and window is None:
                side = math.isqrt(int(table.shape[0]))
                window = (side + 1) // 2 if side * side == int(table.shape[0]) else None
    extra: Dict[str, Any] = {}
    pretrained = config.get("pretrained_window_sizes") or hints.get("pretrained_window_sizes")
    if v2 and pretrained and any(pretrained):
        extra["pretrained_window_sizes"] = list(pretrained)
    if v2 and window is None:
        assumed.append("window size not in the file")
    fc1 = state.get("layers.0.blocks.0.mlp.fc1.weight")
    img = _side(config.get("image_size"))
    return Architecture("swinv2" if v2 else "swin", patch, embed_dim, depths,
                        tuple(heads) if all(heads) else None, int(window) if window else None,
                        _classes(state, "head.fc"),
                        mlp_ratio=(int(fc1.shape[0]) / embed_dim) if fc1 is not None else 4.0,
                        img_size=img, extra_args=extra, assumed=assumed)


def architecture_of_model(model: Any) -> Optional[Architecture]:
    """The architecture of a built timm Swin / ViT (None for another kind of model)."""
    try:
        arch = architecture_of(model.state_dict())
    except ValueError:
        return None
    if arch.family == "vit":
        blocks = getattr(model, "blocks", None)
        heads = getattr(getattr(blocks[0], "attn", None), "num_heads", None) if blocks else None
        arch.num_heads = (int(heads),) if heads else None
    return arch


def architecture_mismatch(held: Architecture, model: Any, asked: str) -> Optional[str]:
    """What says the checkpoint holds another architecture than the model `asked` for (window and patch
    size are not: timm resizes those tables), as one phrase; None when they agree."""
    mine = architecture_of_model(model)
    if mine is None:
        return f"the checkpoint holds {held.describe()}; --model {asked} is not a Swin or ViT"
    same = (held.family == mine.family and held.embed_dim == mine.embed_dim and held.depths == mine.depths
            and (held.num_heads is None or mine.num_heads is None or held.num_heads == mine.num_heads))
    if same:
        return None
    size = mine.size_name
    short = size[1] if size else asked
    heads = "" if held.num_heads == mine.num_heads or not held.num_heads else \
        f", heads {'-'.join(map(str, held.num_heads))} vs {'-'.join(map(str, mine.num_heads or ()))}"
    return (f"the checkpoint holds {held.describe()}; --model is {short} ({mine.describe().removeprefix('a ')}"
            f"{heads}): leave --model out to build the checkpoint's own architecture")


def _side(size: Any) -> Optional[int]:
    """A config.json's image_size (224 or [224, 224]) as one side; None when it says none."""
    if isinstance(size, (list, tuple)) and size:
        size = size[0]
    return size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else None


def _count(state: Dict[str, Any], pattern: str) -> Dict[int, int]:
    """Per index of the first group: 1 + the largest second group (blocks per stage), or the count."""
    rx = re.compile(pattern)
    found: Dict[int, int] = {}
    for k in state:
        m = rx.match(k)
        if m:
            if rx.groups == 1:
                found[0] = max(found.get(0, 0), int(m[1]) + 1)
            else:
                found[int(m[1])] = max(found.get(int(m[1]), 0), int(m[2]) + 1)
    return found


def _classes(state: Dict[str, Any], head: str) -> int:
    w = state.get(f"{head}.weight")
    return int(w.shape[0]) if w is not None and w.dim() == 2 else 0


# --------------------------------------------------------------------------------------------- layouts
@dataclass
class Converted:
    state: Dict[str, Any]
    #: what was left out, as short phrases ("the detector's neck.* (12 tensors)")
    dropped: List[str] = field(default_factory=list)
    #: facts read from tensors the timm layout does not keep (window size from a buffer)
    hints: Dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Layout:
    name: str                              # shown to the user
    family: str                            # swin (V1 or V2 decided by the tensors) or vit
    detect: Callable[[List[str]], bool]
    convert: Callable[[Dict[str, Any]], Converted]


BUFFERS = ("relative_position_index", "relative_coords_table", "attn_mask")


def _window_hint(state: Dict[str, Any]) -> Dict[str, Any]:
    """The window size from a relative_position_index / relative_coords_table buffer, if the file has one;
    Swin V2's tables also say the window each stage was pre-trained at (`pretrained_window_sizes`)."""
    hints: Dict[str, Any] = {}
    pretrained: Dict[int, int] = {}
    for k, v in state.items():
        if k.endswith("relative_position_index") and v.dim() == 2 and "window_size" not in hints:
            side = math.isqrt(int(v.shape[0]))
            if side * side == int(v.shape[0]):
                hints["window_size"] = side
        if k.endswith("relative_coords_table") and v.dim() == 4 and v.shape[1] > 1:
            window = (int(v.shape[1]) + 1) // 2
            hints.setdefault("window_size", window)
            stage = re.match(r"^(?:layers|stages)\.(\d+)\.blocks\.0\.", k)
            if stage:
                pretrained[int(stage[1])] = _pretrained_window(v, window)
    if pretrained and any(pretrained[i] != hints["window_size"] for i in pretrained):
        hints["pretrained_window_sizes"] = [pretrained[i] for i in sorted(pretrained)]
    return hints


def _pretrained_window(table, window: int) -> int:
    """The pre-training window of a Swin V2 relative_coords_table: its largest entry is
    log2(8 (w - 1) / (pw - 1) + 1) / log2(8), so pw = 1 + 8 (w - 1) / (8 ** entry - 1)."""
    top = float(table.abs().max())
    return max(1, round(1 + 8 * (window - 1) / (8 ** top - 1))) if top > 0 else window


def _drop_buffers(state: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in state.items() if not k.endswith(BUFFERS)}


def official_swin_to_timm(state: Dict[str, Any]) -> Dict[str, Any]:
    """The official repo's Swin layout (V1 and V2) -> timm's: official stages end with their PatchMerging,
    timm's start with it (`layers.i.downsample` -> `layers.{i+1}.downsample`), the classifier is `head.fc`."""
    out = {}
    for k, v in state.items():
        k = re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m[1]) + 1}.downsample.", k)
        out[re.sub(r"^head\.", "head.fc.", k)] = v
    return out


def _is_timm_swin(keys: List[str]) -> bool:
    return any(re.match(r"^layers\.\d+\.blocks\.\d+\.attn\.", k) for k in keys) and not _is_official_swin(keys)


def _is_official_swin(keys: List[str]) -> bool:
    return (any(re.match(r"^layers\.\d+\.blocks\.\d+\.attn\.", k) for k in keys)
            and "layers.0.downsample.reduction.weight" in keys)


def _convert_timm_swin(state: Dict[str, Any]) -> Converted:
    return Converted(_drop_buffers(state), hints=_window_hint(state))


def _convert_official_swin(state: Dict[str, Any]) -> Converted:
    return Converted(official_swin_to_timm(_drop_buffers(state)), hints=_window_hint(state))


def _is_timm_vit(keys: List[str]) -> bool:
    return "patch_embed.proj.weight" in keys and any(re.match(r"^blocks\.\d+\.attn\.qkv\.weight$", k) for k in keys)


# ---- mmdetection / mmsegmentation
MMDET_MARK = re.compile(r"^(backbone\.)?stages\.\d+\.blocks\.\d+\.attn\.w_msa\.")
#: mmdet's PatchMerging input order (nn.Unfold's) against the official one: a self-inverse permutation
UNFOLD_ORDER = [0, 2, 1, 3]


def _is_mmdet_swin(keys: List[str]) -> bool:
    return any(MMDET_MARK.match(k) for k in keys)


def unfold_reduction_to_official(w):
    """Undo mmdet's `correct_unfold_reduction_order`: its input columns are (channel, part) with the parts
    in nn.Unfold's order; the official layout is (part, channel) in x0, x1, x2, x3 order."""
    out_channels, in_channels = w.shape
    parts = w.reshape(out_channels, in_channels // 4, 4).transpose(1, 2)
    return parts[:, UNFOLD_ORDER, :].reshape(out_channels, in_channels)


def unfold_norm_to_official(v):
    """Undo mmdet's `correct_unfold_norm_order` (the 1-D form of the above)."""
    return v.reshape(v.shape[0] // 4, 4).transpose(0, 1)[UNFOLD_ORDER, :].reshape(v.shape[0])


def _convert_mmdet_swin(state: Dict[str, Any]) -> Converted:
    """mmdet/mmseg Swin -> official layout (each step of mmdet's `swin_converter` undone) -> timm's."""
    dropped: List[str] = []
    whole = any(k.startswith("backbone.") for k in state)
    if whole:  # a detector or segmentor: only its backbone carries over
        others: Dict[str, int] = {}
        for k in state:
            if not k.startswith("backbone."):
                top = k.split(".")[0]
                others[top] = others.get(top, 0) + 1
        if others:
            dropped.append(", ".join(f"{top}.* ({n} tensors)" for top, n in others.items()))
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    hints = _window_hint(state)
    official: Dict[str, Any] = {}
    norms: Dict[int, Dict[str, Any]] = {}
    for k, v in _drop_buffers(state).items():
        m = re.match(r"^norm(\d+)\.(weight|bias)$", k)
        if m:  # per-output norms (out_indices)
            norms.setdefault(int(m[1]), {})[m[2]] = v
            continue
        if k.startswith("patch_embed.projection."):
            k = k.replace("patch_embed.projection.", "patch_embed.proj.", 1)
        elif k.startswith("stages."):
            k = "layers." + k[len("stages."):]
            k = k.replace(".attn.w_msa.", ".attn.", 1).replace(".ffn.layers.0.0.", ".mlp.fc1.", 1)
            k = k.replace(".ffn.layers.1.", ".mlp.fc2.", 1)
            if ".downsample.reduction." in k and v.dim() == 2:
                v = unfold_reduction_to_official(v)
            elif ".downsample.norm." in k:
                v = unfold_norm_to_official(v)
        official[k] = v
    if norms:
        dropped.append(_per_output_norms(official, norms, "mmdet's", "norm{}", 0))
    return Converted(official_swin_to_timm(_with_final_norm(official, dropped)), dropped, hints)


# ---- Hugging Face transformers
HF_PATCH = "embeddings.patch_embeddings.projection.weight"
#: per-block names of transformers (v4's and v5's) -> timm's (Swin and ViT blocks alike)
HF_BLOCK_RULES = [
    (r"^layernorm_before\.", "norm1."), (r"^layernorm_after\.", "norm2."),
    (r"^attention\.(?:output\.dense|o_proj)\.", "attn.proj."),
    (r"^attention\.(?:self\.|attention\.)?(?:relative_position_bias\.)?relative_position_bias_table$",
     "attn.relative_position_bias_table"),
    (r"^attention\.(?:self\.)?logit_scale$", "attn.logit_scale"),
    (r"^attention\.(?:self\.)?continuous_position_bias_mlp\.", "attn.cpb_mlp."),
    (r"^(?:intermediate\.dense|mlp\.fc1)\.", "mlp.fc1."), (r"^(?:output\.dense|mlp\.fc2)\.", "mlp.fc2."),
]
HF_QKV = re.compile(r"^attention\.(?:self\.|attention\.)?(query|key|value|q_proj|k_proj|v_proj)\.(weight|bias)$")


def _hf_prefix(keys: List[str]) -> Optional[str]:
    """The model prefix of a transformers state dict ('swin.', 'vit.', '' for SwinModel / ViTModel)."""
    for k in keys:
        if k.endswith(HF_PATCH):
            return k[: -len(HF_PATCH)]
    return None


def _is_hf_swin(keys: List[str]) -> bool:
    prefix = _hf_prefix(keys)
    return prefix is not None and any(re.match(rf"^{re.escape(prefix)}encoder\.layers\.\d+\.blocks\.", k) for k in keys)


def _is_hf_vit(keys: List[str]) -> bool:
    prefix = _hf_prefix(keys)
    return prefix is not None and any(re.match(rf"^{re.escape(prefix)}(?:encoder\.layer|layers)\.\d+\.", k)
                                      for k in keys)


def _hf_blocks(state: Dict[str, Any], block: Callable[[str], Optional[Tuple[str, str]]], v2: bool,
               dropped: List[str]) -> Dict[str, Any]:
    """transformers block tensors -> timm's, query/key/value fused into one qkv (timm's q, k, v order).
    `block(key)`: (timm's block prefix, the rest of the key) for a block tensor, else None."""
    import torch
    out: Dict[str, Any] = {}
    qkv: Dict[Tuple[str, str], Dict[str, Any]] = {}
    for k, v in state.items():
        found = block(k)
        if found is None:
            continue
        where, rest = found
        if rest.endswith(BUFFERS):
            continue
        q = HF_QKV.match(rest)
        if q:
            part = {"q_proj": "query", "k_proj": "key", "v_proj": "value"}.get(q[1], q[1])
            qkv.setdefault((where, q[2]), {})[part] = v
            continue
        for pattern, repl in HF_BLOCK_RULES:
            new, n = re.subn(pattern, repl, rest)
            if n:
                out[where + new] = v
                break
        else:
            dropped.append(f"{k} (unknown to timm)")
    for (where, kind), parts in qkv.items():
        if kind == "weight":
            out[where + "attn.qkv.weight"] = torch.cat([parts["query"], parts["key"], parts["value"]], 0)
        elif v2:  # timm's Swin V2: biases of q and v only (k has none)
            out[where + "attn.q_bias"], out[where + "attn.v_bias"] = parts["query"], parts["value"]
        else:
            out[where + "attn.qkv.bias"] = torch.cat([parts["query"], parts["key"], parts["value"]], 0)
    return out


def _convert_hf_swin(state: Dict[str, Any]) -> Converted:
    prefix = _hf_prefix(list(state)) or ""
    v2 = any(k.endswith(("logit_scale", "continuous_position_bias_mlp.0.weight")) for k in state)
    dropped: List[str] = []
    hints = _window_hint(state)
    pattern = re.compile(rf"^{re.escape(prefix)}encoder\.(layers\.\d+\.blocks\.\d+\.)")

    def block(k: str) -> Optional[Tuple[str, str]]:
        m = pattern.match(k)
        return (m[1], k[m.end():]) if m else None
    official = _hf_blocks(state, block, v2, dropped)
    per_output = []
    for k, v in state.items():
        if block(k) or k.endswith(BUFFERS):
            continue
        rest = k[len(prefix):] if k.startswith(prefix) else None
        if rest is not None and rest.startswith("encoder.layers.") and ".downsample." in rest:
            official[rest[len("encoder."):]] = v  # official position: the end of the stage
        elif rest is not None and rest.startswith("embeddings.patch_embeddings.projection."):
            official["patch_embed.proj." + rest.rsplit(".", 1)[1]] = v
        elif rest is not None and rest.startswith("embeddings.norm."):
            official["patch_embed.norm." + rest.rsplit(".", 1)[1]] = v
        elif rest is not None and rest.startswith("layernorm."):
            official["norm." + rest.rsplit(".", 1)[1]] = v
        elif rest == "embeddings.position_embeddings":
            raise ValueError("it uses absolute position embeddings (use_absolute_embeddings), which timm's Swin "
                             "does not have")
        elif k.startswith("classifier."):
            official["head." + k[len("classifier."):]] = v
        elif k.startswith("hidden_states_norms.") or ".hidden_states_norms." in k:
            per_output.append(k)
        elif rest == "embeddings.mask_token":
            dropped.append("embeddings.mask_token (masked image modelling only)")
        else:
            dropped.append(k)
    if per_output:  # SwinBackbone: the last stage's norm is where timm's final norm is, the others are dropped
        norms: Dict[int, Dict[str, Any]] = {}
        for k in per_output:
            m = re.search(r"hidden_states_norms\.stage(\d+)\.(weight|bias)$", k)
            if m:
                norms.setdefault(int(m[1]) - 1, {})[m[2]] = state[k]
        dropped.append(_per_output_norms(official, norms, "SwinBackbone's", "stage{}", 1))
    return Converted(official_swin_to_timm(_with_final_norm(official, dropped)), dropped, hints)


def _per_output_norms(official: Dict[str, Any], norms: Dict[int, Dict[str, Any]], whose: str, name: str,
                      first: int) -> str:
    """Per-output norms (mmdet's norm0..3, SwinBackbone's hidden_states_norms): the last stage's becomes the
    final norm when the file has none (it normalises the same tensor), the others are dropped. The phrase
    saying so."""
    stages = 1 + max((int(m[1]) for k in official for m in [re.match(r"^layers\.(\d+)\.", k)] if m), default=-1)
    label = lambda i: name.format(i + first)  # noqa: E731
    last = stages - 1
    if "norm.weight" not in official and last in norms and set(norms[last]) == {"weight", "bias"}:
        official.update({f"norm.{p}": t for p, t in norms.pop(last).items()})
        rest = ", ".join(label(i) for i in sorted(norms))
        return (f"{whose} per-output norms: {label(last)} (the last stage's) kept as the final norm"
                + (f", {rest} dropped (timm has no per-stage norms)" if rest else ""))
    return f"{whose} per-output norms {', '.join(label(i) for i in sorted(norms))} dropped (timm has no per-stage norms)"


def _with_final_norm(official: Dict[str, Any], notes: List[str]) -> Dict[str, Any]:
    """A Swin without a final norm (a detection backbone that never ran one): an identity norm (ones and
    zeros, as a fresh LayerNorm starts), said in `notes`."""
    if "norm.weight" in official:
        return official
    import torch
    last = max((k for k in official if re.match(r"^layers\.\d+\.blocks\.\d+\.norm1\.weight$", k)),
               key=lambda k: tuple(int(n) for n in re.findall(r"\d+", k)), default=None)
    if last is None:
        return official
    width = official[last].shape[0]
    official["norm.weight"], official["norm.bias"] = torch.ones(width), torch.zeros(width)
    notes.append("no final norm in the file: timm's starts as the identity (ones, zeros)")
    return official


def _convert_hf_vit(state: Dict[str, Any]) -> Converted:
    prefix = _hf_prefix(list(state)) or ""
    if any(k.endswith("embeddings.distillation_token") for k in state):
        raise ValueError("it is a distilled DeiT (a distillation token beside the class token), and PSViT runs "
                         "ViTs with one class token; facebook/deit-*-patch16-224 without 'distilled' are ViT "
                         "checkpoints that load")
    dropped: List[str] = []
    pattern = re.compile(rf"^{re.escape(prefix)}(?:encoder\.layer|layers)\.(\d+)\.")

    def block(k: str) -> Optional[Tuple[str, str]]:
        m = pattern.match(k)
        return (f"blocks.{m[1]}.", k[m.end():]) if m else None
    out = _hf_blocks(state, block, False, dropped)
    names = {"embeddings.cls_token": "cls_token", "embeddings.position_embeddings": "pos_embed",
             "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
             "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
             "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias"}
    for k, v in state.items():
        if block(k):
            continue
        rest = k[len(prefix):] if k.startswith(prefix) else None
        if rest in names:
            out[names[rest]] = v
        elif k.startswith("classifier."):
            out["head." + k[len("classifier."):]] = v
        elif rest is not None and rest.startswith("pooler."):
            dropped.append(f"{k} (ViTModel's pooler: timm's ViT has none)")
        elif rest == "embeddings.mask_token":
            dropped.append("embeddings.mask_token (masked image modelling only)")
        else:
            dropped.append(k)
    return Converted(out, dropped)


def _convert_timm_vit(state: Dict[str, Any]) -> Converted:
    return Converted(dict(state))


#: every layout this toolkit reads, as `info` and the error lines name them
LAYOUTS = [
    Layout("timm Swin", "swin", _is_timm_swin, _convert_timm_swin),
    Layout("official Swin (microsoft/Swin-Transformer)", "swin", _is_official_swin, _convert_official_swin),
    Layout("mmdetection / mmsegmentation Swin", "swin", _is_mmdet_swin, _convert_mmdet_swin),
    Layout("Hugging Face transformers Swin", "swin", _is_hf_swin, _convert_hf_swin),
    Layout("timm ViT", "vit", _is_timm_vit, _convert_timm_vit),
    Layout("Hugging Face transformers ViT", "vit", _is_hf_vit, _convert_hf_vit),
]


# --------------------------------------------------------------------------------------------- reading
@dataclass
class Checkpoint:
    """A recognised checkpoint: its layout, architecture and timm-layout state dict."""
    path: Path
    layout: str
    architecture: Architecture
    state: Dict[str, Any]
    dropped: List[str]
    #: the HF config.json's model class (e.g. SwinForImageClassification), when there is one
    hf_class: Optional[str] = None

    @property
    def layout_line(self) -> str:
        """The one info line naming what was recognised."""
        hf = f" ({self.hf_class})" if self.hf_class else ""
        return f"checkpoint '{self.path}': {self.layout} layout{hf}, {self.architecture.describe()}"

    @property
    def dropped_line(self) -> Optional[str]:
        """The one info line saying what the conversion left out (or filled in), None when nothing."""
        return f"checkpoint '{self.path}', not carried over: {'; '.join(self.dropped)}" if self.dropped else None


def _read_raw(path: Path) -> Tuple[Dict[str, Any], Optional[Dict[str, Any]]]:
    """(state dict with wrappers removed, config.json of a Hugging Face folder or None)."""
    from .timm_models import read_state_dict
    config = None
    if os.path.isdir(path):
        cfg_file = path / HF_CONFIG
        weights = next((path / n for n in HF_WEIGHTS if (path / n).is_file()), None)
        if weights is None:
            raise UserError(f"checkpoint '{path}' is a directory without weights (a Hugging Face save_pretrained "
                            f"folder has {' or '.join(HF_WEIGHTS[:2])} beside {HF_CONFIG})")
        if cfg_file.is_file():
            try:
                config = json.loads(cfg_file.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise UserError(f"'{cfg_file}' cannot be read: {first_line(e)}") from None
            if not isinstance(config, dict):
                raise UserError(f"'{cfg_file}' is not a JSON mapping")
        if weights.name.endswith(".index.json"):
            try:
                index = json.loads(weights.read_text(encoding="utf-8"))
                shards = sorted(set(index["weight_map"].values()))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
                raise UserError(f"'{weights}' is not a shard index: {first_line(e)}") from None
            state: Dict[str, Any] = {}
            for shard in shards:
                if "/" in shard or "\\" in shard or shard.startswith("."):
                    raise UserError(f"'{weights}' names a shard outside its folder: {shorten(shard)}")
                state.update(read_state_dict(path / shard))
        else:
            state = read_state_dict(weights)
    else:
        state = read_state_dict(path)
    state = {k: v for k, v in state.items() if hasattr(v, "shape")}
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel / DDP
        state = {k[len("module."):]: v for k, v in state.items()}
    return state, config


def recognise(state: Dict[str, Any]) -> List[Layout]:
    keys = list(state)
    return [layout for layout in LAYOUTS if layout.detect(keys)]


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read, recognise and convert a checkpoint (a file or a Hugging Face folder); one UserError line for
    anything unreadable, unknown, mixed or of another family."""
    path = Path(path)
    state, config = _read_raw(path)
    if not state:
        raise UserError(f"checkpoint '{path}' holds no tensors")
    found = recognise(state)
    if not found:
        example = shorten(next(iter(state)), 80)
        raise UserError(f"checkpoint '{path}' is in no layout this toolkit reads ({len(state)} tensors, e.g. "
                        f"'{example}'): it takes Swin and ViT checkpoints from timm, the official Swin repo, "
                        f"Hugging Face transformers and mmdetection / mmsegmentation")
    if len(found) > 1:
        raise UserError(f"checkpoint '{path}' mixes layouts ({' and '.join(l.name for l in found)}): one model's "
                        f"tensors in two layouts, refused")
    layout = found[0]
    try:
        converted = layout.convert(state)
    except ValueError as e:
        raise UserError(f"checkpoint '{path}' ({layout.name} layout) cannot be used: {e}") from None
    except Exception as e:  # a tensor of an impossible shape for its name (a hand-edited or damaged file)
        raise UserError(f"checkpoint '{path}' ({layout.name} layout) cannot be converted: {first_line(e)}") from None
    try:
        arch = architecture_of(converted.state, config, converted.hints)
    except (ValueError, AttributeError, IndexError, TypeError, KeyError) as e:  # or a config.json of odd types
        raise UserError(f"checkpoint '{path}' ({layout.name} layout) is incomplete: {first_line(e)}") from None
    hf_class = None
    if config:
        classes = config.get("architectures")
        hf_class = classes[0] if isinstance(classes, list) and classes and isinstance(classes[0], str) else None
    return Checkpoint(path, layout.name, arch, converted.state, converted.dropped, hf_class)


def model_for(ckpt: Checkpoint, name: Optional[str], args: Dict[str, Any]) -> Tuple[str, Dict[str, Any]]:
    """The timm model name and constructor args a run builds for `ckpt`: the file's architecture when no
    model is named (`args` the user gave win, e.g. img_size), else the named model with `args`."""
    if name is not None:
        return name, dict(args)
    arch = ckpt.architecture
    if arch.family == "swinv2" and arch.window_size is None and "window_size" not in args:
        raise UserError(f"checkpoint '{ckpt.path}' holds a Swin V2 without its window size (timm does not store "
                        f"it); name the model with --model (e.g. swinv2_tiny_window8_256) or set "
                        f"model.args.window_size")
    if arch.family == "vit" and arch.num_heads is None and "num_heads" not in args:
        raise UserError(f"checkpoint '{ckpt.path}' holds {arch.describe()}, whose number of heads is not in the "
                        f"file (no config.json); name the model with --model or set model.args.num_heads")
    return arch.timm_name(), {**arch.model_args(), **args}


# --------------------------------------------------------------------------------------------- info
def describe_checkpoint(path: str | os.PathLike) -> List[Tuple[str, str]]:
    """(field, value) rows that `sparsevit info` prints for a checkpoint that is not a sparsevit model file:
    the layout, the architecture, the timm model a run builds, and what a run leaves out. Builds no model."""
    ckpt = read_checkpoint(path)
    arch = ckpt.architecture
    rows = [("file", str(ckpt.path)), ("layout", ckpt.layout + (f" ({ckpt.hf_class})" if ckpt.hf_class else "")),
            ("architecture", arch.details())]
    try:
        name, args = model_for(ckpt, None, {})
        shown = ", ".join(f"{k}={v}" for k, v in args.items())
        rows.append(("timm model", f"{name} ({shown})"))
    except UserError as e:
        rows.append(("timm model", str(e)))
    rows.append(("tensors", f"{len(ckpt.state)} in timm's layout"))
    rows.append(("dropped", "; ".join(ckpt.dropped) if ckpt.dropped else "nothing"))
    if arch.assumed:
        rows.append(("assumed", "; ".join(arch.assumed)))
    return rows
