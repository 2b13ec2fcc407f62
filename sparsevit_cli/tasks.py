"""Tasks: what is built around a (sparse) backbone, how it is trained and how it is scored.

A task is an object registered by name in `TASKS` (as timm registers models): the trainer, the
evaluation and the search ask it, and never branch on a task name themselves.

* ``dataset(path, split, img_size, train, **options)``: a split of the user's data in the task's format;
* ``build(backbone, num_classes, **options)``: the task model around the backbone (``num_classes``: the
  data set's ``num_classes``);
* ``collate(items)``: a batch (images, targets) from data-set items; ``to_device(images, targets,
  device)`` moves one;
* ``loss(model, images, targets)``: the scalar training loss (model in train mode);
* ``predict(model, images)``: test-time outputs (model in eval mode);
* ``macs(model, method, config, img_size, batch_size)``: MACs of one test-time forward as executed
  (backbone under the config + neck + heads), what a search budget counts; ``backbone_macs(...)``: the
  backbone's part of it (a budget on the backbone alone, as the paper states its budgets);
* ``metric(dataset)``: an accumulator, ``update(outputs, targets)`` per batch and ``compute()`` once
  (summed over torchrun ranks), returning ``metric_name`` in percent, higher is better;
* ``reset_head(model, num_classes)``: re-initialise, for another number of classes, the layers of the
  task model whose shape depends on it (the rest keeps its trained weights); returns the info line.

Built in: ``classification`` (timm's own head; top-1), ``segmentation`` (semantic: Semantic FPN, the
Panoptic-FPN semantic branch of Kirillov et al. as the Swin / mmsegmentation configs use it; mIoU),
``detection`` (torchvision Faster R-CNN + FPN; COCO box AP) and ``instance_segmentation`` (Mask R-CNN;
COCO mask AP, box AP reported alongside).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import dist
from .data.datasets import IGNORE_INDEX
from .errors import UserError


# --------------------------------------------------------------------------------------------- registry
class Task:
    """Base class and interface of a task (see the module doc)."""

    name: str = ""
    metric_name: str = ""
    #: whether the task's labels are a data set's category ids (a model file's `category_ids`: detection)
    has_category_ids: bool = False

    def dataset(self, path, split: str, img_size: int, train: bool, **options: Any):
        """Image folders (classification) and images/ + masks/ folders (segmentation): `data.build_dataset`."""
        from .data.datasets import build_dataset

        return build_dataset(path, self.name, split, img_size, train, **options)

    def build(self, backbone: nn.Module, num_classes: Optional[int], **options: Any) -> nn.Module:
        raise NotImplementedError

    def collate(self, items: Sequence):
        """Dense tensors for image-level tasks: images (B, 3, H, W) and targets stacked."""
        return torch.stack([it[0] for it in items]), torch.stack([torch.as_tensor(it[1]) for it in items])

    def to_device(self, images, targets, device: torch.device):
        return images.to(device, non_blocking=True), targets.to(device, non_blocking=True)

    def predict(self, model: nn.Module, images):
        return model(images)

    def loss(self, model: nn.Module, images, targets) -> torch.Tensor:
        raise NotImplementedError

    def metric(self, dataset) -> "Metric":
        raise NotImplementedError

    def image_records(self, dataset, outputs, targets) -> List[Any]:
        """One small picklable record per image of a batch, from which `image_scores` recomputes the metric
        on any resample of the images (a search's bootstrap intervals)."""
        raise NotImplementedError

    def image_scores(self, dataset, records: Sequence[Any]) -> "ImageScores":
        raise NotImplementedError

    #: the search fitnesses its `image_scores` offer (the first is the default)
    image_scores_fitnesses: Tuple[str, ...] = ("metric",)

    def macs(self, model: nn.Module, method, config, img_size, batch_size: int = 1) -> int:
        """The backbone's MACs under `config` (its classifier included when the task runs it)."""
        return method.macs(backbone_of(model), config, img_size, batch_size)

    def backbone_macs(self, model: nn.Module, method, config, img_size, batch_size: int = 1) -> int:
        """The sparse backbone's part of `macs` (a classifier's whole model)."""
        return method.macs(backbone_of(model), config, img_size, batch_size)

    def reset_head(self, model: nn.Module, num_classes: int) -> str:
        raise NotImplementedError

    def backbone_input(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """What the sparse backbone reads when the task model runs on `images` (B, 3, H, W): the images."""
        return images

    def export_module(self, model: nn.Module) -> Tuple[nn.Module, Optional[str]]:
        """(what `export` writes for this task's model, a line saying what part that is or None when it is
        the whole model). Input: normalised images (B, 3, S, S)."""
        return model, None


class Metric:
    """Accumulates a task's metric over batches; `compute` combines all torchrun ranks."""

    def update(self, outputs, targets) -> None:
        raise NotImplementedError

    def compute(self) -> float:
        raise NotImplementedError


class ImageScores:
    """Per-image results of one config on a list of images. `metric(weights)` is the task's metric (%) with
    image i counted weights[i] times (None: each once), what a bootstrap resample recomputes; `fitness(kind)`
    a search fitness (the task's `image_scores_fitnesses`)."""
    #: recomputing the metric is expensive (a COCOeval): bootstrap it with fewer resamples
    slow: bool = False

    def __len__(self) -> int:
        raise NotImplementedError

    def metric(self, weights=None) -> float:
        raise NotImplementedError

    def fitness(self, kind: str) -> float:
        if kind == "metric":
            return self.metric()
        raise UserError(f"fitness '{kind}' is not offered for this task")

    def per_image(self, kind: str):
        """The per-image values whose mean is fitness `kind` (an array), or None when the fitness is no mean
        over images (mIoU, COCO AP): what racing bounds."""
        return None


TASKS: Dict[str, Task] = {}


def register_task(task: Task) -> Task:
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise UserError(f"unknown task '{name}' (known: {', '.join(TASKS)})")
    return TASKS[name]


def build_task_model(backbone: nn.Module, task: str, num_classes: Optional[int] = None, **options: Any) -> nn.Module:
    return get_task(task).build(backbone, num_classes, **options)


def backbone_of(model: nn.Module) -> nn.Module:
    """The sparse backbone inside a task model: the model itself (classification), its `backbone`
    (segmentation) or the `body` of a detector's backbone-with-FPN (detection)."""
    model = getattr(model, "module", model)  # DistributedDataParallel
    inner = getattr(model, "backbone", model)
    return getattr(inner, "body", inner)


# --------------------------------------------------------------------------------------------- classification
class _CountMetric(Metric):
    """A metric computed from counts that sum over batches and ranks."""

    def __init__(self, size: int):
        self.counts = torch.zeros(size, dtype=torch.float64)

    def _reduced(self) -> torch.Tensor:
        return dist.all_reduce_tensor(self.counts.to(_collective_device())).cpu()


def _collective_device() -> torch.device:
    """The device collectives run on: the rank's GPU under NCCL, else the CPU."""
    if torch.cuda.is_available() and torch.distributed.is_initialized() and torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class TopOne(_CountMetric):
    def __init__(self):
        super().__init__(2)

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        self.counts += torch.tensor([(logits.argmax(1).cpu() == targets.cpu()).sum().item(), targets.numel()],
                                    dtype=torch.float64)

    def compute(self) -> float:
        correct, total = self._reduced().tolist()
        return correct / max(total, 1) * 100.0


class Classification(Task):
    name, metric_name = "classification", "top1"
    image_scores_fitnesses = ("logprob", "metric")

    def build(self, backbone, num_classes, **options):
        if options:  # the timm model is the whole model: an option here belongs to another task's head
            raise TypeError(f"the classification model takes no task options, got {', '.join(sorted(options))}")
        if num_classes is not None and backbone.num_classes != num_classes:
            backbone.reset_classifier(num_classes)
        return backbone

    def loss(self, model, images, targets):
        return F.cross_entropy(model(images), targets)

    def reset_head(self, model, num_classes):
        from .timm_models import classifier_names

        old = model.num_classes
        model.reset_classifier(num_classes)
        return _reset_line(classifier_names(model)[0], old, num_classes)

    def metric(self, dataset) -> Metric:
        return TopOne()

    def image_records(self, dataset, logits, targets):
        logits, targets = logits.float().cpu(), targets.cpu()
        logprob = F.log_softmax(logits, 1).gather(1, targets[:, None])[:, 0]
        return [(bool(c), float(lp)) for c, lp in zip(logits.argmax(1) == targets, logprob)]

    def image_scores(self, dataset, records):
        return TopOneScores([r[0] for r in records], [r[1] for r in records])


class TopOneScores(ImageScores):
    """Top-1 per image (right or wrong) and the log-probability of the true class, the lower-variance fitness:
    it moves with every image's confidence, not only where a prediction flips."""

    def __init__(self, correct: Sequence[bool], logprob: Sequence[float]):
        import numpy as np
        self.correct = np.asarray(correct, dtype=bool)
        self.logprob = np.asarray(logprob, dtype=np.float64)

    def __len__(self) -> int:
        return len(self.correct)

    def metric(self, weights=None) -> float:
        if len(self.correct) == 0:
            return 0.0
        if weights is None:
            return float(self.correct.mean() * 100.0)
        return float((weights * self.correct).sum() / weights.sum() * 100.0)

    def fitness(self, kind: str) -> float:
        if kind == "logprob":
            return float(self.logprob.mean()) if len(self.logprob) else 0.0
        return super().fitness(kind)

    def per_image(self, kind: str):
        return self.logprob if kind == "logprob" else self.correct * 100.0


# --------------------------------------------------------------------------------------------- segmentation
class MeanIoU(_CountMetric):
    """mIoU (%) over the classes present in prediction or ground truth, from a summed confusion matrix."""

    def __init__(self, num_classes: int):
        super().__init__(num_classes * num_classes)
        self.num_classes = num_classes

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        pred, targets = logits.argmax(1).cpu(), targets.cpu()
        keep = targets != IGNORE_INDEX
        idx = targets[keep] * self.num_classes + pred[keep]
        self.counts += torch.bincount(idx, minlength=self.num_classes ** 2).double()

    def compute(self) -> float:
        return mean_iou(self._reduced().view(self.num_classes, self.num_classes))


def mean_iou(cm: torch.Tensor) -> float:
    """mIoU (%) of a (true, predicted) confusion matrix, over the classes present in either."""
    inter = cm.diag()
    union = cm.sum(0) + cm.sum(1) - inter
    present = union > 0
    return float((inter[present] / union[present]).mean() * 100.0) if present.any() else 0.0


class IoUScores(ImageScores):
    """One confusion matrix per image: mIoU on a resample is the mIoU of the weighted sum."""

    def __init__(self, matrices, num_classes: int):
        import numpy as np
        self.cms = np.asarray(matrices, dtype=np.float64).reshape(-1, num_classes * num_classes)
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self.cms)

    def metric(self, weights=None) -> float:
        total = self.cms.sum(0) if weights is None else weights @ self.cms
        return mean_iou(torch.from_numpy(total).view(self.num_classes, self.num_classes))


def _reset_line(layer: str, old: int, new: int) -> str:
    return f"{layer}: {old} -> {new} classes, re-initialised"


def _conv_gn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.GroupNorm(math.gcd(32, cout), cout),
                         nn.ReLU(inplace=True))


class SemanticFPN(nn.Module):
    """Semantic FPN (Kirillov et al., Panoptic Feature Pyramid Networks, 2019; mmsegmentation's `FPNHead`):
    torchvision's FPN over the backbone's stages (`neck`), then per level conv3x3-GN-ReLU blocks, each
    followed by a 2x bilinear upsample until the finest stage's stride, summed, and a 1x1 classifier;
    the logits are upsampled to the input size. Widths: 256 (FPN) and 128 (head), as in those configs."""

    def __init__(self, backbone: nn.Module, num_classes: int, fpn_channels: int = 256, head_channels: int = 128,
                 dropout: float = 0.1):
        from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork

        super().__init__()
        from .detection.models import any_input_size

        if getattr(backbone, "num_classes", 0):
            backbone.reset_classifier(0)  # never executed under a dense head: no dead weights, no MACs
        any_input_size(backbone)  # segmentation images keep their aspect ratio
        self.backbone = backbone
        chans = [info["num_chs"] for info in backbone.feature_info]
        strides = [info["reduction"] for info in backbone.feature_info]
        self.neck = FeaturePyramidNetwork(chans, fpn_channels)
        self.scale_heads = nn.ModuleList()
        for s in strides:
            ups = int(round(math.log2(s / strides[0])))
            layers: List[nn.Module] = []
            for j in range(max(1, ups)):
                layers.append(_conv_gn_relu(fpn_channels if j == 0 else head_channels, head_channels))
                if ups:
                    layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.scale_heads.append(nn.Sequential(*layers))
        self.dropout = nn.Dropout2d(dropout)
        self.reset_classifier(num_classes, head_channels)

    def reset_classifier(self, num_classes: int, head_channels: Optional[int] = None) -> None:
        """A freshly initialised 1x1 classifier for `num_classes` (the backbone, neck and scale heads keep theirs)."""
        self.classifier = nn.Conv2d(head_channels or self.classifier.in_channels, num_classes, 1)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.backbone.forward_intermediates(x, intermediates_only=True), x.shape[-2:])

    def decode(self, feats: List[torch.Tensor], size) -> torch.Tensor:
        """Logits at `size` from the backbone's stage maps (NCHW)."""
        pyramid = list(self.neck(OrderedDict((str(i), f) for i, f in enumerate(feats))).values())
        out = self.scale_heads[0](pyramid[0])
        for head, level in zip(self.scale_heads[1:], pyramid[1:]):
            # odd stage sizes (a resolution not divisible by 32) round differently: align to the finest
            out = out + F.interpolate(head(level), size=out.shape[-2:], mode="bilinear", align_corners=False)
        logits = self.classifier(self.dropout(out))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


class Segmentation(Task):
    name, metric_name = "segmentation", "miou"

    def build(self, backbone, num_classes, **options):
        from .detection.models import check_hierarchical

        if not num_classes:
            raise UserError("segmentation needs num_classes")
        check_hierarchical(backbone, self.name)
        return SemanticFPN(backbone, num_classes, **options)

    def collate(self, items):
        """Images of one shape stacked; of mixed aspect ratios (`data.datasets.segmentation_size`) padded to
        the batch's largest height and width, images with 0 (the mean colour after normalisation) and masks
        with the ignore index, so padding is neither learnt nor scored."""
        H = max(it[0].shape[-2] for it in items)
        W = max(it[0].shape[-1] for it in items)
        images = torch.zeros(len(items), items[0][0].shape[0], H, W, dtype=items[0][0].dtype)
        masks = torch.full((len(items), H, W), IGNORE_INDEX, dtype=torch.int64)
        for i, (x, y) in enumerate(items):
            images[i, :, : x.shape[-2], : x.shape[-1]] = x
            masks[i, : y.shape[-2], : y.shape[-1]] = torch.as_tensor(y)
        return images, masks

    def loss(self, model, images, targets):
        return F.cross_entropy(model(images), targets, ignore_index=IGNORE_INDEX)

    def reset_head(self, model, num_classes):
        old = model.num_classes
        model.reset_classifier(num_classes)
        return _reset_line("classifier", old, num_classes)

    def metric(self, dataset) -> Metric:
        return MeanIoU(dataset.num_classes)

    def image_records(self, dataset, logits, targets):
        n = logits.shape[1]
        out = []
        for pred, target in zip(logits.argmax(1).cpu(), targets.cpu()):
            keep = target != IGNORE_INDEX
            out.append(torch.bincount(target[keep] * n + pred[keep], minlength=n * n).numpy())
        return out

    def image_scores(self, dataset, records):
        return IoUScores(records, dataset.num_classes)

    @torch.no_grad()
    def macs(self, model, method, config, img_size, batch_size=1):
        """Backbone (analytic, no classifier) + FPN and head, counted as executed on the stage maps."""
        from .detection.cost import count_macs

        H, W = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        model = getattr(model, "module", model)
        cache = model.__dict__.setdefault("_head_macs", {})  # config-independent: once per size
        if (H, W) not in cache:
            p = next(model.parameters())
            feats = model.backbone.forward_intermediates(torch.zeros(1, 3, H, W, device=p.device, dtype=p.dtype),
                                                         intermediates_only=True)
            was_training = model.training
            model.eval()
            try:
                cache[(H, W)] = count_macs(model, lambda: model.decode(feats, (H, W)))
            finally:
                model.train(was_training)
        return method.macs(model.backbone, config, img_size, batch_size) + cache[(H, W)] * batch_size


# --------------------------------------------------------------------------------------------- detection
class CocoAP(Metric):
    """COCO AP (%) from pycocotools' COCOeval over the images seen (results gathered from every rank).
    `compute` returns the task's metric; `compute_all` every AP the task reports (box, and mask);
    `summary` COCOeval's whole standard summary per reported metric (AP50, AP75, APs/m/l, AR@1/10/100, ...),
    per category on request; `coco_results` the COCO results file's entries (the dataset's category ids).
    Gathering and COCOeval run once per metric object (every rank must call the same methods)."""

    def __init__(self, dataset, metric_name: str, reported: Sequence[str]):
        self.dataset, self.metric_name, self.reported = dataset, metric_name, tuple(reported)
        self.results: List[Dict[str, Any]] = []
        self.image_ids: List[int] = []
        self._gathered: Optional[Tuple[List[Dict[str, Any]], List[int]]] = None
        self._evals: Dict[str, Any] = {}

    def update(self, outputs, targets) -> None:
        from .detection.coco import to_coco_results

        ids = [int(t["image_id"]) for t in targets]
        self.image_ids += ids
        self.results += to_coco_results(outputs, ids, self.dataset.category_ids)
        self._gathered, self._evals = None, {}

    def _all_ranks(self) -> Tuple[List[Dict[str, Any]], List[int]]:
        if self._gathered is None:
            gathered = dist.all_gather_object((self.results, self.image_ids))
            self._gathered = ([r for part in gathered for r in part[0]], [i for part in gathered for i in part[1]])
        return self._gathered

    def _eval(self, name: str):
        from .detection.coco import run_cocoeval

        if name not in self._evals:
            results, image_ids = self._all_ranks()
            self._evals[name] = run_cocoeval(self.dataset.coco, results, name, image_ids)
        return self._evals[name]

    def coco_results(self) -> List[Dict[str, Any]]:
        """Every rank's detections as COCO results (xywh boxes, the dataset's category ids, scores, RLE masks
        for instance segmentation), in image order: what a COCO results JSON file holds."""
        return sorted(self._all_ranks()[0], key=lambda r: r["image_id"])

    def summary(self, per_class: bool = False) -> Dict[str, Dict[str, Any]]:
        """{reported metric: COCOeval's summary (`coco.SUMMARY_NAMES`, %; None: no ground truth in that size
        range), plus 'per_class': {category name: AP} with `per_class`}."""
        from .detection.coco import per_class_ap, summary_stats

        out = {}
        for name in self.reported:
            ev = self._eval(name)
            out[name] = summary_stats(ev)
            if per_class:
                out[name]["per_class"] = per_class_ap(ev, self.dataset.coco)
        return out

    def compute_all(self) -> Dict[str, float]:
        # AP is None only where the images seen hold no ground truth at all: nothing to find scores 0
        return {name: stats["ap"] or 0.0 for name, stats in self.summary().items()}

    def compute(self) -> float:
        return self.compute_all()[self.metric_name]


class CocoScores(ImageScores):
    """Each image's detections: AP on a resample is a COCOeval over the resample, every drawn copy of an
    image a new image (its ground truth and detections copied under a new id). A whole COCOeval per
    resample: slow, so searches bootstrap AP with fewer resamples (`search.stats.RESAMPLES_SLOW`)."""

    slow = True

    def __init__(self, dataset, metric_name: str, image_ids: Sequence[int], results: Sequence[List[Dict[str, Any]]]):
        self.dataset, self.metric_name = dataset, metric_name
        self.image_ids = [int(i) for i in image_ids]
        self.results = [list(r) for r in results]

    def __len__(self) -> int:
        return len(self.image_ids)

    def metric(self, weights=None) -> float:
        from .detection.coco import coco_ap, resampled_coco

        if weights is None:
            return coco_ap(self.dataset.coco, [r for rs in self.results for r in rs], self.metric_name,
                           self.image_ids)["ap"] or 0.0
        return coco_ap(*resampled_coco(self.dataset.coco, self.image_ids, self.results, weights),
                       self.metric_name)["ap"] or 0.0


def _check_resizable(model, images, name: str) -> None:
    from .detection.models import check_resizable

    detector = getattr(model, "module", model)  # DistributedDataParallel
    for image in images:
        check_resizable(detector, int(image.shape[-2]), int(image.shape[-1]), name)


class Detection(Task):
    """torchvision Faster R-CNN on the sparse backbone through an FPN; COCO-format data (`CocoDetection`)."""

    name, metric_name = "detection", "box_ap"
    has_category_ids = True
    masks = False
    reported = ("box_ap",)

    def dataset(self, path, split, img_size, train, hflip: Optional[float] = None, **options):
        """A COCO-format split (`CocoDetection.from_root`) at its own resolution: the detector's transform
        resizes. Flipped only when asked (`hflip`), as digits and text are not mirror-invariant."""
        from .detection.coco import CocoDetection

        return CocoDetection.from_root(path, split, masks=self.masks, hflip=(hflip or 0.0) if train else 0.0)

    def build(self, backbone, num_classes, **options):
        from .detection.models import build_detector

        return build_detector(backbone, num_classes, masks=self.masks, **options)

    def collate(self, items):
        from .detection.coco import collate

        return collate(items)

    def to_device(self, images, targets, device):
        return ([im.to(device, non_blocking=True) for im in images],
                [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets])

    def predict(self, model, images):
        _check_resizable(model, images, "an image of the data")
        return model(images)

    def loss(self, model, images, targets):
        _check_resizable(model, images, "an image of the data")
        return sum(model(images, targets).values())

    def metric(self, dataset) -> Metric:
        return CocoAP(dataset, self.metric_name, self.reported)

    def image_records(self, dataset, outputs, targets):
        from .detection.coco import to_coco_results

        out = []
        for output, target in zip(outputs, targets):
            image_id = int(target["image_id"])
            out.append((image_id, to_coco_results([output], [image_id], dataset.category_ids)))
        return out

    def image_scores(self, dataset, records):
        return CocoScores(dataset, self.metric_name, [r[0] for r in records], [r[1] for r in records])

    def reset_head(self, model, num_classes):
        """New class-dependent predictors (torchvision's, + 1 for the background): the box classifier and box
        regressor (and the mask logits); backbone, FPN, RPN and the box (mask) head's trunk keep their weights."""
        from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
        from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor

        roi = model.roi_heads
        old = roi.box_predictor.cls_score.out_features - 1
        roi.box_predictor = FastRCNNPredictor(roi.box_predictor.cls_score.in_features, num_classes + 1)
        layers = "roi_heads.box_predictor"
        if roi.has_mask():
            logits = roi.mask_predictor.conv5_mask
            roi.mask_predictor = MaskRCNNPredictor(logits.in_channels, logits.out_channels, num_classes + 1)
            layers += " and roi_heads.mask_predictor"
        return _reset_line(layers, old, num_classes)

    def backbone_input(self, model, images):
        """The detector's transform of `images`: normalised, resized to its size and padded to its stride."""
        model = getattr(model, "module", model)
        return model.transform(list(images))[0].tensors

    def export_module(self, model):
        """The sparse backbone only: its stage maps (the FPN's input); torchvision's FPN, RPN and RoI heads
        (data-dependent proposal counts and NMS) stay in PyTorch."""
        from .detection.models import BackboneFeatures

        body = backbone_of(model)
        return BackboneFeatures(body).eval(), (
            f"{self.name} model: exported the sparse backbone only ({len(body.feature_info)} multi-scale stage "
            f"maps, the FPN's input); the FPN, RPN and RoI heads run in PyTorch (torchvision)")

    def macs(self, model, method, config, img_size, batch_size=1):
        from .detection.cost import detector_macs

        return detector_macs(getattr(model, "module", model), method, config, img_size, batch_size)

    def backbone_macs(self, model, method, config, img_size, batch_size=1):
        """At the size the backbone runs at after torchvision's resize and padding."""
        from .detection.cost import detector_macs

        return detector_macs(getattr(model, "module", model), method, config, img_size, batch_size,
                             breakdown=True).parts["backbone"]


class InstanceSegmentation(Detection):
    """torchvision Mask R-CNN; mask AP is the metric, box AP is reported alongside."""

    name, metric_name = "instance_segmentation", "mask_ap"
    masks = True
    reported = ("box_ap", "mask_ap")


for _task in (Classification(), Segmentation(), Detection(), InstanceSegmentation()):
    register_task(_task)
