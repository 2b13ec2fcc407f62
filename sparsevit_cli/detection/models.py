"""torchvision Faster R-CNN / Mask R-CNN on a (sparse) timm Swin backbone, through an FPN.

The backbone's stage outputs (`forward_intermediates`, NCHW, strides 4-32) feed torchvision's
`FeaturePyramidNetwork` with a max-pooled extra level, exactly like torchvision's `BackboneWithFPN`
does for a ResNet; the detectors themselves are torchvision's, unchanged. The sparse Swin prunes
windows inside its stages; the neck and heads run dense on the stage maps it returns.

Plain ViTs (PSViT) are refused: they have one stride-16 map and no stages, and a simple feature pyramid
(ViTDet) on top of token pruning is not built here.
"""
from __future__ import annotations

import math

from collections import OrderedDict
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from ..errors import UserError

#: FPN width (torchvision's and the Swin Mask R-CNN configs' 256)
FPN_CHANNELS = 256
#: torchvision's head sizes (its FasterRCNN / MaskRCNN defaults): the box head's two-layer MLP width and the
#: mask head's 3x3 convolutions (count and width; the mask predictor's upsampling keeps that width)
BOX_REPRESENTATION_SIZE = 1024
MASK_HEAD_CONVS = 4
MASK_HEAD_CHANNELS = 256
#: anchor aspect ratios (h / w) per location, torchvision's
ANCHOR_ASPECT_RATIOS = (0.5, 1.0, 2.0)


def check_hierarchical(backbone: nn.Module, task: str) -> None:
    """One line refusing a backbone without multi-scale stages (a plain ViT) for a dense-prediction head."""
    if not hasattr(backbone, "forward_intermediates") or not getattr(backbone, "feature_info", None):
        raise UserError(f"task '{task}' needs a whole timm backbone with multi-scale stages (a Swin created "
                        f"without features_only), got {type(backbone).__name__}")
    reductions = {info["reduction"] for info in backbone.feature_info}
    if len(reductions) < 2:
        raise UserError(f"task '{task}' needs a hierarchical backbone with multi-scale stages (Swin); "
                        f"{type(backbone).__name__} is a plain ViT, which is supported for classification only")


def any_input_size(body: nn.Module) -> None:
    """Make a timm backbone take any input size that its patch divides, as timm's dynamic-size models
    (``strict_img_size=False``) do: no input-size check, and Swin blocks build their shifted-window mask for the
    map at hand (``dynamic_mask``) instead of keeping the static mask of img_size. A sparse Swin already does
    both (its blocks answer from a per-size cache); a plain timm body under a dense-prediction head needs it for
    oblong and padded batches."""
    if hasattr(getattr(body, "patch_embed", None), "strict_img_size"):
        body.patch_embed.strict_img_size = False
    for module in body.modules():
        if hasattr(module, "dynamic_mask"):
            module.dynamic_mask = True


class SwinFPN(nn.Module):
    """A timm hierarchical backbone (`body`) + torchvision FPN (`fpn`), the backbone interface torchvision's
    detectors expect: forward(images) -> OrderedDict of NCHW maps, and `out_channels`."""

    def __init__(self, body: nn.Module, out_channels: int = FPN_CHANNELS):
        super().__init__()
        # the classifier is never executed under a detector: drop it (its weights would only be dead state,
        # and the backbone MAC count would include it)
        if getattr(body, "num_classes", 0):
            body.reset_classifier(0)
        any_input_size(body)  # torchvision's transform resizes and pads every batch to its own size
        self.body = body
        self.fpn = FeaturePyramidNetwork([info["num_chs"] for info in body.feature_info], out_channels,
                                         extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        feats = self.body.forward_intermediates(x, intermediates_only=True)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))


class BackboneFeatures(nn.Module):
    """A detector's sparse backbone alone, as export writes it: normalised images (B, 3, H, W) in, the
    stage maps the FPN reads out (a tuple of NCHW tensors, strides 4-32). `body` keeps its name, so
    `tasks.backbone_of` finds the sparse backbone inside."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor):
        return tuple(self.body.forward_intermediates(x, intermediates_only=True))


def _mean_std(body: nn.Module):
    cfg = getattr(body, "pretrained_cfg", None) or {}
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    return list(cfg.get("mean", IMAGENET_DEFAULT_MEAN)), list(cfg.get("std", IMAGENET_DEFAULT_STD))


def _levels(backbone: nn.Module, masks: bool, anchor_sizes=None,
            aspect_ratios=ANCHOR_ASPECT_RATIOS) -> Dict[str, nn.Module]:
    """Anchors and RoI poolers for the backbone's own pyramid: torchvision's defaults assume four
    stages (strides 4-32, anchors 32-512 px); a backbone with other stages gets one anchor size per
    level, 8x the level's stride (torchvision's ratio), and RoI pooling over all stage levels.
    `anchor_sizes`: one size (px) or a list of sizes per level instead, finest level first."""
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign

    strides = [info["reduction"] for info in backbone.feature_info]
    strides.append(strides[-1] * 2)  # LastLevelMaxPool's extra level
    if anchor_sizes is None:
        sizes = tuple((8 * s,) for s in strides)
    else:
        try:
            sizes = tuple(tuple(int(v) for v in (a if isinstance(a, (list, tuple)) else [a])) for a in anchor_sizes)
        except (TypeError, ValueError):
            sizes = ()
        if len(sizes) != len(strides) or not all(sizes) or min(min(a) for a in sizes) < 1:
            raise UserError(f"task_options.anchor_sizes needs {len(strides)} entries of sizes >= 1 px, one per "
                            f"pyramid level (strides {', '.join(map(str, strides))}), got {list(anchor_sizes)}")
    try:
        ratios = tuple(float(r) for r in aspect_ratios)
    except (TypeError, ValueError):
        ratios = ()
    if not ratios or not min(ratios) > 0:
        raise UserError(f"task_options.anchor_aspect_ratios must be positive numbers, got {list(aspect_ratios)}")
    names = [str(i) for i in range(len(backbone.feature_info))]
    levels = {"rpn_anchor_generator": AnchorGenerator(sizes, (ratios,) * len(strides)),
              "box_roi_pool": MultiScaleRoIAlign(names, output_size=7, sampling_ratio=2)}
    if masks:
        levels["mask_roi_pool"] = MultiScaleRoIAlign(names, output_size=14, sampling_ratio=2)
    return levels


def _heads(fpn_channels: int, num_classes: int, masks: bool, box_representation_size: int,
           mask_head_convs: int, mask_head_channels: int) -> Dict[str, nn.Module]:
    """The RoI heads and predictors when a head is sized away from torchvision's defaults (none otherwise: a
    default detector is then exactly torchvision's, its random initialisation included). Same modules, same
    state-dict names: TwoMLPHead + FastRCNNPredictor, MaskRCNNHeads + MaskRCNNPredictor."""
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

    for name, value in (("box_representation_size", box_representation_size),
                        ("mask_head_convs", mask_head_convs), ("mask_head_channels", mask_head_channels)):
        if int(value) < 1:
            raise UserError(f"task_options.{name} must be >= 1, got {value}")
    if box_representation_size == BOX_REPRESENTATION_SIZE and (
            not masks or (mask_head_convs, mask_head_channels) == (MASK_HEAD_CONVS, MASK_HEAD_CHANNELS)):
        return {}
    # torchvision takes either num_classes or the predictors: with one head resized, all are given here
    heads = {"box_head": TwoMLPHead(fpn_channels * 7 * 7, box_representation_size),  # 7: box_roi_pool's size
             "box_predictor": FastRCNNPredictor(box_representation_size, num_classes)}
    if masks:
        heads["mask_head"] = MaskRCNNHeads(fpn_channels, [mask_head_channels] * mask_head_convs, 1)
        heads["mask_predictor"] = MaskRCNNPredictor(mask_head_channels, mask_head_channels, num_classes)
    return heads


def _sizes(name: str, value) -> Tuple[int, ...]:
    """A resize side (or, for `min_size`, a list of them) as positive ints; one line naming the option else."""
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        raise UserError(f"task_options.{name} must be a positive number of pixels"
                        f"{' or a list of them' if name == 'min_size' else ''}, got {value!r}")
    return tuple(values)


def check_resizable(model: nn.Module, height: int, width: int, name: str) -> None:
    """One line when the detector's transform would resize an image of height x width to nothing: it scales
    the shorter side to min_size unless the longer side would pass max_size, so a very elongated image
    (10000 x 10) gets a shorter side under one pixel."""
    transform = getattr(model, "transform", None)
    if transform is None or not height or not width:
        return
    short, long = min(height, width), max(height, width)
    scale = min(float(transform.min_size[-1]) / short, float(transform.max_size) / long)
    if math.floor(short * scale) < 1:
        raise UserError(f"{name} is {width} x {height} px: the detector resizes its longer side to "
                        f"{transform.max_size} px, which leaves its shorter side under 1 px; crop it first")


def build_detector(backbone: nn.Module, num_classes: int, masks: bool = False, img_size: Optional[int] = None,
                   fpn_channels: int = FPN_CHANNELS, min_size=None, max_size: Optional[int] = None,
                   size_divisible: Optional[int] = None, box_representation_size: int = BOX_REPRESENTATION_SIZE,
                   mask_head_convs: int = MASK_HEAD_CONVS, mask_head_channels: int = MASK_HEAD_CHANNELS,
                   anchor_sizes: Optional[Sequence] = None,
                   anchor_aspect_ratios: Sequence[float] = ANCHOR_ASPECT_RATIOS, **detector_args) -> nn.Module:
    """Faster R-CNN (or Mask R-CNN with `masks`) for `num_classes` object categories (background is added)
    on `backbone`. Other keyword arguments go to torchvision's FasterRCNN / MaskRCNN (e.g.
    `rpn_post_nms_top_n_test`, `box_batch_size_per_image`, `rpn_positive_fraction`).

    Images keep their aspect ratio: torchvision's transform scales each so its shorter side is `min_size`
    unless its longer side would pass `max_size`, then pads the batch to a common size, a multiple of
    `size_divisible`. `min_size` may be a list (multi-scale training: each training image draws one;
    evaluation uses the last, as torchvision does). `img_size` sets both sides at once, and defaults to
    the backbone's own image size: every image then fits an img_size square canvas, which is the size a MAC
    budget is stated at (`detection.cost`). `size_divisible` defaults to the backbone's largest stride
    (patch x 2^(stages - 1), 32 for Swin-T): every stage map is then exact and the anchors sit on the stage
    grid; the sparse engine pads each stage to whole windows itself, as timm does, and runs any size.

    Heads sized to the backbone: `fpn_channels`, `box_representation_size` (the box head's MLP width),
    `mask_head_convs` and `mask_head_channels` (the mask head's 3x3 convolutions), `anchor_sizes` (per pyramid
    level) and `anchor_aspect_ratios`; torchvision's sizes by default."""
    from torchvision.models.detection import FasterRCNN, MaskRCNN

    task = "instance_segmentation" if masks else "detection"
    check_hierarchical(backbone, task)
    if not num_classes or num_classes < 1:
        raise UserError(f"task '{task}' needs at least one object category, got {num_classes}")
    for name, value in dict(detector_args, fpn_channels=fpn_channels).items():
        if isinstance(value, int) and not isinstance(value, bool) and value < 1:  # torchvision's counts and sizes
            raise UserError(f"task_options.{name} must be >= 1, got {value}")
    if img_size is None:
        size = getattr(getattr(backbone, "patch_embed", None), "img_size", None) or (800, 800)
        img_size = int(max(size))
    min_sizes = _sizes("min_size", img_size if min_size is None else min_size)
    max_size = _sizes("max_size", img_size if max_size is None else max_size)[0]
    if size_divisible is None:
        size_divisible = max(info["reduction"] for info in backbone.feature_info)
    size_divisible = _sizes("size_divisible", size_divisible)[0]
    mean, std = _mean_std(backbone)
    heads = _heads(fpn_channels, num_classes + 1, masks, box_representation_size, mask_head_convs, mask_head_channels)
    args = dict(min_size=min_sizes, max_size=max_size, size_divisible=size_divisible, image_mean=mean,
                image_std=std, **_levels(backbone, masks, anchor_sizes, anchor_aspect_ratios), **heads)
    args.update(detector_args)
    cls = MaskRCNN if masks else FasterRCNN
    return cls(SwinFPN(backbone, fpn_channels), num_classes=None if heads else num_classes + 1, **args)
