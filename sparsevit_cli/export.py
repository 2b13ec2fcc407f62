"""`sparsevit export`: write a deployable model and prove it computes what the PyTorch model computes.

The window selection (scoring, ranking, gather, scatter) stays inside the exported graph with the
config's static per-block window counts, so the exported model picks windows per input like the
PyTorch one. After writing, the file is loaded back in its runtime and compared with PyTorch on random
and real inputs; beyond the tolerance the file is removed and the command fails. The exported dense
model is timed beside the sparse one on the same runtime.
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
import torch.nn as nn

from .errors import UserError

Runner = Callable[[np.ndarray], np.ndarray]


@dataclass
class Format:
    suffix: str
    write: Callable[[nn.Module, torch.Tensor, Path], None]
    load: Callable[[Path], Runner]


def _write_onnx(model: nn.Module, x: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17,
                          input_names=["images"], output_names=["output"])


def _load_onnx(path: Path) -> Runner:
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError("ONNX export needs onnxruntime: pip install 'sparsevit[export]'")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda a: session.run(None, {"images": a})[0]


def _write_torchscript(model: nn.Module, x: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, (x,), check_trace=False)
    traced.save(str(path))


def _torch_runner(module: Callable) -> Runner:
    def run(a: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(a)).float().numpy()
    return run


def _load_torchscript(path: Path) -> Runner:
    return _torch_runner(torch.jit.load(str(path)).eval())


def _write_pt2(model: nn.Module, x: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.export.export(model, (x,), strict=False)
    torch.export.save(program, str(path))


def _load_pt2(path: Path) -> Runner:
    return _torch_runner(torch.export.load(str(path)).module())


FORMATS: Dict[str, Format] = {
    "onnx": Format(".onnx", _write_onnx, _load_onnx),
    "torchscript": Format(".pt", _write_torchscript, _load_torchscript),
    "pt2": Format(".pt2", _write_pt2, _load_pt2),
}


def _errors(ref: np.ndarray, out: np.ndarray) -> Dict[str, float]:
    if ref.shape != out.shape:
        return {"max_abs": float("inf"), "rel": float("inf")}
    diff = np.abs(ref.astype(np.float64) - out.astype(np.float64))
    return {"max_abs": float(diff.max()), "rel": float(diff.max() / max(np.abs(ref).max(), 1e-12))}


def _time_runner(run: Runner, a: np.ndarray, warmup: int = 2, repeats: int = 7) -> float:
    for _ in range(warmup):
        run(a)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(a)
        ts.append((time.perf_counter() - t0) * 1000)
    return statistics.median(ts)


def export_model(model: nn.Module, fmt: str, out: str | os.PathLike, inputs: List[torch.Tensor],
                 tolerance: float = 1e-4, method=None, config=None, dense_config=None,
                 time_it: bool = True) -> Dict[str, object]:
    """Export `model` (eval, CPU) traced at inputs[0]'s shape, verify it on every input, and time it
    against the dense model exported the same way. Returns a report; raises UserError on failure."""
    if fmt not in FORMATS:
        raise UserError(f"unsupported format '{fmt}' (supported: {', '.join(FORMATS)})")
    spec = FORMATS[fmt]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}{spec.suffix}")
    try:
        spec.write(model, inputs[0], tmp)
    except UserError:
        raise
    except Exception as e:  # exporter failures are many types; one line for the user
        tmp.unlink(missing_ok=True)
        raise UserError(f"{fmt} export failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    run = spec.load(tmp)
    checks = []
    for i, x in enumerate(inputs):
        with torch.no_grad():
            ref = model(x).float().numpy()
        err = _errors(ref, run(x.numpy()))
        checks.append({"input": i, **err})
    worst = max(c["rel"] for c in checks)
    if not worst <= tolerance:
        tmp.unlink(missing_ok=True)
        raise UserError(f"exported {fmt} model differs from PyTorch: relative error {worst:.2e} > tolerance "
                        f"{tolerance:.0e}; nothing was written")
    os.replace(tmp, out)
    report: Dict[str, object] = {"format": fmt, "file": str(out), "checks": checks, "max_rel_error": worst}
    if time_it and dense_config is not None and method is not None:
        report.update(_compare_with_dense(model, method, config, dense_config, spec, inputs[0], run))
    return report


def _compare_with_dense(model, method, config, dense_config, spec: Format, x: torch.Tensor,
                        run_sparse: Runner) -> dict:
    """Export the dense config the same way and time both on the same runtime, interleaved."""
    from .models.tasks import backbone_of

    backbone = backbone_of(model)
    with tempfile.TemporaryDirectory() as d:
        dense_path = Path(d) / f"dense{spec.suffix}"
        method.apply(backbone, dense_config)
        try:
            spec.write(model, x, dense_path)
        finally:
            method.apply(backbone, config)
        run_dense = spec.load(dense_path)
        a = x.numpy()
        dense_ms, sparse_ms = [], []
        for _ in range(2):
            run_dense(a), run_sparse(a)
        for _ in range(5):
            dense_ms.append(_time_runner(run_dense, a, warmup=0, repeats=1))
            sparse_ms.append(_time_runner(run_sparse, a, warmup=0, repeats=1))
    d, s = statistics.median(dense_ms), statistics.median(sparse_ms)
    return {"dense_ms": d, "sparse_ms": s, "speedup": d / s}
