"""torch.distributed helpers: `torchrun` sets the environment, these read it. Without torchrun every
helper degrades to the single-process case."""
from __future__ import annotations

import os
from typing import List

import torch
import torch.distributed as dist


def init_distributed(device: str) -> None:
    """Join the process group torchrun describes (gloo on CPU, nccl on CUDA); no-op otherwise."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend)
        if device.startswith("cuda"):
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def all_reduce_sum(values: List[float], device: torch.device) -> List[float]:
    """Sum a few numbers over ranks (float64, so counts stay exact)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


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


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()


def replica_checksums(model: torch.nn.Module) -> List[float]:
    """Every rank's float64 checksum of its parameters (DDP replicas must agree exactly)."""
    local = float(sum(p.detach().double().sum().item() for p in model.parameters()))
    if not is_distributed():
        return [local]
    gathered: List[float] = [0.0] * world_size()
    dist.all_gather_object(gathered, local)
    return gathered
