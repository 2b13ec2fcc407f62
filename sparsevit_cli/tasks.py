"""Task heads around a (sparse) backbone: classification uses timm's own head, segmentation a light
FPN-style head on the multi-scale stage outputs."""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import UserError


class SegmentationModel(nn.Module):
    """Light semantic-segmentation head: a 1x1 projection of every stage output to a common width,
    upsampled to the finest stage and summed, then a 3x3 conv and a classifier, upsampled to the input."""

    def __init__(self, backbone: nn.Module, num_classes: int, width: int = 64):
        super().__init__()
        self.backbone = backbone
        chans = [info["num_chs"] for info in backbone.feature_info]
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in chans)
        self.fuse = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True))
        self.classifier = nn.Conv2d(width, num_classes, 1)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone.forward_intermediates(x, intermediates_only=True)
        size = feats[0].shape[-2:]
        fused = sum(F.interpolate(lat(f), size=size, mode="bilinear", align_corners=False) if i else lat(f)
                    for i, (lat, f) in enumerate(zip(self.lateral, feats)))
        logits = self.classifier(self.fuse(fused))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _classification(backbone: nn.Module, num_classes: Optional[int]) -> nn.Module:
    if num_classes is not None and backbone.num_classes != num_classes:
        backbone.reset_classifier(num_classes)
    return backbone


def _segmentation(backbone: nn.Module, num_classes: Optional[int]) -> nn.Module:
    if not num_classes:
        raise UserError("segmentation needs num_classes")
    return SegmentationModel(backbone, num_classes)


TASKS: Dict[str, Callable[[nn.Module, Optional[int]], nn.Module]] = {
    "classification": _classification,
    "segmentation": _segmentation,
}


def build_task_model(backbone: nn.Module, task: str, num_classes: Optional[int] = None) -> nn.Module:
    if task not in TASKS:
        raise UserError(f"unknown task '{task}' (known: {', '.join(TASKS)})")
    return TASKS[task](backbone, num_classes)


def backbone_of(model: nn.Module) -> nn.Module:
    """The sparse backbone inside a task model (the model itself for classification)."""
    model = getattr(model, "module", model)  # DistributedDataParallel
    return getattr(model, "backbone", model)
