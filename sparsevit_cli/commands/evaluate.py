"""`sparsevit evaluate`: the task's metrics (top-1, mIoU, COCO box / mask AP) of a model file on a split of the
user's data, under its stored config, a search's best.yaml or a uniform sparsity, optionally beside its dense
config; with the MACs of each (the whole task model as executed, and its backbone). Under torchrun the images
are sharded over ranks and the metrics combined (`evaluate.run_metric`, the one evaluation every step uses).

COCO tasks report COCOeval's whole standard summary per row (AP, AP50, AP75, APs/m/l, AR@1/10/100, ARs/m/l, of
boxes and masks), per category on request, and write the evaluated config's detections as a standard COCO
results file on request (xywh boxes, the dataset's category ids, scores, RLE masks; pycocotools' loadRes reads it).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple

from .. import dist
from ..errors import UserError
from ..timing import resolve_device


@dataclass
class EvaluateOptions:
    checkpoint: str
    data: str
    config: Optional[str] = None     # a sparsity-config YAML (e.g. best.yaml)
    sparsity: Optional[float] = None  # uniform sparsity instead
    dense: bool = False              # also score the dense config (same weights)
    split: str = "val"
    batch_size: int = 16
    max_samples: Optional[int] = None  # a fixed random subset of this many images (all by default)
    device: str = "cpu"
    results_json: Optional[str] = None  # COCO tasks: write the evaluated config's detections here
    per_class: bool = False          # COCO tasks: AP of every category too
    include_fitness_images: bool = False  # with a search's best.yaml: also score the images it was ranked on
    img_size: Optional[int] = None   # another input size than the model file's (a Swin runs any size)


def run_evaluate(opts: EvaluateOptions) -> Optional[Dict[str, Any]]:
    """{'task', 'metrics' (names, the task's first), 'images', 'rows': [{'name', 'config', <metric>: %, 'gmacs',
    'backbone_gmacs'}]}, the dense row first when asked; None on torchrun ranks other than 0 (rank 0 reports).
    COCO tasks: every row also has 'coco': {metric: COCOeval's summary (+ 'per_class' with `per_class`)}, and
    with `results_json` the last row's (the config asked for) detections are written there ('results_json')."""
    from ..evaluate import metric_values, run_metric, search_indices
    from ..detection.coco import write_coco_results
    from ..io import check_output_file, refuse_input
    from ..model_file import config_option, load_model_file
    from ..tasks import backbone_of, get_task

    device = resolve_device(opts.device)  # options first: a typo costs no model load
    results_path = check_output_file(opts.results_json, "--results-json", inputs={
        "model file": opts.checkpoint, "--config": opts.config}) if opts.results_json else None
    results_extra = []
    if results_path is not None:  # its companion (an instance segmenter's boxes) may not land on an input either
        from ..detection.coco import results_paths

        for extra in results_paths(results_path, True).values():
            if extra != results_path:
                results_extra.append(check_output_file(extra, "--results-json", inputs={
                    "model file": opts.checkpoint, "--config": opts.config}))
    config_file = config_option(opts.config, opts.sparsity)
    model, method, meta = load_model_file(opts.checkpoint, config_file, checkpoints=True)
    if meta.task == "classification" and meta.num_classes == 0:  # a backbone checkpoint (mmdet, SwinModel)
        raise UserError(f"'{opts.checkpoint}' holds a backbone without a classifier; fine-tune it on your data first "
                        f"(`sparsevit adapt --checkpoint {opts.checkpoint} --data {opts.data}`)")
    backbone = backbone_of(model)
    config = meta.sparsity
    task = get_task(meta.task)
    img_size = meta.resolve_img_size(opts.img_size)
    dataset = task.dataset(opts.data, opts.split, img_size, train=False)
    meta.check_data(dataset, opts.data, opts.checkpoint)
    if results_path is not None:  # the data's files are known now: refused before any image is scored
        for path in (results_path, *results_extra):
            refuse_input(path, "--results-json")
    if (results_path is not None or opts.per_class) and not hasattr(task.metric(dataset), "summary"):
        raise UserError(f"--results-json and --per-class are for COCO tasks (detection, instance_segmentation); "
                        f"'{opts.checkpoint}' is a {task.name} model")
    model = model.to(device)
    indices = search_indices(len(dataset), opts.max_samples)
    excluded, note = _search_images(config_file, opts, len(dataset))
    if excluded:
        indices = [i for i in indices if i not in excluded]
    runs = ([("dense", method.dense_config(backbone))] if opts.dense else []) + [("sparse", config)]
    rows: List[Dict[str, Any]] = []
    with dist.process_group(opts.device):
        main = dist.is_main()
        for name, cfg in runs:
            metric = run_metric(model, method, cfg, dataset, task, opts.batch_size, device, indices=indices)
            row = {"name": name, "config": cfg, **metric_values(metric, task),
                   "gmacs": task.macs(model, method, cfg, img_size) / 1e9,
                   "backbone_gmacs": task.backbone_macs(model, method, cfg, img_size) / 1e9}
            summary = getattr(metric, "summary", None)
            if summary is not None:
                row["coco"] = summary(per_class=opts.per_class)
            rows.append(row)
        if results_path is not None and main:  # the config asked for: the last row
            try:
                written = write_coco_results(results_path, metric.coco_results(), getattr(task, "masks", False))
            except OSError as e:
                raise UserError(f"cannot write --results-json '{results_path}': {e.strerror or e}") from None
    if not main:
        return None
    metrics = [task.metric_name] + sorted(k for k in rows[-1] if k not in {task.metric_name, "name", "config",
                                                                             "gmacs", "backbone_gmacs", "coco"})
    result = {"model_file": str(Path(opts.checkpoint)), "task": task.name, "split": opts.split, "metrics": metrics,
              "images": len(indices), "rows": rows, **({"note": note} if note else {})}
    if results_path is not None:
        result["results_json"] = str(results_path)
        result["results_files"] = written
    return result


def _search_images(config_file: Any, opts: EvaluateOptions, n: int) -> Tuple[Set[int], Optional[str]]:
    """(images to leave out, a line saying so): a search's best.yaml records the val images it ranked its
    candidates on (its fitness split); scoring the pick on them would report its selection bias too."""
    split = config_file.get("search_split") if isinstance(config_file, dict) else None
    if not isinstance(split, dict) or opts.split != split.get("split", "val"):
        return set(), None
    same_data = Path(opts.data).resolve() == Path(str(split.get("data", ""))).resolve()
    if not same_data or split.get("images") != n:
        return set(), (f"note: {opts.config} was searched on other data ({split.get('data')}, "
                       f"{split.get('images')} images); no images left out")
    fitness = set(int(i) for i in split.get("fitness", []))
    if opts.include_fitness_images:
        return set(), (f"note: scoring the {len(fitness)} images the search ranked its candidates on too "
                       f"(--include-fitness-images): the pick's score there is biased upwards")
    return fitness, (f"note: left out the {len(fitness)} {opts.split} images the search ranked its candidates "
                     f"on (its fitness split, recorded in {opts.config}); --include-fitness-images scores them too")
