"""One evaluation for every command and task: the task's metric (top-1, mIoU, COCO box / mask AP) of a
model under a config, on a fixed subset of a data set, sharded over torchrun ranks and combined by the
task's metric (tasks.py holds every metric: one fact, one place)."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from . import dist
from .batch_memory import BatchMemory
from .data.datasets import build_loader, iterate
from .errors import UserError
from .io import ProgressReport
from .methods import Config, Method, shares_prefixes
from .tasks import ImageScores, Metric, Task, backbone_of, get_task


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


@dataclass(frozen=True)
class SearchSplits:
    """The disjoint image sets of a search, fixed by `seed` and the data set's size: `fitness` (what the
    search scores every candidate on), `confirmation` (what its top candidates and the best uniform config
    are re-scored on to pick one) and `rest` (never seen by the search: an unbiased report)."""

    n: int
    seed: int
    fitness: List[int]
    confirmation: List[int]
    rest: List[int]

    def to_dict(self) -> Dict[str, Any]:
        return {"images": self.n, "seed": self.seed, "fitness": list(self.fitness),
                "confirmation": list(self.confirmation)}


def search_splits(n: int, fitness: int, confirmation: int, seed: int = 0) -> SearchSplits:
    """Draw the splits from one seeded permutation of the n images (image folders list images by class, so a
    prefix would hold a few classes only). When fitness + confirmation exceed n, both shrink in proportion
    (each keeps at least one image when n >= 2) and nothing is left over."""
    if fitness < 1 or confirmation < 1:
        raise UserError(f"a search needs at least one fitness and one confirmation image, got {fitness} and "
                        f"{confirmation}")
    if n < 2:
        raise UserError(f"a search needs at least 2 images (one to score on, one to confirm on), the split has {n}")
    if fitness + confirmation > n:
        f = min(n - 1, max(1, round(n * fitness / (fitness + confirmation))))
        fitness, confirmation = f, n - f
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).tolist()
    return SearchSplits(n=n, seed=int(seed), fitness=sorted(perm[:fitness]),
                        confirmation=sorted(perm[fitness:fitness + confirmation]),
                        rest=sorted(perm[fitness + confirmation:]))


@torch.no_grad()
def _batches(model: nn.Module, method: Method, config: Optional[Config], dataset, task: Task, batch_size: int,
             device: torch.device, indices: Sequence[int], amp: bool, num_workers: int,
             memory: Optional[BatchMemory] = None):
    """`model` under `config` over this torchrun rank's share of `indices` (all of them on one process), in
    batches: yields (positions in `indices`, the model's outputs, the targets). `memory`: decoded batches kept
    from one call to the next (`BatchMemory`)."""
    if config is not None:
        method.apply(backbone_of(model), config)
    model.eval()
    positions = list(range(len(indices)))[dist.rank()::dist.world_size()]
    batches = [positions[i: i + batch_size] for i in range(0, len(positions), batch_size)]
    for batch, (x, y) in zip(batches, _loaded(dataset, task, [[indices[p] for p in b] for b in batches],
                                              num_workers, memory)):
        x, y = task.to_device(x, y, device)
        with autocast(device, amp):
            outputs = task.predict(model, x)
        yield batch, outputs, y


def _loaded(dataset, task: Task, batches: List[List[int]], num_workers: int,
            memory: Optional[BatchMemory] = None) -> Iterator[Any]:
    """The collated (x, y) of each batch of dataset indices in `batches`, in order: the ones `memory` holds from
    it, the others read by a DataLoader (and offered to `memory`)."""
    if memory is None:
        yield from iterate(build_loader(dataset, batches, num_workers=num_workers, collate_fn=task.collate))
        return
    kept = [memory.images(tuple(b)) for b in batches]
    missing = [b for b, got in zip(batches, kept) if got is None]
    fresh = iterate(build_loader(dataset, missing, num_workers=num_workers, collate_fn=task.collate)) \
        if missing else iter(())
    for b, got in zip(batches, kept):
        if got is None:
            got = next(fresh)
            memory.keep_images(tuple(b), got)
        yield got


@torch.no_grad()
def evaluate_images(model: nn.Module, method: Method, config: Optional[Config], dataset, task: Union[str, Task],
                    batch_size: int, device: torch.device, indices: Sequence[int], amp: bool = False,
                    num_workers: int = 0) -> ImageScores:
    """Per-image results (`tasks.ImageScores`, in the order of `indices`) of `model` under `config`: the
    task's metric on any resample of the images, and a search's fitnesses. Sharded over torchrun ranks;
    every rank gets all images' results."""
    task = get_task(task) if isinstance(task, str) else task
    return task.image_scores(dataset, _records(model, method, config, dataset, task, batch_size, device, indices,
                                               amp, num_workers))


def _records(model, method, config, dataset, task: Task, batch_size: int, device, indices, amp: bool,
             num_workers: int, progress: Optional[ProgressReport] = None, bar: int = 0,
             memory: Optional[BatchMemory] = None) -> List[Any]:
    """The task's per-image records of `model` under `config` on `indices` (in their order), every rank's."""
    mine: List[Tuple[int, Any]] = []
    for batch, outputs, y in _batches(model, method, config, dataset, task, batch_size, device, indices, amp,
                                      num_workers, memory):
        mine += list(zip(batch, task.image_records(dataset, outputs, y)))
        if progress is not None:
            progress.update(bar, advance=len(batch) * dist.world_size())
    records: List[Any] = [None] * len(indices)
    for part in dist.all_gather_object(mine):
        for pos, record in part:
            records[pos] = record
    return records


@dataclass
class SharingCounts:
    """What `evaluate_images_many` executed (`_run`) and what scoring each network alone executes (`_asked`),
    summed over image batches (see `swin.patch.PrefixCache`): `pairs_run` executions of a block pair's first
    block on a distinct input (a wide execution, shared by networks that keep different windows of one input,
    counts once), `blocks_run` those of every block, `windows_run` the windows they computed (the honest work
    measure: a wide execution computes the most windows any of its networks keeps). `forwards`: network
    forwards on an image batch. Scored alone (no sharing), run equals asked; a family without windows (PSViT)
    counts pairs only."""

    pairs_run: int = 0
    pairs_asked: int = 0
    blocks_run: int = 0
    blocks_asked: int = 0
    windows_run: int = 0
    windows_asked: int = 0
    forwards: int = 0

    def add(self, cache) -> None:
        """Add a `shared_prefixes` cache's counts."""
        for name in ("pairs_run", "pairs_asked", "blocks_run", "blocks_asked", "windows_run", "windows_asked"):
            setattr(self, name, getattr(self, name) + getattr(cache, name))


@torch.no_grad()
def evaluate_images_many(model: nn.Module, method: Method, configs: Sequence[Config], dataset,
                         task: Union[str, Task], batch_size: int, device: torch.device, indices: Sequence[int],
                         img_size: Optional[int] = None, amp: bool = False, num_workers: int = 0,
                         share: bool = True, counts: Optional[SharingCounts] = None,
                         progress: Optional[ProgressReport] = None) -> List[ImageScores]:
    """`evaluate_images` of every config in `configs` (same order), scored batch by batch as a tree: on each
    image batch the networks run one after another in the order of their `effective` configs at `img_size`
    (their per-block kept-window counts), inside the method's `shared_prefixes` context with that order as its
    plan, so each distinct prefix of blocks is computed once per batch and reused by every network sharing it,
    and a pruned block runs once per distinct input, at the most windows any network sharing that input keeps
    (memory: one path of stage buffers). The results equal scoring each config alone. A method without
    `shared_prefixes` (or `share=False`) scores one config after another. Sharded over torchrun ranks like
    `evaluate_images`. `counts` gets the executions (`SharingCounts`); `progress` an 'images' counter (images
    x networks)."""
    task = get_task(task) if isinstance(task, str) else task
    return [task.image_scores(dataset, r) for r in
            evaluate_records_many(model, method, configs, dataset, task, batch_size, device, indices, img_size,
                                  amp, num_workers, share, counts, progress)]


@torch.no_grad()
def evaluate_records_many(model: nn.Module, method: Method, configs: Sequence[Config], dataset, task: Task,
                          batch_size: int, device: torch.device, indices: Sequence[int],
                          img_size: Optional[int] = None, amp: bool = False, num_workers: int = 0,
                          share: bool = True, counts: Optional[SharingCounts] = None,
                          progress: Optional[ProgressReport] = None,
                          memory: Optional[BatchMemory] = None) -> List[List[Any]]:
    """The per-image records (`task.image_records`, in the order of `indices`) of `evaluate_images_many`.
    `memory`: a `BatchMemory` this call and later ones on the same model and images share (a search's
    generations on its fitness split): the decoded batches and what the family computes from a batch before any
    config are kept there and reused."""
    configs = list(configs)
    backbone = backbone_of(model)
    batches_here = _my_batches(len(indices), batch_size)
    bar = 0 if progress is None else progress.counter("images", len(indices) * len(configs))
    if counts is not None:
        counts.forwards += batches_here * len(configs)
    # one network alone shares nothing within the call, but can take its first block from `memory`
    if not (share and shares_prefixes(method)) or (len(configs) < 2 and memory is None):
        # one network after another; a family with windows counts them as they run (nothing shared)
        with (method.shared_prefixes(backbone, share=False) if shares_prefixes(method)
              else contextlib.nullcontext()) as cache:
            out = [_records(model, method, config, dataset, task, batch_size, device, indices, amp, num_workers,
                            progress, bar, memory) for config in configs]
        if counts is not None and cache is not None:
            counts.add(cache)
        elif counts is not None:
            pairs = sum(method.group_sizes(backbone)) * batches_here * len(configs)
            counts.pairs_run += pairs
            counts.pairs_asked += pairs
        return out
    order = sorted(range(len(configs)),
                   key=lambda i: (method.effective(backbone, configs[i], img_size) if img_size else configs[i]))
    model.eval()
    positions = list(range(len(indices)))[dist.rank()::dist.world_size()]
    batches = [positions[i: i + batch_size] for i in range(0, len(positions), batch_size)]
    loaded = _loaded(dataset, task, [[indices[p] for p in b] for b in batches], num_workers, memory)
    mine: List[List[Tuple[int, Any]]] = [[] for _ in configs]
    with method.shared_prefixes(backbone, memory=memory) as cache:
        cache.plan([configs[i] for i in order])  # how wide a shared block runs: for the networks still to run
        for batch, (x, y) in zip(batches, loaded):
            x, y = task.to_device(x, y, device)
            for position, i in enumerate(order):
                cache.current = position
                method.apply(backbone, configs[i])
                with autocast(device, amp):
                    outputs = task.predict(model, x)
                mine[i] += list(zip(batch, task.image_records(dataset, outputs, y)))
            if progress is not None:
                progress.update(bar, advance=len(batch) * dist.world_size() * len(configs))
        if counts is not None:
            counts.add(cache)
    out = []
    parts = dist.all_gather_object(mine)
    for i in range(len(configs)):
        records: List[Any] = [None] * len(indices)
        for part in parts:
            for pos, record in part[i]:
                records[pos] = record
        out.append(records)
    return out


def _my_batches(n: int, batch_size: int) -> int:
    mine = len(range(dist.rank(), n, dist.world_size()))
    return -(-mine // batch_size)


@torch.no_grad()
def run_metric(model: nn.Module, method: Method, config: Optional[Config], dataset, task: Union[str, Task],
               batch_size: int, device: torch.device, max_samples: Optional[int] = None, amp: bool = False,
               indices: Optional[Sequence[int]] = None, num_workers: int = 0,
               progress: Optional[ProgressReport] = None) -> Metric:
    """The task's metric accumulator after a pass of `model` under `config` over `indices` of `dataset`, or
    over the search subset of `max_samples` images (`search_indices`), or over all of it. Under torchrun the
    images are sharded over ranks; the metric combines them when computed. `num_workers` DataLoader workers
    decode the images."""
    task = get_task(task) if isinstance(task, str) else task
    if indices is None:
        indices = search_indices(len(dataset), max_samples)
    metric = task.metric(dataset)
    bar = None if progress is None else progress.counter("val images", len(indices))
    for batch, outputs, y in _batches(model, method, config, dataset, task, batch_size, device, list(indices), amp,
                                      num_workers):
        metric.update(outputs, y)
        if bar is not None:
            progress.update(bar, advance=len(batch) * dist.world_size())
    return metric


def metric_values(metric: Metric, task: Task) -> Dict[str, float]:
    """Every number `metric` reports (e.g. {'box_ap', 'mask_ap'}; the task's `metric_name` always among them)."""
    # COCO AP reports box and mask AP from one COCOeval pass each; count metrics have one number
    compute_all = getattr(metric, "compute_all", None)
    return compute_all() if compute_all is not None else {task.metric_name: metric.compute()}


def evaluate_all(model: nn.Module, method: Method, config: Optional[Config], dataset, task: Union[str, Task],
                 batch_size: int, device: torch.device, max_samples: Optional[int] = None, amp: bool = False,
                 indices: Optional[Sequence[int]] = None, num_workers: int = 0,
                 progress: Optional[ProgressReport] = None) -> Dict[str, float]:
    """Every number the task reports (e.g. {'box_ap', 'mask_ap'} for instance segmentation; the task's
    `metric_name` always among them), in percent, of `model` under `config` (see `run_metric`); every rank
    gets the same numbers."""
    task = get_task(task) if isinstance(task, str) else task
    return metric_values(run_metric(model, method, config, dataset, task, batch_size, device, max_samples, amp,
                                    indices, num_workers, progress), task)


def evaluate(model: nn.Module, method: Method, config: Optional[Config], dataset, task: Union[str, Task],
             batch_size: int, device: torch.device, max_samples: Optional[int] = None,
             amp: bool = False, indices: Optional[Sequence[int]] = None, num_workers: int = 0) -> float:
    """The task's metric (`metric_name`: top-1, mIoU, box AP, mask AP; %) of `evaluate_all`."""
    task = get_task(task) if isinstance(task, str) else task
    return evaluate_all(model, method, config, dataset, task, batch_size, device, max_samples, amp, indices,
                        num_workers)[task.metric_name]
