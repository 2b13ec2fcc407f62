"""MACs of a torchvision detector on a sparse backbone, counted as executed at test time.

* backbone: the model family's exact analytic count for the config (`Method.macs`, e.g. `swin_macs`);
  the detector's backbone carries no classifier (`SwinFPN` drops it), so none is counted;
* neck (FPN), RPN head, box head + predictor, mask head + predictor: every convolution and linear layer
  they execute, counted by forward hooks on one run of those modules at the backbone's output shapes.
  The box head runs on the RPN's test-time proposal count (`post_nms_top_n`, 1000 by default) and the
  mask head on `detections_per_img` (100): both are torchvision's caps, reached on real high-resolution
  images (RPN) or an upper bound (mask head, which runs on the kept detections only).

Reference size (the one place this is decided): a count is for one image of ``img_size`` square (the model
file's img_size unless a command is given another), passed through the detector's own test-time resize and
padding. With the default resize (``min_size = max_size = img_size``, `models.build_detector`) that is the
img_size square canvas that every image fits, whatever its aspect ratio: an oblong image costs less. A search
budget and `measure` are stated at this size.

Same convention as the backbone count and fvcore: a multiply-accumulate of a matrix product or a
convolution is one MAC; normalisations, activations, RoIAlign, NMS and anchor decoding are not counted.
The neck and heads do not depend on the sparsity config (they run dense on the stage maps), so their
count is computed once per image size and cached.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, Tuple

import torch
import torch.nn as nn

from ..layers import Config, MacBreakdown


def _layer_macs(module: nn.Module, inputs, output) -> int:
    if isinstance(module, nn.ConvTranspose2d):
        kh, kw = module.kernel_size
        return inputs[0].numel() * (module.out_channels // module.groups) * kh * kw
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return output.numel() * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    return 0


class _Counter:
    """Sums `_layer_macs` over every conv / linear layer that runs under `root` while active."""

    def __init__(self, root: nn.Module):
        self.total = 0
        self.handles = [m.register_forward_hook(self._hook) for m in root.modules()
                        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]

    def _hook(self, module, inputs, output):
        self.total += _layer_macs(module, inputs, output)

    def close(self) -> int:
        for h in self.handles:
            h.remove()
        return self.total


def count_macs(root: nn.Module, fn) -> int:
    """MACs of the conv / linear layers under `root` that run while `fn()` runs (as executed)."""
    counter = _Counter(root)
    try:
        fn()
    finally:
        total = counter.close()
    return total


@torch.no_grad()
def neck_and_head_macs(detector: nn.Module, img_size) -> Tuple[Tuple[int, int], Dict[str, int]]:
    """(the (H, W) the backbone runs at, after the detector's resize and padding; MACs of the FPN and every
    head by part) for one input image of `img_size` (int or (H, W)). Cached on the detector per size."""
    H, W = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    cache = detector.__dict__.setdefault("_neck_and_head_macs", {})
    if (H, W) in cache:
        return cache[(H, W)]
    was_training = detector.training
    detector.eval()
    try:
        p = next(detector.parameters())
        images, _ = detector.transform([torch.zeros(3, H, W, device=p.device, dtype=p.dtype)])
        executed = tuple(images.tensors.shape[-2:])
        stages = detector.backbone.body.forward_intermediates(images.tensors, intermediates_only=True)
        stages = OrderedDict((str(i), s) for i, s in enumerate(stages))
        parts: Dict[str, int] = {}
        fpn = detector.backbone.fpn
        feats = {}
        parts["neck"] = count_macs(fpn, lambda: feats.update(fpn(stages)))
        rpn_head = detector.rpn.head
        parts["rpn"] = count_macs(rpn_head, lambda: rpn_head(list(feats.values())))
        roi = detector.roi_heads
        C = detector.backbone.out_channels

        def run_box():
            n = detector.rpn._post_nms_top_n["testing"]
            size = roi.box_roi_pool.output_size
            size = (size, size) if isinstance(size, int) else tuple(size)
            roi.box_predictor(roi.box_head(torch.zeros(n, C, *size, device=p.device, dtype=p.dtype)))
        parts["box_head"] = count_macs(roi, run_box)
        if roi.has_mask():
            def run_mask():
                size = roi.mask_roi_pool.output_size
                size = (size, size) if isinstance(size, int) else tuple(size)
                x = torch.zeros(roi.detections_per_img, C, *size, device=p.device, dtype=p.dtype)
                roi.mask_predictor(roi.mask_head(x))
            parts["mask_head"] = count_macs(roi, run_mask)
    finally:
        detector.train(was_training)
    cache[(H, W)] = executed, parts
    return executed, parts


def detector_macs(detector: nn.Module, method, config: Config, img_size, batch_size: int = 1,
                  breakdown: bool = False):
    """MACs of one test-time forward of `detector` (backbone under `config` + neck + heads) for
    `batch_size` images of `img_size`; a MacBreakdown by part with `breakdown`."""
    executed, parts = neck_and_head_macs(detector, img_size)
    macs = MacBreakdown()
    macs.add("backbone", method.macs(detector.backbone.body, config, executed, batch_size))
    for name, value in parts.items():
        macs.add(name, value * batch_size)
    return macs if breakdown else macs.total
