"""Detection evidence (issue 12, `make bench-det`): dense vs uniform vs searched sparse Faster R-CNN (or Mask R-CNN,
`--task instance_segmentation`, issue 19) on the demo COCO set, box (and mask) AP, end-to-end and backbone-only
latency, all measured in one run.

    python benchmarks/bench_det.py [--task detection|instance_segmentation] [--out runs/bench_det] [--img-size 512]
                                   [--latency-only] [--smoke]

Training goes through the CLI as a user runs it (`finetune` dense -> `adapt` -> `search --budget-macs 50%` ->
`finetune` of the searched config and of the uniform config at the same backbone MACs), the data too
(`sparsevit demo-data --detection`). The search's budget is 50% of the backbone's MACs (`--budget-macs 50%
--budget-macs-of backbone`; the neck and heads run dense, so this equals a whole-detector budget of dense neck +
heads + half the dense backbone). Box AP: pycocotools via
`Task.metric` on the val split. Latency: `timing.time_models`, interleaved, on one batch of val canvases:
end to end (torchvision transform + backbone + FPN + RPN + RoI heads) and backbone only (the stage maps).

Run-config keys: `data.task: detection`, `data.path` (the demo root: its det/ COCO layout is found) and
`task_options: {fpn_channels, rpn_post_nms_top_n_test, box_detections_per_img, ...}` (stored in the model files).
A training stage that fails is reported (`training.status` in the JSON) and MACs and latency are still
measured on untrained detectors (`--latency-only` skips training altogether). A killed run resumes: started again
on the same --out, every CLI stage continues from its own checkpoint (`--resume`) and finished ones only rewrite
their model file.

Heads: the neck is scaled to the backbone, as detection configs do (Swin-T's Mask R-CNN: a 96-channel stage 1
under a 256-channel FPN). The end-to-end speedup is bounded by the backbone's share of the detector (Amdahl):
the table prints that share, and `--heads '{"fpn_channels": 256, ...}'` measures other heads. Mask R-CNN's
default mask head (4 convolutions of 256 channels on 100 detections) alone is 85% of the MACs of a Mask R-CNN on
this small Swin, so under `--task instance_segmentation` every head is scaled as the FPN is (64 / 256): the box
head's MLP 256 wide (torchvision 1024), the mask head's 4 convolutions 64 wide (torchvision 256).

Targets (issues 12, 19): backbone >= 1.5x and end to end >= 1.3x faster at ~50% backbone MACs, box (and mask) AP
within 1 point of the adapted dense model.
"""
import argparse
import contextlib
import copy
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import timm
import torch
import torch.nn as nn
from rich.console import Console
from rich.table import Table

import sparsevit_cli as sv
from common import LIGHT_HEADS, SMALL_SWIN, add_model_options, add_pipeline_options, apply_smoke, unseen_by_search
from sparsevit_cli.detection.cost import detector_macs
from sparsevit_cli.detection.models import BackboneFeatures
from sparsevit_cli.io import atomic_write_json, read_sparsity_file
from sparsevit_cli.methods import get_method
from sparsevit_cli.swin.patch import RATIO_CHOICES
from sparsevit_cli.tasks import backbone_of, build_task_model, get_task
from sparsevit_cli.timing import time_models

#: Mask R-CNN: every RoI head scaled as the FPN is (64 of torchvision's 256): box MLP 1024 -> 256, mask head
#: 4 x 256 -> 4 x 64 channels (the mask head is torchvision's 4 convolutions, as wide as the FPN)
MASK_HEADS = dict(LIGHT_HEADS, box_representation_size=256, mask_head_convs=4, mask_head_channels=64)
#: the detector each task benchmarks, by the name the tables use
DETECTOR_NAMES = {"detection": "Faster R-CNN", "instance_segmentation": "Mask R-CNN"}
#: the fraction of dense backbone MACs the sparse configs are held to
BUDGET = 0.5

console = Console(width=160)  # a table readable in logs too (no terminal there)


class EndToEnd(nn.Module):
    """A torchvision detector on its own list of images (canvases of mixed shapes, which no batch tensor
    holds): `time_models` feeds a tensor, which only says the device; the detector resizes and pads the list."""

    def __init__(self, detector: nn.Module, images: List[torch.Tensor]):
        super().__init__()
        self.detector, self.images = detector, images

    def forward(self, x: torch.Tensor):
        return self.detector(self.images)


def uniform_at_budget(method, body: nn.Module, img_size: int, fraction: float) -> float:
    """The uniform sparsity (one of the engine's ratios) whose backbone MACs come closest to `fraction` of dense."""
    dense = method.macs(body, method.dense_config(body), img_size)
    return min(RATIO_CHOICES, key=lambda s: abs(method.macs(body, method.uniform_config(body, s), img_size) / dense - fraction))


# --------------------------------------------------------------------------------------------- training (CLI)
def run_config(args, data: Path, out: Path, epochs: int, checkpoint: Optional[Path] = None,
               sparsity: Any = 0.0) -> Dict[str, Any]:
    cfg = {"model": {"name": args.model, "args": dict(args.model_args, img_size=args.img_size)},
           "data": {"path": str(data), "task": args.task}, "task_options": dict(args.heads),
           "sparsity": sparsity, "epochs": epochs, "batch_size": args.train_batch_size,
           "eval_batch_size": args.train_batch_size, "optim": {"lr": args.lr}, "out": str(out)}
    if checkpoint is not None:
        cfg["checkpoint"] = str(checkpoint)
    return cfg


#: --smoke runs the CLI in this process (what a subprocess would cost is mostly importing torch again)
IN_PROCESS = {"on": False}


def cli(*argv) -> None:
    """`sparsevit ARGV` as a user runs it, in a fresh process (in this one under --smoke); its last error
    line as a RuntimeError on failure."""
    if IN_PROCESS["on"]:
        from sparsevit_cli.cli import main as sparsevit

        err = io.StringIO()
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
                sparsevit([str(a) for a in argv])
        except SystemExit as e:
            if e.code:
                raise RuntimeError(err.getvalue().strip().splitlines()[-1] if err.getvalue().strip()
                                   else f"exit code {e.code}") from None
        return
    done = subprocess.run([sys.executable, "-m", "sparsevit_cli.cli", *map(str, argv)], capture_output=True,
                          text=True)
    if done.returncode:
        lines = [l for l in (done.stderr or done.stdout).strip().splitlines() if l.strip()]
        raise RuntimeError(lines[-1] if lines else f"exit code {done.returncode}")


def train_all(args, data: Path, out: Path, uniform: float) -> Dict[str, Path]:
    """Model files of every row: dense, adapted (run dense), searched and uniform (both fine-tuned)."""
    files: Dict[str, Path] = {}

    def resume(stage_out: Path):
        """--resume where an earlier run of this script left the stage's folder (the stage continues, or only
        rewrites its model file when it had finished)."""
        return ["--resume"] if stage_out.exists() else []

    def finetune(name: str, **kw) -> Path:
        config = out / f"{name}.yaml"
        atomic_write_json(config, run_config(args, data, out / name, **kw))  # JSON is YAML
        cli("finetune", config, "--no-progress", *resume(out / name))
        return out / name / "model.safetensors"

    files["dense"] = finetune("dense", epochs=args.dense_epochs)
    adapt_cfg = out / "adapt.yaml"
    atomic_write_json(adapt_cfg, run_config(args, data, out / "adapt", args.adapt_epochs, files["dense"]))
    cli("adapt", "--config", adapt_cfg, "--no-progress", *resume(out / "adapt"))
    files["adapted dense"] = out / "adapt" / "model.safetensors"
    cli("search", "--checkpoint", files["adapted dense"], "--data", data, "--out", out / "search",
        "--budget-macs", f"{BUDGET:.0%}", "--budget-macs-of", "backbone", "--eval-samples", args.eval_samples,
        "--confirm-samples", args.confirm_samples,
        "--population", args.population,
        "--generations", args.generations, "--parents", max(2, args.population // 4), "--mutations",
        args.population // 2, "--crossovers", args.population // 2, "--no-progress", *resume(out / "search"))
    best = read_sparsity_file(out / "search" / "best.yaml")["sparsity"]
    files["searched"] = finetune("searched", epochs=args.finetune_epochs, checkpoint=files["adapted dense"],
                                 sparsity=best)
    files["uniform"] = finetune("uniform", epochs=args.finetune_epochs, checkpoint=files["adapted dense"],
                                sparsity=uniform)
    return files


def scores(model: nn.Module, dataset, task, batch_size: int, indices=None) -> Dict[str, Any]:
    """Per-image detections of `model` on `indices` of `dataset` (all of it if None), one evaluation, as every
    AP the task reports ({'box_ap'} or {'box_ap', 'mask_ap'}: `tasks.CocoScores`, which recompute AP on any
    resample of the images for the bootstrap intervals)."""
    from sparsevit_cli.evaluate import evaluate_images
    from sparsevit_cli.tasks import CocoScores

    s = evaluate_images(model, get_method("sparsevit"), None, dataset, task, batch_size, torch.device("cpu"),
                        list(range(len(dataset))) if indices is None else indices)
    return {metric: CocoScores(dataset, metric, s.image_ids, s.results) for metric in task.reported}


def intervals(per_image: Dict[str, Dict[str, Any]], reference: str) -> Dict[str, Dict[str, Any]]:
    """Every other model minus `reference`, per AP, with its 95% paired bootstrap interval over the images
    (COCOeval on each of `RESAMPLES_SLOW` resamples, as `search` does)."""
    from sparsevit_cli.search.confirm import compare

    return {name: {metric: compare(name, s, reference, per_image[reference][metric]).model_dump()
                   for metric, s in per.items()}
            for name, per in per_image.items() if name not in (reference, "dense")}


# --------------------------------------------------------------------------------------------- measuring
def untrained_detectors(args, num_classes: int, uniform: float) -> Dict[str, nn.Module]:
    """Dense (timm backbone) and uniform-sparse detectors with the same random weights."""
    torch.manual_seed(0)
    body = timm.create_model(args.model, img_size=args.img_size, **args.model_args)
    dense = build_task_model(body, args.task, num_classes, **args.heads).eval()
    sparse = copy.deepcopy(dense)
    sv.sparsify(sparse.backbone.body, uniform)
    return {"dense": dense, f"uniform {uniform:.0%}": sparse}


def measure(models: Dict[str, nn.Module], images: List[torch.Tensor], dense_config, args) -> List[Dict[str, Any]]:
    """MACs by part and interleaved latencies (end to end, backbone only) of every model, per batch size."""
    method = get_method("sparsevit")
    rows = []
    sparse_twin = next(m for m in models.values() if hasattr(backbone_of(m), "sparsity"))
    for bs in args.batch_sizes:
        x = [images[i % len(images)] for i in range(bs)]  # val canvases of mixed aspect ratios
        first = next(iter(models.values()))
        with torch.no_grad():  # what the backbone reads: the detector's normalised (and padded) batch
            batch = first.transform(x)[0].tensors
        e2e = time_models({k: EndToEnd(m, x) for k, m in models.items()}, batch, warmup=args.warmup,
                          repeats=args.repeats)
        bb = time_models({k: BackboneFeatures(m.backbone.body).eval() for k, m in models.items()}, batch,
                         warmup=args.warmup, repeats=args.repeats)
        for name, model in models.items():
            if hasattr(backbone_of(model), "sparsity"):
                counted, config = model, backbone_of(model).sparsity
            else:  # the timm dense body: counted as a same-shaped sparse detector at the dense config
                counted, config = sparse_twin, dense_config
            macs = detector_macs(counted, method, config, args.img_size, bs, breakdown=True)
            rows.append({"model": name, "batch": bs, "config": config,
                         "backbone_gmacs": macs.parts["backbone"] / 1e9, "total_gmacs": macs.total / 1e9,
                         "gmacs_by_part": {part: v / 1e9 for part, v in macs.parts.items()},
                         "e2e_ms": e2e[name], "backbone_ms": bb[name]})
    for r in rows:  # speedups against the dense row of the same batch size
        ref = next(d for d in rows if d["model"] == "dense" and d["batch"] == r["batch"])
        r["e2e_speedup"] = ref["e2e_ms"] / r["e2e_ms"]
        r["backbone_speedup"] = ref["backbone_ms"] / r["backbone_ms"]
        r["backbone_macs_fraction"] = r["backbone_gmacs"] / ref["backbone_gmacs"]
        r["backbone_latency_share"] = r["backbone_ms"] / r["e2e_ms"]
        # Amdahl: the end-to-end speedup if only the backbone's time changed as measured
        r["e2e_bound"] = ref["e2e_ms"] / (ref["e2e_ms"] - ref["backbone_ms"] + r["backbone_ms"])
    return rows


def main(argv=None) -> Dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(ap, img_size=512, repeats=7, warmup=2)
    ap.add_argument("--task", choices=sorted(DETECTOR_NAMES), default="detection",
                    help="detection: Faster R-CNN (box AP); instance_segmentation: Mask R-CNN (box and mask AP)")
    ap.add_argument("--out", type=Path, default=None, help="default runs/bench_det (runs/bench_det_mask for "
                                                             "instance_segmentation)")
    ap.add_argument("--batch-sizes", default="1,4")
    ap.add_argument("--latency-only", action="store_true", help="no training: untrained dense vs uniform")
    # the defaults are the run the README reports (about 50 min on 2 CPU cores)
    add_pipeline_options(ap, train=128, val=112, dense_epochs=10, adapt_epochs=6, finetune_epochs=2,
                         train_batch_size=4, lr=2e-4, eval_samples=16, confirm_samples=16)
    ap.add_argument("--population", type=int, default=8)
    ap.add_argument("--generations", type=int, default=2)
    ap.add_argument("--model-args", type=json.loads, default=SMALL_SWIN,
                    help="timm constructor args as JSON ('{}': the model's own, e.g. the full Swin-T)")
    ap.add_argument("--heads", type=json.loads, default=None,
                    help="the detector's task_options as JSON (fpn_channels, rpn_post_nms_top_n_test, "
                         "box_detections_per_img, box_representation_size, mask_head_convs, mask_head_channels, "
                         "...; '{}': torchvision's defaults); default LIGHT_HEADS (Faster R-CNN), MASK_HEADS "
                         "(Mask R-CNN)")
    args = ap.parse_args(argv)
    if args.heads is None:
        args.heads = MASK_HEADS if args.task == "instance_segmentation" else LIGHT_HEADS
    if args.out is None:
        args.out = Path("runs/bench_det_mask" if args.task == "instance_segmentation" else "runs/bench_det")
    args = apply_smoke(args, batch_sizes="1,2", train=2, val=2,
                       dense_epochs=1, adapt_epochs=1, finetune_epochs=1, train_batch_size=2, eval_samples=1, confirm_samples=1,
                       population=4, generations=1)
    args.batch_sizes = [int(b) for b in str(args.batch_sizes).split(",")]
    IN_PROCESS["on"] = args.smoke
    out = args.out
    out.mkdir(parents=True, exist_ok=True)

    data = out / "data"
    cli("demo-data", data, "--img-size", args.img_size, "--train", args.train, "--val", args.val, "--detection")
    task = get_task(args.task)
    val = task.dataset(data, "val", args.img_size, train=False)
    images = [val[i][0] for i in range(min(len(val), max(args.batch_sizes)))]

    method = get_method("sparsevit")
    probe = sv.sparsify(timm.create_model(args.model, img_size=args.img_size, **args.model_args))
    uniform = uniform_at_budget(method, probe, args.img_size, BUDGET)

    result: Dict[str, Any] = {"task": args.task, "model": args.model, "model_args": args.model_args, "img_size": args.img_size,
                              "heads": args.heads, "budget": BUDGET, "uniform_sparsity": uniform,
                              "threads": torch.get_num_threads(), "smoke": args.smoke}
    models = untrained_detectors(args, val.num_classes, uniform)
    result["training"] = {"status": "skipped", "reason": "--latency-only"}
    if not args.latency_only:
        try:
            files = train_all(args, data, out, uniform)
        except RuntimeError as e:
            result["training"] = {"status": "failed", "error": str(e)}
            console.print(f"[yellow]training stages did not run[/]: {e}; MACs and latency of untrained detectors")
        else:
            models = {name: sv.load(path) for name, path in files.items()}
            for name in ("adapted dense",):  # the adapted model run dense: the AP reference of the sparse rows
                backbone_of(models[name]).set_sparsity(0.0)
            report_images = unseen_by_search(out / "search" / "best.yaml", len(val))
            per_image = {name: scores(m, val, task, args.train_batch_size, report_images)
                         for name, m in models.items()}
            result["training"] = {"status": "ok", "files": {k: str(v) for k, v in files.items()},
                                  "ap_images": len(report_images) if report_images else len(val),
                                  **{metric: {name: per[metric].metric() for name, per in per_image.items()}
                                     for metric in task.reported},
                                  "vs_adapted_dense": intervals(per_image, "adapted dense")}

    rows = measure(models, images, method.dense_config(probe), args)
    if result["training"]["status"] == "ok":
        for r in rows:
            for metric in task.reported:
                r[metric] = result["training"][metric][r["model"]]
    result["rows"] = rows
    if result["training"]["status"] == "ok":  # the targets, on the first batch size
        pick = next(r for r in rows if r["model"] == "searched" and r["batch"] == args.batch_sizes[0])
        vs = result["training"]["vs_adapted_dense"]["searched"]
        result["targets"] = {f"backbone >= 1.5x (batch {pick['batch']})": pick["backbone_speedup"] >= 1.5,
                             f"end to end >= 1.3x (batch {pick['batch']})": pick["e2e_speedup"] >= 1.3,
                             **{f"{metric} >= adapted dense - 1": vs[metric]["diff"] >= -1 for metric in task.reported}}
    atomic_write_json(out / "bench_det.json", result)

    table = Table(title=f"{DETECTOR_NAMES[args.task]}, {args.model} {args.model_args} @ {args.img_size}², heads {args.heads}, "
                        f"CPU fp32, {torch.get_num_threads()} threads (median of {args.repeats}, interleaved)")
    aps = [m.replace("_ap", "") + " AP" for m in task.reported]
    for col in ("model", "batch", *aps, "backbone GMACs", "total GMACs", "backbone ms", "speedup",
                "end-to-end ms", "speedup", "backbone share (MACs / time)"):
        table.add_column(col, justify="right")
    for r in rows:
        ap_texts = [f"{r[m]:.1f}" if m in r else "-" for m in task.reported]
        table.add_row(r["model"], str(r["batch"]), *ap_texts,
                      f"{r['backbone_gmacs']:.2f} ({r['backbone_macs_fraction']:.0%})", f"{r['total_gmacs']:.2f}",
                      f"{r['backbone_ms']:.1f}", f"{r['backbone_speedup']:.2f}x", f"{r['e2e_ms']:.1f}",
                      f"{r['e2e_speedup']:.2f}x",
                      f"{r['backbone_gmacs'] / r['total_gmacs']:.0%} / {r['backbone_latency_share']:.0%}")
    console.print(table)
    if result["training"]["status"] == "ok":
        for name, per in result["training"]["vs_adapted_dense"].items():
            for metric, c in per.items():
                console.print(f"{metric}: {c['words']} (over {result['training']['ap_images']} canvases)")
        for what, ok in result["targets"].items():
            console.print(f"{'[green]met[/]' if ok else '[red]missed[/]'}  {what}")
    console.print(f"wrote {out / 'bench_det.json'}")
    return result


if __name__ == "__main__":
    main()
