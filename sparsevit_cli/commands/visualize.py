"""`sparsevit visualize`: draw the windows a SparseViT model keeps in every stage over an image, in the
style of figure 1 of the SparseViT paper, so one can see that objects are kept and background is pruned.

The image goes through the same evaluation transform the data sets use at the model's resolution, and
the picture shows that transformed image (what the model sees). One panel per stage shows the windows
of the stage's *last* block pair (its sparsest one: ratios never decrease inside a stage), on the plain
window grid of its W-MSA block: kept windows outlined, pruned windows dimmed and hatched.

Detection and instance segmentation model files: the image goes through the detector's own transform
(resize to the model's size, normalisation, padding to the backbone's stride), the windows are those the
backbone keeps on that batch, and the first panel also shows the predicted boxes (and masks) scoring at
least the threshold, mapped onto the transformed image: one colour per class, each box labelled with its
class and score on a background in that colour; no two labels overlap (`detection.draw.layout_labels`). The stage
panels show the windows only. Without `--score-threshold`, a young model whose scores all stay below the
default threshold gets its few best predictions drawn, and a line says so (`detection.draw.select_detections`).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from ..io import atomic_write
from ..layers import format_config
from ..errors import UserError
from ..io import check_file, check_output_file

#: output formats matplotlib writes without extra packages (chosen by the --out suffix)
FORMATS = ("png", "pdf", "svg", "jpg", "jpeg")
KEPT_COLOUR = "#ffd400"
PRUNED_ALPHA = 0.62


def load_image(path: str | os.PathLike, img_size: int, task: str = "classification") -> Tuple[torch.Tensor, np.ndarray]:
    """(normalized 3 x H x W tensor for the model: S x S, or for segmentation the image's aspect ratio with
    the longer side S; RGB float H x W x 3 in [0, 1] of that same tensor)."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    from ..data.datasets import classification_transform, read_image, segmentation_image

    pil = read_image(check_file(path, "image"))  # 16-bit PNGs scaled to 8 bit, not clipped to white
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD))
    if task == "segmentation":  # exactly what SegmentationFolder feeds the model
        x = segmentation_image(pil, img_size, mean, std)
    else:  # classification: timm's eval transform (resize + center crop, nothing cut from a square image)
        x = classification_transform(img_size, train=False)(pil)
    rgb = (x * std + mean).clamp_(0, 1).permute(1, 2, 0).numpy()
    return x, rgb


def _window_grid(mask: torch.Tensor, window: Tuple[int, int]) -> np.ndarray:
    """(nh, nw) bool: which windows of the plain grid hold a kept token of `mask` (Hs x Ws)."""
    Hs, Ws = mask.shape
    wh, ww = window
    nh, nw = math.ceil(Hs / wh), math.ceil(Ws / ww)
    padded = torch.zeros(nh * wh, nw * ww, dtype=torch.bool)
    padded[:Hs, :Ws] = mask.cpu()
    return padded.view(nh, wh, nw, ww).any(dim=3).any(dim=1).numpy()


def stage_windows(backbone, masks: List[List[torch.Tensor]]) -> List[Dict[str, Any]]:
    """Per stage: the last block pair's ratio and its kept windows on the plain grid (image 0)."""
    stages = []
    for s, (stage, stage_masks) in enumerate(zip(backbone.layers, masks)):
        pairs = len(backbone.sparsity[s])
        b = 2 * (pairs - 1)  # W-MSA block of the last (sparsest) pair
        window = tuple(int(v) for v in stage.blocks[b].window_size)
        mask = stage_masks[b][0]
        kept = _window_grid(mask, window)
        stages.append({"stage": s + 1, "ratio": float(backbone.sparsity[s][-1]), "pairs": pairs,
                       "tokens": tuple(mask.shape), "window": window, "kept_grid": kept,
                       "kept": int(kept.sum()), "windows": int(kept.size)})
    return stages


def detector_view(model, image: str | os.PathLike):
    """(the backbone's input batch (1, 3, H, W) as the detector's transform builds it, that batch as RGB
    float in [0, 1], the prediction in the batch's pixel coordinates)."""
    import torch.nn.functional as F
    from torchvision.models.detection.transform import resize_boxes

    from ..data.datasets import read_image

    from ..detection.models import check_resizable

    pil = read_image(check_file(image, "image"))
    check_resizable(model, pil.height, pil.width, f"image '{image}'")
    img = torch.from_numpy(np.asarray(pil, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)  # as CocoDetection
    with torch.no_grad():
        batch, _ = model.transform([img])
        pred = {k: v.detach().cpu() for k, v in model([img])[0].items()}
    x = batch.tensors
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in (model.transform.image_mean, model.transform.image_std))
    rgb = (x[0].cpu() * std + mean).clamp_(0, 1).permute(1, 2, 0).numpy()
    h, w = batch.image_sizes[0]
    # predictions are in the original image's pixels; the picture is the resized (and padded) batch
    pred["boxes"] = resize_boxes(pred["boxes"], tuple(img.shape[-2:]), (h, w))
    if "masks" in pred:
        masks = F.interpolate(pred["masks"], size=(h, w), mode="bilinear", align_corners=False)
        pred["masks"] = F.pad(masks, (0, x.shape[-1] - w, 0, x.shape[-2] - h))
    return x, rgb, pred


def _draw_detections(ax, fig, detections: List[Dict[str, Any]]) -> List[Tuple[float, float, float, float]]:
    """Boxes outlined in their class colours and labelled "<class> <score>" on a background of that colour,
    best first, where `detection.draw.layout_labels` puts them: no two labels overlap (a label with no free
    place in the panel is left out). Returns the label rectangles drawn (x0, y0, x1, y1 in image pixels)."""
    from matplotlib.patches import Rectangle

    from ..detection.draw import luminance, layout_labels

    renderer = fig.canvas.get_renderer()
    panel = ax.get_window_extent(renderer)
    (left, right), (bottom, top) = ax.get_xlim(), ax.get_ylim()
    per_px = (abs(right - left) / panel.width, abs(bottom - top) / panel.height)  # data units per display pixel
    texts, sizes = [], []
    for d in detections:
        x0, y0, x1, y1 = d["box"]
        colour = tuple(v / 255.0 for v in d["colour"])
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linewidth=1.6))
        text = ax.text(0, 0, f"{d['class']} {d['score']:.2f}", fontsize=7, ha="center", va="center_baseline",
                       color="black" if luminance(d["colour"]) > 0.6 else "white", clip_on=True, zorder=4)
        extent = text.get_window_extent(renderer)
        texts.append(text)
        sizes.append(((extent.width + 4) * per_px[0], (extent.height + 2) * per_px[1]))
    rects = layout_labels([d["box"] for d in detections], sizes, (abs(right - left), abs(bottom - top)))
    drawn = []
    for d, text, rect in zip(detections, texts, rects):
        if rect is None:
            text.remove()
            continue
        x0, y0, x1, y1 = rect
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, facecolor=tuple(v / 255.0 for v in d["colour"]),
                               edgecolor="none", alpha=0.9, zorder=3, label="label"))
        text.set_position(((x0 + x1) / 2, (y0 + y1) / 2))
        drawn.append(rect)
    return drawn


def _draw(rgb: np.ndarray, stages: List[Dict[str, Any]], title: str, out: Path, fmt: str,
          input_title: str = "input", input_rgb: Optional[np.ndarray] = None,
          detections: Optional[List[Dict[str, Any]]] = None) -> None:
    """The picture: the input panel (`input_rgb` if given, e.g. with masks tinted, and `detections` drawn on
    it), then one panel of kept windows per stage over the plain `rgb`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    H, W = rgb.shape[:2]
    n = len(stages) + 1
    fig = Figure(figsize=(3.4 * n, 3.4 * H / W + 1.0), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n, squeeze=False)[0]
    axes[0].imshow(rgb if input_rgb is None else input_rgb, interpolation="bilinear", extent=(0, W, H, 0))
    axes[0].set_title(f"{input_title} · {W}×{H} px\n(as the model sees it)", fontsize=10)
    for ax, st in zip(axes[1:], stages):
        ax.imshow(rgb, interpolation="bilinear", extent=(0, W, H, 0))
        kept = st["kept_grid"]
        Hs, Ws = st["tokens"]
        wh, ww = st["window"]
        sy, sx = H / Hs, W / Ws  # pixels per token
        overlay = np.zeros(kept.shape + (4,), dtype=np.float32)
        overlay[~kept, 3] = PRUNED_ALPHA
        nh, nw = kept.shape
        # the grid may overhang the map when padded: extent in pixels of the padded window grid
        ax.imshow(overlay, interpolation="nearest", extent=(0, nw * ww * sx, nh * wh * sy, 0))
        for i in range(nh):
            for j in range(nw):
                x0, y0 = j * ww * sx, i * wh * sy
                w, h = min(ww, Ws - j * ww) * sx, min(wh, Hs - i * wh) * sy
                if kept[i, j]:
                    ax.add_patch(Rectangle((x0, y0), w, h, fill=False, edgecolor=KEPT_COLOUR, linewidth=1.3))
                else:
                    ax.add_patch(Rectangle((x0, y0), w, h, fill=False, edgecolor=(1, 1, 1, 0.35),
                                           linewidth=0, hatch="///"))
        pair = f" (block pair {st['pairs']}/{st['pairs']})" if st["pairs"] > 1 else ""
        ax.set_title(f"stage {st['stage']} · {st['ratio']:.0%} pruned\n"
                     f"{st['kept']}/{st['windows']} windows kept{pair}", fontsize=10)
    for ax in axes:
        ax.set_xlim(0, W)
        ax.set_ylim(H, 0)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    if detections:  # after the layout: labels are placed where they will be drawn
        _draw_detections(axes[0], fig, detections)

    atomic_write(out, lambda f: fig.savefig(f, format=fmt), binary=True, what="picture")


def visualize_windows(checkpoint: str | os.PathLike, image: str | os.PathLike, out: str | os.PathLike,
                      config: Optional[str | os.PathLike] = None, img_size: Optional[int] = None,
                      score_threshold: Optional[float] = None) -> Dict[str, Any]:
    """Draw the kept windows of every stage of a SparseViT model file over `image` into `out`; for a
    detector, its predictions scoring at least `score_threshold` too.

    Returns {"out", "img_size", "sparsity", "stages": [{"stage", "ratio", "kept", "windows", ...}]} and, for
    a detector, "detections": [{"label", "class", "score", "box"}] (those drawn)."""
    from ..io import read_sparsity_file
    from ..methods import get_method
    from ..model_file import load_model_file, read_model_meta
    from ..swin.method import SparseViT
    from ..detection.draw import DEFAULT_SCORE_THRESHOLD, detection_labels, select_detections, tint_masks
    from ..tasks import Detection, backbone_of, get_task

    # the picture must not land on an input (visualize --out photo.png --image photo.png)
    out = check_output_file(out, inputs={"--image": image, "--checkpoint": checkpoint, "--config": config})
    if score_threshold is not None and not 0.0 <= float(score_threshold) <= 1.0:  # NaN fails too
        raise UserError(f"--score-threshold must be a score in [0, 1], got {score_threshold}")
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise UserError(f"output '{out}' needs one of the suffixes {', '.join('.' + f for f in FORMATS)}")
    # the header, the options and the image first: a wrong file or a typo should not cost a model load
    meta = read_model_meta(checkpoint)
    if not isinstance(get_method(meta.method), SparseViT):  # window pruning: Swin and Swin V2 (a subclass)
        raise UserError(f"'{checkpoint}' is a {meta.method} model file; visualize draws the windows "
                        f"of SparseViT (Swin, Swin V2) models only")
    size = meta.resolve_img_size(img_size)
    cfg = read_sparsity_file(config) if config is not None else None
    check_file(image, "image")
    model, _, meta = load_model_file(checkpoint, cfg)
    backbone = backbone_of(model)
    detections, note, input_rgb = None, None, None
    if isinstance(get_task(meta.task), Detection):  # instance segmentation too (a subclass)
        names = meta.class_names or [str(i) for i in range(1, (meta.num_classes or 0) + 1)]
        x, rgb, pred = detector_view(model, image)
        keep, note = select_detections(pred, score_threshold)
        detections = detection_labels(pred, keep, names)
        input_rgb = tint_masks((rgb * 255).round().astype(np.uint8), pred, keep).astype(np.float32) / 255.0
        input_title = (f"{len(detections)} best detections (none ≥ {DEFAULT_SCORE_THRESHOLD:.2f})"
                       if note and detections else f"{len(detections)} detections ≥ "
                       f"{DEFAULT_SCORE_THRESHOLD if score_threshold is None else float(score_threshold):.2f}")
    else:
        x, rgb = load_image(image, size, meta.task)
        x = x.unsqueeze(0)
        input_title = "input"

    masks = backbone.kept_window_masks(x)
    stages = stage_windows(backbone, masks)
    kept = sum(st["kept"] for st in stages)
    title = f"{meta.model} · sparsity {format_config(backbone.sparsity)} · kept windows outlined, pruned dimmed"
    _draw(rgb, stages, title, out, "jpeg" if fmt == "jpg" else fmt, input_title, input_rgb, detections)
    result = {"out": str(out), "img_size": size, "sparsity": backbone.sparsity, "kept_total": kept,
              "stages": [{k: v for k, v in st.items() if k != "kept_grid"} for st in stages]}
    if detections is not None:
        result["detections"] = [{"label": d["label"], "class": d["class"], "score": d["score"],
                                 "category_id": meta.category_ids[d["label"] - 1] if meta.category_ids else None,
                                 "box": [round(v, 1) for v in d["box"]]} for d in detections]
        if note:
            result["note"] = note
    return result
