"""The `sparsevit` command line. It only parses options and calls the library; user errors become one
line on stderr and exit code 2."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import UserError
from .io import make_console
from .layers import DEFAULT_BUDGET, EVAL_CHUNK, MAX_SEED, PREFIX_MEMORY_MIB, format_config

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Make vision transformers fast on high-resolution images by searching where to skip "
                       "computation (SparseViT window pruning for Swin, PSViT for plain ViTs).")
console = make_console()


def _workflow_presets():
    from .commands.workflow import PRESETS
    return PRESETS


class Precision(str, Enum):
    """Precisions `measure` times in (timing.DTYPES maps them to torch dtypes; a test keeps the two equal)."""
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"


class SegLabels(str, Enum):
    """What the demo segmentation masks label (data.demo.SEG_LABELS; a test keeps the two equal)."""
    digits = "digits"
    foreground = "foreground"


class PickRule(str, Enum):
    """How a search picks among its confirmed candidates (search.confirm.PICK_RULES; a test keeps the two equal)."""
    best = "best"
    gain_shown = "gain-shown"


class MacScope(str, Enum):
    """What a search's MAC budget counts (commands.search.MAC_SCOPES; a test keeps the two equal)."""
    model = "model"
    backbone = "backbone"


class OnError(str, Enum):
    """What predict does with an unreadable image (commands.predict.ON_ERROR; a test keeps the two equal)."""
    skip = "skip"
    stop = "stop"


class TableFormat(str, Enum):
    """predict's classification table (commands.predict.TABLE_FORMATS; a test keeps the two equal)."""
    csv = "csv"
    json = "json"


#: demo presets, by name: the names of commands.workflow.PRESETS (light to import: no torch)
Preset = Enum("Preset", {name: name for name in _workflow_presets()}, type=str)


@app.callback()
def _root(ctx: typer.Context,
          verbose: bool = typer.Option(False, "--verbose", help="Show library warnings (timm, torch, ONNX).")) -> None:
    """Workflow: adapt -> search -> finetune -> export; measure, info, demo-data, visualize."""
    if verbose:  # `main` runs every command quiet; this lifts it until the command ends
        from .errors import quiet_warnings
        ctx.with_resource(quiet_warnings(verbose=True))


@app.command()
def measure(
    model: Optional[str] = typer.Option(None, help="timm model name (a Swin for SparseViT); default: the "
                                                  "one a --checkpoint holds, else Swin-T."),
    checkpoint: Optional[Path] = typer.Option(None, help="sparsevit model file (.safetensors from adapt/finetune: "
                                                         "it describes its model) or a checkpoint from timm, the "
                                                         "official Swin repo, Hugging Face or mmdetection (its "
                                                         "architecture is read from it)."),
    img_size: Optional[int] = typer.Option(None, help="Input resolution in pixels (square: the reference size "
                                                      "MACs and timings are stated at; a detector resizes and "
                                                      "pads it as at test time); default: the model file's, "
                                                      "else 672."),
    batch_size: int = typer.Option(64, min=1, help="Batch of the throughput row (images/s); latency is batch 1."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    dtype: Precision = typer.Option(Precision.fp32, help="Precision: fp32, fp16 (CUDA only) or bf16."),
    sparsity: Optional[float] = typer.Option(None, help="Uniform window sparsity for every block, 0.0-0.8 "
                                                        "in steps of 0.1 (default: the model file's config, "
                                                        "else 0.6)."),
    config: Optional[Path] = typer.Option(None, help="Sparsity-config YAML (e.g. a search's best.yaml, or "
                                                     "`sparsity: 0.5`); default: --sparsity."),
    repeats: int = typer.Option(10, min=1, help="Timed repeats; the median is reported."),
    warmup: int = typer.Option(3, min=0, help="Untimed warm-up runs."),
    cuda_graphs: bool = typer.Option(False, help="Capture each model in a CUDA graph (CUDA only)."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile both models (checked exact against "
                                                          "eager first); compiled dense vs compiled sparse."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
):
    """Measure dense vs sparse speed on a device: batch-1 latency and throughput, each against the MAC-ideal
    speedup (efficiency). A task model file is timed whole (a detector end to end, its heads in the MACs) and
    its backbone alone (a second pair of rows; `backbone` in --json)."""
    from .commands.measure import measure_dense_vs_sparse, measured_models

    models = measured_models(model, checkpoint, img_size, sparsity, config)
    dtype = dtype.value
    r = measure_dense_vs_sparse(models, batch_size, device, dtype, warmup=warmup, repeats=repeats,
                                cuda_graphs=cuda_graphs, compile=compile)
    if as_json:
        print(json.dumps(r.to_dict()))
        return
    how = "torch.compile" if r.compiled else "eager"
    parts = [("", r.to_dict())] if r.backbone is None else [
        (f"{models.task} model, end to end: ", r.to_dict()),
        ("its backbone alone (on the batch it reads in the task model): ", r.backbone)]
    for part, n in parts:  # a task model: one table per part, each readable in an 80-column terminal
        table = Table(title=f"{part}{r.model} @ {r.img_size}², {r.device} {dtype}, {how} (median of {repeats}, "
                            f"interleaved)")
        # short headers keep the table unwrapped in an 80-column terminal; the caption spells them out
        for col in ("model", "GMACs", "ideal", "ms b1", "speedup", "eff.", f"img/s b{r.batch_size}", "speedup",
                    "eff."):
            table.add_column(col, justify="right")
        table.add_row("dense (timm)", f"{n['dense_gmacs']:.3g}", "1.00x", f"{n['dense_ms']:.1f}", "1.00x", "",
                      f"{n['dense_images_per_s']:.1f}", "1.00x", "")
        table.add_row(f"sparse {format_config(r.sparsity)}", f"{n['sparse_gmacs']:.3g}",
                      f"{n['ideal_speedup']:.2f}x", f"{n['sparse_ms']:.1f}", f"{n['speedup']:.2f}x",
                      f"{n['efficiency']:.2f}", f"{n['sparse_images_per_s']:.1f}", f"{n['throughput_speedup']:.2f}x",
                      f"{n['throughput_efficiency']:.2f}")
        if part == parts[-1][0]:
            table.caption = (f"GMACs per image; ideal: dense/sparse MACs; ms b1: batch-1 latency; img/s "
                             f"b{r.batch_size}: throughput at batch {r.batch_size}; eff.: measured speedup / ideal")
        console.print(table)


def _run_config(config: Optional[Path], overrides: dict):
    """Run config from a YAML file (or defaults), with command-line options overriding its keys."""
    from .train.run_config import load_run_config
    return load_run_config(config, overrides)


@app.command()
def finetune(
    config: Path = typer.Argument(..., help="Run-config YAML: model, checkpoint, data, task, sparsity "
                                            "(a list, a number or a search's best.yaml), optimiser, schedule, epochs..."),
    resume: bool = typer.Option(False, help="Continue bit-for-bit from out/last.pt."),
    out: Optional[str] = typer.Option(None, help="Output directory (overrides the file's `out`); default: the "
                                                 "file's, else runs/finetune."),
    epochs: Optional[int] = typer.Option(None, min=1, help="Epochs (overrides the file); default: the file's, "
                                                           "else 10."),
    progress: bool = typer.Option(True, help="Show progress bars."),
):
    """Train one sparsity config to convergence (all zeros = dense training); writes out/model.safetensors."""
    from .commands.train import run_finetune
    cfg = _run_config(config, {"out": out, "epochs": epochs})
    run_finetune(cfg, resume=resume, progress=progress, console=console)


@app.command()
def adapt(
    config: Optional[Path] = typer.Option(None, "--config", help="Run-config YAML (same keys as finetune); "
                                                                "default: none (the options below and defaults)."),
    checkpoint: Optional[str] = typer.Option(None, help="Trained model: a sparsevit .safetensors file, or a "
                                                         "checkpoint from timm, the official Swin repo, Hugging "
                                                         "Face (file or save_pretrained folder) or mmdetection/"
                                                         "mmsegmentation (its architecture is read from it)."),
    model: Optional[str] = typer.Option(None, help="timm model name; default: the architecture the checkpoint "
                                                   "holds, else swin_tiny_patch4_window7_224."),
    data: Optional[str] = typer.Option(None, help="Data directory in the task's layout: ImageFolder train/ and "
                                                  "val/ (classification) or COCO (detection; the task is the "
                                                  "run config's, else the model file's)."),
    space: Optional[str] = typer.Option(None, help="Search space: packaged name (e.g. swin_t) or YAML path; "
                                                   "default: the method's (swin_auto for Swin)."),
    sandwich: Optional[bool] = typer.Option(None, help="Also train the dense and the sparsest config every step; "
                                                       "default: the run config's, else off."),
    # a plain string, not a Typer choice: the choices are the engine's registry (swin.patch.WINDOW_SCORES),
    # which imports torch, and `sparsevit --help` must stay light; the run config checks it by that registry
    window_score: Optional[str] = typer.Option(None, help="SparseViT window ranking: l2-centered (default: "
                                                          "magnitude of the deviation from the image's mean "
                                                          "token), l2 (the paper's raw L2 magnitude) or "
                                                          "mean-abs (the authors' released code)."),
    epochs: Optional[int] = typer.Option(None, min=1, help="Epochs; default: the run config's, else 10."),
    batch_size: Optional[int] = typer.Option(None, min=1, help="Training images per step per process; default: "
                                                               "the run config's, else 32."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate; default: the run config's optim.lr, else "
                                                  "0.001."),
    out: Optional[str] = typer.Option(None, help="Output directory; default: the run config's, else "
                                                 "runs/finetune."),
    resume: bool = typer.Option(False, help="Continue bit-for-bit from out/last.pt."),
    progress: bool = typer.Option(True, help="Show progress bars."),
):
    """Sparsity-aware adaptation: every step trains a random valid config of the search space."""
    from .commands.train import run_adapt
    cfg = _run_config(config, {"checkpoint": checkpoint, "model.name": model, "data.path": data,
                               "adapt.space": space, "adapt.sandwich": sandwich,
                               "method_options.window_score": window_score, "epochs": epochs,
                               "batch_size": batch_size, "optim.lr": lr, "out": out})
    run_adapt(cfg, resume=resume, progress=progress, console=console)


@app.command()
def search(
    checkpoint: str = typer.Option(..., help="Adapted sparsevit model file (.safetensors from `adapt`)."),
    data: str = typer.Option(..., help="Data directory; the metric is measured on its val/ split."),
    out: str = typer.Option("runs/search", help="Output directory: best.yaml, history.jsonl, pareto.png."),
    space: Optional[str] = typer.Option(None, help="Search space: packaged name (swin_t, psvit_deit, ...) or "
                                                   "YAML path (default: the one the model was adapted on)."),
    budget_macs: Optional[str] = typer.Option(None, help="MAC budget: GMACs per image batch (e.g. 2.5GMACs) or "
                                                         "a percentage of the dense model (e.g. 50%); a bare "
                                                         "number is refused; for images of --img-size square "
                                                         "(detectors: as their resize and padding make it; the "
                                                         "default resize fits every image in that square). "
                                                         "Checked against the cheapest and densest config first. "
                                                         "Give it or --budget-latency."),
    budget_latency: Optional[str] = typer.Option(None, help="Latency budget on --device: milliseconds per "
                                                            "forward (e.g. 20ms) or a percentage of dense (60%), "
                                                            "timed end to end on the first --batch-size val "
                                                            "images; a bare number is refused. Give it or "
                                                            "--budget-macs."),
    budget_macs_of: Optional[MacScope] = typer.Option(None, help="What --budget-macs and --min-macs count: the "
                                                                   "whole task model as executed (detectors: "
                                                                   "backbone, FPN, RPN and RoI heads) or its sparse "
                                                                   "backbone alone (the paper's '50% of backbone "
                                                                   "MACs'). Default: the model for classification, "
                                                                   "the backbone for detection and segmentation "
                                                                   "(neck and heads are a fixed cost)."),
    min_macs: Optional[str] = typer.Option(None, help="Lower MAC bound (2GMACs or % of dense); default: none."),
    min_latency: Optional[str] = typer.Option(None, help="Lower latency bound (ms or % of dense); default: none."),
    latency_table: Optional[str] = typer.Option(None, help="Per-block latency table JSON: predicted instead of "
                                                           "measured; built and saved there if missing. Default: "
                                                           "none (measured)."),
    compile: bool = typer.Option(False, "--compile", help="Measure the latency budget on the torch.compile'd "
                                                          "model (checked exact against eager per config); "
                                                          "not with --latency-table."),
    device: str = typer.Option("cpu", help="cpu or cuda: where accuracy and latency are measured."),
    img_size: Optional[int] = typer.Option(None, help="Input resolution in pixels (default: the model's)."),
    batch_size: int = typer.Option(1, min=1, help="Batch size that costs (MACs, latency) are counted at."),
    eval_samples: int = typer.Option(1000, min=1, help="Fitness split: val images every candidate is scored "
                                                       "on (a fixed random draw, recorded in best.yaml)."),
    confirm_samples: int = typer.Option(1000, min=1, help="Confirmation split: other val images the top "
                                                          "candidates and the best uniform config are re-scored "
                                                          "on; the pick is the best there."),
    confirm_top: int = typer.Option(5, min=1, help="Distinct top candidates re-scored on the confirmation split."),
    pick: PickRule = typer.Option(PickRule.gain_shown, help="gain-shown (default): the best candidate on the "
                                                            "confirmation split only when its gain over the best "
                                                            "uniform config is shown there (its interval above 0 "
                                                            "at the Bonferroni level over the candidates: 99% for "
                                                            "the best of 5), else that uniform config; best: the "
                                                            "best candidate there, shown or not."),
    fitness: Optional[str] = typer.Option(None, help="What candidates are ranked by: logprob (mean log-probability "
                                                     "of the true class; classification, the default there) or "
                                                     "metric (the task's metric; the default elsewhere)."),
    split_seed: int = typer.Option(0, min=0, max=MAX_SEED, help="Seed of the fitness / confirmation split of the "
                                                                 "val images, 0 to 2^32-1."),
    population: int = typer.Option(50, min=1, help="Configs in the first (random, in-budget) population."),
    generations: int = typer.Option(20, min=1, help="Generations."),
    parents: int = typer.Option(10, min=1, help="Top configs kept each generation."),
    mutations: int = typer.Option(25, min=0, help="Mutated children per generation."),
    crossovers: int = typer.Option(25, min=0, help="Crossover children per generation."),
    mutation_prob: float = typer.Option(0.1, help="Per-gene probability of resampling in a mutant (0-1)."),
    seed: int = typer.Option(0, min=0, max=MAX_SEED, help="Random seed, 0 to 2^32-1 (same seed, same search)."),
    resume: bool = typer.Option(False, help="Continue an interrupted search in --out: every network already "
                                "scored is kept (none is scored twice)."),
    shared_prefix: bool = typer.Option(True, help="Score each chunk of networks as a tree over their shared "
                                       "block prefixes (default: on; same fitness, fewer block executions)."),
    race: bool = typer.Option(False, help="Racing on growing slices of the fitness images (default: off): a "
                              "network shown worse than the leader on the images so far (paired per-image differences, 99% "
                              "over the round's comparisons) stops early."),
    eval_chunk: int = typer.Option(EVAL_CHUNK, min=1, help="Networks scored together and journaled together "
                                   f"(default: {EVAL_CHUNK} networks)."),
    prefix_memory: int = typer.Option(PREFIX_MEMORY_MIB, min=0, help="MiB kept from one generation to the next "
                                      "of what the fitness batches give before any config (the decoded images, "
                                      "on the host, and each batch's first block run wide, on the search's "
                                      "device), so later generations skip it; 0: off (default: "
                                      f"{PREFIX_MEMORY_MIB} MiB; same fitness either way)."),
    progress: bool = typer.Option(True, help="Show progress bars."),
):
    """Evolutionary search (DEAP) for the most accurate config within a MAC or latency budget."""
    from .search.evolution import EvolutionSettings
    from .commands.search import SearchOptions, run_search
    settings = EvolutionSettings(population=population, generations=generations, parents=parents,
                                 mutations=mutations, crossovers=crossovers, mutation_prob=mutation_prob, seed=seed)
    opts = SearchOptions(checkpoint=checkpoint, data=data, out=out, space=space, budget_macs=budget_macs,
                         budget_macs_of=budget_macs_of.value if budget_macs_of else None,
                         budget_latency=budget_latency, min_macs=min_macs, min_latency=min_latency,
                         latency_table=latency_table, compile=compile, device=device, img_size=img_size,
                         batch_size=batch_size,
                         eval_samples=eval_samples, confirm_samples=confirm_samples, confirm_top=confirm_top,
                         pick=pick.value, fitness=fitness, split_seed=split_seed, settings=settings, resume=resume,
                         progress=progress, shared_prefix=shared_prefix, race=race, eval_chunk=eval_chunk,
                         prefix_memory=prefix_memory)
    run_search(opts, console=console)


@app.command()
def evaluate(
    checkpoint: str = typer.Option(..., help="sparsevit model file (.safetensors from finetune/adapt), or a "
                                             "classifier checkpoint in another layout (timm, official Swin, "
                                             "Hugging Face, mmdetection) evaluated dense."),
    data: str = typer.Option(..., help="Data directory in the model's task layout (ImageFolder, segmentation "
                                       "folders or COCO)."),
    config: Optional[str] = typer.Option(None, help="Sparsity-config YAML (e.g. a search's best.yaml); default: "
                                                    "the config stored in the model file."),
    sparsity: Optional[float] = typer.Option(None, help="Uniform sparsity for every block instead (0.0-0.8); "
                                                        "default: the model file's config."),
    dense: bool = typer.Option(False, "--dense", help="Also score the dense config (same weights), first row."),
    split: str = typer.Option("val", help="Split of --data to score (its folder or instances_<split>.json)."),
    batch_size: int = typer.Option(16, min=1, help="Images per forward."),
    max_samples: Optional[int] = typer.Option(None, min=1, help="Score a fixed random subset of this many images "
                                                                "(default: all)."),
    device: str = typer.Option("cpu", help="cpu or cuda (cuda:N)."),
    img_size: Optional[int] = typer.Option(None, min=1, help="Input resolution in pixels, square; default: the "
                                                             "model file's (a Swin runs any size: e.g. 512 for a "
                                                             "model built at 256; a ViT only its own)."),
    results_json: Optional[str] = typer.Option(None, help="Detectors: write the detections of the config asked "
                                                          "for (not the --dense row) as a COCO results file "
                                                          "(xywh boxes, the data's category ids, scores), as "
                                                          "pycocotools' loadRes reads it; instance segmentation: "
                                                          "this file holds the RLE masks (no box, so loadRes "
                                                          "takes areas from masks) and <stem>.bbox.json the "
                                                          "boxes. Default: none written."),
    per_class: bool = typer.Option(False, "--per-class", help="Detectors: AP of every category too."),
    include_fitness_images: bool = typer.Option(False, "--include-fitness-images",
                                                help="With a search's best.yaml: also score the val images the "
                                                     "search ranked its candidates on (left out by default)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
):
    """Score a model file on your data: the task's metrics (top-1, mIoU, COCO box/mask AP, %) and GMACs per
    image (the whole task model as executed, and its backbone), under its config or another one. Detectors:
    COCO's standard summary (AP, AP50, AP75, APs/m/l, AR@1/10/100, ARs/m/l) of boxes (and masks) too."""
    from .commands.evaluate import EvaluateOptions, run_evaluate

    result = run_evaluate(EvaluateOptions(checkpoint=checkpoint, data=data, config=config, sparsity=sparsity,
                                          dense=dense, split=split, batch_size=batch_size, max_samples=max_samples,
                                          device=device, results_json=results_json, per_class=per_class,
                                          include_fitness_images=include_fitness_images, img_size=img_size))
    if result is None:  # a torchrun rank other than 0
        return
    if as_json:
        print(json.dumps(result))
        return
    if result.get("note"):
        console.print(result["note"])
    table = Table(title=f"{result['model_file']}: {result['task']} on {result['images']} {split} images")
    for col in ("config", *result["metrics"], "GMACs", "backbone GMACs"):
        table.add_column(col, justify="right")
    dense_row = result["rows"][0]
    for r in result["rows"]:
        table.add_row(format_config(r["config"]), *(f"{r[m]:.2f}" for m in result["metrics"]),
                      f"{r['gmacs']:.3g}" + (f" ({r['gmacs'] / dense_row['gmacs']:.0%})" if dense else ""),
                      f"{r['backbone_gmacs']:.3g}")
    console.print(table)
    if "coco" in result["rows"][-1]:
        _print_coco_summary(result)
    if "results_json" in result:
        files = ", ".join(f"{path} ({kind})" for kind, path in result["results_files"].items())
        console.print(f"wrote {files}: COCO results of {format_config(result['rows'][-1]['config'])}")


#: COCOeval's summary as the table shows it (key in `detection.coco.SUMMARY_NAMES`, header)
_COCO_COLUMNS = (("ap", "AP"), ("ap50", "AP50"), ("ap75", "AP75"), ("ap_small", "APs"), ("ap_medium", "APm"),
                 ("ap_large", "APl"), ("ar1", "AR1"), ("ar10", "AR10"), ("ar100", "AR100"))


def _print_coco_summary(result: dict) -> None:
    """COCOeval's standard summary of every row and metric (box, mask), and the per-category AP if asked."""
    def pct(v):
        return "-" if v is None else f"{v:.1f}"  # None: no ground truth in that size range

    table = Table(title="COCO summary (pycocotools COCOeval, %)")
    for col in ("config", "", *(h for _, h in _COCO_COLUMNS)):
        table.add_column(col, justify="right")
    for r in result["rows"]:
        for metric, stats in r["coco"].items():
            table.add_row(format_config(r["config"]), metric.replace("_ap", ""),
                          *(pct(stats[k]) for k, _ in _COCO_COLUMNS))
    console.print(table)
    if "per_class" not in next(iter(result["rows"][-1]["coco"].values())):
        return
    table = Table(title="AP per category (%)")
    table.add_column("category", justify="left")
    columns = [(r, metric) for r in result["rows"] for metric in r["coco"]]
    for r, metric in columns:
        table.add_column(f"{metric.replace('_ap', '')} {r['name']}", justify="right")
    for name in next(iter(result["rows"][-1]["coco"].values()))["per_class"]:
        table.add_row(name, *(pct(r["coco"][metric]["per_class"][name]) for r, metric in columns))
    console.print(table)


@app.command()
def visualize(
    checkpoint: Path = typer.Option(..., help="SparseViT model file (.safetensors from adapt/finetune)."),
    image: Path = typer.Option(..., help="Image to draw on (PNG, JPEG, ...); resized and center-cropped to "
                                         "--img-size like evaluation images (detectors: resized by the "
                                         "detector's own transform)."),
    config: Optional[Path] = typer.Option(None, help="Sparsity-config YAML (e.g. a search's best.yaml); "
                                                     "default: the config stored in the model file."),
    img_size: Optional[int] = typer.Option(None, min=1, help="Input resolution in pixels, square; default: the "
                                                             "model file's (a Swin runs any size; a ViT only its "
                                                             "own)."),
    out: Path = typer.Option(..., help="Picture to write (.png; .pdf, .svg, .jpg also work), written atomically."),
    score_threshold: Optional[float] = typer.Option(None, help="Detectors: draw predictions scoring at least "
                                                               "this, in [0, 1]. Default 0.5, and when no "
                                                               "prediction reaches it (a young model), the 5 best "
                                                               "with a line saying so."),
):
    """Draw the windows each stage keeps over an image (pruned windows dimmed), like SparseViT's figure 1;
    for detection and instance-segmentation models, the predicted boxes (and masks) too."""
    from .commands.visualize import visualize_windows
    result = visualize_windows(checkpoint, image, out, config=config, img_size=img_size,
                               score_threshold=score_threshold)
    for st in result["stages"]:
        console.print(f"stage {st['stage']}: {st['ratio']:.0%} pruned, {st['kept']}/{st['windows']} windows kept "
                      f"({st['tokens'][0]}x{st['tokens'][1]} tokens, window {st['window'][0]}x{st['window'][1]})")
    if "detections" in result:
        shown = ", ".join(f"{d['class']} {d['score']:.2f}" for d in result["detections"][:10])
        more = f", ... ({len(result['detections'])} in all)" if len(result["detections"]) > 10 else ""
        console.print(f"detections: {len(result['detections'])}" + (f" ({shown}{more})" if shown else ""))
        if "note" in result:
            console.print(f"note: {result['note']}", highlight=False)
    console.print(f"wrote {result['out']}")


@app.command()
def predict(
    model: Path = typer.Option(..., help="A sparsevit model file (.safetensors) or an ONNX file from `sparsevit "
                                         "export` (whole model; it carries the classes and category ids)."),
    images: Path = typer.Option(..., help="Folder of images (PNG, JPEG, ...; any sizes, greyscale and RGBA read "
                                          "as RGB), or one image file."),
    out: Path = typer.Option(..., help="Output folder: results.json + images.json (detection; instance "
                                       "segmentation: masks in results.json, boxes in results.bbox.json), masks/ "
                                       "(segmentation: one PNG of class indices per image, its own size) or "
                                       "predictions.csv/.json (classification), and pictures/ with --pictures."),
    batch_size: int = typer.Option(8, min=1, help="Images per forward (default 8)."),
    on_error: OnError = typer.Option(OnError.skip, help="An image that cannot be read: skip it (one line each) "
                                                        "or stop there (exit 2). Default: skip."),
    pictures: bool = typer.Option(False, "--pictures", help="Also draw each image's predictions into pictures/ "
                                                             "(PNG). Default: off."),
    score_threshold: Optional[float] = typer.Option(None, help="Pictures: draw detections scoring at least this "
                                                               "(0-1); default 0.5, or the best few when none "
                                                               "reaches it. The results files keep every detection."),
    table_format: TableFormat = typer.Option(TableFormat.csv, help="Classification table format (default csv)."),
    coco_images: Optional[Path] = typer.Option(None, help="Detection: a COCO instances JSON listing the images; "
                                                          "the results use its image ids (by file name). Default: "
                                                          "ids 1..N in file-name order, listed in images.json."),
    device: str = typer.Option("cpu", help="cpu or cuda (cuda:N); model files only (default cpu)."),
    progress: bool = typer.Option(True, help="Show a progress bar (default on)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of lines."),
):
    """Predict a folder of images with a model file or an exported ONNX file: COCO results (detectors, the data
    set's category ids), PNG masks (segmentation), or class and score per image (classification)."""
    from .commands.predict import PredictOptions, run_predict

    err = make_console(stderr=True)
    result = run_predict(PredictOptions(model=str(model), images=str(images), out=str(out), batch_size=batch_size,
                                        on_error=on_error.value, pictures=pictures, score_threshold=score_threshold,
                                        table_format=table_format.value,
                                        coco_images=str(coco_images) if coco_images else None, device=device,
                                        progress=progress and not as_json),
                         console=err, warn=lambda line: err.print(line, highlight=False, markup=False, soft_wrap=True))
    if as_json:
        print(json.dumps(result))
        return
    console.print(f"{result['task']}: predicted {result['predicted']} of {result['images']} images"
                  + (f" ({len(result['skipped'])} skipped)" if result["skipped"] else ""), highlight=False)
    for what, path in result["files"].items():
        console.print(f"wrote {path} ({what.replace('_', ' ')})", highlight=False)


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Output directory; an interrupted demo continues there."),
    quick: bool = typer.Option(False, help="Tiny settings (well under a minute on 2 CPU cores; used by CI)."),
    preset: Optional[Preset] = typer.Option(None, help="quick, default (about 10 minutes on 2 CPU cores), repro "
                                                    "(longer training), gpu, psvit or psvit-quick (PSViT on a DeiT)."),
    device: str = typer.Option("cpu", help="cpu or cuda (with cuda the 'gpu' preset is the default)."),
    progress: bool = typer.Option(True, help="Show progress bars."),
    compile: bool = typer.Option(False, "--compile", help="Time the final comparison under torch.compile "
                                                          "(checked exact against eager first)."),
):
    """The whole workflow on built-in data: train, adapt, search (50% MACs), finetune, export, compare
    (batch-1 latency and throughput)."""
    from .commands.demo import run_demo
    name = preset.value if preset else ("quick" if quick else "gpu" if device.startswith("cuda") else "default")
    run_demo(out, preset=name, device=device, progress=progress, console=console, compile=compile)


@app.command()
def pipeline(
    config: Optional[Path] = typer.Argument(None, help="Run-config YAML with a `pipeline:` section (budget, "
                                                       "stages and their sizes); optional with the flags below, "
                                                       "which override its keys."),
    checkpoint: Optional[str] = typer.Option(None, help="Trained model to start from: a sparsevit model file, "
                                                         "or a checkpoint from timm, the official Swin repo, "
                                                         "Hugging Face (file or folder) or mmdetection/"
                                                         "mmsegmentation (its architecture is read from it)."),
    model: Optional[str] = typer.Option(None, help="timm model name (e.g. swin_tiny_patch4_window7_224); "
                                                   "default: the architecture the checkpoint holds, else "
                                                   "swin_tiny_patch4_window7_224."),
    model_arg: Optional[List[str]] = typer.Option(None, "--model-arg", help=(
        "A timm constructor argument as KEY=VALUE (VALUE read as YAML), repeatable, e.g. --model-arg "
        "embed_dim=32 --model-arg depths=[2,2,6,2] (the run config's model.args); default: timm's.")),
    img_size: Optional[int] = typer.Option(None, min=1, help="Input resolution in pixels, square (model.args."
                                                             "img_size); default: 224, or the model file's."),
    data: Optional[str] = typer.Option(None, help="Your data: the folder holding train/ and val/ (ImageFolder or "
                                                  "segmentation folders), or a COCO folder (train/, val/, "
                                                  "annotations/)."),
    task: Optional[str] = typer.Option(None, help="classification, segmentation, detection or "
                                                  "instance_segmentation; default: classification, or the model "
                                                  "file's."),
    budget_latency: Optional[str] = typer.Option(None, help="Latency budget on --device: ms (20ms) or a "
                                                            "percentage of dense (60%), timed end to end; a bare "
                                                            "number is refused. Default: none (a MAC budget)."),
    budget_macs: Optional[str] = typer.Option(None, help=f"MAC budget: GMACs (2.5GMACs) or a percentage of dense "
                                                         f"(50%); a bare number is refused. Default: "
                                                         f"{DEFAULT_BUDGET} when neither budget is given."),
    budget_macs_of: Optional[MacScope] = typer.Option(None, help="What --budget-macs counts: the whole model or "
                                                                   "its backbone. Default: the model for "
                                                                   "classification, the backbone for detection and "
                                                                   "segmentation (neck and heads are a fixed cost)."),
    epochs: Optional[int] = typer.Option(None, min=1, help="Epochs of every training stage (the run config's "
                                                           "`epochs`); default: 10."),
    epochs_dense: Optional[int] = typer.Option(None, min=1, help="Epochs of the dense finetune (turns that stage on; "
                                                                 "default: off, the checkpoint is trained)."),
    epochs_adapt: Optional[int] = typer.Option(None, min=1, help="Epochs of the adapt stage; default: --epochs."),
    epochs_finetune: Optional[int] = typer.Option(None, min=1, help="Epochs of the final finetune; default: "
                                                                    "--epochs."),
    batch_size: Optional[int] = typer.Option(None, min=1, help="Training images per step; default: 32."),
    population: Optional[int] = typer.Option(None, min=1, help="Search: configs in the first population; "
                                                               "default: 50."),
    generations: Optional[int] = typer.Option(None, min=1, help="Search: generations; default: 20."),
    eval_samples: Optional[int] = typer.Option(None, min=1, help="Val images the search ranks candidates on "
                                                                 "(fitness split); default: half of what the "
                                                                 "report split leaves, at most 1000."),
    confirm_samples: Optional[int] = typer.Option(None, min=1, help="Other val images the search confirms its "
                                                                    "leaders on; default: as --eval-samples."),
    report_samples: Optional[int] = typer.Option(None, min=1, help="Val images in neither split, which the "
                                                                   "report card scores (at least); default: 20% "
                                                                   "of the val split, at least 10."),
    allow_small_val: bool = typer.Option(False, "--allow-small-val", help="Run on a val split too small for the "
                                                                          "three splits (the report card may then "
                                                                          "score images the search saw)."),
    out: Optional[str] = typer.Option(None, help="Output folder; an interrupted pipeline continues there. "
                                                 "Default: runs/pipeline."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda or cuda:N: where training runs and latency is "
                                                    "measured; default: cpu."),
    progress: bool = typer.Option(True, help="Show progress bars."),
):
    """From a checkpoint and your data to a deployable sparse model in one resumable command: (dense finetune,)
    adapt, search in the budget, finetune, evaluate, export, and a report card (report.md and plots). Budget,
    device and val split are checked first (seconds): a mistake costs no training."""
    from .pipeline import load_pipeline_config
    from .commands.pipeline import run_pipeline
    from .train.run_config import REMOVE, parse_model_args
    budget = {"pipeline.budget.macs_of": budget_macs_of.value if budget_macs_of else None}
    if (budget_macs is None) != (budget_latency is None):  # one budget flag replaces the file's budget
        budget.update({"pipeline.budget.macs": budget_macs or REMOVE,
                       "pipeline.budget.latency": budget_latency or REMOVE})
        if budget_latency is not None and budget_macs_of is None:
            budget["pipeline.budget.macs_of"] = REMOVE
    elif budget_macs is not None:
        raise UserError("give one budget: --budget-macs or --budget-latency")
    args = {f"model.args.{k}": v for k, v in parse_model_args(model_arg or []).items()}
    cfg = load_pipeline_config(config, {
        "checkpoint": checkpoint, "model.name": model, **args, "model.args.img_size": img_size, "data.path": data,
        "data.task": task, "epochs": epochs, "batch_size": batch_size, "out": out, "device": device,
        "pipeline.dense.run": True if epochs_dense is not None else None, "pipeline.dense.epochs": epochs_dense,
        "pipeline.adapt.epochs": epochs_adapt, "pipeline.finetune.epochs": epochs_finetune,
        "pipeline.search.population": population, "pipeline.search.generations": generations,
        "pipeline.search.eval_samples": eval_samples, "pipeline.search.confirm_samples": confirm_samples,
        "pipeline.search.report_samples": report_samples,
        "pipeline.allow_small_val": True if allow_small_val else None, **budget})
    run_pipeline(cfg, progress=progress, console=console)


@app.command()
def report(
    out: Path = typer.Option(Path("runs/demo"), help="Demo run directory (the demo is run there first if missing); "
                                                     "the report goes to OUT/report/."),
    preset: Preset = typer.Option("default", help="Demo preset: quick, default, repro (what `make repro` uses) or gpu."),
    device: str = typer.Option("cpu", help="cpu or cuda: where accuracy and latency are measured."),
    budgets: str = typer.Option("0.3,0.5,0.7", help="Search budgets as fractions of dense MACs, comma-separated."),
    scales: str = typer.Option("0.5,0.75", help="Lower input resolutions for the downscaled-dense baseline, as "
                                                "fractions of the full resolution."),
    progress: bool = typer.Option(True, help="Show progress bars."),
):
    """Reproduce the paper's comparisons on the demo data: accuracy vs MACs and vs latency for dense, downscaled
    dense, uniform sparsity and searched configs; writes report.md and PNG plots."""
    from .commands.report import run_report
    run_report(out, preset=preset.value, device=device, budgets=_fractions(budgets, "--budgets"),
               scales=_fractions(scales, "--scales"), progress=progress, console=console)


def _fractions(text: str, option: str) -> List[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{option} must be comma-separated fractions such as 0.3,0.5, got '{text}'")
    if not values or not all(0.0 < v < 1.0 for v in values):
        raise UserError(f"{option} must be fractions between 0 and 1, got '{text}'")
    return values


@app.command("demo-data")
def demo_data(
    out_dir: Path = typer.Argument(..., help="Directory to write (train/, val/ and seg/ layouts)."),
    img_size: int = typer.Option(224, min=32, help="Image side in pixels."),
    train: int = typer.Option(200, min=1, help="Training images."),
    val: int = typer.Option(100, min=1, help="Validation images."),
    seed: int = typer.Option(0, min=0, max=MAX_SEED, help="Random seed, 0 to 2^32-1 (same seed, same bytes)."),
    detection: bool = typer.Option(False, "--detection/--no-detection", help=(
        "Also write a COCO detection set in det/ (several digits per canvas, boxes and instance masks; "
        "data for task: detection or instance_segmentation).")),
    seg_labels: SegLabels = typer.Option(SegLabels.digits, help=(
        "What the seg/ masks label: digits (each digit's class, 11 classes with background) or foreground "
        "(where the digits are, 2 classes; learnable in a short CPU training).")),
):
    """Write the built-in high-resolution demo data set: small handwritten digits on large textured canvases."""
    from .data.demo import write_demo_data
    from .io import check_output_dir
    check_output_dir(out_dir, "output folder", "the demo data set")
    info = write_demo_data(out_dir, img_size=img_size, n_train=train, n_val=val, seed=seed, progress=True,
                           detection=detection, seg_labels=seg_labels.value)
    console.print(f"wrote demo data to {out_dir}: {info}")


class ExportFormat(str, Enum):
    """What `export` writes (one writer and runtime per name in commands/export.FORMATS)."""
    onnx = "onnx"
    torchscript = "torchscript"
    pt2 = "pt2"


class ExportDtype(str, Enum):
    """Export precisions this runtime can verify (fp16 export is for CUDA runtimes)."""
    fp32 = "fp32"


@app.command()
def export(
    checkpoint: Path = typer.Option(..., help="sparsevit model file (.safetensors from finetune/adapt)."),
    config: Optional[Path] = typer.Option(None, help="Sparsity-config YAML (e.g. best.yaml); default: the "
                                                     "config stored in the model file."),
    format: ExportFormat = typer.Option(ExportFormat.onnx, help="Output format."),
    img_size: Optional[int] = typer.Option(None, min=1, help="Input resolution in pixels, square; default: the "
                                                             "model file's (a Swin exports at any size; a ViT "
                                                             "only at its own)."),
    batch_size: int = typer.Option(1, min=1, help="Static batch size of the exported graph."),
    dtype: ExportDtype = typer.Option(ExportDtype.fp32, help="Precision (fp16 export is for CUDA runtimes; "
                                                             "not verifiable here)."),
    out: Path = typer.Option(..., help="Output file."),
    tolerance: float = typer.Option(1e-4, help="Largest accepted relative error vs PyTorch (>= 0)."),
    data: Optional[str] = typer.Option(None, help="Data directory: verify on real validation images too; "
                                                  "default: none (random inputs only)."),
    time_it: bool = typer.Option(True, "--time/--no-time", help="Time exported sparse vs exported dense."),
    dynamic_size: Optional[bool] = typer.Option(None, "--dynamic-size/--static-size", help=(
        "Export with dynamic input height and width (ONNX dynamic axes, torch.export dynamic shapes), verified at "
        "the model's size and at another one (and on --data's images at their own size); a format that cannot is "
        "one line, and the model is exported at its fixed size. Default: dynamic for a detector's backbone (its "
        "input size varies per batch), static otherwise.")),
    backbone_only: bool = typer.Option(False, "--backbone-only", help=(
        "Detectors: export the sparse backbone alone (its stage maps; the FPN, RPN and RoI heads stay in PyTorch), "
        "in any --format. Default: off, the whole detector in one ONNX file.")),
):
    """Export a deployable model (window selection inside the graph) and verify it against PyTorch.

    Detection and instance-segmentation models: the whole torchvision Faster / Mask R-CNN in one ONNX file (one
    float RGB image (3, H, W) in [0, 1] in; boxes, labels, scores (and masks) out, in the image's pixels), verified
    in onnxruntime against PyTorch (and, with --data, its AP); --backbone-only: the sparse backbone alone, one
    output per stage map. Segmentation: the whole Semantic FPN. ONNX files carry the model's metadata (classes,
    category ids) for `sparsevit predict`."""
    from .io import read_sparsity_file
    from .commands.export import check_export_target, export_model, other_size, real_inputs
    from .model_file import load_model_file, read_model_meta
    from .tasks import Detection, get_task

    # before the model load: a typo should not cost one
    check_export_target(out, tolerance, format.value, {"--checkpoint": checkpoint, "--config": config})
    cfg = read_sparsity_file(config) if config is not None else None
    if isinstance(get_task(read_model_meta(checkpoint).task), Detection) and not backbone_only:
        if format != ExportFormat.onnx:
            raise UserError(f"the whole detector is exported as ONNX (--format onnx); --format {format.value} "
                            f"exports its backbone only: add --backbone-only")
        _export_whole_detector(checkpoint, cfg, out, data, img_size)
        return
    model, method, meta = load_model_file(checkpoint, cfg)
    size = meta.resolve_img_size(img_size)
    module, part = get_task(meta.task).export_module(model)  # detectors: the backbone only
    if part:
        console.print(part)
    inputs = [torch_randn(batch_size, size, seed) for seed in (0, 1)]
    names = ["random 0", "random 1"]
    if data:
        inputs.append(real_inputs(data, meta, size, batch_size, model))
        names.append("real images")
    dynamic_inputs = None
    # a detector's backbone reads batches whose size varies (aspect kept, padded): dynamic unless told otherwise
    if (part is not None) if dynamic_size is None else dynamic_size:
        import torch
        h, w = other_size(model, size)
        dynamic_inputs = [torch.randn(batch_size, 3, h, w, generator=torch.Generator().manual_seed(2))]
        names.append("random, other size")
        if data:  # as the detector feeds them: aspect kept, padded (the static check resizes them to a square)
            dynamic_inputs.append(real_inputs(data, meta, size, batch_size, model, own_size=True))
            names.append("real images, own size")
    report = export_model(module, format.value, out, inputs, tolerance=tolerance, method=method,
                          config=meta.sparsity, dense_config=method.dense_config(_backbone(module)),
                          time_it=time_it, dynamic_inputs=dynamic_inputs)
    if report.get("dynamic"):
        console.print(f"{format.value}: dynamic height and width, verified at "
                      f"{', '.join(sorted({c['size'] for c in report['checks']}))}")
    elif "dynamic_note" in report:
        console.print(report["dynamic_note"], highlight=False)
    table = Table(title=f"export {format.value} -> {out}")
    for col in ("input", "size", "max abs error", "relative error"):
        table.add_column(col, justify="right")
    for c in report["checks"]:
        table.add_row(names[c["input"]], c["size"], f"{c['max_abs']:.2e}", f"{c['rel']:.2e}")
    console.print(table)
    if "speedup" in report:
        console.print(f"{format.value} runtime: sparse {report['sparse_ms']:.1f} ms vs dense "
                      f"{report['dense_ms']:.1f} ms -> {report['speedup']:.2f}x")
    if format == ExportFormat.onnx:  # the metadata `predict` reads: classes, category ids, the input convention
        from .commands.export_whole import IO_BACKBONE, IO_BATCH, add_metadata_atomically
        add_metadata_atomically(out, meta, IO_BACKBONE if part else IO_BATCH)


def _export_whole_detector(checkpoint, cfg, out, data, img_size) -> None:
    """`export` of a whole detector (commands.export_whole) and its report."""
    from .commands.export_whole import run_whole_detector_export

    report = run_whole_detector_export(str(checkpoint), cfg, out, data, img_size)
    if report.get("note"):
        console.print(report["note"], highlight=False)
    table = Table(title=f"export onnx (whole detector) -> {out}")
    for col in ("input", "size", "detections", "max box error (px)", "max score error"):
        table.add_column(col, justify="right")
    for c in report["checks"]:
        table.add_row("random" if c["input"] < 2 else "real image", c["size"], f"{c['detections']:.0f}",
                      f"{c['boxes_px']:.2e}", f"{c['scores']:.2e}")
    console.print(table)
    if "ap" in report:
        own = report["ap"].get("pytorch_own_size")
        console.print(f"AP on the val images: PyTorch {report['ap']['pytorch']:.2f}, onnxruntime "
                      f"{report['ap']['onnxruntime']:.2f}" + (f" (the detector without the canvas, each image at its "
                                                             f"own size: {own:.2f})" if own is not None else ""),
                      highlight=False)


@app.command()
def info(path: Path = typer.Argument(..., help="A sparsevit model file, or a checkpoint in another layout "
                                                 "(timm, official Swin, Hugging Face file or folder, mmdetection).")):
    """Show what a sparsevit model file holds: method, model, args, image size, sparsity, metrics; its weights
    are checked (digest, finite). A file other commands would refuse is shown too, with one line per reason
    (exit code 2). Any other checkpoint: its layout, architecture and what a run would drop."""
    from .model_file import inspect_model_file, is_raw_checkpoint
    if is_raw_checkpoint(path):
        _checkpoint_info(path)
        return
    rows, faults = inspect_model_file(path)
    table = Table(title=str(path), show_header=False)
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)
    for fault in faults:
        console.print(f"refused: {fault}", markup=False, highlight=False, soft_wrap=True)
    if faults:  # the first reason as the error line; every one is listed above
        more = f" (and {len(faults) - 1} more, listed above)" if len(faults) > 1 else ""
        raise UserError(f"'{path}' would be refused by every command: {faults[0]}{more}")


def _checkpoint_info(path: Path) -> None:
    from .checkpoints import describe_checkpoint
    table = Table(title=str(path), show_header=False)
    for k, v in describe_checkpoint(path):
        table.add_row(k, v)
    console.print(table)


def torch_randn(batch_size: int, size: int, seed: int):
    import torch
    return torch.randn(batch_size, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _backbone(model):
    from .tasks import backbone_of
    return backbone_of(model)


def _fail(message: str, code: int = 2) -> None:
    """One line on stderr (however long or multi-line the message), then exit."""
    from rich.markup import escape
    from .errors import shorten
    # a value no message cut (a 1 MB name echoed by a library) is cut here: the line stays readable; a file
    # name's bytes that are not UTF-8 are shown as \xNN
    message = message.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    words = [shorten(word, 200) for word in message.split()]
    Console(stderr=True).print(f"[bold red]error:[/] {escape(' '.join(words))}", highlight=False, soft_wrap=True)
    sys.exit(code)


#: exit code of an unexpected failure (a bug); bad input exits 2
INTERNAL_ERROR = 3


#: commands that continue an interrupted run with --resume, and those that continue by running again
RESUMABLE = ("finetune", "adapt", "search")
RERUNNABLE = ("demo", "report")


def _interrupted_line(args: List[str], signum: int) -> str:
    """What an interrupted command says (every file it writes is atomic: nothing was left half written)."""
    import signal
    name = signal.Signals(signum).name
    command = next((a for a in args if not a.startswith("-")), "")
    if command in RESUMABLE:
        return f"interrupted ({name}); the last checkpoint is kept: run the same command with --resume to continue"
    if command in RERUNNABLE:
        return f"interrupted ({name}); run the same command again to continue where it stopped"
    return f"interrupted ({name}); no output file was left half written"


@contextlib.contextmanager
def _signals_as_exceptions():
    """SIGTERM (a cluster's scheduler, `kill`) and SIGINT (Ctrl-C) raise errors.Interrupted in the main
    thread, so that cleanup runs (no temporary file is left behind, locks are released) and the exit is one
    line. Yields the list of signals received (Click swallows the exception and returns 130 for both)."""
    import signal
    import threading
    from .errors import Interrupted

    caught: List[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return

    def handler(signum, frame):
        caught.append(signum)
        raise Interrupted(signum)
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield caught
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


#: errnos of a standard output that cannot take more (a full disk, /dev/full, a closed pipe, a lost terminal)
_OUTPUT_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EPIPE, errno.EIO, errno.EFBIG)


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's flush at exit does not fail a second time."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)


def _internal(e: BaseException, args: List[str]) -> None:
    if "--verbose" in args:
        raise e
    from .errors import first_line
    _fail(f"internal error, please report it ({type(e).__name__}: {first_line(e)}); run with "
          f"'sparsevit --verbose ...' for the traceback", INTERNAL_ERROR)


def main(argv: Optional[List[str]] = None) -> None:
    """Console entry point: run the Typer app quietly (library warnings only with --verbose), turning user
    errors and usage errors (missing or unknown option, bad number) into one line and exit code 2, and
    Ctrl-C / SIGTERM into one line and exit code 130 / 143."""
    import signal
    from .errors import Interrupted, quiet_warnings

    args = list(sys.argv[1:] if argv is None else argv) or ["--help"]  # bare `sparsevit`: its help
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 is printed escaped, never an error
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")
    caught: List[int] = []
    from .io import command_inputs
    try:
        with quiet_warnings(), _signals_as_exceptions() as caught, command_inputs():
            # not standalone: Typer would print a usage error as a 5-line box; it is one line below
            code = app(args=args, standalone_mode=False, prog_name="sparsevit")
            sys.stdout.flush()  # a full or closed stdout fails here, not at exit
    except (typer.Abort, KeyboardInterrupt) as e:  # Click may turn Ctrl-C (and our SIGTERM) into Abort
        cause = e if isinstance(e, KeyboardInterrupt) else e.__cause__
        if not caught and not isinstance(cause, KeyboardInterrupt):  # Ctrl-D at a prompt
            _fail("aborted", 130)
        signum = caught[0] if caught else cause.signum if isinstance(cause, Interrupted) else signal.SIGINT
        _fail(_interrupted_line(args, signum), 128 + signum)
    except typer.TyperException as e:  # Click's usage errors (missing/unknown option, bad value, ...)
        ctx = getattr(e, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        _fail(f"{e.format_message()}{hint}", getattr(e, "exit_code", 2))
    except UserError as e:
        _fail(str(e))
    except OSError as e:  # every file writer turns its OSError into a UserError: what is left is stdout's
        if e.errno not in _OUTPUT_ERRORS:
            _internal(e, args)
        _quiet_stdout()
        _fail(f"cannot write to the standard output: {e.strerror or e} (a full disk or a closed pipe?)")
    except RecursionError:  # a structure nested beyond Python's limit (metadata, JSON, YAML) in some input
        _fail("an input is nested too deeply to be read (a hostile or damaged file?)")
    except Exception as e:  # a bug, not bad input: still one line (exit 3, not 2); --verbose shows the traceback
        _internal(e, args)
    if caught:  # Click caught the interruption itself and returned 130
        _fail(_interrupted_line(args, caught[0]), 128 + caught[0])
    if isinstance(code, int) and code:  # typer.Exit(code) inside a command
        sys.exit(code)


if __name__ == "__main__":
    main()
