"""`finetune` and `adapt` end to end: train, evaluate, write the model file and a report."""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

from rich.console import Console

from .. import dist
from ..io import atomic_write_json, make_console
from ..train.run_config import RunConfig
from ..train.state import run_folder
from ..train.trainer import Trainer, report_table


def run_finetune(cfg: RunConfig, resume: bool = False, progress: bool = True,
                 console: Optional[Console] = None) -> Dict[str, Any]:
    """Train `cfg.sparsity` to convergence; writes out/model.safetensors with the config embedded."""
    console = console or make_console()

    def finish(trainer: Trainer, status: Dict[str, Any]) -> Dict[str, Any]:
        scores = trainer.evaluate_all(trainer.config)
        path = trainer.save_model(scores)
        if dist.is_main():
            console.print(report_table(f"finetune: {cfg.out}", [
                {"config": "trained", **scores, "GMACs": _gmacs(trainer, trainer.config)}],
                ["config", *scores, "GMACs"]))
        return {"model_file": str(path), **scores, "sparsity": trainer.config, **status}

    return _train(cfg, "finetune", resume, progress, console, finish)


def run_adapt(cfg: RunConfig, resume: bool = False, progress: bool = True,
              console: Optional[Console] = None) -> Dict[str, Any]:
    """Sparsity-aware adaptation: a random valid config of the space every step; reports accuracy under
    the dense and a few uniform configs; writes out/model.safetensors and out/adapt_report.json."""
    console = console or make_console()

    def finish(trainer: Trainer, status: Dict[str, Any]) -> Dict[str, Any]:
        rows: List[Dict[str, Any]] = []
        for value in cfg.adapt.report:
            config = trainer.method.uniform_config(trainer.backbone, value)
            rows.append({"config": f"uniform {value:.0%}", "sparsity": value,
                         **trainer.evaluate_all(config), "GMACs": _gmacs(trainer, config)})
        path = trainer.save_model({"adapted": True, "space": trainer.space_name})
        dist.main_only(lambda: atomic_write_json(trainer.out / "adapt_report.json", rows))
        if dist.is_main():
            scores = [k for k in rows[0] if k not in ("config", "sparsity", "GMACs")] if rows else []
            console.print(report_table("accuracy of the adapted model", rows, ["config", *scores, "GMACs"]))
        return {"model_file": str(path), "report": rows, **status}

    return _train(cfg, "adapt", resume, progress, console, finish)


def _train(cfg: RunConfig, mode: str, resume: bool, progress: bool, console: Console,
           finish: Callable[[Trainer, Dict[str, Any]], Dict[str, Any]]) -> Dict[str, Any]:
    """One run from start to end: the process group (torchrun) is joined and destroyed around it, and
    the output folder is held (locked; a fresh run over an existing one refused) until the model file
    is written."""
    with dist.process_group(cfg.device):
        trainer = Trainer(cfg, mode, progress=progress, console=console)
        with run_folder(trainer.out, resume):
            status = trainer.fit(resume=resume)
            return status if status["interrupted"] else finish(trainer, status)


def _gmacs(trainer: Trainer, config) -> float:
    """GMACs of one image as the task model executes it (backbone under `config`, neck and heads)."""
    return trainer.task.macs(trainer.model, trainer.method, config, trainer.img_size) / 1e9
