"""Window-sparse execution of timm's SwinTransformer (SparseViT, arXiv 2303.17605).

`sparsify_v1(model)` (what the public `sparsevit_cli.sparsify` runs for a V1 model) patches a timm
`SwinTransformer`, or a timm ``features_only=True`` Swin backbone (the
`FeatureListNet` whose children are ``patch_embed, layers_0, layers_1, ...``), in place (ToMe-style class
swap: same object, same parameters, same state-dict keys). The engine works per stage: every timm
`SwinTransformerStage` becomes a `SparseSwinStage` holding its block-pair ratios and the window score, and
the model (`SparseSwinTransformer`) only configures its stages, so a sparse features backbone under the
user's own detector runs exactly what the whole sparse classifier runs.

* Nothing pruned, nothing added: a stage whose ratios are all 0 runs timm's own `SwinTransformerStage`
  forward, and inside a stage that prunes, the leading blocks that keep every window run as timm's own
  blocks. So sparsity 0 is timm, op for op, and costs what timm costs; the sparse machinery below only
  starts at a stage's first block that drops a window.
* Any input size: a patched model takes every H x W its patch divides, square or not, at every stage,
  dense or pruned. Index tables and shifted-window masks are built per (H, W) and cached (`shift_mask`,
  `SparseSwinStage.grids`); timm's own blocks get their mask for the size at hand from the same cache
  (`SizedMaskBlock`), which is what timm's dynamic-size model (``strict_img_size=False``) computes. Window
  and shift sizes stay those timm chose for the model's img_size, as in timm's dynamic-size model.
* Windows are ranked once per stage by the model's window score (`WINDOW_SCORES`). A score maps every
  token to one value and reduces a window's token values to the window's score; the plain and the shifted
  grid are ranked on the same token map, so every block of a stage uses one consistent order. Built in:

  - ``l2`` (the paper's criterion, "L2 activation magnitude"): token value ``||x||^2``, window score the
    sum over its tokens (its squared L2 norm), ranked at the stage input after patch merging.
  - ``l2-centered`` (the default): ``||x - mean(x)||^2``, the magnitude of a token's deviation from the
    image's mean token, summed, ranked at the stage input. Why centre: Swin features carry a large
    component shared by every token (LayerNorm biases, the patch-merging projection of them). With it,
    ``||x||^2 = ||m||^2 + 2<m, x - m> + ||x - m||^2`` is dominated by the cross term, which rewards tokens
    that look like the image's *average*, i.e. like the background that covers most of a high-resolution
    image. Measured on the demo data (trained demo model, uniform 50%): raw L2 keeps 63% top-1, centred L2
    80%, an oracle that keeps the digit's windows 82% (dense 82%).
  - ``mean-abs``: the authors' released code (mit-han-lab/sparsevit, mmdet backbone, the stage's
    ``forward``): token value ``mean_c |x_c|``, window score the L2 norm of its tokens' values (padding
    tokens count 0), ranked once per stage at the input of the first block that prunes, the shifted grid
    ranked on the same map rolled by half a window. This is the score that matches the released code.

  Kept-window counts differ from the released code on purpose: it keeps ``int(nW * (1 - r))`` windows
  (floor) per block, this engine keeps ``max(1, round((1 - s) * nW))`` per block pair (`kept_windows`),
  so a ratio never empties a stage's last window and 10% steps are symmetric around the exact count.
* Padding is never computed (`PaddingMask`): a pixel that is exactly 0 in every channel of the model's input
  is padding (torchvision's detection transform and letterboxing pad with zeros after normalising; a padded
  batch is zero beyond each image), and so is a window all of whose tokens cover only padding pixels. At a
  ratio ``s > 0`` such windows rank last and are never kept, and an image keeps ``kept_windows(R, s)`` of its
  R real windows (`kept_counts`; R counted on the pair's plain grid, `block_counts`, so a letterboxed image
  keeps what it keeps alone in both blocks of a pair): images of a batch keep different counts, listed flat (`Kept`), so per-block
  work is the kept real windows of the batch. Ratio 0 keeps every window, padding included (timm's model).
* A block with sparsity ``s`` keeps ``kept_windows(R, s)`` windows per image (R: its real windows; nW without
  padding). It gathers the tokens of those windows straight from a flat (B, H*W + 1, C) stage buffer through
  an index table (plain or shifted grid, built once per resolution), runs LN -> window attention (timm's relative position bias and
  shifted-window masks, selected per kept window) -> LN -> MLP on them, and writes the results back in
  place. Unkept windows pass through untouched. No roll, partition or copy of the whole map happens per
  block, so per-block work scales with the kept windows.
* Exported graphs take any size the patch divides: index tables, shifted-window masks (`region_mask`),
  padding masks and kept counts are tensor operations on the input's size, so ONNX (dynamic axes),
  TorchScript and torch.export (dynamic shapes) trace them instead of a size-keyed cache; in a graph every
  block runs on the stage buffer (timm's own blocks specialise on the traced size).
* Padding (resolutions not divisible by the window) follows timm exactly: roll first, then pad with zero
  tokens *after* norm1. Pad tokens point at one dummy row per image that is never read as output.

At sparsity 0 a model computes exactly what timm computes (it runs timm's stages); a pruned block computes
what timm's block computes on the windows it keeps, in the same operation order.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Format
from timm.models._features import FeatureDictNet
from timm.models.swin_transformer import SwinTransformer, SwinTransformerBlock, SwinTransformerStage

from ..batch_memory import BatchMemory, same_tensors, tensor_bytes
from ..errors import UserError

RATIO_CHOICES = tuple(round(0.1 * i, 1) for i in range(9))  # 0.0 ... 0.8
#: layouts of a features_only backbone's stage maps (`set_output_fmt`): timm's NHWC, or NCHW
OUTPUT_FMTS = ("NHWC", "NCHW")


def _l2_energy(x: torch.Tensor) -> torch.Tensor:
    """(B, N, C) -> (B, N): ||x||^2 per token (the paper's L2 activation magnitude). A product and a sum, not
    an einsum: onnxruntime's Einsum took 4 ms on a 512² stage-1 map where these take 0.25."""
    return (x * x).sum(dim=-1)


def _centered_l2_energy(x: torch.Tensor) -> torch.Tensor:
    """(B, N, C) -> (B, N): ||x - mean over the image's tokens||^2 per token (see the module doc)."""
    return _l2_energy(x - x.mean(dim=1, keepdim=True))


def _mean_abs(x: torch.Tensor) -> torch.Tensor:
    """(B, N, C) -> (B, N): mean over channels of |x| (the released code's token activation magnitude)."""
    return x.abs().mean(dim=-1)


@dataclass(frozen=True)
class WindowScore:
    """How a window score ranks windows.

    token: (B, N, C) tokens -> (B, N) token values.
    window: how a window's token values become its score: "sum" or "l2" (their L2 norm).
    at_first_pruned_block: rank on the input of the stage's first block that prunes (the released code)
        instead of the stage input after patch merging.
    Calling it computes the token values. A plain function registered in `WINDOW_SCORES` counts as
    ``WindowScore(token=function)``: token values summed per window, ranked at the stage input."""

    token: Callable[[torch.Tensor], torch.Tensor]
    window: str = "sum"
    at_first_pruned_block: bool = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.token(x)


#: window scores by name (the name is stored in model files)
WINDOW_SCORES: Dict[str, Union[WindowScore, Callable[[torch.Tensor], torch.Tensor]]] = {
    "l2": WindowScore(_l2_energy),
    "l2-centered": WindowScore(_centered_l2_energy),
    "mean-abs": WindowScore(_mean_abs, window="l2", at_first_pruned_block=True),
}
DEFAULT_WINDOW_SCORE = "l2-centered"


def check_window_score(name: str) -> str:
    if name not in WINDOW_SCORES:
        raise UserError(f"unknown window score {name!r} (choose from: {', '.join(WINDOW_SCORES)})")
    return name


def window_score_spec(name: str) -> WindowScore:
    """The `WindowScore` registered as `name` (a plain function: token values summed per window)."""
    score = WINDOW_SCORES[name]
    return score if isinstance(score, WindowScore) else WindowScore(score)


def kept_windows(num_windows: int, sparsity: float) -> int:
    """Windows a block keeps at `sparsity`: round((1-s)*nW), at least one."""
    return max(1, min(num_windows, int(math.floor((1.0 - sparsity) * num_windows + 0.5))))


@dataclass
class WindowGrid:
    """Index tables of one window grid (plain or shifted) at one resolution.

    index: (nW, N) flat token index into the (H*W + 1)-row stage buffer of one image; row H*W is the
           dummy row that padding tokens read from and write to.
    valid: (nW, N, 1) 1.0 for real tokens, 0.0 for padding, or None when nothing is padded.
    mask:  (nW, N, N) timm's shifted-window attention mask, or None for the plain grid.
    """

    index: torch.Tensor
    valid: Optional[torch.Tensor]
    mask: Optional[torch.Tensor]

    @property
    def num_windows(self) -> int:
        return self.index.shape[0]


def static_size(*sizes) -> bool:
    """Whether sizes are plain ints (eager), not an exporter's symbolic sizes (SymInts, traced 0-d tensors)."""
    return all(isinstance(n, int) for n in sizes)


def _window_coords(window_size: Sequence[int], Hp, Wp, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """(row, col), each (nW, N): the position on the (Hp, Wp) map padded to whole windows of every token of
    every window, in timm's window_partition order (windows row-major, tokens row-major inside). Broadcast
    arithmetic on aranges only: no reshape of a map, so symbolic sizes add no guard on the window counts."""
    wh, ww = window_size
    nw = Wp // ww
    win = torch.arange((Hp // wh) * nw, device=device).unsqueeze(1)  # (nW, 1)
    tok = torch.arange(wh * ww, device=device).unsqueeze(0)  # (1, N)
    return (win // nw) * wh + tok // ww, (win % nw) * ww + tok % ww


def build_grid(block: SwinTransformerBlock, H, W, device: torch.device) -> WindowGrid:
    """Token index table of `block`'s window grid, matching timm's roll -> pad -> partition order.

    Built from tensor operations on H and W only, so that under an exporter with symbolic sizes (ONNX dynamic
    axes, torch.export dynamic shapes) the graph computes the table for the size at hand. With symbolic sizes
    `valid` is always given (whether a size pads is not known while tracing)."""
    wh, ww = block.window_size
    sh, sw = block.shift_size
    Hp, Wp = (H + wh - 1) // wh * wh, (W + ww - 1) // ww * ww
    row, col = _window_coords(block.window_size, Hp, Wp, device)
    # position (i, j) of the rolled, padded map holds token ((i + sh) % H, (j + sw) % W) of the stage map
    src = ((row + sh) % H) * W + (col + sw) % W
    pad = (row >= H) | (col >= W)
    index = torch.where(pad, torch.full_like(src, 0) + H * W, src)
    valid = None
    if not static_size(H, W) or Hp > H or Wp > W:
        valid = (~pad).to(torch.float32).unsqueeze(-1)
    return WindowGrid(index=index.contiguous(), valid=valid, mask=shift_mask(block, Hp, Wp, device))


def shift_mask(block: nn.Module, Hp, Wp, device: torch.device) -> Optional[torch.Tensor]:
    """timm's shifted-window attention mask (nW, N, N) of a Swin block (V1 or V2) on a (Hp, Wp) map padded to
    whole windows, float32; None for a block without shift. Built by timm's own mask builder once per size,
    layout and device, and kept on the block: the engine's kept windows and timm's own blocks
    (`SizedMaskBlock`) read the same tensor. Symbolic sizes (an exporter tracing): `region_mask`, in the
    graph, not cached."""
    if not any(block.shift_size):
        return None
    if not static_size(Hp, Wp):
        return region_mask(block, Hp, Wp, device)
    cache = block.__dict__.setdefault("_shift_masks", {})
    # a string device: dynamo guards on the key and cannot rebuild a torch.device
    key = (Hp, Wp, tuple(block.window_size), tuple(block.shift_size), str(device))
    mask = cache.get(key)
    if mask is None:
        saved = block.input_resolution
        block.input_resolution = (Hp, Wp)  # timm's builder reads the size from here when given no tensor
        try:
            mask = cache[key] = block.get_attn_mask(device=device, dtype=torch.float32)
        finally:
            block.input_resolution = saved
    return mask


def region_mask(block: nn.Module, Hp, Wp, device: torch.device) -> torch.Tensor:
    """timm's shifted-window mask (`get_attn_mask`) from tensor operations on (possibly symbolic) sizes: timm
    labels the padded map in 3 x 3 regions (rows [0, Hp - wh), [Hp - wh, Hp - sh), [Hp - sh, Hp), columns
    likewise) and masks (-100) token pairs of a window from different regions. float32 (nW, N, N)."""
    wh, ww = block.window_size
    sh, sw = block.shift_size
    row, col = _window_coords(block.window_size, Hp, Wp, device)
    region = (((row >= Hp - wh).long() + (row >= Hp - sh).long()) * 3
              + (col >= Wp - ww).long() + (col >= Wp - sw).long())  # (nW, N)
    differ = region.unsqueeze(1) != region.unsqueeze(2)
    return differ.to(torch.float32) * -100.0


class SizedMaskBlock:
    """Mixin in front of the class of every block of a sparse stage, for the blocks that run as timm's own
    (a stage or leading blocks that prune nothing). timm builds a block's static shifted-window mask for the
    model's img_size, so another input size breaks its reshape; with ``dynamic_mask`` (what timm's
    ``strict_img_size=False`` models set) timm asks `get_attn_mask` for the padded map at hand on every
    forward. This mixin answers from `shift_mask`'s per-size cache, so timm's block runs op for op as in
    timm's dynamic-size model without rebuilding the mask each time."""

    def get_attn_mask(self, x: Optional[torch.Tensor] = None, device=None, dtype=None) -> Optional[torch.Tensor]:
        if x is None:  # timm's static buffer, or `shift_mask` building a size
            return super().get_attn_mask(device=device, dtype=dtype)
        if not static_size(x.shape[1], x.shape[2]):  # an exporter with symbolic sizes: built in the graph
            return region_mask(self, x.shape[1], x.shape[2], x.device).to(x.dtype)
        mask = shift_mask(self, x.shape[1], x.shape[2], x.device)
        return None if mask is None else mask.to(x.dtype)  # 0 / -100: exact in every float dtype


def stage_grids(blocks: Sequence[nn.Module], H, W, device: torch.device,
                make_grid: Callable = build_grid) -> List[WindowGrid]:
    """One grid per block of a stage at (H, W); blocks with the same window layout share one object."""
    by_layout: Dict[Tuple, WindowGrid] = {}
    grids = []
    for block in blocks:
        layout = (tuple(block.window_size), tuple(block.shift_size))
        if layout not in by_layout:
            by_layout[layout] = make_grid(block, H, W, device)
        grids.append(by_layout[layout])
    return grids


def _grouped(mask: torch.Tensor, windows) -> bool:
    """Whether `mask` (G, N, N) is shared by groups of `windows` (G < windows, both plain ints)."""
    return static_size(mask.shape[0], windows) and mask.shape[0] != windows


def window_attention(block: SwinTransformerBlock, x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """timm WindowAttention.forward for windows that each carry their own mask.

    x: (B_, N, C) kept windows; mask: (G, N, N) with G dividing B_ (window w of x uses mask w % G), or
    None. Same op order as timm. Sizes an exporter made symbolic: the mask is one per window (G = B_).
    """
    attn_mod = block.attn
    B_, N, _ = x.shape
    qkv = attn_mod.qkv(x).reshape(B_, N, 3, attn_mod.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    if attn_mod.fused_attn:
        attn_mask = attn_mod._get_rel_pos_bias()
        if mask is not None and _grouped(mask, B_):
            G = mask.shape[0]
            attn_mask = (attn_mask.unsqueeze(0) + mask.view(1, G, 1, N, N)).expand(B_ // G, -1, -1, -1, -1)
            attn_mask = attn_mask.reshape(B_, -1, N, N)
        elif mask is not None:  # one mask per window
            attn_mask = attn_mask.unsqueeze(0) + mask.unsqueeze(1)
        x = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=attn_mod.attn_drop.p if attn_mod.training else 0.0)
    else:
        q = q * attn_mod.scale
        attn = q @ k.transpose(-2, -1)
        attn = attn + attn_mod._get_rel_pos_bias()
        if mask is not None and _grouped(mask, B_):
            G = mask.shape[0]
            attn = (attn.view(-1, G, attn_mod.num_heads, N, N) + mask.view(1, G, 1, N, N)).view(B_, -1, N, N)
        elif mask is not None:  # one mask per window
            attn = attn + mask.unsqueeze(1)
        attn = attn_mod.softmax(attn)
        attn = attn_mod.attn_drop(attn)
        x = attn @ v
    x = x.transpose(1, 2).reshape(B_, N, -1)
    x = attn_mod.proj(x)
    x = attn_mod.proj_drop(x)
    return x


def exporting() -> bool:
    """Whether a graph exporter (ONNX, TorchScript tracing, torch.export) is tracing: they need out-of-place
    updates and top-k instead of a stable sort."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting()


def writing_graph() -> bool:
    """Whether ONNX or torch.export is writing a graph (with possibly dynamic sizes), not a plain jit trace."""
    return torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting()


class Kept(NamedTuple):
    """The windows a block computes, over the whole batch: images keep different counts (padding windows are
    never kept, so an image's count comes from its real windows), so they are listed flat, image by image."""

    image: torch.Tensor  #: (T,) the image of each kept window
    window: torch.Tensor  #: (T,) its window id in the grid
    #: (T,) False for a slot that only fills a fixed count (torch.compile needs static shapes): it reads and
    #: writes its image's dummy row, so it changes nothing; None when every slot is a kept window
    live: Optional[torch.Tensor] = None

    def by_image(self, batch: int) -> List[torch.Tensor]:
        """The kept window ids of each image of the batch, best first."""
        image, window = self.image, self.window
        if self.live is not None:
            image, window = image[self.live], window[self.live]
        return [window[image == b] for b in range(batch)]


class Windows(NamedTuple):
    """Kept windows gathered from a stage buffer by `gather_windows` (T windows of N tokens)."""

    tokens: torch.Tensor  #: (T, N, C) the windows' tokens, padding tokens read from the dummy row
    valid: Optional[torch.Tensor]  #: (T, N, 1) 1.0 real token, 0.0 padding; None when nothing is padded
    #: timm's shifted-window attention mask: (T, N, N) one per kept window, or (nW, N, N) when every window
    #: is kept (window w of image b uses mask w, as timm's grouped masks do); None on the plain grid
    mask: Optional[torch.Tensor]
    flat_idx: torch.Tensor  #: (T*N,) rows of the buffer viewed as (B*(H*W + 1), C), for `scatter_windows`


def gather_windows(buf: torch.Tensor, grid: WindowGrid, window_ids: Union[None, torch.Tensor, Kept]) -> Windows:
    """The tokens of the kept windows of `buf` (B, H*W + 1, C), with their padding and attention masks.

    window_ids: a `Kept` list, (B, k) kept windows per image (the same count for every image), or None for
    every window in grid order. The masks keep the grid's dtype (float32); a block casts them to its compute
    dtype."""
    B, L, C = buf.shape
    N = grid.index.shape[1]
    if window_ids is None:
        flat_idx = (grid.index.unsqueeze(0) + (torch.arange(B, device=buf.device) * L).view(B, 1, 1)).reshape(-1)
        tokens = buf.view(B * L, C).index_select(0, flat_idx).view(B * grid.num_windows, N, C)
        valid = None if grid.valid is None else grid.valid.unsqueeze(0).expand(B, -1, -1, -1).reshape(-1, N, 1)
        mask = grid.mask
        if mask is not None and not static_size(tokens.shape[0], mask.shape[0]):  # symbolic: one mask per window
            mask = mask.repeat(B, 1, 1)
        return Windows(tokens, valid, mask, flat_idx)
    if isinstance(window_ids, torch.Tensor):  # (B, k): the same count per image
        k = window_ids.shape[1]
        image = torch.arange(B, device=buf.device).view(B, 1).expand(B, k).reshape(-1)
        window_ids = Kept(image, window_ids.reshape(-1))
    idx = grid.index[window_ids.window]  # (T, N)
    if window_ids.live is not None:  # fill slots: the image's dummy row
        idx = torch.where(window_ids.live[:, None], idx, torch.full_like(idx, L - 1))
    flat_idx = (idx + (window_ids.image * L)[:, None]).reshape(-1)
    tokens = buf.view(B * L, C).index_select(0, flat_idx).view(-1, N, C)
    valid = None if grid.valid is None else grid.valid[window_ids.window]
    mask = None if grid.mask is None else grid.mask[window_ids.window]
    return Windows(tokens, valid, mask, flat_idx)


def scatter_windows(buf: torch.Tensor, flat_idx: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Write the windows `x` (any shape of B*k*N tokens) back to the rows `flat_idx` of `buf` (B, L, C): in
    place, or out of place while a graph is being exported. Returns the updated buffer.

    In a graph the write is a gather and a select: each buffer row looks up the token written to it (a
    scatter of one index per token, not of every channel) and takes it where there is one. A scatter of
    every element (ScatterElements, what an out-of-place index_copy exports to) took 13-15% of the exported
    backbone's time in onnxruntime's profile on one thread."""
    B, L, C = buf.shape
    flat = buf.view(B * L, C)
    tokens = x.reshape(-1, C)
    if exporting():
        # row -> the token written to it, -1 for none (rows written twice are dummy rows: never read as output)
        ids = torch.arange(flat_idx.shape[0], device=flat_idx.device)
        source = flat_idx.new_full((B * L,), -1).index_copy(0, flat_idx, ids)
        written = tokens.index_select(0, source.clamp(min=0))
        return torch.where((source >= 0).unsqueeze(1), written, flat).view(B, L, C)
    flat.index_copy_(0, flat_idx, tokens)
    return buf


def sparse_block_(block: SwinTransformerBlock, buf: torch.Tensor, grid: WindowGrid,
                  window_ids: Optional[torch.Tensor]) -> torch.Tensor:
    """Run the V1 `block` on the kept windows of `buf` (B, H*W + 1, C) and write them back
    (`scatter_windows`); returns the updated buffer.

    window_ids: the `Kept` windows, (B, k) kept windows per image, or None for all windows in grid order.
    """
    x, valid, mask, flat_idx = gather_windows(buf, grid, window_ids)
    h = block.norm1(x)
    if valid is not None:  # timm pads with zeros after norm1
        h = h * valid.to(h.dtype)
    h = window_attention(block, h, None if mask is None else mask.to(h.dtype))
    x = x + block.drop_path1(h)
    x = x + block.drop_path2(block.mlp(block.norm2(x)))
    return scatter_windows(buf, flat_idx, x)


def _kept_token_masks(grids: List[WindowGrid], kept: List[Optional[Kept]], B: int, H: int, W: int
                      ) -> List[torch.Tensor]:
    """(B, H, W) bool masks of the tokens each block of a stage computes (for `kept_window_masks`)."""
    masks = []
    for grid, sel in zip(grids, kept):
        device = grid.index.device
        if sel is None:
            masks.append(torch.ones(B, H, W, dtype=torch.bool, device=device))
            continue
        idx = grid.index[sel.window]  # (T, N), may hold the dummy row H*W
        if sel.live is not None:
            idx = torch.where(sel.live[:, None], idx, torch.full_like(idx, H * W))
        m = torch.zeros(B, H * W + 1, dtype=torch.bool, device=device)
        m[sel.image[:, None].expand_as(idx), idx] = True
        masks.append(m[:, : H * W].reshape(B, H, W))
    return masks


class PaddingMask:
    """Which pixels of the model's input are padding, for the stages to find the windows that are all padding.

    A forward pre-hook on the model's ``patch_embed`` (the first thing every forward runs: classifier,
    ``forward_intermediates`` under a detector or segmenter, ``features_only`` backbone, an exported graph)
    records the input; a stage asks `tokens` for its token map. The rule: **a pixel is padding when it is
    exactly 0 in every channel of the model's input**, and a token (a window) when all its pixels are. That is
    what torchvision's GeneralizedRCNNTransform writes (it normalises, then pads the batch with zeros), what
    a letterbox on a zero canvas after normalisation writes, and what the zero rows beyond a smaller image in
    a padded batch are. A real pixel is never exactly 0 in every channel after mean/std normalisation unless
    it equals the mean to the last bit, and a token is padding only if all its pixels are."""

    image: Optional[torch.Tensor] = None
    _pixels: Optional[torch.Tensor] = None
    _all_real: Optional[bool] = None

    def __call__(self, module: nn.Module, args) -> None:
        self.image, self._pixels, self._all_real = (args[0] if args else None), None, None

    def pixels(self) -> Optional[torch.Tensor]:
        """(B, 1, H0, W0) float32, 1.0 for a real pixel of the recorded input (None: no image input recorded)."""
        x = self.image
        if x is None or x.dim() != 4:
            return None
        if self._pixels is None:
            # |x| at most 0 over the channels: every channel exactly 0 (float ops: an exported graph's `any` casts
            # every pixel of every channel to int64 first)
            self._pixels = (x.detach().abs().amax(dim=1, keepdim=True) != 0).to(torch.float32)
        return self._pixels

    def _no_padding(self, pixels: torch.Tensor) -> bool:
        """Eager only: whether every pixel of the recorded input is real, asked once per forward; then the stages
        skip the padding masks (every window real: the same counts, none of the per-stage pooling). A graph
        (trace, compile, export) always builds the masks: its input may be padded."""
        if exporting() or torch.compiler.is_compiling():
            return False
        if self._all_real is None:
            self._all_real = bool(pixels.all())
        return self._all_real

    def tokens(self, stride: int, H, W) -> Optional[torch.Tensor]:
        """(B, H*W) bool, True for a real token of the (H, W) map at `stride` input pixels per token (a token
        covers pixels [i*stride, (i+1)*stride), cut at the image's edge as timm's patch merging pads), or None
        when no input was recorded or it does not lead to this map (a stage called on its own)."""
        pixels = self.pixels()
        if pixels is None or not stride or self._no_padding(pixels):
            return None
        real = F.max_pool2d(pixels, stride, stride, ceil_mode=True)
        if static_size(H, W) and tuple(real.shape[-2:]) != (H, W):
            return None
        return real.flatten(1) > 0


def real_windows(grid: WindowGrid, token_real: Optional[torch.Tensor], B: int) -> torch.Tensor:
    """(B, nW) bool: windows of `grid` holding at least one real token (all True without a padding mask)."""
    if token_real is None:
        return torch.ones_like(grid.index[:, 0], dtype=torch.bool).unsqueeze(0).expand(B, -1)
    token_real = torch.cat([token_real, token_real.new_zeros(token_real.shape[0], 1)], dim=1)  # dummy: padding
    return token_real[:, grid.index].any(dim=-1)


def kept_counts(real: torch.Tensor, sparsity: float) -> torch.Tensor:
    """(B,) windows each image keeps at `sparsity`: `kept_windows` of its real windows, round((1-s)*R), at
    least one; tensor operations (float64, as Python's float), so an exported graph counts at any size."""
    R = real.sum(dim=1).to(torch.float64)
    return torch.floor((1.0 - sparsity) * R + 0.5).to(torch.int64).clamp(min=1)


def block_counts(grids: Sequence[WindowGrid], ratios: Sequence[float], real: Dict[int, torch.Tensor]
                 ) -> List[Optional[torch.Tensor]]:
    """(B,) kept windows per image for every block of a stage (None at ratio 0: every window).

    A block pair keeps one count per image, `kept_counts` of the real windows of the pair's plain grid: the
    shifted grid cuts the same real area into more windows where the image ends inside the map (a letterboxed
    or batch-padded image: the rows timm's roll wraps around land beside the padding), so counting its own real
    windows would let a padded image keep more shifted windows than the image alone. The shifted block keeps
    that count, or all its real windows when it has fewer. Without padding both grids' windows are all real
    and the counts are `kept_windows(nW, s)` in both."""
    counts: List[Optional[torch.Tensor]] = []
    for i, (g, r) in enumerate(zip(grids, ratios)):
        if not r > 0:
            counts.append(None)
            continue
        plain = grids[i - i % 2]
        c = kept_counts(real[id(plain)], r)
        if g is not plain:
            c = torch.minimum(c, real[id(g)].sum(dim=1).clamp(min=1))
        counts.append(c)
    return counts


def select_kept(order: torch.Tensor, counts: torch.Tensor, fixed: Optional[int] = None) -> Kept:
    """The first `counts[b]` windows of each image's ranking `order` (B, nW), as one flat `Kept` list.

    fixed: a static slot count per image (torch.compile needs static shapes): each image lists `fixed`
    windows and the ones beyond its count are fill slots (`Kept.live` False) that touch only its dummy row."""
    B, nW = order.shape
    if fixed is not None:
        order = order[:, :fixed]
        live = torch.arange(order.shape[1], device=order.device).unsqueeze(0) < counts.unsqueeze(1)
        image = torch.arange(B, device=order.device).unsqueeze(1).expand_as(order)
        return Kept(image.reshape(-1), order.reshape(-1), live.reshape(-1))
    slot = torch.arange(nW, device=order.device).unsqueeze(0) < counts.unsqueeze(1)  # (B, nW) in rank order
    image = torch.arange(B, device=order.device).unsqueeze(1).expand_as(order)
    return Kept(image[slot], order[slot])


def rank_windows(scores: torch.Tensor) -> torch.Tensor:
    """Window ids per image, best first. Stable sort in eager mode (ties keep grid order); exporters get
    top-k over all windows, which ONNX and friends support."""
    if exporting():
        return torch.topk(scores, scores.shape[1], dim=1, largest=True, sorted=True).indices
    return torch.sort(scores, dim=1, descending=True, stable=True).indices


@torch.no_grad()  # scores pick windows; they are not trained through
def rank_grids(window_score: str, tokens: torch.Tensor, grids: Sequence[WindowGrid],
               real: Optional[Dict[int, torch.Tensor]] = None) -> Dict[int, torch.Tensor]:
    """Rank the windows of every distinct grid of a stage, best first: {id(grid): (B, nW) window ids}.

    tokens: the (B, H*W, C) token map the stage ranks on. Token values are computed once and reduced per
    window of each grid (padding tokens count 0), so the plain and the shifted grid share one score.
    real: {id(grid): (B, nW) bool} windows that hold real pixels (`real_windows`); the others rank last."""
    score = window_score_spec(window_score)
    values = score(tokens).float()
    values = torch.cat([values, values.new_zeros(values.shape[0], 1)], dim=1)  # the padding dummy row
    orders: Dict[int, torch.Tensor] = {}
    for g in grids:
        if id(g) not in orders:
            per_token = values[:, g.index]  # (B, nW, N)
            per_window = (per_token.sum(-1) if score.window == "sum"
                          else torch.linalg.vector_norm(per_token, ord=2, dim=-1))
            if real is not None and id(g) in real:
                per_window = per_window.masked_fill(~real[id(g)], float("-inf"))
            orders[id(g)] = rank_windows(per_window)
    return orders


def window_orders(window_score: str, buf: torch.Tensor, grids: Sequence[WindowGrid],
                  real: Optional[Dict[int, torch.Tensor]] = None) -> Dict[int, torch.Tensor]:
    """`rank_grids` on a (B, H*W + 1, C) stage buffer (last row: the padding dummy)."""
    return rank_grids(window_score, buf[:, : buf.shape[1] - 1], grids, real)


def _check_ratio(r: float) -> float:
    for choice in RATIO_CHOICES:
        if abs(float(r) - choice) < 1e-6:
            return choice
    raise UserError(f"sparsity ratio {r!r} is not one of {', '.join(f'{c:g}' for c in RATIO_CHOICES)}")


def swin_stages(model: nn.Module) -> List[nn.Module]:
    """The stages of a timm Swin (`model.layers`) or of its ``features_only`` backbone (the children that
    hold blocks), in order."""
    layers = getattr(model, "layers", None)
    if isinstance(layers, nn.Sequential):
        return list(layers)
    return [m for m in model.children() if hasattr(m, "blocks")]


def pair_counts(model: nn.Module) -> List[int]:
    """Block pairs (W-MSA + SW-MSA) per stage of any timm Swin or Swin features backbone, sparse or not."""
    return [math.ceil(len(stage.blocks) / 2) for stage in swin_stages(model)]


def validate_sparsity(model: nn.Module, config: Sequence[Sequence[float]]) -> List[List[float]]:
    """`config` normalised for `model` (one ratio per block pair per stage); UserError naming the fault."""
    counts = pair_counts(model)
    if not isinstance(config, (list, tuple)) or len(config) != len(counts):
        n = len(config) if isinstance(config, (list, tuple)) else type(config).__name__
        raise UserError(f"sparsity config needs one list per stage ({len(counts)} stages, "
                        f"block pairs {counts}), got {n}")
    out = []
    for i, (ratios, n) in enumerate(zip(config, counts)):
        if isinstance(ratios, (int, float)):
            ratios = [ratios] * n  # one number for a stage means every pair of it
        if not isinstance(ratios, (list, tuple)) or len(ratios) != n:
            got = len(ratios) if isinstance(ratios, (list, tuple)) else ratios
            raise UserError(f"stage {i + 1} has {n} block pair(s) and needs {n} ratio(s), got {got}")
        ratios = [_check_ratio(r) for r in ratios]
        if any(b < a for a, b in zip(ratios, ratios[1:])):
            raise UserError(f"stage {i + 1} ratios {ratios} decrease: sparsity must be non-decreasing "
                            f"inside a stage (a pruned window never comes back)")
        out.append(ratios)
    return out


class SparseSwinStage:
    """Mixin that makes a timm SwinTransformerStage run each block on its top-scoring windows.

    `ratios` holds one sparsity per block pair, `window_score` a `WINDOW_SCORES` name; the model's
    `set_sparsity` / `set_window_score` set them. With every ratio 0 the stage is timm's own stage (timm's
    gradient checkpointing included); blocks on the stage buffer are not checkpointed."""

    ratios: Sequence[float] = ()
    window_score: str = DEFAULT_WINDOW_SCORE
    #: while `kept_window_masks` runs: the list this stage appends its per-block kept-token masks to
    _kept_recorder: Optional[List[List[torch.Tensor]]] = None
    #: the model's input padding (shared by the model's stages, fed by a hook on its patch_embed)
    _padding: Optional[PaddingMask] = None
    #: input pixels per token of this stage's map (after its patch merging)
    _token_stride: int = 0
    #: runs one block on the kept windows of the stage buffer (a model family's own block plugs in here)
    sparse_block = staticmethod(sparse_block_)
    make_grid = staticmethod(build_grid)

    def grids(self, H, W, device: torch.device) -> List[WindowGrid]:
        """Per-block window grids at (H, W), built once per resolution and device (symbolic sizes, while an
        exporter traces: built in the graph, not cached)."""
        if not static_size(H, W):
            return stage_grids(self.blocks, H, W, device, self.make_grid)
        key = (H, W, str(device))  # a string: dynamo guards on the key, and cannot rebuild a torch.device
        grids = self._grid_cache.get(key)
        if grids is None:
            grids = self._grid_cache[key] = stage_grids(self.blocks, H, W, device, self.make_grid)
        return grids

    #: while `shared_prefixes` runs: the cache of block prefixes this stage reads and fills, and its index
    _prefix_cache: Optional["PrefixCache"] = None
    _prefix_index: int = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cache = self._prefix_cache
        if self._kept_recorder is not None or self.training or writing_graph():
            cache = None
        if cache is not None and cache.share:
            return forward_shared(self, x)
        if self._kept_recorder is None and not any(self.ratios) and not writing_graph():
            out = super().forward(x)  # timm's own stage: nothing to prune, nothing added
            if cache is not None:
                cache.count_alone(self, out)
            return out
        return self.forward_blocks(self.downsample(x), cache)

    def real_windows(self, grids: Sequence[WindowGrid], B: int, H, W) -> Dict[int, torch.Tensor]:
        """{id(grid): (B, nW) bool} the windows of each distinct grid that hold a real (non-padding) token of
        the model's input (`PaddingMask`)."""
        token_real = None if self._padding is None else self._padding.tokens(self._token_stride, H, W)
        return {id(g): real_windows(g, token_real, B) for g in grids}

    def forward_blocks(self, x: torch.Tensor, cache: Optional["PrefixCache"] = None) -> torch.Tensor:
        """The blocks on the (B, H, W, C) map after patch merging.

        A block pair at ratio 0 computes every window (padding included: timm's dense model). A pair at ratio
        s > 0 keeps, per image, ``round((1-s) * R)`` (at least one) of the image's R windows that hold a real
        pixel, best first; windows that are all padding are never kept and not counted.

        cache: while `shared_prefixes` runs, the `PrefixCache` this forward resumes from (the deepest state
        after this stage's blocks that an earlier network with the same kept windows left) and fills after
        every block; the operations are those of the forward without it, minus the blocks it skips, and a
        pruned block that another network of the cache's plan runs on the same input at other counts runs once,
        at the widest (`PrefixCache.wide_counts`), each network taking its own windows' rows. A cache with
        `share` False only counts."""
        B, H, W, C = x.shape
        grids = self.grids(H, W, x.device)
        n = len(grids)
        ratios = [self.ratios[i // 2] for i in range(n)]
        real = self.real_windows(grids, B, H, W)
        counts = block_counts(grids, ratios, real)
        compiling = torch.compiler.is_compiling() and not exporting()  # (torch.export compiles too)
        graph = compiling or writing_graph()  # a plain jit trace (fvcore, TorchScript) decides as eager does
        # eager: a block that keeps every window of every image runs on them all (or as timm's own block);
        # in a graph the counts are symbolic, and every block at a ratio > 0 selects
        pruned = [c is not None and (graph or bool((c < g.num_windows).any())) for c, g in zip(counts, grids)]
        first = next((i for i, p in enumerate(pruned) if p), n)
        # blocks before `start` run as timm's own blocks on the map; from `start` on, on the stage buffer. ONNX
        # and torch.export get the buffer from block 0: timm's blocks specialise on the traced size (whether it
        # pads). A plain jit trace (fvcore's MAC count, TorchScript) runs timm's blocks, as eager does
        start = 0 if writing_graph() else first
        # windows are ranked on the stage input, or (a late score) on the input of the first pruning block
        rank_at = first if window_score_spec(self.window_score).at_first_pruned_block else 0

        def rank(state: torch.Tensor) -> Dict[int, torch.Tensor]:  # on a map or a stage buffer
            tokens = state.reshape(B, H * W, C) if state.dim() == 4 else state[:, : H * W]
            return rank_grids(self.window_score, tokens, grids, real)

        # the state before block `at`: the (B, H, W, C) map up to `start`, the (B, H*W + 1, C) buffer after
        at, state = 0, x
        orders: Dict[int, torch.Tensor] = {}
        kept: List[Optional[Kept]] = [None] * n
        sharing = cache is not None and cache.share
        keys: List[Optional[tuple]] = [None] * n
        if cache is not None:
            # a block's key: the windows it keeps per image (None: every window), so equal keys compute alike
            keys = [tuple(c.tolist()) if p else None for c, p in zip(counts, pruned)]
            cache.asked(keys, grids, B)
        if sharing:
            by_ratios: Dict[tuple, tuple] = {}

            def plan_keys(pair_ratios: Sequence[float]) -> tuple:  # another network's keys, from the same counts
                block_ratios = tuple(pair_ratios[i // 2] for i in range(n))
                if block_ratios not in by_ratios:
                    by_ratios[block_ratios] = tuple(block_key(c, g) for c, g in
                                                    zip(block_counts(grids, block_ratios, real), grids))
                return by_ratios[block_ratios]

            at, state = cache.resume(keys, self._prefix_index, plan_keys)
            if at > start:
                state = state.clone()  # blocks write the buffer in place: the cached state stays as it is
            if rank_at < at < n and first < n:  # resumed past the ranking: the order its prefix ranked
                orders = cache.ranked(rank_at, rank)
            if first < at < n:  # and past the selection
                kept = self.kept(grids, ratios, pruned, counts, orders)
        for i in range(at, n):
            if i == rank_at and first < n:
                orders = cache.ranked(i, rank) if sharing else rank(state)
            if i == start:  # one stage buffer with a dummy row per image for padding tokens: the only full copy
                state = torch.cat([state.reshape(B, H * W, C), state.new_zeros(B, 1, C)], dim=1)
            if i == first:
                kept = self.kept(grids, ratios, pruned, counts, orders)
            ran: Optional[tuple] = keys[i]  # the counts block i runs at (None: every window; () nothing runs)
            if i < start:  # blocks that keep every window are timm's blocks (no gather, no buffer)
                state = self.blocks[i](state)
            elif sharing and keys[i] is not None:
                state, ran = self._run_shared(i, state, grids[i], kept[i], orders, cache, keys[i])
            else:
                state = self.sparse_block(self.blocks[i], state, grids[i], kept[i])
            if cache is not None and ran != ():
                cache.ran(i, block_windows(ran, grids[i], B))
            if sharing:
                cache.store(i + 1, state.clone() if i >= start else state)
        if self._kept_recorder is not None:  # one check per stage; nothing else when not recording (eager)
            self._kept_recorder.append(_kept_token_masks(grids, kept, B, H, W))
        return state[:, : H * W].reshape(B, H, W, C) if start < n else state

    def _run_shared(self, i: int, state: torch.Tensor, grid: WindowGrid, kept: Kept,
                    orders: Dict[int, torch.Tensor], cache: "PrefixCache", own: tuple) -> Tuple[torch.Tensor, tuple]:
        """Pruned block `i` on the stage buffer `state` (the cached state after `i` blocks, or its copy) under
        `cache`: its kept windows' rows taken from the block's wide output on this input (computed now, at the
        counts `cache.wide_counts` asks for, when no stored one covers `own`), or the block run at `own` when no
        other planned network needs this input. Returns the state after the block and the counts run (() none)."""
        wide = cache.wide_output(i, own)
        ran: tuple = ()
        if wide is None:
            counts = cache.wide_counts(i, own)
            if counts is None and not cache.remembers(i):  # no other network needs this block on this input
                return self.sparse_block(self.blocks[i], state, grid, kept), own
            counts = own if counts is None else counts
            wider = select_kept(orders[id(grid)], torch.tensor(counts, dtype=torch.int64, device=state.device))
            wide = self.sparse_block(self.blocks[i], state.clone(), grid, wider)
            cache.keep_wide(i, counts, wide)
            ran = counts
        return take_windows(state, wide, grid, kept), ran

    @staticmethod
    def kept(grids: Sequence[WindowGrid], ratios: Sequence[float], pruned: Sequence[bool],
             counts: Sequence[Optional[torch.Tensor]], orders: Dict[int, torch.Tensor]) -> List[Optional[Kept]]:
        """The `Kept` windows of every block (None: every window), one selection per grid and ratio (a pair's
        blocks on one grid, and consecutive pairs at one ratio, share it)."""
        compiling = torch.compiler.is_compiling() and not exporting()  # (torch.export compiles too)
        kept: List[Optional[Kept]] = []
        by_choice: Dict[Tuple[int, float], Kept] = {}
        for i, (g, r) in enumerate(zip(grids, ratios)):
            if not pruned[i]:
                kept.append(None)
                continue
            if (id(g), r) not in by_choice:
                fixed = kept_windows(g.num_windows, r) if compiling else None
                by_choice[id(g), r] = select_kept(orders[id(g)], counts[i], fixed)
            kept.append(by_choice[id(g), r])
        return kept


class SparseSwinTransformer:
    """Mixin that makes a timm SwinTransformer (or the user's subclass of it, or its ``features_only``
    backbone) run every block on its top-scoring windows. `sparsify` puts it in front of the model's own
    class (`sparse_class`), the way ToMe's `make_tome_class` does, so the user's overrides and isinstance
    checks keep working. Its stages are `SparseSwinStage`s; this class sets their ratios and window score."""

    sparsity: List[List[float]]  # one ratio per block pair, per stage
    window_score: str = DEFAULT_WINDOW_SCORE  # a WINDOW_SCORES name

    # --- configuration -------------------------------------------------------------------------
    def sparse_stages(self) -> List[SparseSwinStage]:
        return [s for s in swin_stages(self) if isinstance(s, SparseSwinStage)]

    def pair_counts(self) -> List[int]:
        """Block pairs (W-MSA + SW-MSA) per stage: one sparsity ratio each."""
        return pair_counts(self)

    def validate_sparsity(self, config: Sequence[Sequence[float]]) -> List[List[float]]:
        return validate_sparsity(self, config)

    def set_sparsity(self, config) -> "SparseSwinTransformer":
        """Set one ratio per block pair per stage, e.g. [[0.0], [0.2], [0.4, 0.5, 0.6], [0.8]];
        a float sets every pair to it (uniform sparsity)."""
        if isinstance(config, (int, float)):
            config = [[float(config)] * n for n in self.pair_counts()]
        self.sparsity = self.validate_sparsity(config)
        for stage, ratios in zip(swin_stages(self), self.sparsity):
            if isinstance(stage, SparseSwinStage):
                stage.ratios = ratios
        return self

    def set_window_score(self, name: str) -> "SparseSwinTransformer":
        """Choose how windows are ranked: a `WINDOW_SCORES` name ("l2-centered", the paper's "l2", or the
        released code's "mean-abs")."""
        self.window_score = check_window_score(name)
        for stage in self.sparse_stages():
            stage.window_score = name
        return self

    def set_output_fmt(self, fmt: str) -> "SparseSwinTransformer":
        """Layout of a ``features_only`` backbone's stage maps: "NHWC" (timm's features_only Swin, the
        default) or "NCHW" (what `forward_intermediates` returns and torchvision / mmdet necks take);
        `output_fmt` says which (timm's FeatureDictNet attribute). A whole Swin returns logits: refused."""
        if fmt not in OUTPUT_FMTS:
            raise UserError(f"output_fmt must be one of {', '.join(OUTPUT_FMTS)}, got {fmt!r}")
        if not isinstance(self, FeatureDictNet):
            raise UserError("output_fmt is for a features_only=True backbone; a whole Swin returns logits "
                            "(its forward_intermediates returns NCHW maps)")
        self.output_fmt = Format(fmt)
        return self

    # --- forward -----------------------------------------------------------------------------------
    def _collect(self, x: torch.Tensor):
        """A ``features_only`` backbone's stage maps (timm's FeatureDictNet runs its forward through this),
        in the layout `output_fmt` names: the stages give NHWC, "NCHW" permutes them."""
        out = super()._collect(x)
        if self.output_fmt == Format.NCHW:
            out = type(out)((k, v.permute(0, 3, 1, 2).contiguous()) for k, v in out.items())
        return out

    @torch.no_grad()
    def kept_window_masks(self, x: torch.Tensor) -> List[List[torch.Tensor]]:
        """Which tokens every block keeps for `x` under the current sparsity: per stage, per block, a
        (B, Hs, Ws) bool mask at that stage's token resolution (True = the token's window is computed).

        Runs the stages once without autograd (the head is skipped); the model's outputs and numerics are
        untouched. Blocks 0, 2, ... use the plain window grid (W-MSA), so their masks are unions of whole
        windows; blocks 1, 3, ... use the shifted grid (SW-MSA, windows wrap around the map edges). Call it
        in eval mode to see the windows inference keeps."""
        recorder: List[List[torch.Tensor]] = []
        stages = self.sparse_stages()
        for stage in stages:
            stage._kept_recorder = recorder
        try:
            self.forward_stages(x)
        finally:
            for stage in stages:
                del stage._kept_recorder  # back to the class default (None)
        return recorder

    def forward_stages(self, x: torch.Tensor) -> List[torch.Tensor]:
        """All stage outputs, NHWC (the last one before the final norm)."""
        x = self.patch_embed(x)
        outs = []
        for stage in swin_stages(self):
            x = stage(x)
            outs.append(x)
        return outs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.forward_stages(x)[-1])

    def forward_intermediates(self, x: torch.Tensor, indices=None, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False):
        """Multi-scale stage outputs (NCHW) for dense-prediction heads, like timm's method."""
        from timm.models._features import feature_take_indices
        take, _ = feature_take_indices(len(swin_stages(self)), indices)
        stages = self.forward_stages(x)
        last = len(stages) - 1
        inter = [(self.norm(s) if (norm and i == last) else s).permute(0, 3, 1, 2).contiguous()
                 for i, s in enumerate(stages) if i in take]
        if intermediates_only:
            return inter
        return self.norm(stages[-1]), inter


def family_stages(model: nn.Module, model_class: type, stage_class: type) -> Optional[List[nn.Module]]:
    """The stages a family's `sparsify` patches: those of a `model_class` model, or of its ``features_only``
    backbone (a timm FeatureListNet/FeatureDictNet of patch_embed and `stage_class` children); None for
    anything else."""
    if isinstance(model, model_class):
        return list(model.layers)
    if isinstance(model, FeatureDictNet) and hasattr(model, "patch_embed"):
        stages = swin_stages(model)
        if stages and all(isinstance(s, stage_class) for s in stages):
            return stages
    return None


def sparsifiable(model: nn.Module) -> bool:
    """Whether `model` is a timm Swin V1 or its features_only backbone, sparse or not (what the V1 method
    takes; each family's method says what it takes, and the public `sparsify` asks them)."""
    return family_stages(model, SwinTransformer, SwinTransformerStage) is not None


def patch_stages(model: nn.Module, stages: Sequence[nn.Module], model_mixin: type, stage_mixin: type,
                 sparsity, window_score: Optional[str]) -> SparseSwinTransformer:
    """Put `model_mixin` in front of `model`'s class, `stage_mixin` in front of each stage's and
    `SizedMaskBlock` in front of each block's (in place), then configure it: `sparsity` (None: 0, exactly the
    dense model) and `window_score`. The patched model takes any input size its patch divides: window grids
    and masks are built per size (timm's ``strict_img_size=False`` semantics, see `SizedMaskBlock`)."""
    if window_score is not None:
        check_window_score(window_score)  # before patching: a bad name leaves the model untouched
    model.__class__ = sparse_class(type(model), model_mixin)
    padding = attach_padding_mask(model)
    stride = _patch_stride(model)
    for stage in stages:
        stage.__class__ = sparse_class(type(stage), stage_mixin)
        stage._grid_cache = {}
        if not isinstance(stage.downsample, nn.Identity):
            stride *= 2
        stage._padding, stage._token_stride = padding, stride
        for block in stage.blocks:
            block.__class__ = sparse_class(type(block), SizedMaskBlock)
            block.dynamic_mask = True  # timm asks get_attn_mask for the size at hand (answered from a cache)
    patch_embed = getattr(model, "patch_embed", None)
    if hasattr(patch_embed, "strict_img_size"):
        patch_embed.strict_img_size = False  # any multiple of the patch: the engine follows the size
    return configure(model, 0.0 if sparsity is None else sparsity, window_score)


def _patch_stride(model: nn.Module) -> int:
    """Input pixels per token of the patch embedding (0: unknown, so no padding is detected)."""
    size = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    size = size[0] if isinstance(size, (tuple, list)) else size
    return int(size) if size else 0


def attach_padding_mask(model: nn.Module) -> Optional[PaddingMask]:
    """A `PaddingMask` fed by a forward pre-hook on `model.patch_embed` (None without one)."""
    patch_embed = getattr(model, "patch_embed", None)
    if not isinstance(patch_embed, nn.Module):
        return None
    padding = PaddingMask()
    patch_embed.register_forward_pre_hook(padding)
    return padding


def configure(model: SparseSwinTransformer, sparsity=None, window_score: Optional[str] = None) -> SparseSwinTransformer:
    """Set a sparse Swin's `sparsity` and `window_score` where given (None keeps the current setting)."""
    if sparsity is not None:
        model.set_sparsity(sparsity)
    if window_score is not None:
        model.set_window_score(window_score)
    return model


def sparsify_v1(model: nn.Module, sparsity=None, window_score: Optional[str] = None) -> SparseSwinTransformer:
    """Make a timm SwinTransformer, or its ``features_only=True`` backbone, window-sparse, in place (same
    object, same parameters); the public `sparsevit_cli.sparsify` picks this family's engine by the method
    registry.

    `sparsity` defaults to 0 (exactly the dense model) for a new one and `window_score` to
    `DEFAULT_WINDOW_SCORE`; an already sparse model keeps its settings unless new ones are given (so
    asking a sparse model's method for e.g. its group sizes never resets it)."""
    if isinstance(model, SparseSwinTransformer):
        return configure(model, sparsity, window_score)
    stages = family_stages(model, SwinTransformer, SwinTransformerStage)
    if stages is None:
        raise UserError(f"SparseViT needs a timm SwinTransformer or its features_only=True backbone, "
                        f"got {type(model).__name__}")
    return patch_stages(model, stages, SparseSwinTransformer, SparseSwinStage, sparsity, window_score)


_SPARSE_CLASSES: Dict[Tuple[type, type], type] = {}


def sparse_class(cls: type, mixin: type = SparseSwinTransformer) -> type:
    """`Sparse<cls>`: `mixin` in front of `cls` (one class per pair, cached)."""
    if (cls, mixin) not in _SPARSE_CLASSES:
        _SPARSE_CLASSES[cls, mixin] = type(f"Sparse{cls.__name__}", (mixin, cls),
                                           {"__module__": cls.__module__, "__doc__": mixin.__doc__})
    return _SPARSE_CLASSES[cls, mixin]


# --------------------------------------------------------------------------------------------- shared prefixes
def block_key(counts: Optional[torch.Tensor], grid: WindowGrid) -> Optional[tuple]:
    """A block's key in a `PrefixCache`: the windows it keeps per image (`kept_counts`), or None when it computes
    every window (ratio 0, or a ratio that keeps every window of every image: the block runs on all of them)."""
    if counts is None:
        return None
    kept = tuple(counts.tolist())
    return kept if min(kept) < grid.num_windows else None


def block_windows(key: Optional[tuple], grid: WindowGrid, batch: int) -> int:
    """Windows a block with `key` (`block_key`) computes on a batch of `batch` images (None: every window of
    every image, padding included)."""
    return batch * grid.num_windows if key is None else sum(key)


def take_windows(buf: torch.Tensor, src: torch.Tensor, grid: WindowGrid, kept: Kept) -> torch.Tensor:
    """`buf` (B, H*W + 1, C) with the token rows of its `kept` windows of `grid` copied from `src` (same shape),
    in place (the indices `gather_windows` reads): a block's output on those windows taken from a run of the block
    on more windows of the same input."""
    windows = gather_windows(src, grid, kept)
    return scatter_windows(buf, windows.flat_idx, windows.tokens)


@dataclass
class _Node:
    """A cached state (the input of the next block) of a `PrefixCache`."""

    state: torch.Tensor
    #: the stage's window order ranked on this state (`PrefixCache.ranked`), once asked for
    orders: Optional[Dict[int, torch.Tensor]] = None
    #: the next block run on this state at more windows than the network that ran it keeps, for the networks of
    #: the plan that keep fewer (`PrefixCache.wide_counts`): (the kept count of each image, the output buffer)
    wide: Optional[Tuple[tuple, torch.Tensor]] = None


class PrefixCache:
    """What `shared_prefixes` keeps while a model is run on one image batch under one network after another:
    the state after every block of the network just run (the stage map, or the stage buffer, copied), and
    each stage's window order with the state it was ranked on. A state's key is, per stage up to it, the
    windows every block keeps per image (None for a block that computes every window; otherwise the kept
    count of each image of the batch, which with padding depends on the image's real windows): two networks
    share a state only when every block up to it computed the same windows the same way. A network that keeps
    the same windows as the previous one in its first blocks starts from the deepest state they share. Only the
    current path is kept: storing a state drops every state that is not a prefix of it, so networks run in the
    lexicographic order of their kept-window counts reuse every shared prefix and memory holds one path of
    stage buffers. A new batch (another stage-1 input or padding) clears it.

    Wide execution, with a `plan` (the networks to run, in order; `current` the one running): window attention,
    LayerNorm and MLP act on each window alone, so on one input a block computed on an image's top-K windows
    gives, on its top-k of them (k <= K), what the block computed on the top-k alone gives, bit for bit. A
    pruned block is therefore run once per distinct input, at the per-image maximum of the counts of every
    network still to run that shares this input and prunes this block; each of them takes its own windows' rows
    of that wide output (`take_windows`). The wide output lives with its input's state (one path, as before).
    Blocks that compute every window (key None) run as each network alone runs them (timm's block path), never
    merged with pruned ones. Without a plan every block runs at the network's own counts.

    Across calls (a search's generations, `memory`, a `BatchMemory`): the root state of a batch (the stage-1
    input) with the first block's wide output and window order on it depends on the batch and the weights only,
    not on any config; when the batch changes the one left is offered to `memory`, and a batch found there starts
    from it, so a later generation's networks take their first block's windows from it (when it covers their
    counts; otherwise the block runs wide again and the stored output is replaced).

    Counts, over every forward in the context: `blocks_run` executions of a block on a distinct input (wide or
    not; a network that takes its windows from a wide output runs nothing), `pairs_run` those of a pair's first
    block (W-MSA); `windows_run` the windows those executions computed (a wide one: its wider counts).
    `blocks_asked`, `pairs_asked` and `windows_asked`: what running every network alone runs. With
    `share=False` (`shared_prefixes(model, share=False)`) forwards are not changed, only counted (run = asked)."""

    def __init__(self, validate: Optional[Callable[[Sequence], List[List[float]]]] = None,
                 share: bool = True, memory: Optional[BatchMemory] = None) -> None:
        self.share = share
        self.memory = memory
        self._remembered = False  # whether the current batch's root came from `memory` (it is there already)
        self.states: Dict[tuple, _Node] = {}
        self.batch: Optional[Tuple[torch.Tensor, Optional[torch.Tensor]]] = None
        self.prefix: tuple = ()  # the key of the state the current forward's previous stage left
        self.blocks: tuple = ()  # the current stage's block keys (`resume`)
        self._validate = validate
        self.configs: Optional[List[List[List[float]]]] = None  # the plan (`plan`)
        self.current: Optional[int] = None  # the plan's network now running
        self._stage_keys: Dict[int, List[tuple]] = {}  # per stage: every planned network's block keys (this batch)
        self._peers: List[tuple] = []  # the current stage's block keys of later planned networks sharing its input
        self.blocks_run = self.blocks_asked = self.pairs_run = self.pairs_asked = 0
        self.windows_run = self.windows_asked = 0

    def plan(self, configs: Sequence) -> None:
        """The networks (sparsity configs) the forwards will run, in their order; set `current` to a network's
        position before its forward. Only decides how wide a block runs: any order or forward stays exact."""
        self.configs = [self._validate(c) if self._validate is not None else c for c in configs]
        self._stage_keys, self.current = {}, None

    def start(self, x: torch.Tensor, padding: Optional[torch.Tensor]) -> None:
        """Stage 1's input of a forward and the input's padding pixels (`PaddingMask.pixels`): the same batch
        keeps the states, another one clears them."""
        if self.batch is None or not same_tensors(self.batch, (x, padding)):
            self.finish()
            self.states.clear()
            self._stage_keys = {}
            self.batch = (x.clone(), None if padding is None else padding.clone())
            root = None if self.memory is None else self.memory.find(self.batch)
            self._remembered = root is not None
            if root is not None:
                self.states[self.key_root] = root
        self.prefix = ()

    #: the key of a batch's root state: stage 1's input, before any block
    key_root: tuple = ((),)

    def finish(self) -> None:
        """Offer the current batch's root state to `memory`, when a block ran wide on it (the end of a batch)."""
        root = self.states.get(self.key_root)
        if self.memory is None or self._remembered or root is None or root.wide is None:
            return
        x = self.batch[0]
        if root.state is not x and root.state.shape == x.shape and torch.equal(root.state, x):
            root.state = x  # stage 1 has no downsample: its input is the batch's key, kept once
        self.memory.offer(self.batch, root, lambda node: tensor_bytes(
            [node.state, node.wide[1], *(node.orders or {}).values()]))

    def key(self, i: int) -> tuple:
        """The key of the current stage's state after its downsample and `i` blocks."""
        return self.prefix + (self.blocks[:i],)

    def store(self, i: int, state: torch.Tensor) -> None:
        """Keep `state`, the current stage's state after `i` blocks (not copied: a buffer that later blocks
        write comes copied), dropping every state off its path (with its wide output)."""
        key = self.key(i)
        for old in [k for k in self.states if not _is_prefix(k, key)]:
            del self.states[old]
        self.states[key] = _Node(state)

    def asked(self, keys: Sequence[Optional[tuple]], grids: Sequence[WindowGrid], batch: int) -> None:
        """Count a stage's blocks (`keys`, `block_key`) as a forward of the network alone runs them."""
        self.blocks_asked += len(keys)
        self.pairs_asked += math.ceil(len(keys) / 2)
        self.windows_asked += sum(block_windows(k, g, batch) for k, g in zip(keys, grids))

    def ran(self, i: int, windows: int) -> None:
        """Count an execution of the current stage's block `i` on `windows` windows."""
        self.blocks_run += 1
        self.pairs_run += i % 2 == 0
        self.windows_run += windows

    def count_alone(self, stage: "SparseSwinStage", out: torch.Tensor) -> None:
        """Count a stage that ran as timm's own stage (every window of every block) with output `out`."""
        B, H, W = out.shape[:3]
        grids = stage.grids(H, W, out.device)
        self.asked([None] * len(grids), grids, B)
        for i, g in enumerate(grids):
            self.ran(i, block_windows(None, g, B))

    def resume(self, blocks: Sequence[Optional[tuple]], stage: int = 0,
               plan_keys: Optional[Callable[[Sequence[float]], tuple]] = None) -> Tuple[int, torch.Tensor]:
        """Set the current stage's block keys; the deepest cached state of its path and how many blocks it
        holds (the stage's own forward stored the state after its downsample). `stage`: the stage's index;
        `plan_keys(ratios)`: the block keys of a network with these ratios in this stage on this batch (asked
        once per planned network per stage per batch)."""
        self.blocks = tuple(blocks)
        self._peers = self._later_sharing(stage, plan_keys)
        at = max(i for i in range(len(self.blocks) + 1) if self.key(i) in self.states)
        return at, self.states[self.key(at)].state

    def _later_sharing(self, stage: int, plan_keys) -> List[tuple]:
        """The block keys in `stage` of the planned networks after the current one whose earlier stages kept
        what the current one kept (so they share this stage's input)."""
        if self.configs is None or self.current is None or plan_keys is None:
            return []
        if stage not in self._stage_keys:
            self._stage_keys[stage] = [plan_keys(c[stage]) for c in self.configs]
        earlier = [self._stage_keys.get(t) for t in range(stage)]
        if len(self.prefix) != stage or any(k is None for k in earlier):
            return []
        return [self._stage_keys[stage][j] for j in range(self.current + 1, len(self.configs))
                if all(earlier[t][j] == self.prefix[t] for t in range(stage))]

    def wide_output(self, i: int, own: tuple) -> Optional[torch.Tensor]:
        """The wide output of block `i` on the cached state after `i` blocks, if it covers the windows `own`
        (the current network's kept count per image) keeps; else None."""
        wide = self.states[self.key(i)].wide
        if wide is not None and all(k <= w for k, w in zip(own, wide[0])):
            return wide[1]
        return None

    def wide_counts(self, i: int, own: tuple) -> Optional[tuple]:
        """The per-image counts to run block `i` at on the cached state after `i` blocks: the elementwise
        maximum of `own` and the counts of every later planned network that shares this state and prunes block
        `i` differently; None when there is none (run at `own`, keep nothing)."""
        others = [k[i] for k in self._peers if k[:i] == self.blocks[:i] and k[i] is not None and k[i] != own]
        if not others:
            return None
        return tuple(max(c) for c in zip(own, *others))

    def remembers(self, i: int) -> bool:
        """Whether block `i`'s output on the cached state after `i` blocks goes to `memory` (the batch's root)."""
        return self.memory is not None and self.key(i) == self.key_root

    def keep_wide(self, i: int, counts: tuple, out: torch.Tensor) -> None:
        """Keep block `i`'s output `out`, run at `counts` on the cached state after `i` blocks, with that state."""
        self.states[self.key(i)].wide = (counts, out)

    def ranked(self, i: int, rank: Callable[[torch.Tensor], Dict[int, torch.Tensor]]) -> Dict[int, torch.Tensor]:
        """The window order ranked (`rank`) on the current stage's cached state after `i` blocks, once."""
        node = self.states[self.key(i)]
        if node.orders is None:
            node.orders = rank(node.state)
        return node.orders


def _is_prefix(a: tuple, b: tuple) -> bool:
    """Whether key `a` (per-stage tuples of block keys, the last one partial) is a prefix of `b`."""
    if len(a) > len(b) or a[:-1] != b[: len(a) - 1]:
        return False
    return not a or a[-1] == b[len(a) - 1][: len(a[-1])]


def forward_shared(stage: SparseSwinStage, x: torch.Tensor) -> torch.Tensor:
    """`stage.forward` reading and filling its model's `PrefixCache`: the stage's own `forward_blocks` (the
    same operations in the same order as a forward of the network alone, so the same numbers), minus the
    downsample and the blocks a cached state already holds."""
    cache = stage._prefix_cache
    if stage._prefix_index == 0:
        cache.start(x, None if stage._padding is None else stage._padding.pixels())
    cache.blocks = ()
    if cache.key(0) in cache.states:
        x = cache.states[cache.key(0)].state
    else:
        x = stage.downsample(x)
        cache.store(0, x)
    out = stage.forward_blocks(x, cache)
    cache.prefix = cache.key(len(stage.blocks))
    # a copy: what leaves the stage (to the next stage, a head, a neck) never aliases a cached state
    return out.clone()


@contextlib.contextmanager
def shared_prefixes(model: nn.Module, share: bool = True,
                    memory: Optional[BatchMemory] = None) -> Iterator[PrefixCache]:
    """Within this context, forwards of the sparse Swin `model` (eval mode, any config) on one image batch
    share every prefix of blocks they keep the same windows in: run the networks in the lexicographic order
    of their kept-window counts (`effective`) and each distinct prefix is computed once per batch, its
    output bit-identical to the network's own forward; with the networks given to `PrefixCache.plan` (and
    `current` set before each forward), a pruned block runs once per distinct input, wide enough for every
    network sharing that input. Yields the `PrefixCache` (its execution counts). `share=False`: the forwards
    run as without the context, only counted. `memory`: a `BatchMemory` kept across contexts on the same model
    (a search's generations): each batch's first block run wide is kept there and reused (`PrefixCache`)."""
    cache = PrefixCache(validate=lambda config: validate_sparsity(model, config), share=share, memory=memory)
    stages = [s for s in swin_stages(model) if isinstance(s, SparseSwinStage)]
    for i, stage in enumerate(stages):
        stage._prefix_cache, stage._prefix_index = cache, i
    try:
        yield cache
        cache.finish()
    finally:
        for stage in stages:
            stage.__dict__.pop("_prefix_cache", None)
            stage.__dict__.pop("_prefix_index", None)
