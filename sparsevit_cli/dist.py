"""torch.distributed helpers: `torchrun` sets the environment, these read it. Without torchrun every
helper degrades to the single-process case."""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Callable, Iterator, List, Optional, TypeVar

import torch
import torch.distributed as dist

from .errors import UserError

T = TypeVar("T")


def init_distributed(device: str) -> None:
    """Join the process group torchrun describes (gloo on CPU, nccl on CUDA); no-op otherwise."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend)
        if device.startswith("cuda"):
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))


@contextmanager
def process_group(device: str) -> Iterator[None]:
    """A distributed run from start to end: joins the process group torchrun describes and destroys it
    on the way out (also after an error), so no rank exits with the group still open."""
    joined = not is_distributed()
    init_distributed(device)
    try:
        yield
    finally:
        if joined and is_distributed():
            dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def all_reduce_tensor(t: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_object(obj):
    """Rank 0's `obj` on every rank (a picklable value); `obj` itself without torchrun."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(obj: Any) -> List[Any]:
    """Every rank's `obj` (picklable), in rank order; `[obj]` without torchrun."""
    if not is_distributed():
        return [obj]
    gathered: List[Any] = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def main_only(fn: Callable[[], T]) -> Optional[T]:
    """`fn()` on rank 0 (its result there, None on the other ranks). A UserError it raises is raised on
    every rank: the others would otherwise wait forever at the next collective for a rank that left."""
    result, error = None, None
    if is_main():
        try:
            result = fn()
        except UserError as e:
            error = e
    message = broadcast_object(None if error is None else str(error))
    if error is not None:
        raise error
    if message is not None:
        raise UserError(message)
    return result


def replica_checksums(model: torch.nn.Module) -> List[float]:
    """Every rank's float64 checksum of its parameters (DDP replicas must agree exactly)."""
    return all_gather_object(float(sum(p.detach().double().sum().item() for p in model.parameters())))
