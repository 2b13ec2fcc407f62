"""One evaluation for every command: top-1 or mIoU of a model under a config, on a fixed subset of a
data set, sharded over torchrun ranks with exact (summed) counts."""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn as nn

from . import dist
from .data.datasets import IGNORE_INDEX, build_loader, iterate
from .methods import Config, Method
from .tasks import backbone_of


def _classification_counts(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.tensor([(logits.argmax(1) == target).sum().item(), target.numel()], dtype=torch.float64)


def _segmentation_counts(logits: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    pred = logits.argmax(1)
    keep = target != IGNORE_INDEX
    idx = target[keep] * num_classes + pred[keep]
    return torch.bincount(idx.cpu(), minlength=num_classes * num_classes).double()


def _miou(confusion: torch.Tensor, num_classes: int) -> float:
    cm = confusion.view(num_classes, num_classes)
    inter = cm.diag()
    union = cm.sum(0) + cm.sum(1) - inter
    present = union > 0
    return float((inter[present] / union[present]).mean() * 100.0) if present.any() else 0.0


def autocast(device: torch.device, amp: bool):
    if not amp:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16)


def _eval_permutation(n: int) -> List[int]:
    return torch.randperm(n, generator=torch.Generator().manual_seed(0)).tolist()


def search_indices(n: int, k: Optional[int]) -> List[int]:
    """The `k` of `n` images a search scores configs on: a fixed random draw, because image folders list
    their images sorted by class and a prefix would hold a few classes only. All of them when k >= n."""
    if k is None or k >= n:
        return list(range(n))
    return sorted(_eval_permutation(n)[:k])


def held_out_indices(n: int, k: Optional[int]) -> List[int]:
    """The images the search with `k` samples never saw (to report searched configs without selection
    bias); all `n` when the search saw them all (nothing is held out then)."""
    if k is None or k >= n:
        return list(range(n))
    return sorted(_eval_permutation(n)[k:])


@torch.no_grad()
def evaluate(model: nn.Module, method: Method, config: Optional[Config], dataset, task: str, num_classes: int,
             batch_size: int, device: torch.device, max_samples: Optional[int] = None, amp: bool = False,
             indices: Optional[Sequence[int]] = None, num_workers: int = 0) -> float:
    """Top-1 (%) or mIoU (%) of `model` under `config` on `indices` of `dataset`, or on the search subset of
    `max_samples` images (`search_indices`), or on all of it; under torchrun the images are sharded over
    ranks and the counts summed, so every rank gets the same exact number. `num_workers` DataLoader
    workers decode the images."""
    if config is not None:
        method.apply(backbone_of(model), config)
    model.eval()
    if indices is None:
        indices = search_indices(len(dataset), max_samples)
    idx = list(indices)[dist.rank()::dist.world_size()]
    seg = task == "segmentation"
    acc = torch.zeros(num_classes ** 2 if seg else 2, dtype=torch.float64)
    batches = [idx[i: i + batch_size] for i in range(0, len(idx), batch_size)]
    for x, y in iterate(build_loader(dataset, batches, num_workers=num_workers)):
        with autocast(device, amp):
            logits = model(x.to(device)).float().cpu()
        acc += _segmentation_counts(logits, y, num_classes) if seg else _classification_counts(logits, y)
    acc = dist.all_reduce_tensor(acc.to(device)).cpu()
    if seg:
        return _miou(acc, num_classes)
    return float(acc[0] / max(acc[1], 1) * 100.0)
