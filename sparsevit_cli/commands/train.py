"""`finetune` and `adapt` end to end: train, evaluate, write the model file and a report."""
from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

from rich.console import Console

from .. import dist
from ..train.run_config import RunConfig
from ..train.trainer import Trainer, report_table


def run_finetune(cfg: RunConfig, resume: bool = False, progress: bool = True,
                 console: Optional[Console] = None) -> Dict[str, Any]:
    """Train `cfg.sparsity` to convergence; writes out/model.safetensors with the config embedded."""
    console = console or Console()
    trainer = Trainer(cfg, "finetune", progress=progress, console=console)
    status = trainer.fit(resume=resume)
    if status["interrupted"]:
        return status
    metric = trainer.evaluate(trainer.config)
    path = trainer.save_model({trainer.metric_name: metric})
    result = {"model_file": str(path), trainer.metric_name: metric, "sparsity": trainer.config, **status}
    if dist.is_main():
        console.print(report_table(f"finetune: {cfg.out}", [
            {"config": "trained", trainer.metric_name: metric, "GMACs": _gmacs(trainer, trainer.config)}],
            ["config", trainer.metric_name, "GMACs"]))
    return result


def run_adapt(cfg: RunConfig, resume: bool = False, progress: bool = True,
              console: Optional[Console] = None) -> Dict[str, Any]:
    """Sparsity-aware adaptation: a random valid config of the space every step; reports accuracy under
    the dense and a few uniform configs; writes out/model.safetensors and out/adapt_report.json."""
    console = console or Console()
    trainer = Trainer(cfg, "adapt", progress=progress, console=console)
    status = trainer.fit(resume=resume)
    if status["interrupted"]:
        return status
    rows: List[Dict[str, Any]] = []
    for value in cfg.adapt.report:
        config = trainer.method.uniform_config(trainer.backbone, value)
        rows.append({"config": f"uniform {value:.0%}", "sparsity": value,
                     trainer.metric_name: trainer.evaluate(config), "GMACs": _gmacs(trainer, config)})
    path = trainer.save_model({"adapted": True, "space": trainer.space_name})
    if dist.is_main():
        console.print(report_table("accuracy of the adapted model", rows, ["config", trainer.metric_name, "GMACs"]))
        (trainer.out / "adapt_report.json").write_text(json.dumps(rows, indent=1))
    return {"model_file": str(path), "report": rows, **status}


def _gmacs(trainer: Trainer, config) -> float:
    return trainer.method.macs(trainer.backbone, config, trainer.img_size) / 1e9
