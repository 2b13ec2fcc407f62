"""Predicted boxes (and instance masks) drawn on an image: one colour per class, masks tinted in it, and which
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


def tint_masks(rgb: np.ndarray, prediction: Dict[str, torch.Tensor], keep: torch.Tensor,
               alpha: float = 0.45) -> np.ndarray:
    """`rgb` (H x W x 3 uint8) with the kept predictions' masks (if any) tinted in their class colours."""
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


def draw_detections(rgb: np.ndarray, prediction: Dict[str, torch.Tensor], class_names: Sequence[str],
                    score_threshold: Optional[float] = DEFAULT_SCORE_THRESHOLD) -> np.ndarray:
    """`rgb` (H x W x 3 uint8) with the predictions `select_detections` keeps drawn into its pixels: masks
    tinted and boxes outlined in their class colours, labelled "<class> <score>" (torchvision's drawing; the
    `visualize` command draws the labels itself, larger and kept apart)."""
    from torchvision.utils import draw_bounding_boxes

    keep, _ = select_detections(prediction, score_threshold)
    image = tint_masks(rgb, prediction, keep)
    dets = detection_labels(prediction, keep, class_names)
    if not dets:
        return image
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    boxes = torch.tensor([d["box"] for d in dets])
    tensor = draw_bounding_boxes(tensor, boxes, labels=[f"{d['class']} {d['score']:.2f}" for d in dets],
                                 colors=[d["colour"] for d in dets], width=max(1, rgb.shape[1] // 256))
    return tensor.permute(1, 2, 0).numpy()
