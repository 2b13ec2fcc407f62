"""`sparsevit report` (`make repro`): the paper's central comparisons, reproduced on the demo data.

On top of a finished `sparsevit demo` run (started here if missing), at matched cost:

(a) dense at full resolution,
(b) dense at lower input resolutions (the dense model finetuned at each resolution, then evaluated there),
(c) uniform window sparsity (the adapted model, every block at one ratio),
(d) searched configs (the adapted model, evolutionary search at several MAC budgets),

plus the adaptation table of issue 3 (the un-adapted dense model under uniform 50% sparsity vs the
adapted one). Searches score configs on a fixed random half of the validation split; every accuracy
reported here is top-1 on the other half, which no search saw (no selection bias); GMACs are analytic; latency (batch 1)
and throughput (images/s at batch `THROUGHPUT_BATCH`) are measured on the device, all points timed in one run.
An ablation ranks windows of the same weights by every other registered window score. Writes `report.md`, `report.json`,
`acc_vs_gmacs.png` and `acc_vs_latency.png` (atomically) and prints the table.
"""
from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
from rich.console import Console
from rich.table import Table

from ..io import atomic_write, atomic_write_text, make_console
from .demo import run_demo
from .workflow import (PRESETS, Stages, method_and_backbone, report_indices, run_config, score, search, train,
                       val_split)

UNIFORM = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


@dataclass
class Point:
    family: str     # dense | un-adapted | downscaled | uniform | searched | random | searched+finetuned | score <name>
    label: str
    top1: float
    gmacs: float
    ms: float = float("nan")            # batch-1 latency (median of the interleaved repeats)
    images_per_s: float = float("nan")  # throughput at THROUGHPUT_BATCH
    config: Any = None
    epochs: Optional[int] = None        # epochs the weights were trained in the demo and here
    ms_low: float = float("nan")        # batch-1 latency's interquartile range over the repeats
    ms_high: float = float("nan")


def run_report(demo_dir: str | os.PathLike = "runs/demo", preset: str = "default", device: str = "cpu",
               budgets: Sequence[float] = (0.3, 0.5, 0.7), scales: Sequence[float] = (0.5, 0.75),
               progress: bool = True, console: Optional[Console] = None) -> Dict[str, Any]:
    from ..model_file import load
    from ..timing import THROUGHPUT_BATCH, resolve_device

    console = console or make_console()
    demo_dir = Path(demo_dir)
    run_demo(demo_dir, preset=preset, device=device, progress=progress, console=console)
    p = PRESETS[preset]
    out = demo_dir / "report"
    data = demo_dir / "data"
    dev = resolve_device(device)
    stage = Stages(console)

    points: List[Point] = []
    timed: Dict[str, tuple] = {}  # label -> (model, config, img_size) for the one latency run

    dense = load(demo_dir / "dense" / "model.safetensors").to(dev)
    adapted = load(demo_dir / "adapt" / "model.safetensors").to(dev)
    final = load(demo_dir / "finetune" / "model.safetensors").to(dev)
    # like-for-like dense: the adapted model finetuned dense as long as the final model (the demo's pipeline)
    matched = demo_dir / "finetune_dense" / "model.safetensors"
    dense_row = load(matched).to(dev) if matched.is_file() else dense
    val = val_split(data, p.img_size)
    epochs = {"dense": p.dense_epochs, "adapted": p.dense_epochs + p.adapt_epochs,
              "final": p.dense_epochs + p.adapt_epochs + p.finetune_epochs,
              "downscaled": p.dense_epochs + p.finetune_epochs}
    epochs["dense row"] = epochs["final"] if matched.is_file() else epochs["dense"]

    def add(family: str, label: str, model, config, img_size: int = p.img_size, dataset=None,
            trained: str = "adapted") -> None:
        dataset = dataset or val
        held_out = report_indices(p, len(dataset))  # never seen by any search
        points.append(Point(family, label, *score(model, config, dataset, img_size, dev, held_out),
                            config=config, epochs=epochs[trained]))
        timed[label] = (model, config, img_size)

    add("dense", "dense", dense_row, _dense(dense_row), trained="dense row")
    add("un-adapted", "dense weights, uniform 50%", dense, _uniform(dense, 0.5), trained="dense")

    # (b) dense at lower resolutions: finetune the dense weights at each size, evaluate at that size
    for scale in scales:
        size = _lower_size(p, scale)
        folder = out / f"dense_{size}px"
        stage(f"dense at {size} px", folder / "model.safetensors",
              lambda: _finetune_at(p, demo_dir, folder, size, device, progress, console))
        add("downscaled", f"dense @ {size} px", load(folder / "model.safetensors").to(dev), None, size,
            val_split(data, size), trained="downscaled")

    # (c) uniform sparsity on the adapted weights
    for s in (0.0,) + UNIFORM:
        add("uniform", f"uniform {s:.0%}", adapted, _uniform(adapted, s))

    # (d) searched configs at several MAC budgets, on the adapted weights
    sparsest = method_and_backbone(adapted)[0].macs(method_and_backbone(adapted)[1], _uniform(adapted, UNIFORM[-1]),
                                                 p.img_size) / 1e9
    for b in budgets:
        if b * points[0].gmacs < sparsest:
            console.print(f"[yellow]skipping the {b:.0%} budget: below the sparsest config "
                          f"({sparsest / points[0].gmacs:.0%} of dense MACs)[/]")
            continue
        folder = out / f"search_{round(b * 100)}"
        budget_preset = _with_budget(p, b)
        stage(f"search at {b:.0%} of dense MACs", folder / "best.yaml",
              lambda: search(budget_preset, demo_dir / "adapt" / "model.safetensors", data, folder, device,
                              progress, console))
        from ..io import read_sparsity_file
        add("searched", f"searched {b:.0%}", adapted, read_sparsity_file(folder / "best.yaml")["sparsity"])
        if abs(b - 0.5) < 1e-9:
            best = _random_baseline(adapted, folder, val, p, dev, b * points[0].gmacs)
            add("random", f"best of {best['n']} random {b:.0%}", adapted, best["config"])
    add("searched+finetuned", "searched 50% + finetune (demo)", final, final.sparsevit_meta["sparsity"],
        trained="final")

    # ablation: the same adapted weights ranking windows by each other registered window score (SparseViT)
    method, backbone = method_and_backbone(adapted)
    own_score = method.options(backbone).get("window_score")
    if own_score is not None:
        from ..swin.patch import WINDOW_SCORES
        for name in (n for n in WINDOW_SCORES if n != own_score):
            other = load(demo_dir / "adapt" / "model.safetensors").to(dev)
            method.wrap(method_and_backbone(other)[1], window_score=name)
            for s in (0.3, 0.5, 0.7):
                add(f"score {name}", f"uniform {s:.0%}, score {name}", other, _uniform(other, s))

    _time_all(points, timed, dev, p.timing_repeats)
    from ..tasks import backbone_of
    from ..timm_models import describe_architecture
    arch = describe_architecture(backbone_of(dense))
    training = (f"Training (epochs): dense {epochs['dense row']} ("
                + ("like-for-like: the adapted model finetuned dense as long as the final model"
                   if matched.is_file() else "the dense stage's model: fewer epochs than the final model")
                + f"), searched + finetuned {epochs['final']}, uniform / searched / random / scores "
                  f"{epochs['adapted']} (the adapted weights), downscaled {epochs['downscaled']}, un-adapted "
                  f"{epochs['dense']}.")
    report = {"preset": preset, "img_size": p.img_size, "device": str(dev), "throughput_batch": THROUGHPUT_BATCH,
              "architecture": arch, "training": training, "repeats": p.timing_repeats,
              "points": [vars(pt) for pt in points], "claims": _claims(points)}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "report.json", json.dumps(report, indent=1))
    title = f"{arch}, demo data at {p.img_size} px"
    ylabel = f"top-1 % ({len(report_indices(p, len(val)))} val images no search saw)"
    _plot(points, "gmacs", "GMACs (analytic, batch 1)", out / "acc_vs_gmacs.png", title, ylabel)
    _plot(points, "ms", f"batch-1 latency, ms ({dev}): median and interquartile range of {p.timing_repeats} "
                        f"interleaved repeats", out / "acc_vs_latency.png", title, ylabel)
    atomic_write_text(out / "report.md", _markdown(report, points))
    console.print(_table(points, THROUGHPUT_BATCH))
    for claim in report["claims"]:
        console.print(f"{'[green]holds[/]' if claim['holds'] else '[red]fails[/]'}  {claim['claim']}: {claim['detail']}")
    console.print(f"report -> {out / 'report.md'}")
    return report


# ------------------------------------------------------------------------------------------- pieces
def _dense(model):
    method, backbone = method_and_backbone(model)
    return method.dense_config(backbone)


def _uniform(model, value: float):
    method, backbone = method_and_backbone(model)
    return method.uniform_config(backbone, value)


def _random_baseline(model, search_dir: Path, val, p, dev, max_gmacs: float) -> Dict[str, Any]:
    """Random search run as the evolution was (what it must beat): as many distinct in-budget networks as
    the evolution evaluated, drawn over networks (not genomes), ranked by the same fitness on the same
    fitness images, and its leaders confirmed on the same confirmation images (all read from best.yaml)."""
    from ..evaluate import evaluate_images
    from ..io import read_sparsity_file
    from ..search.confirm import confirm
    from ..search.evolution import Budget, random_search
    from ..search.space import load_space
    from ..tasks import get_task

    best = read_sparsity_file(search_dir / "best.yaml")
    method, backbone = method_and_backbone(model)
    task = get_task("classification")
    split = {"fitness": best["search_split"]["fitness"], "confirmation": best["search_split"]["confirmation"]}
    fitness = best["confirmation"]["fitness"]
    n = best["search"]["evaluations"]
    space = load_space(model.sparsevit_meta.get("space") or method.default_space,
                       group_sizes=method.group_sizes(backbone))
    memo: Dict[tuple, Any] = {}

    def image_scores(config, which: str):
        key = (json.dumps(method.effective(backbone, config, p.img_size)), which)
        if key not in memo:
            memo[key] = evaluate_images(model, method, config, val, task, 100, dev, split[which])
        return memo[key]

    def metric(config) -> Dict[str, float]:
        s = image_scores(config, "fitness")
        return {"fitness": s.fitness(fitness), task.metric_name: s.metric()}

    def gmacs(config) -> float:
        return method.macs(backbone, config, p.img_size) / 1e9

    result = random_search(space, metric, gmacs, Budget(max_cost=max_gmacs), n=n, seed=1,
                           network=lambda c: method.effective(backbone, c, p.img_size))
    dense = method.dense_config(backbone)
    picked = confirm(result, image_scores, dense, gmacs(dense), fitness, task.metric_name)
    return {"config": picked.pick.config, "n": result.evaluations}


def _lower_size(p, scale: float) -> int:
    """The largest multiple of the patch size (4) at or below scale * img_size."""
    return max(4, int(p.img_size * scale) // 4 * 4)


def _with_budget(p, fraction: float):
    from dataclasses import replace
    return replace(p, budget=f"{fraction * 100:g}%")


def _finetune_at(p, demo_dir: Path, folder: Path, size: int, device: str, progress: bool, console) -> None:
    """Dense weights, finetuned at `size` (the input is downscaled by the data transform)."""
    from ..io import atomic_torch_save
    from ..model_file import load
    timm_file = folder / "dense_weights.pth"  # plain timm format: built at the new size by the trainer
    folder.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(timm_file, load(demo_dir / "dense" / "model.safetensors").state_dict())
    cfg = run_config(p, demo_dir / "data", folder, device, epochs=p.finetune_epochs, checkpoint=timm_file,
                      lr=p.lr / 4)
    cfg.model.args["img_size"] = size
    train("finetune", cfg, progress, console)


def _time_all(points: List[Point], timed: Dict[str, tuple], dev, repeats: int) -> None:
    """Batch-1 latency and throughput of every point, each in one interleaved run per input size."""
    from ..timing import latency_and_throughput

    class Configured(torch.nn.Module):
        def __init__(self, model, config):
            super().__init__()
            self.model, self.config = model, config
            self.method, self.backbone = method_and_backbone(model)

        def forward(self, x):
            self.method.apply(self.backbone, self.config)
            return self.model(x)

    by_size: Dict[int, Dict[str, torch.nn.Module]] = {}
    for label, (model, config, size) in timed.items():
        config = config if config is not None else model.sparsevit_meta["sparsity"]
        by_size.setdefault(size, {})[label] = Configured(model, config)
    speed: Dict[str, Dict[str, float]] = {}
    for size, models in by_size.items():
        speed.update(latency_and_throughput(models, lambda n: torch.randn(n, 3, size, size, device=dev),
                                            warmup=2, repeats=repeats))
    for pt in points:
        pt.ms, pt.images_per_s = speed[pt.label]["ms"], speed[pt.label]["images_per_s"]
        pt.ms_low, pt.ms_high = speed[pt.label]["ms_low"], speed[pt.label]["ms_high"]


def _best_at(points: List[Point], family: str, max_gmacs: float) -> Optional[Point]:
    cands = [pt for pt in points if pt.family == family and pt.gmacs <= max_gmacs + 1e-12]
    return max(cands, key=lambda pt: pt.top1) if cands else None


def _claims(points: List[Point]) -> List[Dict[str, Any]]:
    """The paper's claims, checked at matched MACs (each family's best point within each search budget)."""
    dense = next(pt for pt in points if pt.family == "dense")
    claims = []
    for pt in [pt for pt in points if pt.family == "searched"]:
        uni = _best_at(points, "uniform", pt.gmacs)
        low = _best_at(points, "downscaled", pt.gmacs)
        detail = (f"searched {pt.top1:.1f}% @ {pt.gmacs:.3f} GMACs; best uniform within it "
                  f"{uni.top1 if uni else float('nan'):.1f}%; best downscaled within it "
                  f"{low.top1 if low else float('nan'):.1f}%")
        holds = (uni is None or pt.top1 >= uni.top1) and (low is None or (uni or pt).top1 > low.top1)
        claims.append({"claim": f"{pt.label}: searched >= uniform > downscaled at matched MACs", "holds": holds,
                       "detail": detail})
    for rnd in [pt for pt in points if pt.family == "random"]:
        same = next(pt for pt in points if pt.family == "searched" and pt.label.endswith(rnd.label.split()[-1]))
        claims.append({"claim": f"{same.label}: evolutionary search >= random search with as many evaluations",
                       "holds": same.top1 >= rnd.top1, "detail": f"{same.top1:.1f}% vs {rnd.top1:.1f}% ({rnd.label})"})
    half = [pt for pt in points if pt.family.startswith("searched") and pt.gmacs <= 0.5 * dense.gmacs + 1e-12]
    if half:
        best = max(half, key=lambda pt: pt.top1)
        claims.append({"claim": "at 50% of dense MACs, searched sparse within 1 point of dense",
                       "holds": best.top1 >= dense.top1 - 1.0,
                       "detail": f"{best.label} {best.top1:.1f}% vs dense {dense.top1:.1f}%"})
    return claims


def _columns(batch: int) -> List[str]:
    return ["family", "point", "top-1 %", "epochs", "GMACs", "of dense", "ideal (MACs)", "latency ms (batch 1) [IQR]",
            "speedup", f"images/s (batch {batch})", "speedup"]


def _cells(pt: Point, dense: Point) -> List[str]:
    """One point's row: cost, then latency (median [interquartile range]) and throughput, each with its
    speedup over dense."""
    return [pt.family, pt.label, f"{pt.top1:.1f}", "" if pt.epochs is None else str(pt.epochs), f"{pt.gmacs:.3f}",
            f"{pt.gmacs / dense.gmacs:.0%}", f"{dense.gmacs / pt.gmacs:.2f}x",
            f"{pt.ms:.1f} [{pt.ms_low:.1f}, {pt.ms_high:.1f}]", f"{dense.ms / pt.ms:.2f}x", f"{pt.images_per_s:.0f}",
            f"{pt.images_per_s / dense.images_per_s:.2f}x"]


def _table(points: List[Point], batch: int) -> Table:
    table = Table(title="accuracy vs cost on the demo data (val split)")
    for col in _columns(batch):
        table.add_column(col, justify="right")
    for pt in points:
        table.add_row(*_cells(pt, points[0]))
    return table


def _markdown(report: Dict[str, Any], points: List[Point]) -> str:
    columns = _columns(report["throughput_batch"])
    lines = [f"# SparseViT reproduction on the demo data: {report['architecture']} ({report['preset']} preset, "
             f"{report['img_size']} px, {report['device']})", "", report["training"], "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cells(pt, points[0])) + " |" for pt in points]
    lines += ["", "## Claims at matched MACs", ""]
    lines += [f"- **{'holds' if c['holds'] else 'fails'}**: {c['claim']} ({c['detail']})" for c in report["claims"]]
    lines += ["", "![accuracy vs GMACs](acc_vs_gmacs.png)", "", "![accuracy vs latency](acc_vs_latency.png)", ""]
    return "\n".join(lines)


def _plot(points: List[Point], x: str, xlabel: str, path: Path, title: str = "", ylabel: str = "top-1 % (val)") -> None:
    """Each family's points ordered by this plot's cost `x`; latency with its interquartile range as bars."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"dense": ("*", "black"), "un-adapted": ("x", "grey"), "downscaled": ("s-", "tab:red"),
              "uniform": ("o-", "tab:blue"), "searched": ("D-", "tab:green"), "random": ("v", "tab:purple"),
              "searched+finetuned": ("P", "tab:olive")}
    ablations = sorted({pt.family for pt in points} - set(styles))  # window-score ablations: one dotted line each
    styles.update({family: ("o:", colour) for family, colour in zip(ablations, itertools.cycle(
        ("tab:cyan", "tab:orange", "tab:pink", "tab:brown", "tab:gray")))})
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for family, (marker, colour) in styles.items():
        pts = sorted((pt for pt in points if pt.family == family), key=lambda pt: getattr(pt, x))
        if pts:
            xs = [getattr(pt, x) for pt in pts]
            err = [[v - pt.ms_low for v, pt in zip(xs, pts)], [pt.ms_high - v for v, pt in zip(xs, pts)]] \
                if x == "ms" else None
            ax.errorbar(xs, [pt.top1 for pt in pts], xerr=err, fmt=marker, color=colour, label=family,
                        markersize=9 if family == "dense" else 6, capsize=2, elinewidth=1)
    ax.set_xlabel(xlabel, fontsize=8 if x == "ms" else None)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110), binary=True)
    plt.close(fig)
