"""Exported dense vs exported window-sparse Swin on onnxruntime (CPU), timed in one run (interleaved).

    python benchmarks/bench_export.py [--img-size 448] [--sparsity 0.6] [--repeats 10] [--warmup 3]

Both models go through `sparsevit_cli.commands.export.export_model`, the code behind `sparsevit export`, so each file
is checked against PyTorch as it is written; the parity column is the largest relative error over the
traced input and a fresh one. speedup = dense_ms / sparse_ms; ideal = dense MACs / sparse MACs;
efficiency = speedup / ideal. Random weights (seed 0): latency does not depend on what was learned.
The LayerNorms get random affine parameters too: at timm's init (weight 1, bias 0) every token after the
patch-embedding norm has the same energy, so all first-stage window scores tie and PyTorch and
onnxruntime, rounding differently, would pick different windows; trained models do not tie like that.
"""
import argparse
import tempfile
from pathlib import Path

import onnxruntime as ort
import timm
import torch
from rich.console import Console
from rich.table import Table

import sparsevit_cli as sv
from sparsevit_cli.commands.export import FORMATS, export_model
from sparsevit_cli.timing import time_models
from sparsevit_cli.swin.cost import swin_macs
from common import add_model_options, apply_smoke


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
    args = apply_smoke(ap.parse_args(argv))

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
    return {label: err for label, (_, err, _) in exported.items()}


if __name__ == "__main__":
    main()
