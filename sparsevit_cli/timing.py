"""The one timer: warm-up, synchronised timing, median of repeats, optional CUDA graphs or torch.compile.

Dense and sparse models are timed in one run, interleaved repeat by repeat, so that their ratio is not
skewed by the machine's state drifting between two separate loops. Speed is reported two ways: batch-1
latency (what one request waits) and throughput in images/s at a realistic batch (`THROUGHPUT_BATCH`),
where fixed per-call costs no longer hide the work saved.
"""
from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Sequence

import torch
import torch.nn as nn

from .errors import UserError, first_line

# Batch of the throughput numbers (measure, demo, report): large enough that per-call overheads (Python,
# kernel launches) stop dominating the small demo models, small enough for CPU memory at demo sizes.
THROUGHPUT_BATCH = 64

# Largest relative error accepted between a compiled model and its eager self, by dtype: fp32 must be
# exact up to reassociation (issue 13); half precision rounds differently in fused kernels.
COMPILE_TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 2e-2}

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


@dataclass(frozen=True)
class Spread:
    """Milliseconds of one thing timed `repeats` times: the median and the interquartile range (robust to
    a repeat slowed by another process, which min-max is not)."""

    median: float
    low: float   # first quartile
    high: float  # third quartile
    repeats: int

    @classmethod
    def of(cls, times: Sequence[float]) -> "Spread":
        times = sorted(times)
        if len(times) < 2:
            return cls(times[0], times[0], times[0], len(times))
        q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive")
        return cls(statistics.median(times), q1, q3, len(times))

    def overlaps(self, other: "Spread") -> bool:
        """The two interquartile ranges overlap: which of the two is faster is not shown by these repeats."""
        return self.low <= other.high and other.low <= self.high


#: fewer interleaved repeats than this estimate no spread worth the name: a comparison is then flagged
MIN_SPREAD_REPEATS = 5


def unreliable(a: Spread, b: Spread) -> bool:
    """A speed comparison of `a` with `b` these repeats cannot support: their interquartile ranges overlap,
    or too few repeats to measure a spread."""
    return min(a.repeats, b.repeats) < MIN_SPREAD_REPEATS or a.overlaps(b)


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
    return {name: s.median for name, s in time_models_spread(models, x, warmup, repeats, cuda_graphs).items()}


def time_models_spread(models: Dict[str, nn.Module], x: torch.Tensor, warmup: int = 3, repeats: int = 10,
                       cuda_graphs: bool = False) -> Dict[str, Spread]:
    """`time_models` with the spread of the repeats: the median and interquartile range per model."""
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
    return {name: Spread.of(v) for name, v in times.items()}


def relative_error(ref: torch.Tensor, out: torch.Tensor) -> float:
    """Frobenius relative error of `out` against `ref`, in fp32."""
    ref, out = ref.float(), out.float()
    return float((out - ref).norm() / ref.norm().clamp_min(1e-12))


def compile_model(model: nn.Module, x: torch.Tensor, backend: str = "inductor", fresh: bool = False) -> nn.Module:
    """`torch.compile(model)`, compiled on `x` and checked against eager before anyone times it.

    A compiler that cannot run here (no C++ toolchain, unsupported platform) or a graph the compiler rejects
    is one `UserError` line; so is a compiled model that is not exact against eager. `fresh` forgets earlier
    compilations first: a search compiling config after config would otherwise reach dynamo's per-function
    recompile limit (8) and from then on silently time eager code.
    """
    if fresh:
        torch._dynamo.reset()
    try:
        compiled = torch.compile(model, backend=backend, dynamic=False)  # one graph per batch shape
        with torch.inference_mode():  # compile under the same grad mode as `time_models`, or it recompiles
            got = compiled(x)
            want = model(x)
    except UserError:
        raise
    except Exception as e:  # dynamo/inductor raise many types (BackendCompilerFailed, InvalidCxxCompiler, ...)
        raise UserError(f"torch.compile failed on {type(model).__name__}: {first_line(e)} (run without --compile)")
    err = relative_error(want, got)
    tol = COMPILE_TOLERANCE.get(x.dtype, 1e-5)
    if not err <= tol:
        raise UserError(f"compiled {type(model).__name__} differs from eager: relative error {err:.1e} > {tol:.0e}")
    return compiled


@contextlib.contextmanager
def compile_failures_as_user_errors(compiled: bool) -> Iterator[None]:
    """While timing: a compiled model can still recompile (guards) and fail; that is one line, not a
    traceback. Failures of uncompiled models pass through unchanged."""
    try:
        yield
    except Exception as e:
        if not compiled or isinstance(e, UserError):
            raise
        raise UserError(f"torch.compile failed while timing: {first_line(e)} (run without --compile)")


def latency_and_throughput(models: Dict[str, nn.Module], make_input: Callable[[int], torch.Tensor],
                           batch_size: int = THROUGHPUT_BATCH, warmup: int = 3, repeats: int = 10,
                           cuda_graphs: bool = False, compile: bool = False,
                           compile_backend: str = "inductor") -> Dict[str, Dict[str, float]]:
    """Per model: batch-1 latency `ms` and `images_per_s` at `batch_size` (the batch-1 rate when it is 1).
    Each batch size is one interleaved run over all models; `make_input(n)` returns n inputs on the models'
    device. With `compile`, every model is compiled for each batch shape and checked against eager first.
    `ms_low` and `ms_high` are the batch-1 latency's interquartile range over the repeats."""
    ms: Dict[int, Dict[str, Spread]] = {}
    for n in sorted({1, batch_size}):
        x = make_input(n)
        runs = {name: compile_model(m, x, compile_backend) if compile else m for name, m in models.items()}
        with compile_failures_as_user_errors(compile):
            ms[n] = time_models_spread(runs, x, warmup=warmup, repeats=repeats, cuda_graphs=cuda_graphs)
    # ms_low, ms_high: the batch-1 latency's interquartile range over the repeats
    return {name: {"ms": ms[1][name].median, "ms_low": ms[1][name].low, "ms_high": ms[1][name].high,
                   "images_per_s": 1000.0 * batch_size / ms[batch_size][name].median}
            for name in models}
