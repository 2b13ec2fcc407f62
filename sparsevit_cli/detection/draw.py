"""Predicted boxes (and instance masks) drawn on an image: one colour per class, masks tinted in it (translucent:
the object stays visible under its mask), labels laid out so that no two overlap (`layout_labels`), and which
predictions to draw (a score threshold, with a fallback for a young model whose scores are all low)."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

#: predictions below this score are not drawn
DEFAULT_SCORE_THRESHOLD = 0.5
#: when no prediction reaches the default threshold (a young model's scores are low), the best few are drawn
#: instead, so that the picture still shows where the model looks
FALLBACK_TOP_K = 5
#: one colour per class (label 1 first), matplotlib's tab10 then tab20's light shades: distinct on photos and on
#: the demo's textured canvases; classes beyond 20 cycle
PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (174, 199, 232), (255, 187, 120),
           (152, 223, 138), (255, 152, 150), (197, 176, 213), (196, 156, 148), (247, 182, 210), (199, 199, 199),
           (219, 219, 141), (158, 218, 229))


def class_colour(label: int) -> Tuple[int, int, int]:
    """The RGB colour (0-255) of a detector label (1..K; 0 is the background)."""
    return PALETTE[(int(label) - 1) % len(PALETTE)]


def select_detections(prediction: Dict[str, torch.Tensor], score_threshold: Optional[float]
                      ) -> Tuple[torch.Tensor, Optional[str]]:
    """(bool mask of the predictions to draw, a one-line note or None). `score_threshold` None: the default
    threshold, or the `FALLBACK_TOP_K` best predictions when none reaches it; a threshold given explicitly is
    kept as it is. The note says when nothing passed, and what the top score was."""
    scores = prediction["scores"].detach().cpu()
    threshold = DEFAULT_SCORE_THRESHOLD if score_threshold is None else float(score_threshold)
    keep = scores >= threshold
    if keep.any():
        return keep, None
    if not len(scores):
        return keep, "the model predicted no object in this image"
    top = float(scores.max())
    if score_threshold is not None:
        return keep, f"no prediction scored >= {threshold:.2f} (top score {top:.3f}); lower --score-threshold"
    keep = torch.zeros_like(keep)
    keep[scores.argsort(descending=True)[:FALLBACK_TOP_K]] = True
    return keep, (f"no prediction scored >= {threshold:.2f} (top score {top:.3f}): drew the {int(keep.sum())} "
                  f"best; --score-threshold sets the cut")


#: how much of a mask's class colour is mixed into its pixels (the rest is the image: the object stays visible)
MASK_ALPHA = 0.4


def tint_masks(rgb: np.ndarray, prediction: Dict[str, torch.Tensor], keep: torch.Tensor,
               alpha: float = MASK_ALPHA) -> np.ndarray:
    """`rgb` (H x W x 3 uint8) with the kept predictions' masks (if any) tinted translucently in their class
    colours: a masked pixel is (1 - alpha) of itself plus alpha of its colour."""
    if "masks" not in prediction or not keep.any():
        return rgb
    from torchvision.utils import draw_segmentation_masks

    image = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)
    masks = prediction["masks"].detach().cpu()[keep][:, 0] > 0.5
    colours = [class_colour(label) for label in prediction["labels"][keep].tolist()]
    return draw_segmentation_masks(image, masks, alpha=alpha, colors=colours).permute(1, 2, 0).numpy()


def detection_labels(prediction: Dict[str, torch.Tensor], keep: torch.Tensor,
                     class_names: Sequence[str]) -> List[Dict]:
    """The kept predictions, best first: {'label', 'class', 'score', 'box' (xyxy), 'colour' (RGB 0-255)}.
    `class_names[label - 1]` names a label (labels start at 1; 0 is the detector's background)."""
    scores = prediction["scores"].detach().cpu()
    order = [int(i) for i in scores.argsort(descending=True) if keep[i]]
    boxes, labels = prediction["boxes"].detach().cpu(), prediction["labels"].detach().cpu()
    return [{"label": int(labels[i]), "class": class_names[int(labels[i]) - 1], "score": float(scores[i]),
             "box": [float(v) for v in boxes[i]], "colour": class_colour(int(labels[i]))} for i in order]


#: a label rectangle: (x0, y0, x1, y1) in pixels, y down; x1, y1 exclusive
Rect = Tuple[float, float, float, float]


def _disjoint(candidates: np.ndarray, placed: List[Rect]) -> np.ndarray:
    """Which of `candidates` (N x 4 rectangles) overlap none of `placed` (touching edges do not overlap)."""
    if not placed:
        return np.ones(len(candidates), dtype=bool)
    p = np.asarray(placed, dtype=np.float64)[None]  # 1 x P x 4
    c = candidates[:, None]  # N x 1 x 4
    apart = (c[..., 2] <= p[..., 0]) | (p[..., 2] <= c[..., 0]) | (c[..., 3] <= p[..., 1]) | (p[..., 3] <= c[..., 1])
    return apart.all(axis=1)


def layout_labels(boxes: Sequence[Sequence[float]], sizes: Sequence[Tuple[float, float]],
                  canvas: Tuple[float, float]) -> List[Optional[Rect]]:
    """Where each box's label goes (boxes best first; `sizes` the labels' (width, height), `canvas` the picture's
    (width, height), all in pixels): a rectangle of the label's size inside the canvas that overlaps no label
    placed before it, or None when no such place exists (that label is left out rather than drawn over another).

    Tried in order: above the box's top-left corner, below its bottom-left, inside its top-left, the same at
    its right edge, then every place on a grid of half a label's height, nearest to the box's top-left first.
    Each rectangle is shifted inside the canvas. So two labels never overlap, whatever the boxes."""
    W, H = float(canvas[0]), float(canvas[1])
    placed: List[Rect] = []
    out: List[Optional[Rect]] = []
    for (x0, y0, x1, y1), (w, h) in zip(boxes, sizes):
        w, h = float(w), float(h)
        if w > W or h > H or w <= 0 or h <= 0:
            out.append(None)
            continue
        near = [(x0, y0 - h), (x0, y1), (x0, y0), (x1 - w, y0 - h), (x1 - w, y1), (x1 - w, y0)]
        step = max(h / 2, 1.0)
        gx, gy = np.meshgrid(np.arange(0.0, W - w + 1e-9, step), np.arange(0.0, H - h + 1e-9, step))
        grid = np.stack([gx.ravel(), gy.ravel()], 1)
        grid = grid[np.argsort(np.hypot(grid[:, 0] - x0, grid[:, 1] - (y0 - h)), kind="stable")]
        corners = np.concatenate([np.asarray(near, dtype=np.float64), grid])
        corners[:, 0] = corners[:, 0].clip(0.0, W - w)
        corners[:, 1] = corners[:, 1].clip(0.0, H - h)
        rects = np.concatenate([corners, corners + [w, h]], axis=1)
        free = np.flatnonzero(_disjoint(rects, placed))
        if not len(free):
            out.append(None)
            continue
        rect = tuple(float(v) for v in rects[free[0]])
        placed.append(rect)
        out.append(rect)
    return out


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def draw_labelled_boxes(rgb: np.ndarray, detections: Sequence[Dict], line_width: Optional[int] = None) -> np.ndarray:
    """`rgb` (H x W x 3 uint8) with `detections` (`detection_labels`, best first) outlined in their class colours
    and labelled "<class> <score>" on a background of that colour, laid out by `layout_labels` (never
    overlapping; a label with no free place is left out)."""
    from PIL import Image, ImageDraw

    image = Image.fromarray(np.ascontiguousarray(rgb))
    draw = ImageDraw.Draw(image)
    H, W = rgb.shape[:2]
    width = line_width or max(1, W // 256)
    font = _font(max(9, min(W, H) // 40))
    texts = [f"{d['class']} {d['score']:.2f}" for d in detections]
    pad = 2
    extents = [draw.textbbox((0, 0), t, font=font) for t in texts]
    sizes = [(e[2] - e[0] + 2 * pad, e[3] - e[1] + 2 * pad) for e in extents]
    for d in detections:
        draw.rectangle([round(v) for v in d["box"]], outline=tuple(d["colour"]), width=width)
    for d, text, e, rect in zip(detections, texts, extents, layout_labels([d["box"] for d in detections], sizes, (W, H))):
        if rect is None:
            continue
        x0, y0, x1, y1 = (int(round(v)) for v in rect)
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=tuple(d["colour"]))
        ink = (0, 0, 0) if luminance(d["colour"]) > 0.6 else (255, 255, 255)
        draw.text((x0 + pad - e[0], y0 + pad - e[1]), text, font=font, fill=ink)
    return np.asarray(image)


def luminance(rgb) -> float:
    """Perceived brightness (0-1) of an RGB colour (0-255): dark ink on light label colours, white on dark."""
    r, g, b = (v / 255.0 for v in rgb)
    return 0.299 * r + 0.587 * g + 0.114 * b


def draw_detections(rgb: np.ndarray, prediction: Dict[str, torch.Tensor], class_names: Sequence[str],
                    score_threshold: Optional[float] = DEFAULT_SCORE_THRESHOLD) -> np.ndarray:
    """`rgb` (H x W x 3 uint8) with the predictions `select_detections` keeps drawn into its pixels: masks
    tinted translucently and boxes outlined in their class colours, labelled "<class> <score>", labels never
    overlapping (`draw_labelled_boxes`)."""
    keep, _ = select_detections(prediction, score_threshold)
    image = tint_masks(rgb, prediction, keep)
    dets = detection_labels(prediction, keep, class_names)
    if not dets:
        return image
    return draw_labelled_boxes(image, dets)
