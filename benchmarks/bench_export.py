"""Exported dense vs exported window-sparse Swin on onnxruntime (CPU), timed in one run (interleaved); then the
same for whole Faster R-CNN detectors (one ONNX file each, `sparsevit export` of a detector) at --det-img-size and
on a mixed-aspect set of images (the detector resizes each, aspect kept), on bench-det's small Swin and on Swin-T,
in onnxruntime at its default threads and at 1 thread, and in PyTorch.

    python benchmarks/bench_export.py [--img-size 448] [--sparsity 0.6] [--repeats 10] [--warmup 3]
                                      [--det-img-size 512] [--det-sparsity 0.5] [--det-backbones 'small Swin,Swin-T']
                                      [--no-detector]

Both models go through `sparsevit_cli.commands.export.export_model`, the code behind `sparsevit export`, so each file
is checked against PyTorch as it is written; the parity column is the largest relative error over the
traced input and a fresh one. speedup = dense_ms / sparse_ms; ideal = dense MACs / sparse MACs;
efficiency = speedup / ideal. Random weights (seed 0): latency does not depend on what was learned.
The LayerNorms get random affine parameters too: at timm's init (weight 1, bias 0) every token after the
patch-embedding norm has the same energy, so all first-stage window scores tie and PyTorch and
onnxruntime, rounding differently, would pick different windows; trained models do not tie like that.
"""
import argparse
import json
import tempfile
from pathlib import Path
from typing import Callable, Dict

import onnxruntime as ort
import timm
import torch
from rich.console import Console
from rich.table import Table

import sparsevit_cli as sv
from sparsevit_cli.commands.export import FORMATS, export_model
from sparsevit_cli.timing import time_models
from sparsevit_cli.swin.cost import swin_macs
from common import LIGHT_HEADS, SMALL_SWIN, SMOKE_IMG_SIZE, add_model_options, apply_smoke


def randomize_norms_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Trained-like LayerNorm weights and biases (see the module docstring for why)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.copy_(1.0 + 0.5 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.5 * torch.randn(m.bias.shape, generator=g))
    return model


def export_onnx(model, sparsity: float, path: Path, inputs):
    """(runner taking a torch tensor, max relative error vs PyTorch, MACs) of `model` at `sparsity`."""
    model.set_sparsity(sparsity)
    # a tolerance no error reaches: the benchmark reports the parity error instead of stopping at it
    report = export_model(model, "onnx", path, inputs, tolerance=1e30, time_it=False)
    run = FORMATS["onnx"].load(path)
    macs = swin_macs(model, model.sparsity, inputs[0].shape[-1], inputs[0].shape[0])
    return (lambda x: run(x.numpy())), report["max_rel_error"], macs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(ap, img_size=448, repeats=10, warmup=3)
    ap.add_argument("--sparsity", type=float, default=0.6, help="uniform window sparsity of the sparse model")
    add_detector_options(ap)
    args = apply_smoke(ap.parse_args(argv), det_img_size=SMOKE_IMG_SIZE)

    torch.manual_seed(0)
    model = sv.sparsify(randomize_norms_(timm.create_model(args.model, img_size=args.img_size, **args.model_args).eval()))
    inputs = [torch.randn(1, 3, args.img_size, args.img_size, generator=torch.Generator().manual_seed(s))
              for s in (0, 1)]
    labels = {"dense": 0.0, f"sparse {args.sparsity:.0%}": args.sparsity}
    with tempfile.TemporaryDirectory() as d:
        exported = {label: export_onnx(model, s, Path(d) / f"{i}.onnx", inputs)
                    for i, (label, s) in enumerate(labels.items())}
    runners = {label: e[0] for label, e in exported.items()}
    ms = time_models(runners, inputs[0], warmup=args.warmup, repeats=args.repeats)

    dense_ms, dense_macs = ms["dense"], exported["dense"][2]
    table = Table(title=f"{args.model} @ {args.img_size}², batch 1, onnxruntime {ort.__version__} CPU fp32 "
                        f"(median of {args.repeats}, interleaved)")
    for col in ("model", "GMACs", "ms (median)", "speedup", "ideal (MACs)", "efficiency", "max rel. error"):
        table.add_column(col, justify="right")
    for label, (_, err, macs) in exported.items():
        speedup, ideal = dense_ms / ms[label], dense_macs / macs
        table.add_row(label, f"{macs / 1e9:.2f}", f"{ms[label]:.1f}", f"{speedup:.2f}x", f"{ideal:.2f}x",
                      f"{speedup / ideal:.2f}", f"{err:.1e}")
    Console(width=120).print(table)  # no wrapping when piped to a file
    if args.detector:
        detector_rows(args)
    return {label: err for label, (_, err, _) in exported.items()}


#: the mixed-aspect set (width x height at a 512 px canvas; scaled to --det-img-size): 4:3, 3:4, 16:9, 1:1
MIXED_ASPECT = ((320, 240), (240, 320), (384, 216), (256, 256))


#: the whole-detector rows' backbones (timm constructor args of --model), each under --det-heads: bench-det's small
#: Swin (the detector the PyTorch target was measured on) and the full Swin-T (the paper's backbone)
DET_BACKBONES = {"small Swin": SMALL_SWIN, "Swin-T": {}}
#: how each pair of detectors (dense, sparse) is run: each runtime's pair timed interleaved on its own, so that one
#: runtime's idle worker threads never share the cores with the other's timed run. onnxruntime at its default
#: threads (every core) and at 1 thread (a session per core, as a CPU service scales out)
RUNTIMES = ("onnxruntime", "onnxruntime 1 thread", "PyTorch")


def add_detector_options(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--det-img-size", type=int, default=512, help="the detectors' canvas (px)")
    ap.add_argument("--det-sparsity", type=float, default=0.5, help="uniform window sparsity of the sparse detector")
    ap.add_argument("--det-backbones", default=",".join(DET_BACKBONES),
                    help=f"comma-separated backbones of the whole-detector rows, of {', '.join(DET_BACKBONES)} "
                         f"(default: all)")
    ap.add_argument("--det-model-args", type=json.loads, default=None,
                    help="instead of --det-backbones: one detector on this Swin (timm constructor args as JSON, "
                         "'{}': --model's own)")
    ap.add_argument("--det-heads", type=json.loads, default=LIGHT_HEADS,
                    help="the detectors' task_options as JSON (default bench-det's Faster R-CNN heads; '{}': "
                         "torchvision's defaults)")
    ap.add_argument("--no-detector", dest="detector", action="store_false", help="skip the whole-detector rows")


def detector_rows(args) -> dict:
    """Dense vs sparse whole Faster R-CNN in onnxruntime, per backbone of --det-backbones: {backbone: rows}."""
    if args.smoke:
        return {"smoke": detector_pair_rows(args, "micro Swin", args.model_args, {})}
    if args.det_model_args is not None:
        return {"custom": detector_pair_rows(args, "custom", args.det_model_args, args.det_heads)}
    names = [n.strip() for n in args.det_backbones.split(",") if n.strip()]
    unknown = [n for n in names if n not in DET_BACKBONES]
    if unknown:
        raise SystemExit(f"--det-backbones: unknown {unknown[0]!r} (choose from {', '.join(DET_BACKBONES)})")
    return {n: detector_pair_rows(args, n, DET_BACKBONES[n], args.det_heads) for n in names}


def detector_pair_rows(args, name: str, model_args: dict, heads: dict) -> dict:
    """Dense vs sparse whole Faster R-CNN (random weights, every detection kept so both run the same heads) on
    the Swin `model_args`: each exported and verified by `export_whole_detector`, then timed per runtime
    (`RUNTIMES`: onnxruntime at its default threads and at 1 thread, and the same two detectors in PyTorch, the
    reference the target is read against), each runtime's pair interleaved, on one square image and on each
    image of the mixed-aspect set. Returns {'square': {label: ms}, 'mixed': {label: ms}, ...} with labels
    'onnxruntime dense', 'onnxruntime 1 thread sparse 50%', 'PyTorch dense', ...."""
    from sparsevit_cli.commands.export_whole import (DETECTOR_INPUT, export_whole_detector, onnx_session)
    from sparsevit_cli.model_file import ModelMeta
    from sparsevit_cli.tasks import build_task_model

    S = args.det_img_size
    torch.manual_seed(0)
    body = sv.sparsify(randomize_norms_(timm.create_model(args.model, img_size=S, **model_args).eval()))
    detector = build_task_model(body, "detection", 3, box_score_thresh=0.0, **heads).eval()
    meta = ModelMeta(model=args.model, model_args=dict(model_args, img_size=S), img_size=S, task="detection",
                     num_classes=3, task_options=dict(heads, box_score_thresh=0.0))
    g = torch.Generator().manual_seed(0)
    square = torch.rand(3, S, S, generator=g)
    mixed = [torch.rand(3, h * S // 512, w * S // 512, generator=g) for w, h in MIXED_ASPECT]
    sparsities = {"dense": 0.0, f"sparse {args.det_sparsity:.0%}": args.det_sparsity}
    groups: Dict[str, Dict[str, Callable]] = {runtime: {} for runtime in RUNTIMES}
    notes, parity = [], {}
    with tempfile.TemporaryDirectory() as d:
        for i, (label, sparsity) in enumerate(sparsities.items()):
            body.set_sparsity(sparsity)
            # random weights: near-tied scores may reorder between runtimes; the parity is reported, not required
            report = export_whole_detector(detector, meta, Path(d) / f"det{i}.onnx", S, strict=False)
            parity[label] = max(c["boxes_px"] for c in report["checks"])
            notes += [report["note"]] if report.get("note") else []
            for runtime, threads in (("onnxruntime", 0), ("onnxruntime 1 thread", 1)):
                session = onnx_session(Path(d) / f"det{i}.onnx", threads=threads)
                groups[runtime][f"{runtime} {label}"] = (
                    lambda s: lambda x: s.run(None, {DETECTOR_INPUT: x.numpy()}))(session)
        for label, sparsity in sparsities.items():  # the same detector in PyTorch, its sparsity set per call
            groups["PyTorch"][f"PyTorch {label}"] = (
                lambda s: lambda x: (body.set_sparsity(s), detector([x])))(sparsity)
        square_ms: Dict[str, float] = {}
        mixed_ms: Dict[str, float] = {}
        for runners in groups.values():
            square_ms.update(time_models(runners, square, warmup=args.warmup, repeats=args.repeats))
            for image in mixed:
                for label, ms in time_models(runners, image, warmup=args.warmup, repeats=args.repeats).items():
                    mixed_ms[label] = mixed_ms.get(label, 0.0) + ms / len(mixed)
    body.set_sparsity(0.0)
    width = Console().width
    table = Table(title=f"whole Faster R-CNN, {name} ({args.model} {json.dumps(model_args)}), heads "
                        f"{json.dumps(heads)}, CPU fp32, PyTorch {torch.get_num_threads()} threads, onnxruntime "
                        f"{ort.__version__}, batch 1 (median of {args.repeats}, each runtime's pair interleaved)",
                  width=max(width, 120))
    for col in ("detector", f"{S}² ms", "speedup", "mixed-aspect ms (mean)", "speedup", "max box error (px)"):
        table.add_column(col, justify="right")
    for runtime in RUNTIMES:
        for label in sparsities:
            row, dense = f"{runtime} {label}", f"{runtime} dense"
            table.add_row(row, f"{square_ms[row]:.1f}", f"{square_ms[dense] / square_ms[row]:.2f}x",
                          f"{mixed_ms[row]:.1f}", f"{mixed_ms[dense] / mixed_ms[row]:.2f}x",
                          f"{parity[label]:.2g}" if runtime.startswith("onnxruntime") else "-")
    console = Console(width=120)
    for note in dict.fromkeys(notes):
        console.print(note, highlight=False)
    console.print(table)
    return {"square": square_ms, "mixed": mixed_ms, "notes": notes, "parity_px": parity}


if __name__ == "__main__":
    main()
