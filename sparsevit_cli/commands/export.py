"""`sparsevit export`: write a deployable model and prove it computes what the PyTorch model computes.

The window selection (scoring, ranking, gather, scatter) stays inside the exported graph with the
config's static per-block window counts, so the exported model picks windows per input like the
PyTorch one. After writing, the file is loaded back in its runtime and compared with PyTorch on random
and real inputs; beyond the tolerance the file is removed and the command fails. The exported dense
model is timed beside the sparse one on the same runtime.

Detectors (detection, instance segmentation) export their sparse Swin backbone only: one output per stage
map (`features0`, ...), the multi-scale features the FPN reads (`Task.export_module`). torchvision's FPN,
RPN and RoI heads (data-dependent proposal counts, NMS) stay in PyTorch.

Dynamic height and width (`dynamic_inputs`): the graph is written with symbolic height and width (ONNX dynamic
axes, torch.export dynamic shapes; a TorchScript trace has no declaration) and verified at the traced size AND at
other sizes. The sparse Swin (V1 and V2, whole or features_only) builds its window tables, shifted-window masks,
padding masks and kept counts from tensor operations on the input's size (`sparsevit_cli.swin.patch`), so every
format takes any size its patch divides. A model that cannot (the exporter refuses, or the file computes
something else at another size) is one line, and the model is exported again with a fixed input size, verified
as usual.
"""
from __future__ import annotations

import io
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
from ..io import atomic_output, check_output_file
from ..tasks import Detection, backbone_of

#: an exported model's runtime: one array for a one-output model, a list of arrays for several (stage maps)
Runner = Callable[[np.ndarray], Union[np.ndarray, List[np.ndarray]]]


@dataclass
class Format:
    suffix: str
    write: Callable[..., None]  # (model, example input, path, dynamic: height and width symbolic)
    load: Callable[[Path], Runner]


def _output_list(value) -> List:
    """A model's or a runtime's output(s) as a list (one tensor or array, or a tuple / list of them)."""
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _one_or_list(values: Sequence):
    return values[0] if len(values) == 1 else list(values)


def _write_onnx(model: nn.Module, x: torch.Tensor, path: Path, dynamic: bool = False) -> None:
    with torch.no_grad():
        outputs = _output_list(model(x))
    names = ["output"] if len(outputs) == 1 else [f"features{i}" for i in range(len(outputs))]
    axes = None
    if dynamic:  # the input's height and width, and those of every output that is a map
        axes = {"images": {2: "height", 3: "width"}}
        axes.update({n: {2: f"{n}_height", 3: f"{n}_width"} for n, o in zip(names, outputs) if o.dim() == 4})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17,
                          input_names=["images"], output_names=names, dynamic_axes=axes)


def _load_onnx(path: Path) -> Runner:
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError("ONNX export needs onnxruntime: pip install 'sparsevit[export]'")
    return _ort_runner(ort, path)


#: onnxruntime's log severity for export's sessions: errors and warnings reach the user as one line (a failed
#: run is a UserError), never as onnxruntime's own lines on stderr (3 = ERROR, 4 = FATAL)
ORT_LOG_SEVERITY = 4


def _ort_runner(ort, path: Path) -> Runner:
    ort.set_default_logger_severity(ORT_LOG_SEVERITY)
    options = ort.SessionOptions()
    options.log_severity_level = ORT_LOG_SEVERITY
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    run_options = ort.RunOptions()
    run_options.log_severity_level = ORT_LOG_SEVERITY
    return lambda a: _one_or_list(session.run(None, {"images": a}, run_options))


def _write_torchscript(model: nn.Module, x: torch.Tensor, path: Path, dynamic: bool = False) -> None:
    # a trace declares no dynamic dimension: whether it holds at other sizes is what verification shows
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, (x,), check_trace=False)
    _save_through_memory(lambda f: torch.jit.save(traced, f), path)


def _save_through_memory(save: Callable[[Any], None], path: Path) -> None:
    """Serialize with a torch writer into memory, then write the bytes to `path` (the temporary file of
    `atomic_output`) from Python: torch's C++ file writers abort the process on a full disk (a native
    stack trace, exit 134, the temporary file left behind); Python's write raises the OSError that the
    writers' one protocol turns into one line, removing the temporary file."""
    buffer = io.BytesIO()
    save(buffer)
    with open(path, "wb") as f:
        f.write(buffer.getbuffer())


def _torch_runner(module: Callable) -> Runner:
    def run(a: np.ndarray):
        with torch.no_grad():
            return _one_or_list([t.float().numpy() for t in _output_list(module(torch.from_numpy(a)))])
    return run


def _load_torchscript(path: Path) -> Runner:
    with warnings.catch_warnings():  # torch.jit.load's deprecation notice is not the user's concern
        warnings.simplefilter("ignore", FutureWarning)
        return _torch_runner(torch.jit.load(str(path)).eval())


def _write_pt2(model: nn.Module, x: torch.Tensor, path: Path, dynamic: bool = False) -> None:
    from torch.export import Dim

    # DYNAMIC: export infers the range the model allows (e.g. a stride's minimum) and refuses a specialisation
    shapes = ({2: Dim.DYNAMIC, 3: Dim.DYNAMIC},) if dynamic else None
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        # a copy: export marks the example's dynamic dimensions on the tensor itself, which would make a later
        # export of the same input (the fixed-size one after a refused dynamic one) dynamic too
        with _size_oblivious(dynamic):
            program = torch.export.export(model, (x.clone(),), dynamic_shapes=shapes, strict=False)
    _save_through_memory(lambda f: torch.export.save(program, f), path)


@contextmanager
def _size_oblivious(dynamic: bool) -> Iterator[None]:
    """While exporting with dynamic sizes, make torch.export reason about sizes without specialising on 1 (its
    ``backed_size_oblivious``): a map one window wide at the traced size would otherwise fix the graph to it,
    and one more than a window wide would refuse the sizes where a map is one window wide."""
    if not dynamic:
        yield
        return
    from torch.fx.experimental import _config as fx_config

    with fx_config.patch(backed_size_oblivious=True):
        yield


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


@contextmanager
def _write_errors(what: str) -> Iterator[None]:
    """Like `_user_errors`, but an OSError (full disk, ...) and errors caused by one pass on as the OSError,
    for `atomic_output` to say in its words that nothing was written."""
    try:
        yield
    except OSError:
        raise
    except UserError:
        raise
    except Exception as e:
        cause = e.__cause__ or e.__context__
        if isinstance(cause, OSError):
            raise cause from None
        raise UserError(f"{what}: {first_line(e)}") from e


def _reference(model: nn.Module, x: torch.Tensor) -> List[np.ndarray]:
    with torch.no_grad():
        return [t.float().numpy() for t in _output_list(model(x))]


def check_export_target(out: str | os.PathLike, tolerance: float, fmt: Optional[str] = None,
                        inputs: Optional[Dict[str, Any]] = None) -> None:
    """One line for an output path that cannot be a file, is one of the command's `inputs` ({option: path}),
    or whose suffix is not `fmt`'s (an ONNX file named model.safetensors would be taken for a model file),
    and for a tolerance that is no relative error."""
    if not (math.isfinite(tolerance) and tolerance >= 0):  # NaN compares false: no check could ever pass
        raise UserError(f"--tolerance must be a finite relative error >= 0, got {tolerance}")
    check_output_file(out, inputs=inputs)
    if fmt in FORMATS and Path(out).suffix.lower() != FORMATS[fmt].suffix:
        raise UserError(f"--out '{out}' does not end in {FORMATS[fmt].suffix}, the suffix of --format {fmt}; "
                        f"name it e.g. '{Path(out).with_suffix(FORMATS[fmt].suffix).name}'")


def _size(x: torch.Tensor) -> str:
    return f"{x.shape[-2]}x{x.shape[-1]}"


class _DynamicUnsupported(Exception):
    """A format could not export the model with dynamic height and width (the message says why)."""


def export_model(model: nn.Module, fmt: str, out: str | os.PathLike, inputs: List[torch.Tensor],
                 tolerance: float = 1e-4, method=None, config=None, dense_config=None,
                 time_it: bool = True, dynamic_inputs: Optional[List[torch.Tensor]] = None) -> Dict[str, object]:
    """Export `model` (eval, CPU) running `config` (when given with its `method`), traced at inputs[0]'s
    shape, verify it on every input, and time it against the dense model exported the same way. Returns a
    report; raises UserError on failure, in which case nothing is written.

    `dynamic_inputs` (inputs of other heights and widths): the graph is exported with dynamic height and width
    and verified on them too; when the format cannot (refused, or wrong at another size), the report's
    'dynamic_note' says so in one line and the model is exported with the fixed size of inputs[0] ('dynamic':
    whether the file written takes any size). Every check has its input's 'size' (HxW)."""
    if fmt not in FORMATS:
        raise UserError(f"unsupported format '{fmt}' (supported: {', '.join(FORMATS)})")
    check_export_target(out, tolerance)
    spec = FORMATS[fmt]
    out = Path(out)
    model = model.eval()
    if method is not None and config is not None:
        # the config to export is the one given, whatever the model ran last
        method.apply(backbone_of(model), config)
    report: Dict[str, object] = {"format": fmt, "file": str(out)}
    if dynamic_inputs:
        try:
            report.update(_write_verified(model, spec, fmt, out, list(inputs) + list(dynamic_inputs), tolerance,
                                          dynamic=True))
            report["dynamic"] = True
        except _DynamicUnsupported as e:
            report["dynamic"] = False
            report["dynamic_note"] = (f"{fmt} cannot export this model with dynamic height and width ({e}); "
                                      f"exported with a fixed {'x'.join(map(str, inputs[0].shape))} input instead")
    if "checks" not in report:
        report.update(_write_verified(model, spec, fmt, out, inputs, tolerance, dynamic=False))
    if time_it and dense_config is not None and method is not None:
        with _user_errors(f"timing against the dense {fmt} model failed"):
            report.update(_compare_with_dense(model, method, config, dense_config, spec, inputs[0],
                                              FORMATS[fmt].load(out)))
    return report


def _write_verified(model: nn.Module, spec: Format, fmt: str, out: Path, inputs: List[torch.Tensor],
                    tolerance: float, dynamic: bool) -> Dict[str, object]:
    """Write `model` traced at inputs[0] (height and width symbolic with `dynamic`) to `out`, once it computes
    what PyTorch computes on every input; {'checks', 'max_rel_error'}. With `dynamic`, a failure that only the
    dynamic export has (refused, or wrong at a size other than the traced one) is `_DynamicUnsupported`."""
    # Eager references first; this also builds (and caches) the engine's per-resolution window index
    # tables as concrete tensors, so the exporters trace lookups, not table construction.
    refs = [_reference(model, x) for x in inputs]
    traced = tuple(inputs[0].shape)
    # every failure below leaves no file behind (a full disk, a read-only folder: one line): `out` only
    # appears once verified, written through a fresh temporary file (never a link someone put there)
    with atomic_output(out, f"{fmt} export", suffix=spec.suffix) as tmp:
        try:
            with _write_errors(f"{fmt} export failed"):
                if dynamic:
                    spec.write(model, inputs[0], tmp, dynamic=True)
                else:
                    spec.write(model, inputs[0], tmp)
        except UserError as e:
            if dynamic:
                raise _DynamicUnsupported(f"the exporter refused: {str(e).split(': ', 1)[-1]}") from None
            raise
        checks = []
        with _user_errors(f"exported {fmt} model cannot be run"):
            run = spec.load(tmp)
        for i, (ref, x) in enumerate(zip(refs, inputs)):
            try:
                with _user_errors(f"exported {fmt} model cannot be run"):
                    got = run(x.numpy())
            except UserError as e:
                if dynamic and tuple(x.shape) != traced:
                    raise _DynamicUnsupported(f"it fails at {_size(x)}: {str(e).split(': ', 1)[-1]}") from None
                raise
            checks.append({"input": i, "size": _size(x), **_errors(ref, got)})
            if dynamic and tuple(x.shape) != traced and not checks[-1]["rel"] <= tolerance:
                raise _DynamicUnsupported(f"at {_size(x)} its relative error is {checks[-1]['rel']:.1e}")
        worst = max(c["rel"] for c in checks)
        if not worst <= tolerance:  # `not <=` so that NaN fails too
            raise UserError(f"exported {fmt} model differs from PyTorch: relative error {worst:.2e} > tolerance "
                            f"{tolerance:.0e}; nothing was written")
    return {"checks": checks, "max_rel_error": worst}


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
                model: Optional[nn.Module] = None, own_size: bool = False) -> torch.Tensor:
    """A batch of real validation images (for export checks), as the exported module reads them: for a
    detector (`model`), its transform's normalised batch, resized to the traced img_size x img_size (with
    `own_size`: at the size the transform gives it, aspect kept and padded, for a dynamic-size export)."""
    from ..tasks import get_task

    task = get_task(meta.get("task", "classification"))
    ds = task.dataset(data, "val", img_size, train=False)
    if len(ds) == 0:
        raise UserError(f"no validation images in '{data}'")
    images = [ds[i % len(ds)][0] for i in range(batch_size)]
    if isinstance(task, Detection) and model is not None:
        with torch.no_grad():
            batch = model.transform(images)[0].tensors
        if own_size:
            return batch
        return F.interpolate(batch, size=(img_size, img_size), mode="bilinear", align_corners=False)
    return torch.stack(images)


def other_size(model: nn.Module, img_size: int) -> tuple:
    """A second (height, width) to verify a dynamic-size export at: a landscape 3:4 of `img_size`, rounded to
    the multiple a detector pads its batches to (its transform's `size_divisible`), else to 32."""
    step = int(getattr(getattr(model, "transform", None), "size_divisible", 32))
    return img_size * 3 // 4 // step * step or step, img_size
