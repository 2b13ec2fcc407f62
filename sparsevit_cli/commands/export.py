"""`sparsevit export`: write a deployable model and prove it computes what the PyTorch model computes.

The window selection (scoring, ranking, gather, scatter) stays inside the exported graph with the
config's static per-block window counts, so the exported model picks windows per input like the
PyTorch one. After writing, the file is loaded back in its runtime and compared with PyTorch on random
and real inputs; beyond the tolerance the file is removed and the command fails. The exported dense
model is timed beside the sparse one on the same runtime.

Detectors (detection, instance segmentation) export their sparse Swin backbone only: one output per stage
map (`features0`, ...), the multi-scale features the FPN reads (`Task.export_module`). torchvision's FPN,
RPN and RoI heads (data-dependent proposal counts, NMS) stay in PyTorch.
"""
from __future__ import annotations

import math
import os
import secrets
import statistics
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UserError, first_line
from ..io import check_output_file
from ..tasks import Detection, backbone_of

#: an exported model's runtime: one array for a one-output model, a list of arrays for several (stage maps)
Runner = Callable[[np.ndarray], Union[np.ndarray, List[np.ndarray]]]


@dataclass
class Format:
    suffix: str
    write: Callable[[nn.Module, torch.Tensor, Path], None]
    load: Callable[[Path], Runner]


def _output_list(value) -> List:
    """A model's or a runtime's output(s) as a list (one tensor or array, or a tuple / list of them)."""
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _one_or_list(values: Sequence):
    return values[0] if len(values) == 1 else list(values)


def _write_onnx(model: nn.Module, x: torch.Tensor, path: Path) -> None:
    with torch.no_grad():
        n = len(_output_list(model(x)))
    names = ["output"] if n == 1 else [f"features{i}" for i in range(n)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17,
                          input_names=["images"], output_names=names)


def _load_onnx(path: Path) -> Runner:
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError("ONNX export needs onnxruntime: pip install 'sparsevit[export]'")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda a: _one_or_list(session.run(None, {"images": a}))


def _write_torchscript(model: nn.Module, x: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, (x,), check_trace=False)
    traced.save(str(path))


def _torch_runner(module: Callable) -> Runner:
    def run(a: np.ndarray):
        with torch.no_grad():
            return _one_or_list([t.float().numpy() for t in _output_list(module(torch.from_numpy(a)))])
    return run


def _load_torchscript(path: Path) -> Runner:
    with warnings.catch_warnings():  # torch.jit.load's deprecation notice is not the user's concern
        warnings.simplefilter("ignore", FutureWarning)
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


def _errors(ref, out) -> Dict[str, float]:
    """Largest absolute error and largest error relative to the reference's magnitude, over every output."""
    refs, outs = _output_list(ref), _output_list(out)
    if len(refs) != len(outs) or any(r.shape != o.shape for r, o in zip(refs, outs)):
        return {"max_abs": float("inf"), "rel": float("inf")}
    max_abs = rel = 0.0
    for r, o in zip(refs, outs):
        diff = float(np.abs(r.astype(np.float64) - o.astype(np.float64)).max())
        max_abs, rel = max(max_abs, diff), max(rel, diff / max(float(np.abs(r).max()), 1e-12))
    return {"max_abs": max_abs, "rel": rel}


def _time_runner(run: Runner, a: np.ndarray, warmup: int = 2, repeats: int = 7) -> float:
    for _ in range(warmup):
        run(a)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(a)
        ts.append((time.perf_counter() - t0) * 1000)
    return statistics.median(ts)


@contextmanager
def _user_errors(what: str) -> Iterator[None]:
    """Exporters and runtimes fail with many exception types and pages of text; the user gets one line."""
    try:
        yield
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"{what}: {first_line(e)}") from e


def _reference(model: nn.Module, x: torch.Tensor) -> List[np.ndarray]:
    with torch.no_grad():
        return [t.float().numpy() for t in _output_list(model(x))]


def check_export_target(out: str | os.PathLike, tolerance: float) -> None:
    """One line for an output path that cannot be a file and for a tolerance that is no relative error."""
    if not (math.isfinite(tolerance) and tolerance >= 0):  # NaN compares false: no check could ever pass
        raise UserError(f"--tolerance must be a finite relative error >= 0, got {tolerance}")
    check_output_file(out)


def export_model(model: nn.Module, fmt: str, out: str | os.PathLike, inputs: List[torch.Tensor],
                 tolerance: float = 1e-4, method=None, config=None, dense_config=None,
                 time_it: bool = True) -> Dict[str, object]:
    """Export `model` (eval, CPU) running `config` (when given with its `method`), traced at inputs[0]'s
    shape, verify it on every input, and time it against the dense model exported the same way. Returns a
    report; raises UserError on failure, in which case nothing is written."""
    if fmt not in FORMATS:
        raise UserError(f"unsupported format '{fmt}' (supported: {', '.join(FORMATS)})")
    check_export_target(out, tolerance)
    spec = FORMATS[fmt]
    out = Path(out)
    model = model.eval()
    if method is not None and config is not None:
        # the config to export is the one given, whatever the model ran last
        method.apply(backbone_of(model), config)
    # Eager references first; this also builds (and caches) the engine's per-resolution window index
    # tables as concrete tensors, so the exporters trace lookups, not table construction.
    refs = [_reference(model, x) for x in inputs]
    with _user_errors(f"cannot write to '{out.parent}'"):
        out.parent.mkdir(parents=True, exist_ok=True)
    # named like atomic_write's temporary files, so a killed export's is removed by the next run in the folder
    tmp = out.with_name(f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp{spec.suffix}")
    try:  # every failure below leaves no file behind: `out` only appears once verified
        with _user_errors(f"{fmt} export failed"):
            spec.write(model, inputs[0], tmp)
        with _user_errors(f"exported {fmt} model cannot be run"):
            run = spec.load(tmp)
            checks = [{"input": i, **_errors(ref, run(x.numpy()))}
                      for i, (ref, x) in enumerate(zip(refs, inputs))]
        worst = max(c["rel"] for c in checks)
        if not worst <= tolerance:  # `not <=` so that NaN fails too
            raise UserError(f"exported {fmt} model differs from PyTorch: relative error {worst:.2e} > tolerance "
                            f"{tolerance:.0e}; nothing was written")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    report: Dict[str, object] = {"format": fmt, "file": str(out), "checks": checks, "max_rel_error": worst}
    if time_it and dense_config is not None and method is not None:
        with _user_errors(f"timing against the dense {fmt} model failed"):
            report.update(_compare_with_dense(model, method, config, dense_config, spec, inputs[0], run))
    return report


def _compare_with_dense(model, method, config, dense_config, spec: Format, x: torch.Tensor,
                        run_sparse: Runner) -> dict:
    """Export the dense config the same way and time both on the same runtime, interleaved."""
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


def real_inputs(data: str, meta: Dict[str, Any], img_size: int, batch_size: int,
                model: Optional[nn.Module] = None) -> torch.Tensor:
    """A batch of real validation images (for export checks), as the exported module reads them: for a
    detector (`model`), its transform's normalised batch, resized to the traced img_size x img_size."""
    from ..tasks import get_task

    task = get_task(meta.get("task", "classification"))
    ds = task.dataset(data, "val", img_size, train=False)
    if len(ds) == 0:
        raise UserError(f"no validation images in '{data}'")
    images = [ds[i % len(ds)][0] for i in range(batch_size)]
    if isinstance(task, Detection) and model is not None:
        with torch.no_grad():
            batch = model.transform(images)[0].tensors
        return F.interpolate(batch, size=(img_size, img_size), mode="bilinear", align_corners=False)
    return torch.stack(images)
