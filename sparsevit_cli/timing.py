"""The one timer: warm-up, synchronised timing, median of repeats, optional CUDA graphs.

Dense and sparse models are timed in one run, interleaved repeat by repeat, so that their ratio is not
skewed by the machine's state drifting between two separate loops.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Dict, List

import torch
import torch.nn as nn

from .errors import UserError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: str) -> torch.device:
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise UserError(f"device must be cpu or cuda, got '{device}'")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("device 'cuda' requested but no CUDA GPU is available")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype not in DTYPES:
        raise UserError(f"dtype must be one of {', '.join(DTYPES)}, got '{dtype}'")
    if dtype == "fp16" and device.type == "cpu":
        raise UserError("fp16 is not supported on CPU; use bf16 or fp32")
    return DTYPES[dtype]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[], Any], device: torch.device, warmup: int = 2, repeats: int = 5) -> float:
    """Median milliseconds of `fn()` on `device` (used to time a model's parts for latency tables)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def _runner(model: nn.Module, x: torch.Tensor, cuda_graphs: bool) -> Callable[[], torch.Tensor]:
    """A zero-argument callable running one forward; with CUDA graphs, a captured replay."""
    if not cuda_graphs:
        return lambda: model(x)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            model(x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        model(x)
    return graph.replay


def time_models(models: Dict[str, nn.Module], x: torch.Tensor, warmup: int = 3, repeats: int = 10,
                cuda_graphs: bool = False) -> Dict[str, float]:
    """Median milliseconds of one forward for each model, timed interleaved on the same input."""
    device = x.device
    if cuda_graphs and device.type != "cuda":
        raise UserError("--cuda-graphs needs --device cuda")
    times: Dict[str, List[float]] = {name: [] for name in models}
    with torch.inference_mode():
        runners = {name: _runner(m, x, cuda_graphs) for name, m in models.items()}
        for _ in range(warmup):
            for run in runners.values():
                run()
        _sync(device)
        for _ in range(repeats):
            for name, run in runners.items():
                _sync(device)
                t0 = time.perf_counter()
                run()
                _sync(device)
                times[name].append((time.perf_counter() - t0) * 1000.0)
    return {name: statistics.median(v) for name, v in times.items()}
