"""`sparsevit pipeline`: from a checkpoint and the user's data to a deployable sparse model in one
resumable command, with a report card.

The stages run in order under one output folder (`--out`), each through the single command's own
function, so their guarantees hold (one run per folder, atomic writes, SIGKILL anywhere then rerun = the
same result):

  dense/     `finetune` of the dense model on the data (optional: off when the checkpoint is trained for the task)
  adapt/     `adapt`: sparsity-aware training, a random config of the search space every step
  search/    `search`: the most accurate config in the budget (MACs or latency on the target device)
  finetune/  `finetune` of that config: the final model file
  finetune_dense/  the adapted model finetuned dense as long (like-for-like dense row; evaluate.dense_finetune)
  evaluate/  dense, the best uniform config (the search's), the searched config and the final model, scored
             on the val images the search never saw, costed (GMACs of the model and its backbone) and timed
             on the target device (batch-1 latency, throughput); the uniform curve of the adapted model
  export/    `export` of the final model (ONNX by default), verified against PyTorch
  report.md, report.json, acc_vs_latency.png, windows_*.png: the report card

A stage is skipped when its output exists and resumed when it was interrupted; its recorded inputs
(`pipeline.Stages`) must be this run's, or it is refused with one line naming what changed.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from rich.console import Console
from rich.table import Table

from ..errors import UserError
from ..io import (FolderLock, atomic_write, atomic_write_json, atomic_write_text, check_output_dir, make_console,
                  read_sparsity_file)
from ..pipeline import DATA_HASHES, PipelineConfig, StageStopped, Stages, data_digest, file_digest

MODEL = "model.safetensors"


def check_settings(cfg: PipelineConfig) -> None:
    """Everything that can be checked before a stage runs: a typo costs no training."""
    from ..io import check_file
    from ..model_file import read_meta
    from ..timing import resolve_device
    from .search import budget_number

    p = cfg.pipeline
    b = p.budget
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # its evaluation, export and report card are one process's
        raise UserError("run the pipeline in one process, not under torchrun; for multi-GPU training run its "
                        "stages as single commands (finetune, adapt, search) under torchrun")
    if b.macs is not None:
        budget_number(b.macs, "GMACs", "pipeline.budget.macs (--budget-macs)")
    else:
        budget_number(b.latency, "ms", "pipeline.budget.latency (--budget-latency)")
    resolve_device(cfg.device)
    resolve_device(cfg.target_device)
    evolution(cfg).check()
    if not cfg.checkpoint and not p.dense.run:
        raise UserError("the pipeline starts from a trained model: give --checkpoint (a timm checkpoint with "
                        "--model, or a sparsevit model file), or turn on pipeline.dense.run to train one")
    if cfg.checkpoint:
        from ..checkpoints import read_checkpoint
        raw = os.path.isdir(cfg.checkpoint) or read_meta(check_file(cfg.checkpoint, "checkpoint")) is None
        if raw:  # timm, official Swin, Hugging Face (a folder too), mmdetection: recognised before any stage
            read_checkpoint(cfg.checkpoint)
        if not p.dense.run and not p.adapt.run and raw:
            raise UserError(f"'{cfg.checkpoint}' is a timm checkpoint; without the adapt stage the pipeline "
                            f"searches the checkpoint itself, which must be a sparsevit model file (from adapt)")
    if p.search.run is False and p.finetune.run is False and p.export.run is False and p.evaluate.run is False:
        raise UserError("pipeline: every stage after adapt is off; nothing to do")


def evolution(cfg: PipelineConfig):
    from ..search.evolution import EvolutionSettings
    s = cfg.pipeline.search
    return EvolutionSettings(population=s.population, generations=s.generations, parents=s.parents,
                             mutations=s.mutations, crossovers=s.crossovers, mutation_prob=s.mutation_prob,
                             seed=s.seed)


@dataclass
class PipelineResult:
    out: str
    final_model: str
    config: Any
    evaluation: Optional[Dict[str, Any]] = None
    export: Optional[Dict[str, Any]] = None
    stages: Dict[str, str] = field(default_factory=dict)
    stopped: Optional[str] = None  # the stage that stopped early (nothing after it ran)


def run_pipeline(cfg: PipelineConfig, progress: bool = True, console: Optional[Console] = None,
                 stages: Optional[Stages] = None) -> PipelineResult:
    """Run (or continue) the pipeline in `cfg.out`; the folder is held (locked) for the whole run.
    `stages` lets a caller that ran stages of its own first (the demo's data) keep the numbering."""
    from .precheck import check_pipeline

    console = console or make_console()
    check_settings(cfg)
    check_pipeline(cfg, console)  # the budget against the space's cheapest and densest config, the val split
    out = check_output_dir(Path(cfg.out))
    with FolderLock(out, "pipeline output folder"):
        try:
            return _run(cfg, out, progress, console, stages or Stages(console))
        except StageStopped as stop:
            console.print(f"[yellow]{stop}[/]")
            return PipelineResult(out=str(out), final_model="", config=None, stopped=stop.stage)


def _train_inputs(rc) -> Dict[str, Any]:
    """What a training stage computes from, besides its starting weights and data (fingerprinted apart)."""
    return rc.model_dump(exclude={"out": True, "checkpoint": True, "checkpoint_every": True,
                                  "pipeline": True, "data": {"path", "num_workers"}})


def _run(cfg: PipelineConfig, out: Path, progress: bool, console: Console, stage: Stages) -> PipelineResult:
    from ..io import remove_stale_temp_files
    from .train import run_adapt, run_finetune

    remove_stale_temp_files(out)
    p = cfg.pipeline
    data = data_digest(cfg.data.path, cache=out / DATA_HASHES)
    result = PipelineResult(out=str(out), final_model="", config=None)
    source: Optional[Path] = Path(cfg.checkpoint) if cfg.checkpoint else None

    def digest(path: Optional[Path]) -> Optional[str]:
        return file_digest(path) if path is not None else None

    if p.dense.run:
        rc = cfg.run_config(out=str(out / "dense"), checkpoint=str(source) if source else None,
                            epochs=p.dense.epochs, sparsity=0.0, **{"optim.lr": p.dense.lr})
        source = stage("dense finetune", out / "dense" / MODEL,
                       lambda: run_finetune(rc, resume=True, progress=progress, console=console),
                       {"checkpoint": digest(source), "data": data, "run": _train_inputs(rc)})
        result.stages["dense"] = str(source)
    adapted = source
    if p.adapt.run:
        rc = cfg.run_config(out=str(out / "adapt"), checkpoint=str(source), epochs=p.adapt.epochs, sparsity=0.0,
                            **{"optim.lr": p.adapt.lr or cfg.optim.lr / 2})
        adapted = stage("sparsity-aware adaptation", out / "adapt" / MODEL,
                        lambda: run_adapt(rc, resume=True, progress=progress, console=console),
                        {"checkpoint": digest(source), "data": data, "run": _train_inputs(rc)})
        result.stages["adapt"] = str(adapted)
    assert adapted is not None  # check_settings: a checkpoint, or a dense stage
    adapted_digest = digest(adapted)

    best: Optional[Path] = None
    config = cfg.sparsity
    if p.search.run:
        best = stage(f"search ({p.budget.text(cfg.device)})", out / "search" / "best.yaml",
                     lambda: _search(cfg, adapted, out / "search", progress, console),
                     {"model": adapted_digest, "data": data, "budget": p.budget.model_dump(),
                      "device": cfg.target_device, "search": p.search.model_dump(),
                      "eval_batch_size": cfg.eval_batch_size})
        config = read_sparsity_file(best)["sparsity"]
        result.stages["search"] = str(best)

    final, final_config = adapted, config  # without the finetune stage: the adapted weights under the config
    if p.finetune.run:
        rc = cfg.run_config(out=str(out / "finetune"), checkpoint=str(adapted), epochs=p.finetune.epochs,
                            sparsity=config, **{"optim.lr": p.finetune.lr or cfg.optim.lr / 4})
        final = stage("finetune the searched config", out / "finetune" / MODEL,
                      lambda: run_finetune(rc, resume=True, progress=progress, console=console),
                      {"checkpoint": adapted_digest, "data": data, "run": _train_inputs(rc)})
        final_config = None  # stored in the model file
        result.stages["finetune"] = str(final)
    result.final_model, result.config = str(final), config
    final_digest = digest(final)

    if p.evaluate.run:
        dense_ref = _dense_reference(cfg, source)
        if p.finetune.run and p.evaluate.dense_finetune:  # like-for-like: dense gets the pick's extra epochs
            rc = cfg.run_config(out=str(out / "finetune_dense"), checkpoint=str(adapted), epochs=p.finetune.epochs,
                                sparsity=0.0, **{"optim.lr": p.finetune.lr or cfg.optim.lr / 4})
            dense_ref = stage("finetune dense as the pick (like-for-like baseline)", out / "finetune_dense" / MODEL,
                              lambda: run_finetune(rc, resume=True, progress=progress, console=console),
                              {"checkpoint": adapted_digest, "data": data, "run": _train_inputs(rc)})
            result.stages["finetune_dense"] = str(dense_ref)
        training = _training(cfg, dense_ref)
        evaluation = stage("evaluate: dense, uniform and searched on held-out images, timed", out / "evaluate" /
                           "evaluate.json",
                           lambda: _evaluate(cfg, dense_ref, adapted, config if p.search.run else None, final,
                                             final_config, best, out / "evaluate" / "evaluate.json", training),
                           {"final": final_digest, "config": final_config, "adapted": adapted_digest,
                            "dense": digest(dense_ref), "data": data, "device": cfg.target_device,
                            "budget": p.budget.model_dump(), "evaluate": p.evaluate.model_dump(),
                            "search": digest(best)})
        result.evaluation = json.loads(evaluation.read_text())
        result.stages["evaluate"] = str(evaluation)
    if p.export.run:
        report = stage(f"export ({p.export.format})", out / "export" / "export.json",
                       lambda: _export(cfg, final, final_config, out / "export"),
                       {"final": final_digest, "config": final_config, "data": data,
                        "export": p.export.model_dump()})
        result.export = json.loads(report.read_text())
        result.stages["export"] = str(report)
    if result.evaluation is not None:
        write_report_card(cfg, result, out, final_config=best if not p.finetune.run else None, search_file=best,
                          console=console)
    console.print(f"final model -> {result.final_model}" + (f"; exported -> {result.export['file']}"
                                                           if result.export else ""))
    return result


def _search(cfg: PipelineConfig, model_file: Path, out: Path, progress: bool, console: Console) -> None:
    from .search import SearchOptions, run_search
    b, s = cfg.pipeline.budget, cfg.pipeline.search
    run_search(SearchOptions(
        checkpoint=str(model_file), data=cfg.data.path, out=str(out), space=s.space, budget_macs=b.macs,
        budget_macs_of=b.macs_of if b.macs is not None else None, budget_latency=b.latency, compile=b.compile,
        device=cfg.target_device, batch_size=b.batch_size, eval_samples=s.eval_samples,
        confirm_samples=s.confirm_samples, pick=s.pick, fitness=s.fitness, eval_batch_size=cfg.eval_batch_size,
        settings=evolution(cfg),
        resume=(out / "search_state.json").exists(), progress=progress), console=console)


def _dense_reference(cfg: PipelineConfig, source: Optional[Path]) -> Optional[Path]:
    """The dense model the report compares with: the dense stage's, or the checkpoint when it is a model
    file trained for this task; None: the adapted weights under the dense config stand in."""
    from ..model_file import read_meta
    if source is None:
        return None
    meta = read_meta(source)
    task_given = "task" in cfg.data.model_fields_set  # else the run takes the model file's own task
    if meta is None or (task_given and meta.task != cfg.data.task) or meta.get("adapted"):
        return None
    return source


def _training(cfg: PipelineConfig, dense_ref: Optional[Path]) -> "Training":
    """Epochs trained in this run behind each kind of row, and the card's line saying whether dense and the
    pick were trained alike."""
    p = cfg.pipeline
    epochs = lambda st: (st.epochs or cfg.epochs) if st.run else 0  # noqa: E731
    adapted = epochs(p.dense) + epochs(p.adapt)
    pick = adapted + epochs(p.finetune)
    if dense_ref is None:
        dense, how = adapted, "the adapted weights run dense"
    elif p.finetune.run and p.evaluate.dense_finetune:
        dense, how = pick, f"the adapted model finetuned dense for the pick's {epochs(p.finetune)} finetune epochs"
    else:
        dense = epochs(p.dense) if p.dense.run else 0
        how = "the dense stage's model" if p.dense.run else "the checkpoint as given"
    if dense == pick:
        line = f"Like-for-like training: dense is {how}; dense and the pick each trained {pick} epochs in this run."
    else:
        line = (f"Not like-for-like: dense is {how} ({dense} epochs in this run), the pick trained {pick}: the gap "
                f"between them includes {pick - dense} epochs of extra training (pipeline.evaluate.dense_finetune "
                f"gives dense the same epochs).")
    return Training(dense=dense, adapted=adapted, pick=pick, line=line)


@dataclass(frozen=True)
class Training:
    """Epochs trained in this pipeline run (after the checkpoint) behind the dense row, the adapted weights
    (uniform curve, searched) and the pick; `line` says it on the card."""

    dense: int
    adapted: int
    pick: int
    line: str


# --------------------------------------------------------------------------------------------- evaluate
def report_indices(n: int, search_file: Optional[Path]) -> List[int]:
    """The val images a report scores: those the search never saw (neither its fitness nor its confirmation
    split, as its best.yaml records them); all of them when there was no search or it saw them all."""
    if search_file is None:
        return list(range(n))
    split = read_sparsity_file(search_file).get("search_split") or {}
    seen = set(split.get("fitness", [])) | set(split.get("confirmation", []))
    rest = [i for i in range(n) if i not in seen]
    return rest or list(range(n))


def search_uniform(search_file: Optional[Path]) -> Optional[float]:
    """The best uniform sparsity in the budget that the search confirmed its pick against (best.yaml), so the
    report card's uniform row is that config, not only the nearest one on its own curve; None without one."""
    if search_file is None:
        return None
    value = ((read_sparsity_file(search_file).get("confirmation") or {}).get("uniform") or {}).get("uniform")
    return None if value is None else float(value)


def _evaluate(cfg: PipelineConfig, dense_file: Optional[Path], adapted_file: Path, searched_config: Any,
              final_file: Path, final_config: Any, search_file: Optional[Path], out: Path,
              training: Training) -> None:
    """Score (held-out images), cost and time every point; write evaluate.json atomically."""
    import torch

    from ..evaluate import evaluate_all
    from ..model_file import load
    from ..tasks import backbone_of, get_task
    from ..timing import THROUGHPUT_BATCH, Spread, resolve_device, time_fn
    from ..timm_models import describe_architecture
    from .search import latency_batch, parse_budget

    p = cfg.pipeline
    dev = resolve_device(cfg.target_device)
    adapted = load(adapted_file).to(dev)
    final = load(final_file, final_config).to(dev)
    meta = final.sparsevit_meta
    task = get_task(meta["task"])
    img_size = int(meta["img_size"])
    val = task.dataset(cfg.data.path, "val", img_size, train=False)
    held = report_indices(len(val), search_file)

    def method_of(model):
        from ..methods import get_method
        return get_method(model.sparsevit_meta["method"]), backbone_of(model)

    method, backbone = method_of(adapted)
    points: List[Dict[str, Any]] = []  # each: label, kind, model, config

    if dense_file is not None:
        dense = load(dense_file).to(dev)
        points.append({"label": "dense", "kind": "dense", "model": dense, "epochs": training.dense,
                       "config": method_of(dense)[0].dense_config(backbone_of(dense))})
        # the uniform curve starts at the adapted weights run dense (what sparsity is measured against)
        points.append({"label": "uniform 0%", "kind": "uniform", "model": adapted, "value": 0.0,
                       "epochs": training.adapted, "config": method.dense_config(backbone)})
    else:
        points.append({"label": "dense (adapted weights)", "kind": "dense", "model": adapted,
                       "epochs": training.adapted, "config": method.dense_config(backbone)})
    values = list(p.evaluate.uniform)
    searched_uniform = search_uniform(search_file)
    have = values + [pt["value"] for pt in points if pt["kind"] == "uniform"]
    if searched_uniform is not None and all(abs(searched_uniform - v) > 1e-9 for v in have):
        values = sorted(values + [searched_uniform])
    for s in values:
        points.append({"label": f"uniform {s:.0%}", "kind": "uniform", "model": adapted, "value": s,
                       "epochs": training.adapted, "config": method.uniform_config(backbone, s)})
    if searched_config is not None and p.finetune.run:
        points.append({"label": "searched", "kind": "searched", "model": adapted, "epochs": training.adapted,
                       "config": method.validate(backbone, searched_config)})
    points.append({"label": "pick", "kind": "pick", "model": final, "epochs": training.pick,
                   "config": meta["sparsity"]})

    for pt in points:
        m, bb = method_of(pt["model"])
        scores = evaluate_all(pt["model"], m, pt["config"], val, task, cfg.eval_batch_size, dev, indices=held)
        pt.update(metric=scores[task.metric_name], scores=scores,
                  gmacs=task.macs(pt["model"], m, pt["config"], img_size) / 1e9,
                  backbone_gmacs=task.backbone_macs(pt["model"], m, pt["config"], img_size) / 1e9)

    def timed(pts: List[Dict[str, Any]], n: int) -> List[Spread]:
        """Median and interquartile range (ms) of one forward of each point on the same real val batch of `n`,
        interleaved repeat by repeat, each model under its own config."""
        x = latency_batch(task, val, n, dev)
        times: List[List[float]] = [[] for _ in pts]
        with torch.inference_mode():
            for pt in pts:  # warm-up (and the engine's per-resolution tables)
                method_of(pt["model"])[0].apply(backbone_of(pt["model"]), pt["config"])
                pt["model"].eval()
                pt["model"](x)
            for _ in range(p.evaluate.repeats):
                for i, pt in enumerate(pts):
                    method_of(pt["model"])[0].apply(backbone_of(pt["model"]), pt["config"])
                    times[i].append(time_fn(lambda: pt["model"](x), dev, warmup=0, repeats=1))
        return [Spread.of(t) for t in times]

    # batch-1 latency (and the budget's batch) for every point: the curve and which uniform config fits
    b = p.budget
    for pt, ms in zip(points, timed(points, 1)):
        pt["ms"] = pt["budget_ms"] = ms.median
        pt["ms_low"], pt["ms_high"] = ms.low, ms.high
    if b.batch_size != 1:
        for pt, ms in zip(points, timed(points, b.batch_size)):
            pt["budget_ms"] = ms.median

    dense_pt = points[0]
    if b.macs is not None:
        key, unit, text, what = ("backbone_gmacs" if b.macs_of == "backbone" else "gmacs"), "GMACs", b.macs, "macs"
        cost = lambda pt: pt[key] * b.batch_size  # noqa: E731  (the search counts MACs at the budget's batch)
    else:
        unit, text, what = "ms", b.latency, "latency"
        cost = lambda pt: pt["budget_ms"]  # noqa: E731
    limit = parse_budget(text, cost(dense_pt), unit, f"pipeline.budget.{what}")
    for pt in points:
        pt["cost"], pt["in_budget"] = cost(pt), cost(pt) <= limit * (1 + 1e-9)
    uniform = [pt for pt in points if pt["kind"] == "uniform"]
    if searched_uniform is not None:  # one best uniform config everywhere: the one the search confirmed against
        best_uniform = next(pt for pt in uniform if abs(pt["value"] - searched_uniform) < 1e-9)
    else:
        fitting = [pt for pt in uniform if pt["in_budget"]]
        best_uniform = max(fitting, key=lambda pt: pt["metric"]) if fitting else None

    # throughput of the card's rows only (the curve is latency): one interleaved run at the larger batch
    batch = p.evaluate.throughput_batch or THROUGHPUT_BATCH
    shown = [dense_pt] + ([best_uniform] if best_uniform else []) + \
        [pt for pt in points if pt["kind"] in ("searched", "pick")]
    for pt in points:
        pt["images_per_s"] = None
    for pt, ms in zip(shown, [t.median for t in timed(shown, batch)] if batch != 1 else [pt["ms"] for pt in shown]):
        pt["images_per_s"] = 1000.0 * batch / ms

    def row(pt: Dict[str, Any], label: Optional[str] = None) -> Dict[str, Any]:
        keep = ("kind", "metric", "scores", "gmacs", "backbone_gmacs", "ms", "ms_low", "ms_high", "images_per_s",
                "cost", "in_budget", "epochs")
        return {"label": label or pt["label"], **{k: pt[k] for k in keep}, "config": pt["config"]}

    rows = [row(dense_pt)]
    if best_uniform is not None:
        rows.append(row(best_uniform, f"{best_uniform['label']}*"))
    rows += [row(pt) for pt in points if pt["kind"] in ("searched", "pick")]
    report = {"task": task.name, "metric": task.metric_name, "img_size": img_size, "device": str(dev),
              "model": meta["model"], "architecture": describe_architecture(backbone_of(final)),
              "method": meta["method"], "throughput_batch": batch, "repeats": p.evaluate.repeats,
              "training": training.line, "dense_model": str(dense_file) if dense_file is not None else None,
              # the best uniform row is the search's own (its fitness split's, confirmed against its pick)
              "best_uniform_from": "search" if searched_uniform is not None else "report images",
              "held_out_images": len(held), "val_images": len(val),
              # False: the search saw every val image (none was left over), so the card scores them all
              "held_out": search_file is not None and len(held) < len(val),
              "budget": {"text": b.text(cfg.device), "value": limit, "unit": unit, "of": what, "batch": b.batch_size},
              "final_model": str(final_file), "rows": rows,
              "curve": [row(pt) for pt in points if pt["kind"] in ("dense", "uniform")]}
    atomic_write_json(out, report)


# --------------------------------------------------------------------------------------------- export
def _export(cfg: PipelineConfig, final_file: Path, final_config: Any, out: Path) -> None:
    import torch

    from ..model_file import load_model_file
    from ..tasks import backbone_of, get_task
    from .export import FORMATS, export_model, real_inputs

    fmt = cfg.pipeline.export.format
    model, method, meta = load_model_file(final_file, {"sparsity": final_config} if final_config is not None else None)
    model = model.cpu().eval()
    size = meta.image_size
    module, part = get_task(meta.task).export_module(model)  # detectors: the backbone only
    inputs = [torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(s)) for s in (0, 1)]
    inputs.append(real_inputs(cfg.data.path, meta, size, 1, model))
    report = export_model(module, fmt, out / f"model{FORMATS[fmt].suffix}", inputs,
                          tolerance=cfg.pipeline.export.tolerance, method=method, config=meta.sparsity,
                          dense_config=method.dense_config(backbone_of(module)), time_it=False)
    report["part"] = part
    atomic_write_json(out / "export.json", report)


# --------------------------------------------------------------------------------------------- report card
def write_report_card(cfg: PipelineConfig, result: PipelineResult, out: Path, final_config: Optional[Path],
                      search_file: Optional[Path], console: Console) -> None:
    """report.md, report.json, acc_vs_latency.png and the kept-window pictures in `out` (each written
    atomically), and the tables in the terminal: the card and the search's confirmation (its pick vs the best
    uniform config vs dense, with 95% intervals, on images it was not ranked on)."""
    ev = result.evaluation
    assert ev is not None
    pictures = _pictures(cfg, result, out, final_config, search_file)
    searched = read_sparsity_file(search_file) if search_file is not None else {}
    card = {**ev, "export": _export_summary(result.export), "pictures": pictures,
            "budget": ev["budget"], "stages": result.stages, "confirmation": searched.get("confirmation"),
            "confirmation_unit": searched.get("cost_unit")}
    card["warnings"] = latency_warnings(card)
    _plot(card, out / "acc_vs_latency.png")
    atomic_write_json(out / "report.json", card)
    atomic_write_text(out / "report.md", _markdown(card))
    console.print(report_table(card))
    for line in card["warnings"]:
        console.print(f"[yellow]{line}[/]")
    if card["confirmation"]:
        from ..search.confirm import Confirmation
        from .search import confirmation_table
        conf = Confirmation.model_validate(card["confirmation"])
        console.print(confirmation_table(conf, card["confirmation_unit"] or "cost",
                                         title=f"the search: its pick vs the best uniform config vs dense "
                                               f"(adapted weights, {conf.confirmation_images} images it was "
                                               f"not ranked on)"))
        console.print(conf.verdict)
    console.print(f"report card -> {out / 'report.md'}")


def _export_summary(export: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    if export is None:
        return None
    return {"file": export["file"], "format": export["format"], "max_rel_error": export["max_rel_error"],
            "part": export.get("part")}


def _pictures(cfg: PipelineConfig, result: PipelineResult, out: Path, config_file: Optional[Path],
              search_file: Optional[Path]) -> List[str]:
    """The windows the final model keeps on the first few held-out val images (SparseViT models)."""
    from ..methods import get_method
    from ..model_file import read_model_meta
    from ..swin.method import SparseViT
    from ..tasks import get_task
    from .visualize import visualize_windows

    n = cfg.pipeline.evaluate.pictures
    meta = read_model_meta(result.final_model)
    if n == 0 or not isinstance(get_method(meta.method), SparseViT):
        return []
    val = get_task(meta.task).dataset(cfg.data.path, "val", meta.image_size, train=False)
    image_path = getattr(val, "image_path", None)
    if image_path is None:
        return []
    held = report_indices(len(val), search_file)
    names = []
    for k, i in enumerate(held[:n]):
        name = f"windows_{k + 1}.png"
        visualize_windows(result.final_model, image_path(i), out / name, config=config_file)
        names.append(name)
    return names


def _spread(r: Dict[str, Any], repeats: int):
    from ..timing import Spread
    return Spread(r["ms"], r.get("ms_low", r["ms"]), r.get("ms_high", r["ms"]), repeats)


def latency_warnings(card: Dict[str, Any]) -> List[str]:
    """One line per row whose latency against dense these repeats cannot support (interquartile ranges that
    overlap, or too few repeats to measure a spread): its speedup may be timing noise."""
    from ..timing import MIN_SPREAD_REPEATS, unreliable
    dense = card["rows"][0]
    if "repeats" not in card or "ms_low" not in dense:  # an evaluation recorded before spreads were: unknown
        return []
    repeats = card["repeats"]
    a = _spread(dense, repeats)
    lines = []
    for r in card["rows"][1:]:
        b = _spread(r, repeats)
        if not unreliable(a, b):
            continue
        why = (f"only {repeats} timed repeat{'s' if repeats != 1 else ''} (at least {MIN_SPREAD_REPEATS} measure "
               f"a spread)" if repeats < MIN_SPREAD_REPEATS else
               f"its interquartile range {b.low:.3g}-{b.high:.3g} ms overlaps dense's {a.low:.3g}-{a.high:.3g} ms")
        lines.append(f"warning: latency of {r['label']} vs dense is not shown by these timings: {why}; its "
                     f"{a.median / b.median:.2f}x speedup may be noise (a busy machine? rerun on an idle one, or "
                     f"raise pipeline.evaluate.repeats)")
    return lines


@dataclass
class Series:
    """One thing drawn on the card's plot: points (x, y) with x's spread (low, high), in drawing order."""

    panel: str                     # "gmacs" or "latency": which axes
    label: str
    kind: str                      # curve | dense | best uniform | searched | pick
    x: List[float]
    y: List[float]
    x_low: List[float]
    x_high: List[float]


def plot_data(card: Dict[str, Any]) -> List[Series]:
    """What acc_vs_latency.png draws, as data: on each panel the uniform curve ordered by that panel's cost
    (GMACs; measured median latency), then each row of the card (dense, the best uniform config, searched,
    the pick) at its own coordinates; latency with its interquartile range over the interleaved repeats."""
    series = []
    for panel, key in (("gmacs", "gmacs"), ("latency", "ms")):
        def one(rows, label, kind):
            lat = panel == "latency"
            return Series(panel, label, kind, [r[key] for r in rows], [r["metric"] for r in rows],
                          [r.get("ms_low", r["ms"]) if lat else r[key] for r in rows],
                          [r.get("ms_high", r["ms"]) if lat else r[key] for r in rows])
        curve = sorted((r for r in card["curve"] if r["kind"] == "uniform"), key=lambda r: (r[key], -r["metric"]))
        series.append(one(curve, "uniform sparsity (adapted weights)", "curve"))
        for r in card["rows"]:
            series.append(one([r], r["label"], "best uniform" if r["kind"] == "uniform" else r["kind"]))
    return series


def _plot(card: Dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.4), dpi=110)
    FigureCanvasAgg(fig)
    axes = dict(zip(("gmacs", "latency"), fig.subplots(1, 2, sharey=True)))
    styles = {"curve": ("o-", "tab:blue", 5), "dense": ("*", "black", 12), "best uniform": ("o", "tab:blue", 11),
              "searched": ("D", "tab:green", 8), "pick": ("P", "tab:red", 11)}
    for s in plot_data(card):
        marker, colour, size = styles[s.kind]
        hollow = {"mfc": "none", "mew": 1.5} if s.kind == "best uniform" else {}
        ax = axes[s.panel]
        err = None if s.panel == "gmacs" else [[x - lo for x, lo in zip(s.x, s.x_low)],
                                                [hi - x for x, hi in zip(s.x, s.x_high)]]
        ax.errorbar(s.x, s.y, xerr=err, fmt=marker, color=colour, markersize=size, capsize=2, elinewidth=1,
                    label=s.label, **hollow)
    budget = card["budget"]
    if budget["unit"] == "ms" and budget["of"] == "latency":
        axes["latency"].axvline(budget["value"], color="grey", linestyle="--", linewidth=1, label="latency budget")
    elif budget["of"] == "macs" and "backbone" not in budget["text"]:  # counted at the budget's batch
        axes["gmacs"].axvline(budget["value"] / budget.get("batch", 1), color="grey", linestyle="--", linewidth=1,
                              label="MAC budget")
    axes["gmacs"].set_xlabel("GMACs per image (analytic, whole model)")
    axes["latency"].set_xlabel(f"batch-1 latency, ms ({card['device']}): median and interquartile range of "
                               f"{card.get('repeats', 1)} interleaved repeats", fontsize=8)
    axes["gmacs"].set_ylabel(f"{card['metric']} on {card.get('held_out_images', '')} held-out val images")
    for ax in axes.values():
        ax.grid(alpha=0.3)
    axes["gmacs"].legend(fontsize=8)
    fig.suptitle(f"{card.get('architecture', card['model'])}, {card['method']}, {card['task']} at "
                 f"{card['img_size']} px: accuracy vs cost", fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png"), binary=True)


def _legend(card: Dict[str, Any]) -> str:
    uniform = ("the best uniform config in the budget as the search chose it (the one its confirmation table "
               "sets the pick against)" if card.get("best_uniform_from") == "search" else
               "the most accurate uniform config of the adapted model in the budget on these images")
    return (f"uniform N%*: {uniform}; searched: the search's config on the adapted weights; pick: the final model "
            f"(searched config, finetuned). epochs: trained in this run. ideal: dense / model MACs; ms b1: median "
            f"[interquartile range] of {card.get('repeats', 1)} interleaved repeats; eff.: measured speedup / ideal")


def _scored_on(card: Dict[str, Any]) -> str:
    if card.get("held_out"):
        return f"the {card['held_out_images']} of {card['val_images']} val images the search never saw"
    return f"all {card['val_images']} val images (none was held out from the search: give it more val images)"


def _columns(card: Dict[str, Any]) -> List[str]:
    return ["model", card["metric"], "epochs", "GMACs", "backbone GMACs", "ideal", "ms b1", "speedup", "eff.",
            f"img/s b{card['throughput_batch']}", "speedup"]


def _cells(r: Dict[str, Any], dense: Dict[str, Any]) -> List[str]:
    ideal = dense["gmacs"] / r["gmacs"]
    speedup = dense["ms"] / r["ms"]
    metric = f"{r['metric']:.2f}"
    if r.get("interval"):
        metric += f" [{r['interval'][0]:.2f}, {r['interval'][1]:.2f}]"
    ms = f"{r['ms']:.2f}" + (f" [{r['ms_low']:.2f}, {r['ms_high']:.2f}]" if "ms_low" in r else "")
    return [r["label"], metric, str(r.get("epochs", "")), f"{r['gmacs']:.3g}", f"{r['backbone_gmacs']:.3g}",
            f"{ideal:.2f}x", ms, f"{speedup:.2f}x", f"{speedup / ideal:.2f}",
            f"{r['images_per_s']:.1f}", f"{r['images_per_s'] / dense['images_per_s']:.2f}x"]


def report_table(card: Dict[str, Any]) -> Table:
    table = Table(title=f"{card.get('architecture', card['model'])} ({card['method']}, {card['task']}) on "
                        f"{card['device']}: budget {card['budget']['text']}")
    for col in _columns(card):
        table.add_column(col, justify="right")
    for r in card["rows"]:
        table.add_row(*_cells(r, card["rows"][0]))
    export = card.get("export")
    table.caption = (f"{card['metric']} on {_scored_on(card)}. {card.get('training') or ''} {_legend(card)}"
                     + (f". Exported {export['file']} ({export['format']}), max relative error "
                        f"{export['max_rel_error']:.1e}" if export else ""))
    return table


def _markdown(card: Dict[str, Any]) -> str:
    cols = _columns(card)
    dense = card["rows"][0]
    arch = card.get("architecture", card["model"])
    lines = [f"# Report card: {arch} ({card['method']}, {card['task']}, {card['img_size']} px)", "",
             f"Model: {arch}, built as timm `{card['model']}`.",
             f"Budget: {card['budget']['text']} (= {card['budget']['value']:.4g} {card['budget']['unit']}). "
             f"{card['metric']} on {_scored_on(card)}; latency and throughput measured on {card['device']}, "
             f"interleaved in one run.", ""]
    if card.get("training"):
        lines += [card["training"], ""]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cells(r, dense)) + " |" for r in card["rows"]]
    lines += ["", _legend(card) + "."]
    if card.get("warnings"):
        lines += [""] + [f"- **{line}**" for line in card["warnings"]]
    pick = card["rows"][-1]
    lines += ["", f"Final model: `{card['final_model']}`, config `{json.dumps(pick['config'])}`."]
    export = card.get("export")
    if export:
        part = f" ({export['part']})" if export.get("part") else ""
        lines += [f"Exported: `{export['file']}` ({export['format']}{part}), max relative error vs PyTorch "
                  f"{export['max_rel_error']:.2e}."]
    conf = card.get("confirmation")
    if conf:
        lines += ["", f"## The search's pick, confirmed on {conf['confirmation_images']} images it was not ranked on",
                  "", f"Adapted weights, before the finetune; ranked by {conf['fitness']} on "
                      f"{conf['fitness_images']} other images.", "",
                  f"| | config | {card['metric']} (confirmation) | {card.get('confirmation_unit') or 'cost'} | "
                  f"pick minus it, 95% CI |", "|---|---|---|---|---|"]
        diffs = {c["b"]: c for c in conf["comparisons"]}
        for r in (conf["pick"], conf["uniform"], conf["dense"]):
            c = diffs.get(r["name"])
            ci = "" if c is None else f"{c['diff']:+.2f} [{c['low']:+.2f}, {c['high']:+.2f}]"
            name = r["name"] + (f" {r['uniform']:.0%}" if r["name"] == "best uniform" and r.get("uniform") is not None
                                else "")
            lines.append(f"| {name} | `{json.dumps(r['config'])}` | {r['confirm_metric']:.2f} | "
                         f"{r['cost']:.4g} | {ci} |")
        lines += ["", conf["verdict"]]
    lines += ["", "![accuracy vs latency](acc_vs_latency.png)", ""]
    for name in card["pictures"]:
        lines += [f"![kept windows]({name})", ""]
    return "\n".join(lines)
