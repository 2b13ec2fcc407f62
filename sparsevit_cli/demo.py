"""`sparsevit demo`: the whole SparseViT workflow on the built-in data, in one command.

demo data -> dense training of a small Swin -> sparsity-aware adaptation -> evolutionary search under a
MAC budget -> finetuning of the best config -> ONNX export (verified) -> one table: dense vs SparseViT
accuracy, GMACs, measured latency and speedup.

Every stage writes its result under `out/<stage>/` and is skipped when that result exists, and the
training stages resume from their last checkpoint, so an interrupted demo continues where it stopped
(no work is lost). Presets are plain data (`PRESETS`): `quick` (CI, well under a minute on 2 CPU cores),
`default` (~10 min on 2 CPU cores), `repro` (longer training, for `make repro`), `gpu` (larger settings for
`--device cuda`), and `psvit` / `psvit-quick` (the same workflow with PSViT token pooling and attention
sharing on a 12-block / 6-block DeiT).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from rich.console import Console
from rich.table import Table

from .configs import atomic_write_text
from .errors import UserError
from .train.loop import evaluate, held_out_indices


@dataclass(frozen=True)
class DemoPreset:
    """Sizes of one demo run. `model` is a timm model name (its family picks the method: SparseViT for Swin,
    PSViT for ViT/DeiT) and `model_args` its constructor args."""

    img_size: int
    n_train: int
    n_val: int
    num_classes: int
    digit_frac: Tuple[float, float]
    model_args: Dict[str, Any]
    dense_epochs: int
    adapt_epochs: int
    finetune_epochs: int
    batch_size: int
    lr: float
    population: int
    generations: int
    parents: int
    children: int          # mutations and crossovers per generation, each
    eval_samples: int      # val images the search scores configs on; the rest are held out for the results
    budget: str = "50%"    # MAC budget of the search, of dense
    model: str = "swin_tiny_patch4_window7_224"
    timing_repeats: int = 10


# Why these sizes: on 2 CPU cores a Swin trained from scratch must learn to read a small digit on a large
# cluttered canvas in minutes. Max pooling in the head (timm `global_pool="max"`) lets the few digit tokens
# decide instead of being averaged away by background, which makes this learnable in ~20 short epochs;
# 4x4-token windows and two stages keep several windows per stage at 64 px (16, then 4), so the sparsest
# config costs ~26% of dense MACs and a 50% budget leaves the search real choices.
_SMALL_SWIN = dict(window_size=4, global_pool="max", drop_path_rate=0.0)
PRESETS: Dict[str, DemoPreset] = {
    # CI: every stage runs for real, on a few images; accuracies are near chance and only checked for sanity
    "quick": DemoPreset(img_size=64, n_train=64, n_val=48, num_classes=10, digit_frac=(0.25, 0.4),
                        model_args=dict(embed_dim=16, depths=[2, 2], num_heads=[1, 2], **_SMALL_SWIN),
                        dense_epochs=1, adapt_epochs=1, finetune_epochs=1, batch_size=16, lr=1e-3,
                        population=6, generations=2, parents=3, children=3, eval_samples=24, timing_repeats=5),
    "default": DemoPreset(img_size=64, n_train=3000, n_val=600, num_classes=10, digit_frac=(0.25, 0.4),
                          model_args=dict(embed_dim=48, depths=[2, 4], num_heads=[2, 4], **_SMALL_SWIN),
                          dense_epochs=12, adapt_epochs=4, finetune_epochs=2, batch_size=32, lr=1e-3,
                          population=16, generations=4, parents=4, children=6, eval_samples=300),
    # `make repro`: the default, trained longer (~20 min on 2 CPU cores), as the report's starting point
    "repro": DemoPreset(img_size=64, n_train=3000, n_val=600, num_classes=10, digit_frac=(0.25, 0.4),
                        model_args=dict(embed_dim=48, depths=[2, 4], num_heads=[2, 4], **_SMALL_SWIN),
                        dense_epochs=20, adapt_epochs=10, finetune_epochs=3, batch_size=32, lr=1e-3,
                        population=16, generations=4, parents=4, children=6, eval_samples=300),
    "gpu": DemoPreset(img_size=448, n_train=4000, n_val=1000, num_classes=10, digit_frac=(1 / 8, 1 / 5),
                      model_args=dict(embed_dim=64, depths=[2, 2, 6, 2], num_heads=[2, 4, 8, 16], window_size=7,
                                      global_pool="max"),
                      dense_epochs=30, adapt_epochs=10, finetune_epochs=5, batch_size=64, lr=1e-3,
                      population=50, generations=20, parents=10, children=25, eval_samples=500),
    # PSViT on a 12-block DeiT (the gene layout of DeiT-S/B, so its searched config runs on them too)
    "psvit": DemoPreset(model="deit_tiny_patch16_224", img_size=64, n_train=3000, n_val=600, num_classes=10,
                        digit_frac=(0.25, 0.4),
                        model_args=dict(patch_size=8, embed_dim=96, depth=12, num_heads=3, global_pool="max",
                                        drop_path_rate=0.0),
                        dense_epochs=15, adapt_epochs=5, finetune_epochs=2, batch_size=32, lr=1e-3,
                        population=16, generations=4, parents=4, children=6, eval_samples=300, budget="60%"),
    "psvit-quick": DemoPreset(model="deit_tiny_patch16_224", img_size=64, n_train=64, n_val=48, num_classes=10,
                              digit_frac=(0.25, 0.4),
                              model_args=dict(patch_size=8, embed_dim=32, depth=6, num_heads=2, global_pool="max"),
                              dense_epochs=1, adapt_epochs=1, finetune_epochs=1, batch_size=16, lr=1e-3,
                              population=6, generations=2, parents=3, children=3, eval_samples=24, budget="60%",
                              timing_repeats=5),
}


@dataclass
class DemoResult:
    rows: List[Dict[str, Any]] = field(default_factory=list)
    sparsity: Any = None
    export_rel_error: float = float("nan")
    out: str = ""


def run_demo(out: str | os.PathLike = "runs/demo", preset: str = "default", device: str = "cpu",
             progress: bool = True, console: Optional[Console] = None) -> DemoResult:
    """Run (or continue) the demo in `out`; returns the final comparison."""
    from .configs import read_sparsity_file
    from .data.demo import write_demo_data

    console = console or Console()
    if preset not in PRESETS:
        raise UserError(f"unknown demo preset '{preset}' (known: {', '.join(PRESETS)})")
    p = PRESETS[preset]
    out = Path(out)
    _check_same_preset(out, preset, p)
    data = out / "data"
    stage = _Stages(console)

    stage("demo data", data / "demo_data.yaml", lambda: write_demo_data(
        data, img_size=p.img_size, n_train=p.n_train, n_val=p.n_val, seed=0, num_classes=p.num_classes,
        digit_frac=p.digit_frac, progress=progress))
    dense = stage("dense training", out / "dense" / "model.safetensors", lambda: _train(
        "finetune", _run_config(p, data, out / "dense", device, epochs=p.dense_epochs), progress, console))
    adapted = stage("sparsity-aware adaptation", out / "adapt" / "model.safetensors", lambda: _train(
        "adapt", _run_config(p, data, out / "adapt", device, epochs=p.adapt_epochs, checkpoint=dense,
                             lr=p.lr / 2), progress, console))
    best = stage(f"search ({p.budget} of dense MACs)", out / "search" / "best.yaml", lambda: _search(
        p, adapted, data, out / "search", device, progress, console))
    final = stage("finetune the best config", out / "finetune" / "model.safetensors", lambda: _train(
        "finetune", _run_config(p, data, out / "finetune", device, epochs=p.finetune_epochs, checkpoint=adapted,
                                lr=p.lr / 4, sparsity=read_sparsity_file(best)["sparsity"]), progress, console))
    onnx = stage("export to ONNX", out / "export" / "sparsevit.onnx", lambda: _export(final, out / "export"))

    result = _compare(p, dense, final, data, device)
    result.sparsity = read_sparsity_file(best)["sparsity"]
    result.export_rel_error = json.loads((onnx.parent / "export.json").read_text())["max_rel_error"]
    result.out = str(out)
    atomic_write_text(out / "summary.json", json.dumps(asdict(result), indent=1))
    console.print(summary_table(result))
    return result


class _Stages:
    """Runs a stage unless its output exists; prints which stage runs."""

    def __init__(self, console: Console):
        self.console, self.n = console, 0

    def __call__(self, title: str, output: Path, run: Callable[[], Any]) -> Path:
        self.n += 1
        if output.exists():
            self.console.print(f"[dim]{self.n}. {title}: done ({output})[/]")
        else:
            self.console.rule(f"{self.n}. {title}")
            run()
        return output


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


def _run_config(p: DemoPreset, data: Path, out: Path, device: str, epochs: int, checkpoint: Optional[Path] = None,
                lr: Optional[float] = None, sparsity: Any = 0.0):
    from .train.config import parse_run_config
    return parse_run_config({
        "model": {"name": p.model, "args": {"img_size": p.img_size, **p.model_args}},
        "checkpoint": str(checkpoint) if checkpoint else None,
        "data": {"path": str(data), "task": "classification"},
        "sparsity": sparsity,
        "optim": {"name": "adamw", "lr": lr or p.lr, "weight_decay": 0.05},
        "schedule": {"name": "cosine", "warmup_steps": 10},
        "epochs": epochs, "batch_size": p.batch_size, "eval_batch_size": 100, "device": device,
        "seed": 0, "out": str(out), "checkpoint_every": 20,
    }, "demo")


def _train(mode: str, cfg, progress: bool, console: Console) -> None:
    from .train.commands import run_adapt, run_finetune
    (run_adapt if mode == "adapt" else run_finetune)(cfg, resume=True, progress=progress, console=console)


def _search(p: DemoPreset, model_file: Path, data: Path, out: Path, device: str, progress: bool,
            console: Console) -> None:
    from .search.evolution import EvolutionSettings
    from .search.run import SearchOptions, run_search
    settings = EvolutionSettings(population=p.population, generations=p.generations, parents=p.parents,
                                 mutations=p.children, crossovers=p.children, mutation_prob=0.3, seed=0)
    run_search(SearchOptions(checkpoint=str(model_file), data=str(data), out=str(out), budget_macs=p.budget,
                             device=device, eval_samples=p.eval_samples, settings=settings,
                             resume=(out / "search_state.json").exists(), progress=progress), console=console)


def _export(model_file: Path, out: Path) -> None:
    from .export import export_model
    from .pipeline import load_model_file
    model, method, meta = load_model_file(model_file)
    model = model.cpu()
    size = int(meta["img_size"])
    inputs = [torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(s)) for s in (0, 1)]
    report = export_model(model, "onnx", out / "sparsevit.onnx", inputs, method=method, time_it=False)
    atomic_write_text(out / "export.json", json.dumps(report, indent=1))


def _compare(p: DemoPreset, dense_file: Path, sparse_file: Path, data: Path, device: str) -> DemoResult:
    """Accuracy on the val images the search did not score, analytic GMACs and measured latency
    (interleaved, same run)."""
    from .checkpoint import load
    from .measure import resolve_device, time_models

    dev = resolve_device(device)
    val = val_split(data, p.img_size)
    held_out = held_out_indices(len(val), p.eval_samples)  # images the search never scored
    sparse = load(sparse_file).to(dev)
    models = {"dense": load(dense_file).to(dev), _METHOD_LABEL[sparse.sparsevit_meta["method"]]: sparse}
    rows = []
    for name, model in models.items():  # each model keeps running its own stored config afterwards
        top1, gmacs = score(model, None, val, p.img_size, dev, held_out)
        rows.append({"model": name, "top1": top1, "gmacs": gmacs})
    x = torch.randn(1, 3, p.img_size, p.img_size, device=dev)
    ms = time_models(models, x, warmup=3, repeats=p.timing_repeats)
    for row in rows:
        row["ms"] = ms[row["model"]]
        row["speedup"] = ms["dense"] / row["ms"]
    return DemoResult(rows=rows)


def val_split(data: Path, size: int):
    from .data.datasets import build_dataset
    return build_dataset(str(data), "classification", "val", size, train=False)


def method_and_backbone(model):
    """The method and backbone of a toolkit model file's model (see `checkpoint.load`)."""
    from .methods.base import get_method
    from .models.tasks import backbone_of
    return get_method(model.sparsevit_meta["method"]), backbone_of(model)


def score(model, config, dataset, img_size: int, dev, indices) -> Tuple[float, float]:
    """(top-1 %, GMACs) of `model` under `config` (None: its stored config) on `indices` of `dataset`;
    the config stays applied."""
    method, backbone = method_and_backbone(model)
    config = method.validate(backbone, config if config is not None else model.sparsevit_meta["sparsity"])
    top1 = evaluate(model, method, config, dataset, "classification", dataset.num_classes, 100, dev,
                    indices=indices)
    return top1, method.macs(backbone, config, img_size) / 1e9


_METHOD_LABEL = {"sparsevit": "SparseViT", "psvit": "PSViT"}


def summary_table(result: DemoResult) -> Table:
    table = Table(title=f"{result.rows[1]['model']} demo ({result.out}): dense vs searched sparse, batch 1 "
                        f"(top-1 on val images the search never scored)")
    for col in ("model", "top-1 %", "GMACs", "of dense", "latency ms", "speedup"):
        table.add_column(col, justify="right")
    dense_macs = result.rows[0]["gmacs"]
    for r in result.rows:
        table.add_row(r["model"], f"{r['top1']:.1f}", f"{r['gmacs']:.3f}", f"{r['gmacs'] / dense_macs:.0%}",
                      f"{r['ms']:.1f}", f"{r['speedup']:.2f}x")
    table.caption = (f"searched config {result.sparsity}; ONNX export max relative error "
                     f"{result.export_rel_error:.1e}")
    return table

