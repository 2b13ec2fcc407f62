"""`sparsevit demo`: the whole SparseViT workflow on the built-in data, in one command.

The demo is `sparsevit pipeline` (commands/pipeline.py) on the built-in data: demo data -> dense training of a
small Swin -> sparsity-aware adaptation -> evolutionary search under a MAC budget (its pick confirmed against
the best uniform config and dense) -> finetuning of the pick -> evaluation and the report card
(`out/report.md`, plots, kept windows) -> ONNX export (verified) -> one table: dense vs SparseViT accuracy,
GMACs and the MAC-ideal speedup, measured batch-1 latency and throughput (images/s at batch
`THROUGHPUT_BATCH`, where the small demo model's fixed per-call costs no longer hide the saved work), each
with its speedup over dense.

Every stage writes its result under `out/<stage>/` and is skipped when that result exists, and the
training stages resume from their last checkpoint, so an interrupted demo continues where it stopped
(no work is lost). Presets are plain data (`PRESETS`), turned into pipeline settings by
`workflow.pipeline_config`: `quick` (CI, well under a minute on 2 CPU cores), `default` (~10 min on 2 CPU
cores), `repro` (longer training, for `make repro`), `gpu` (larger settings for `--device cuda`), and
`psvit` / `psvit-quick` (the same workflow with PSViT token pooling and attention sharing on a 12-block /
6-block DeiT).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from rich.console import Console
from rich.table import Table

from ..io import atomic_write_text, make_console
from ..errors import UserError
from .workflow import METHOD_LABEL, PRESETS, DemoPreset, Stages, pipeline_config, report_indices, score, val_split


@dataclass
class DemoResult:
    rows: List[Dict[str, Any]] = field(default_factory=list)
    sparsity: Any = None
    export_rel_error: float = float("nan")
    out: str = ""
    throughput_batch: int = 1
    compiled: bool = False
    #: the search's pick vs the best uniform config vs dense, with intervals (`search.confirm.Confirmation`)
    confirmation: Dict[str, Any] = field(default_factory=dict)
    #: whether dense and the final model had the same training, in one line (the report card's)
    training: str = ""


def run_demo(out: str | os.PathLike = "runs/demo", preset: str = "default", device: str = "cpu",
             progress: bool = True, console: Optional[Console] = None, compile: bool = False) -> DemoResult:
    """Run (or continue) the demo in `out`: the demo data, then `sparsevit pipeline` on it with the preset's
    settings (its report card in `out/report.md`); returns the final comparison of dense and the final model
    (the pipeline's evaluation, or timed again under torch.compile, both models checked exact against eager
    first, with `compile`)."""
    from ..io import check_output_dir, read_sparsity_file
    from ..data.demo import write_demo_data
    from .pipeline import run_pipeline

    console = console or make_console()
    if preset not in PRESETS:
        raise UserError(f"unknown demo preset '{preset}' (known: {', '.join(PRESETS)})")
    p = PRESETS[preset]
    from ..timing import resolve_device
    resolve_device(device)  # `--device cuda` without CUDA: refused before the demo data is written
    out = check_output_dir(Path(out), "--out", "the demo run")  # a file there: one line, not FileExistsError
    _check_same_preset(out, preset, p)
    data = out / "data"
    stage = Stages(console)

    stage("demo data", data / "demo_data.yaml", lambda: write_demo_data(
        data, img_size=p.img_size, n_train=p.n_train, n_val=p.n_val, seed=0, num_classes=p.num_classes,
        digit_frac=p.digit_frac, progress=progress))
    done = run_pipeline(pipeline_config(p, data, out, device), progress=progress, console=console, stages=stage)
    if done.stopped:  # only a stop on purpose (a saved interrupt) gets here: the rerun continues
        return DemoResult(out=str(out))
    # dense as the report card has it: like-for-like, the adapted model finetuned dense as long as the pick
    dense = Path(done.evaluation.get("dense_model") or out / "dense" / "model.safetensors")
    final = Path(done.final_model)
    result = _compare(p, dense, final, data, device, compile=True) if compile else _from_evaluation(done.evaluation)
    result.compiled = compile
    searched = read_sparsity_file(out / "search" / "best.yaml")
    result.sparsity = searched["sparsity"]
    result.confirmation = searched.get("confirmation", {})
    result.export_rel_error = done.export["max_rel_error"]
    result.training = done.evaluation.get("training") or ""
    result.out = str(out)
    atomic_write_text(out / "summary.json", json.dumps(asdict(result), indent=1))
    console.print(summary_table(result))
    return result


def _from_evaluation(ev: Dict[str, Any]) -> DemoResult:
    """Dense and the final model, as the pipeline's evaluate stage scored (the val images the search never
    saw), costed and timed them."""
    dense, pick = ev["rows"][0], ev["rows"][-1]
    rows = [{"model": name, "top1": r["metric"], "gmacs": r["gmacs"], "ms": r["ms"],
             "images_per_s": r["images_per_s"], "epochs": r.get("epochs")}
            for name, r in (("dense", dense), (METHOD_LABEL[ev["method"]], pick))]
    for row in rows:
        row["ideal_speedup"] = rows[0]["gmacs"] / row["gmacs"]
        row["speedup"] = rows[0]["ms"] / row["ms"]
        row["throughput_speedup"] = row["images_per_s"] / rows[0]["images_per_s"]
    return DemoResult(rows=rows, throughput_batch=ev["throughput_batch"])


def _check_same_preset(out: Path, name: str, p: DemoPreset) -> None:
    """A demo folder belongs to one preset: mixing stages of two presets would compare unrelated models."""
    marker = out / "demo_preset.json"
    want = {"preset": name, **json.loads(json.dumps(asdict(p)))}
    if marker.is_file():
        have = json.loads(marker.read_text())
        if have != want:
            raise UserError(f"'{out}' holds a demo run with preset '{have.get('preset')}' or other settings; "
                            f"choose another --out")
        return
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(marker, json.dumps(want, indent=1))


def _compare(p: DemoPreset, dense_file: Path, sparse_file: Path, data: Path, device: str,
             compile: bool = False) -> DemoResult:
    """Accuracy on the val images the search did not score, analytic GMACs, measured batch-1 latency and
    throughput (each interleaved, same run)."""
    from ..model_file import load
    from ..timing import THROUGHPUT_BATCH, latency_and_throughput, resolve_device

    dev = resolve_device(device)
    val = val_split(data, p.img_size)
    held_out = report_indices(p, len(val))  # images the search never saw
    sparse = load(sparse_file).to(dev)
    models = {"dense": load(dense_file).to(dev), METHOD_LABEL[sparse.sparsevit_meta["method"]]: sparse}
    rows = []
    for name, model in models.items():  # each model keeps running its own stored config afterwards
        top1, gmacs = score(model, None, val, p.img_size, dev, held_out)
        rows.append({"model": name, "top1": top1, "gmacs": gmacs})
    speed = latency_and_throughput(models, lambda n: torch.randn(n, 3, p.img_size, p.img_size, device=dev),
                                   batch_size=THROUGHPUT_BATCH, warmup=3, repeats=p.timing_repeats, compile=compile)
    for row in rows:
        row.update(speed[row["model"]])
        row["ideal_speedup"] = rows[0]["gmacs"] / row["gmacs"]
        row["speedup"] = speed["dense"]["ms"] / row["ms"]
        row["throughput_speedup"] = row["images_per_s"] / speed["dense"]["images_per_s"]
    return DemoResult(rows=rows, throughput_batch=THROUGHPUT_BATCH, compiled=compile)


def summary_table(result: DemoResult) -> Table:
    how = ", torch.compile" if result.compiled else ""
    table = Table(title=f"{result.rows[1]['model']} demo ({result.out}): dense vs searched sparse{how} "
                        f"(top-1 on val images the search never saw)")
    # short headers keep the table unwrapped in an 80-column terminal; the caption spells them out
    for col in ("model", "top-1 %", "GMACs", "of dense", "ideal", "ms b1", "speedup",
                f"img/s b{result.throughput_batch}", "speedup"):
        table.add_column(col, justify="right")
    dense_macs = result.rows[0]["gmacs"]
    for r in result.rows:
        table.add_row(r["model"], f"{r['top1']:.1f}", f"{r['gmacs']:.3f}", f"{r['gmacs'] / dense_macs:.0%}",
                      f"{r['ideal_speedup']:.2f}x", f"{r['ms']:.1f}", f"{r['speedup']:.2f}x",
                      f"{r['images_per_s']:.0f}", f"{r['throughput_speedup']:.2f}x")
    table.caption = (f"ideal: dense/sparse MACs; ms b1: batch-1 latency; img/s b{result.throughput_batch}: "
                     f"throughput at batch {result.throughput_batch}. Searched config {result.sparsity}; ONNX "
                     f"export max relative error {result.export_rel_error:.1e}"
                     + (f". {result.training}" if result.training else ""))
    return table

