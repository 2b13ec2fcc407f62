"""Predicted boxes (and instance masks) drawn on an image, with torchvision's drawing utilities."""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np
import torch

#: predictions below this score are not drawn
DEFAULT_SCORE_THRESHOLD = 0.5


def draw_detections(rgb: np.ndarray, prediction: Dict[str, torch.Tensor], class_names: Sequence[str],
                    score_threshold: float = DEFAULT_SCORE_THRESHOLD) -> np.ndarray:
    """`rgb` (H x W x 3 uint8) with every prediction scoring at least `score_threshold` drawn: its mask
    (if any) tinted, its box outlined and labelled "<class> <score>". `class_names[label - 1]` names a
    label (labels start at 1; 0 is the detector's background)."""
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    keep = prediction["scores"].detach().cpu() >= score_threshold
    image = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)
    if "masks" in prediction and keep.any():
        masks = prediction["masks"].detach().cpu()[keep][:, 0] > 0.5
        image = draw_segmentation_masks(image, masks, alpha=0.4, colors="yellow")
    labels = [f"{class_names[int(label) - 1]} {float(score):.2f}"
              for label, score in zip(prediction["labels"][keep].tolist(), prediction["scores"][keep].tolist())]
    if labels:
        image = draw_bounding_boxes(image, prediction["boxes"].detach().cpu()[keep], labels=labels,
                                    colors="red", width=max(1, rgb.shape[1] // 256))
    return image.permute(1, 2, 0).numpy()
