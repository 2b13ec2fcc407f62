"""`sparsevit evaluate`: the task's metrics (top-1, mIoU, COCO box / mask AP) of a model file on a split of the
user's data, under its stored config, a search's best.yaml or a uniform sparsity, optionally beside its dense
config; with the MACs of each (the whole task model as executed, and its backbone). Under torchrun the images
are sharded over ranks and the metrics combined (`evaluate.evaluate_all`, the one evaluation every step uses)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from .. import dist
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


def run_evaluate(opts: EvaluateOptions) -> Optional[Dict[str, Any]]:
    """{'task', 'metrics' (names, the task's first), 'images', 'rows': [{'name', 'config', <metric>: %, 'gmacs',
    'backbone_gmacs'}]}, the dense row first when asked; None on torchrun ranks other than 0 (rank 0 reports)."""
    from ..evaluate import evaluate_all, search_indices
    from ..model_file import config_option, load_model_file
    from ..tasks import backbone_of, get_task

    device = resolve_device(opts.device)  # options first: a typo costs no model load
    model, method, meta = load_model_file(opts.checkpoint, config_option(opts.config, opts.sparsity))
    backbone = backbone_of(model)
    config = meta.sparsity
    task = get_task(meta.task)
    img_size = meta.image_size
    dataset = task.dataset(opts.data, opts.split, img_size, train=False)
    meta.check_data(dataset, opts.data, opts.checkpoint)
    model = model.to(device)
    runs = ([("dense", method.dense_config(backbone))] if opts.dense else []) + [("sparse", config)]
    rows: List[Dict[str, Any]] = []
    with dist.process_group(opts.device):
        main = dist.is_main()
        for name, cfg in runs:
            scores = evaluate_all(model, method, cfg, dataset, task, opts.batch_size, device,
                                  max_samples=opts.max_samples)
            rows.append({"name": name, "config": cfg, **scores,
                         "gmacs": task.macs(model, method, cfg, img_size) / 1e9,
                         "backbone_gmacs": task.backbone_macs(model, method, cfg, img_size) / 1e9})
    if not main:
        return None
    metrics = [task.metric_name] + sorted(k for k in rows[-1] if k not in {task.metric_name, "name", "config",
                                                                             "gmacs", "backbone_gmacs"})
    return {"model_file": str(Path(opts.checkpoint)), "task": task.name, "split": opts.split, "metrics": metrics,
            "images": len(search_indices(len(dataset), opts.max_samples)), "rows": rows}
