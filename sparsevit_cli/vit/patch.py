"""Token pooling and attention sharing for timm's VisionTransformer (PSViT, Chen et al. 2021, arXiv 2108.03428).

`psvit(model)` patches a timm `VisionTransformer` (DeiT / ViT with a class token) in place (ToMe-style
class swap: same object, same parameters, same state-dict keys) so that it can run any *layer plan*:

* **Token pooling** before block ``i``: the patch tokens, seen as their (H, W) grid, are 2x2
  average-pooled to (ceil(H/2), ceil(W/2)); the class token is carried through unchanged. Odd sizes
  use ceil mode: a window that hangs over the border averages the tokens it covers (what
  ``F.avg_pool2d(x, 2, ceil_mode=True)`` computes). Pooling is possible while the grid is larger than
  1x1. Position embeddings are added once at the input, as in timm.
* **Attention sharing** in block ``i``: the block reuses the attention probabilities (softmax(q k^T *
  scale), before dropout) of block ``i - 1`` instead of computing its own. Only V is projected (the V
  rows of ``qkv.weight`` / ``qkv.bias`` through ``F.linear``; the ``qkv`` Linear module itself is not
  called), then probabilities @ V, the output projection, layer scale, drop path and the MLP run as
  usual. A block whose successor shares computes its attention explicitly (even when timm would use
  fused SDPA), because SDPA does not return the probabilities. Sharing is invalid in block 0 and in a
  block right after a pooling (the token count changed). A block may share from a block that itself
  shares (the same probabilities are then used by both).

**Layer plan** (what `PSViTTransformer.set_config` takes): two groups of one 0/1 value per block,
``[[pool_0, ..., pool_{L-1}], [share_0, ..., share_{L-1}]]``, e.g. for 12 blocks::

    [[0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0],    # 2x2 pooling before blocks 4 and 8
     [0, 0, 0, 1, 0, 1, 0, 1, 0, 0, 0, 1]]    # blocks 3, 5, 7, 11 reuse the previous attention

**Search genes** (what the PSViT method and search space `psvit_deit` use) restrict this to the paper's
kind of compact, structured space where *every* gene combination is a valid plan, so evolution needs
no repair: ``[[pool genes], [share genes]]``, values 0.0 / 1.0:

* ``pool``: one gene per candidate pooling position, ``pool_positions(depth)``: even block indices
  near a quarter, half and three quarters of the depth (Python ``round``, deduplicated), e.g.
  depth 12 -> [4, 6, 8], depth 6 -> [2, 4], depth 24 -> [6, 12, 18]. 1.0 = pool before that block.
  A pooling gene that would pool a 1x1 grid is ignored.
* ``share``: one gene per block pair ``(2j, 2j + 1)``, ``depth // 2`` genes; 1.0 = block ``2j + 1``
  reuses block ``2j``'s attention. Pooling only happens before even blocks, so a pair never straddles a
  pooling point and every share gene is always valid. With an odd depth the last block always computes
  its own attention.

`decode_genes` turns genes into a layer plan. At the all-zero plan every block is timm's own
`Block.forward`, so the output equals the dense timm model exactly.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Attention, PatchEmbed
from timm.models.vision_transformer import Block, VisionTransformer

from ..errors import UserError
from ..layers import Config


SUPPORTED_GLOBAL_POOL = ("token", "avg", "max", "avgmax")  # pooled by timm's own forward_head


# ---- the structured search encoding ---------------------------------------------------------------
def pool_positions(depth: int) -> List[int]:
    """Candidate pooling positions (block indices) of the search encoding for a `depth`-block ViT."""
    pairs = depth // 2
    if pairs < 2:
        raise UserError(f"PSViT search needs at least 4 blocks (pooling before a later block pair), "
                        f"the model has {depth}")
    return sorted({2 * min(max(round(pairs * k / 4), 1), pairs - 1) for k in (1, 2, 3)})


def gene_sizes(depth: int) -> List[int]:
    """Genes per group of the search encoding: [pooling candidates, block pairs]."""
    return [len(pool_positions(depth)), depth // 2]


def pooled_grid(grid: Tuple[int, int]) -> Tuple[int, int]:
    """Grid size after one 2x2 ceil-mode pooling."""
    return (grid[0] + 1) // 2, (grid[1] + 1) // 2


#: the values every PSViT gene and layer-plan entry takes: off / on
GENE_VALUES = (0.0, 1.0)


def _binary(v, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not any(abs(v - g) < 1e-6 for g in GENE_VALUES):
        raise UserError(f"{what} must be 0 or 1, got {v!r}")
    return min(GENE_VALUES, key=lambda g: abs(v - g))


def validate_genes(depth: int, genes: Sequence[Sequence[float]]) -> Config:
    """Check a search-gene config for a `depth`-block model; returns it as floats."""
    sizes = gene_sizes(depth)
    if not isinstance(genes, (list, tuple)) or len(genes) != 2:
        n = len(genes) if isinstance(genes, (list, tuple)) else type(genes).__name__
        raise UserError(f"PSViT config needs 2 groups [pool genes ({sizes[0]}: before blocks "
                        f"{pool_positions(depth)}), share genes ({sizes[1]}: one per block pair)], got {n}")
    out = []
    for name, values, n in zip(("pool", "share"), genes, sizes):
        if not isinstance(values, (list, tuple)) or len(values) != n:
            got = len(values) if isinstance(values, (list, tuple)) else repr(values)
            raise UserError(f"PSViT {name} group needs {n} value(s) for a {depth}-block model, got {got}")
        out.append([_binary(v, f"PSViT {name} gene {j}") for j, v in enumerate(values)])
    return out


def decode_genes(depth: int, grid: Tuple[int, int], genes: Sequence[Sequence[float]]) -> Config:
    """Search genes -> layer plan [[pool per block], [share per block]] (always a valid plan)."""
    genes = validate_genes(depth, genes)
    pool = [0.0] * depth
    share = [0.0] * depth
    h, w = grid
    for pos, g in zip(pool_positions(depth), genes[0]):
        if g and h * w > 1:
            pool[pos] = 1.0
            h, w = pooled_grid((h, w))
    for j, g in enumerate(genes[1]):
        if g:
            share[2 * j + 1] = 1.0  # 2j + 1 is odd, pooling is only ever before even blocks
    return [pool, share]


def validate_plan(depth: int, grid: Tuple[int, int], config) -> Config:
    """Check a layer plan [[pool_i], [share_i]] (one 0/1 per block each) for a model with `depth`
    blocks and a (H, W) patch grid; returns it as floats."""
    if not isinstance(config, (list, tuple)) or len(config) != 2:
        n = len(config) if isinstance(config, (list, tuple)) else type(config).__name__
        raise UserError(f"PSViT layer plan needs 2 groups [pool per block, share per block] of {depth} "
                        f"values each, got {n}")
    plan = []
    for name, values in zip(("pool", "share"), config):
        if not isinstance(values, (list, tuple)) or len(values) != depth:
            got = len(values) if isinstance(values, (list, tuple)) else repr(values)
            raise UserError(f"PSViT {name} list needs one value per block ({depth}), got {got}")
        plan.append([_binary(v, f"{name} value of block {i}") for i, v in enumerate(values)])
    pool, share = plan
    h, w = grid
    for i in range(depth):
        if pool[i]:
            if h * w <= 1:
                raise UserError(f"block {i}: cannot pool, the patch grid is already {h}x{w}")
            h, w = pooled_grid((h, w))
        if share[i]:
            if i == 0:
                raise UserError("block 0 cannot share attention: there is no previous block")
            if pool[i]:
                raise UserError(f"block {i} cannot share attention: it follows a pooling, so the token "
                                f"count differs from block {i - 1}'s")
    return plan


def plan_grids(grid: Tuple[int, int], plan: Config) -> List[Tuple[int, int]]:
    """Patch grid each block runs at under `plan`."""
    out = []
    h, w = grid
    for p in plan[0]:
        if p:
            h, w = pooled_grid((h, w))
        out.append((h, w))
    return out


# ---- execution ---------------------------------------------------------------------------------------
_INV_COUNTS: Dict[Tuple, torch.Tensor] = {}


def _inverse_counts(H: int, W: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(1, ceil(H/2), ceil(W/2), 1): 1 / tokens per 2x2 window (border windows of odd sizes hold fewer);
    cached, so exporters see a constant."""
    key = (H, W, str(device), dtype)
    inv = _INV_COUNTS.get(key)
    if inv is None:
        with torch.inference_mode(False):  # a normal tensor, usable by autograd later
            rows = torch.tensor([2.0] * (H // 2) + [1.0] * (H % 2), dtype=torch.float64)
            cols = torch.tensor([2.0] * (W // 2) + [1.0] * (W % 2), dtype=torch.float64)
            inv = (1.0 / (rows[:, None] * cols[None, :])).to(device=device, dtype=dtype)[None, :, :, None]
        _INV_COUNTS[key] = inv
    return inv


def pool_tokens(x: torch.Tensor, grid: Tuple[int, int], num_prefix: int = 1) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """2x2 ceil-mode average pooling of the patch tokens of x (B, prefix + H*W, C); prefix tokens pass.

    Static shapes given the grid (exportable); no matrix products.
    """
    H, W = grid
    B, _, C = x.shape
    prefix, patches = x[:, :num_prefix], x[:, num_prefix:]
    H2, W2 = pooled_grid(grid)
    p = patches.reshape(B, H, W, C)
    if H % 2 == 0 and W % 2 == 0:
        pooled = p.reshape(B, H2, 2, W2, 2, C).mean(dim=(2, 4))
    else:
        p = F.pad(p, (0, 0, 0, W % 2, 0, H % 2))
        pooled = p.reshape(B, H2, 2, W2, 2, C).sum(dim=(2, 4)) * _inverse_counts(H, W, x.device, x.dtype)
    return torch.cat([prefix, pooled.reshape(B, H2 * W2, C)], dim=1), (H2, W2)


def attn_dim(attn: Attention) -> int:
    return getattr(attn, "attn_dim", attn.num_heads * attn.head_dim)


def psvit_block(block: Block, x: torch.Tensor, shared: Optional[torch.Tensor] = None,
                need_probs: bool = False) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """One transformer block. Returns (output, attention probabilities or None).

    shared: attention probabilities (B, heads, N, N) to reuse (only V is computed), or None.
    need_probs: the next block shares, so compute attention explicitly and return its probabilities.
    Without either it is exactly timm's Block.forward.
    """
    if shared is None and not need_probs:
        return block(x), None
    attn = block.attn
    h = block.norm1(x)
    B, N, C = h.shape
    A = attn_dim(attn)
    gate_mod = getattr(attn, "gate", None)
    gate = gate_mod(h).sigmoid() if gate_mod is not None else None
    if shared is None:
        qkv = attn.qkv(h).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        q = q * attn.scale
        probs = (q @ k.transpose(-2, -1)).softmax(dim=-1)
    else:
        w = attn.qkv.weight[2 * A:]
        b = attn.qkv.bias[2 * A:] if attn.qkv.bias is not None else None
        v = F.linear(h, w, b).reshape(B, N, attn.num_heads, attn.head_dim).permute(0, 2, 1, 3)
        probs = shared
    o = attn.attn_drop(probs) @ v
    o = o.transpose(1, 2).reshape(B, N, A)
    o = attn.norm(o)
    if gate is not None:
        o = o * gate
    o = attn.proj_drop(attn.proj(o))
    x = x + block.drop_path1(block.ls1(o))
    x = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
    return x, probs


class PSViTTransformer(VisionTransformer):
    """A timm VisionTransformer with per-block token pooling and attention sharing. Created by `psvit`."""

    psvit_plan: Config  # [[pool per block], [share per block]]

    # --- configuration -------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        return len(self.blocks)

    def grid(self, img_size=None) -> Tuple[int, int]:
        """Patch grid (H, W) for `img_size` (int or (H, W)); the model's own size by default."""
        if img_size is None:
            return tuple(self.patch_embed.grid_size)
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        ph, pw = self.patch_embed.patch_size
        return img_size[0] // ph, img_size[1] // pw

    def dense_plan(self) -> Config:
        return [[0.0] * self.depth, [0.0] * self.depth]

    def validate_config(self, config) -> Config:
        """Check a layer plan [[pool_i], [share_i]] (0/1 per block) for this model; UserError if invalid."""
        return validate_plan(self.depth, self.grid(), config)

    def set_config(self, config=None) -> "PSViTTransformer":
        """Run the layer plan `config` ([[pool per block], [share per block]]) from the next forward on;
        None = dense (no pooling, no sharing)."""
        self.psvit_plan = self.dense_plan() if config is None else self.validate_config(config)
        return self

    def token_counts(self, img_size=None) -> List[int]:
        """Tokens (class token included) each block runs on under the current plan."""
        return [1 + h * w for h, w in plan_grids(self.grid(img_size), self.psvit_plan)]

    # --- forward -----------------------------------------------------------------------------------
    def _embed(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        # strict patch embeddings (the default) only take the model's size: a static grid, no shape tracing
        grid = self.grid() if getattr(self.patch_embed, "strict_img_size", True) else self.grid(tuple(x.shape[-2:]))
        x = self.patch_embed(x)
        x = self._pos_embed(x)
        x = self.patch_drop(x)
        x = self.norm_pre(x)
        return x, grid

    def _blocks(self, x: torch.Tensor, grid: Tuple[int, int], take: Sequence[int] = (), stop: Optional[int] = None):
        """Run the blocks under the plan; returns (tokens, grid, [(tokens, grid) after each block in take])."""
        pool, share = self.psvit_plan
        depth = self.depth if stop is None else stop + 1
        inter = []
        probs = None
        for i in range(depth):
            if pool[i]:
                x, grid = pool_tokens(x, grid, self.num_prefix_tokens)
                probs = None
            need = i + 1 < self.depth and bool(share[i + 1])
            x, probs = psvit_block(self.blocks[i], x, probs if share[i] else None, need)
            if i in take:
                inter.append((x, grid))
        return x, grid, inter

    def forward_features(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
                         is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal is True:
            raise UserError("PSViT models do not support attention masks")
        x, grid = self._embed(x)
        x, _, _ = self._blocks(x, grid)
        return self.norm(x)

    def forward_intermediates(self, x: torch.Tensor, indices=None, return_prefix_tokens: bool = False,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False, output_dict: bool = False,
                              attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False):
        """timm's forward_intermediates; NCHW maps shrink after each pooling."""
        from timm.models._features import feature_take_indices
        if attn_mask is not None or is_causal is True:
            raise UserError("PSViT models do not support attention masks")
        if output_fmt not in ("NCHW", "NLC"):
            raise UserError(f"output_fmt must be NCHW or NLC, got {output_fmt}")
        take, max_index = feature_take_indices(self.depth, indices)
        x, grid = self._embed(x)
        x, _, inter = self._blocks(x, grid, take, stop=max_index if stop_early else None)
        n = self.num_prefix_tokens
        prefix = [y[:, :n] for y, _ in inter]
        feats = []
        for y, (h, w) in inter:
            y = self.norm(y) if norm else y
            y = y[:, n:]
            if output_fmt == "NCHW":
                y = y.reshape(y.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous()
            feats.append(y)
        if output_dict:
            out = {"image_intermediates": feats}
            if return_prefix_tokens:
                out["image_intermediates_prefix"] = prefix
            if not intermediates_only:
                out["image_features"] = self.norm(x)
            return out
        if return_prefix_tokens:
            feats = list(zip(feats, prefix))
        if intermediates_only:
            return feats
        return self.norm(x), feats


def _check_supported(model: nn.Module) -> None:
    if not isinstance(model, VisionTransformer) or type(model) is not VisionTransformer:
        raise UserError(f"PSViT needs a timm VisionTransformer (DeiT/ViT), got {type(model).__name__}")
    problems = []
    if getattr(model, "cls_token", None) is None:
        problems.append("it has no class token")
    if getattr(model, "num_reg_tokens", 0) or model.num_prefix_tokens != 1:
        problems.append(f"it has {model.num_prefix_tokens} prefix tokens (register/distillation tokens)")
    if model.global_pool not in SUPPORTED_GLOBAL_POOL or model.attn_pool is not None:
        problems.append(f"global_pool is '{model.global_pool}' (supported: {', '.join(SUPPORTED_GLOBAL_POOL)})")
    if model.dynamic_img_size:
        problems.append("dynamic_img_size is on (PSViT needs a fixed patch grid)")
    if not isinstance(model.patch_drop, nn.Identity):
        problems.append("patch dropout is on (pooling needs the full patch grid)")
    if not isinstance(model.patch_embed, PatchEmbed) or not getattr(model.patch_embed, "flatten", False):
        problems.append(f"patch embedding {type(model.patch_embed).__name__} is not timm's flattening PatchEmbed")
    for i, blk in enumerate(model.blocks):
        if type(blk) is not Block or type(blk.attn) is not Attention:
            problems.append(f"block {i} is {type(blk).__name__}/{type(getattr(blk, 'attn', None)).__name__}, "
                            f"not timm's Block/Attention")
            break
    if problems:
        raise UserError(f"PSViT cannot run this VisionTransformer: {'; '.join(problems)}")


def psvit(model: nn.Module, config=None) -> PSViTTransformer:
    """Give a timm VisionTransformer token pooling and attention sharing, in place (same object, same
    parameters). `config` is a layer plan (see `PSViTTransformer.set_config`); None = dense."""
    if isinstance(model, PSViTTransformer):
        return model.set_config(config) if config is not None else model
    _check_supported(model)
    model.__class__ = PSViTTransformer
    model.set_config(config)
    return model
