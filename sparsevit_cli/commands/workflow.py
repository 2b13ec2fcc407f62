"""The demo's presets and the helpers `sparsevit report` reuses for its extra comparisons. Presets are plain
data (`PRESETS`): `quick` (CI, well under a minute on 2 CPU cores), `default` (~5 min on 2 CPU cores), `repro`
(longer training, for `make repro`), `gpu` (larger settings for `--device cuda`), and `psvit` / `psvit-quick`
(PSViT on a 12-block / 6-block DeiT). `pipeline_config` turns a preset into `sparsevit pipeline` settings:
the demo's stages are the pipeline's (commands/pipeline.py), each skipped when its result exists (`Stages`)
and resumed when interrupted.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from rich.console import Console

from ..pipeline import Stages  # noqa: F401  (the one stage runner; demo and report use it from here)


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
    eval_samples: int      # val images the search scores configs on (its fitness split)
    confirm_samples: int = 0  # other val images its top candidates are re-scored on (0: as many as eval_samples);
                              # the rest are held out for the results
    budget: str = "50%"    # MAC budget of the search, of dense
    model: str = "swin_tiny_patch4_window7_224"
    timing_repeats: int = 10


# Why these sizes: on 2 CPU cores a Swin trained from scratch must learn to read a small digit on a large
# cluttered canvas in minutes. Max pooling in the head (timm `global_pool="max"`) lets the few digit tokens
# decide instead of being averaged away by background, which makes this learnable in ~20 short epochs;
# 2x2-token windows give 64 windows in stage 1 and 16 per block in stage 2 at 64 px, so 10% steps of
# sparsity keep different window counts (with 4x4 windows, 16 then 4, the 94 genomes in a 50% budget ran only
# 21 distinct networks) and a 50% budget leaves the search real choices. embed_dim 32 keeps the smaller
# windows' extra cost inside the demo's 5 minutes. Fitness and confirmation splits of 800 val images each
# (the CLI's default is 1000) leave 800 the search never sees for the final table.


_SMALL_SWIN = dict(window_size=2, global_pool="max", drop_path_rate=0.0)


PRESETS: Dict[str, DemoPreset] = {
    # CI: every stage runs for real, on a few images; accuracies are near chance and only checked for sanity
    "quick": DemoPreset(img_size=64, n_train=64, n_val=48, num_classes=10, digit_frac=(0.25, 0.4),
                        model_args=dict(embed_dim=16, depths=[2, 2], num_heads=[1, 2], **_SMALL_SWIN),
                        dense_epochs=1, adapt_epochs=1, finetune_epochs=1, batch_size=16, lr=1e-3,
                        population=6, generations=2, parents=3, children=3, eval_samples=16, confirm_samples=16,
                        timing_repeats=5),
    "default": DemoPreset(img_size=64, n_train=3000, n_val=2400, num_classes=10, digit_frac=(0.25, 0.4),
                          model_args=dict(embed_dim=32, depths=[2, 4], num_heads=[2, 4], **_SMALL_SWIN),
                          dense_epochs=12, adapt_epochs=4, finetune_epochs=2, batch_size=32, lr=1e-3,
                          population=12, generations=3, parents=4, children=4, eval_samples=800,
                          confirm_samples=800),
    # `make repro`: the default, trained longer (~20 min on 2 CPU cores), as the report's starting point
    "repro": DemoPreset(img_size=64, n_train=3000, n_val=2400, num_classes=10, digit_frac=(0.25, 0.4),
                        model_args=dict(embed_dim=32, depths=[2, 4], num_heads=[2, 4], **_SMALL_SWIN),
                        dense_epochs=20, adapt_epochs=10, finetune_epochs=3, batch_size=32, lr=1e-3,
                        population=16, generations=4, parents=4, children=6, eval_samples=800,
                        confirm_samples=800),
    "gpu": DemoPreset(img_size=448, n_train=4000, n_val=1000, num_classes=10, digit_frac=(1 / 8, 1 / 5),
                      model_args=dict(embed_dim=64, depths=[2, 2, 6, 2], num_heads=[2, 4, 8, 16], window_size=7,
                                      global_pool="max"),
                      dense_epochs=30, adapt_epochs=10, finetune_epochs=5, batch_size=64, lr=1e-3,
                      population=50, generations=20, parents=10, children=25, eval_samples=400),
    # PSViT on a 12-block DeiT (the gene layout of DeiT-S/B, so its searched config runs on them too)
    "psvit": DemoPreset(model="deit_tiny_patch16_224", img_size=64, n_train=3000, n_val=600, num_classes=10,
                        digit_frac=(0.25, 0.4),
                        model_args=dict(patch_size=8, embed_dim=96, depth=12, num_heads=3, global_pool="max",
                                        drop_path_rate=0.0),
                        dense_epochs=15, adapt_epochs=5, finetune_epochs=2, batch_size=32, lr=1e-3,
                        population=16, generations=4, parents=4, children=6, eval_samples=240, budget="60%"),
    "psvit-quick": DemoPreset(model="deit_tiny_patch16_224", img_size=64, n_train=64, n_val=48, num_classes=10,
                              digit_frac=(0.25, 0.4),
                              model_args=dict(patch_size=8, embed_dim=32, depth=6, num_heads=2, global_pool="max"),
                              dense_epochs=1, adapt_epochs=1, finetune_epochs=1, batch_size=16, lr=1e-3,
                              population=6, generations=2, parents=3, children=3, eval_samples=16, budget="60%",
                              timing_repeats=5),
}


#: per-gene probability of resampling in a mutant, in the presets' short searches (tens of networks)
MUTATION_PROB = 0.3


def run_config(p: DemoPreset, data: Path, out: Path, device: str, epochs: int, checkpoint: Optional[Path] = None,
                lr: Optional[float] = None, sparsity: Any = 0.0):
    from ..train.run_config import parse_run_config
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


def pipeline_config(p: DemoPreset, data: Path, out: Path, device: str):
    """The preset as a `sparsevit pipeline` config on the demo data in `data`: the demo IS the pipeline
    (dense training from scratch, adapt, search, finetune, evaluate with the report card, ONNX export)."""
    from ..pipeline import PipelineConfig
    from ..train.run_config import parse_run_config
    base = run_config(p, data, out, device, epochs=p.dense_epochs).model_dump(exclude_unset=True)
    base["pipeline"] = {
        "budget": {"macs": p.budget},
        "dense": {"run": True, "epochs": p.dense_epochs},
        "adapt": {"epochs": p.adapt_epochs},
        "search": {"population": p.population, "generations": p.generations, "parents": p.parents,
                   "mutations": p.children, "crossovers": p.children, "mutation_prob": MUTATION_PROB, "seed": 0,
                   "eval_samples": p.eval_samples, "confirm_samples": p.confirm_samples or p.eval_samples},
        "finetune": {"epochs": p.finetune_epochs},
        "evaluate": {"uniform": [0.3, 0.5, 0.7], "pictures": 2, "repeats": p.timing_repeats},
        "export": {"format": "onnx"},
    }
    return parse_run_config(base, "demo preset", schema=PipelineConfig)


def train(mode: str, cfg, progress: bool, console: Console) -> None:
    from .train import run_adapt, run_finetune
    (run_adapt if mode == "adapt" else run_finetune)(cfg, resume=True, progress=progress, console=console)


def evolution_settings(p: DemoPreset, seed: int = 0):
    """The preset's search as `EvolutionSettings` (the demo's, the pipeline's and the benchmarks' one source)."""
    from ..search.evolution import EvolutionSettings
    return EvolutionSettings(population=p.population, generations=p.generations, parents=p.parents,
                             mutations=p.children, crossovers=p.children, mutation_prob=MUTATION_PROB, seed=seed)


def search(p: DemoPreset, model_file: Path, data: Path, out: Path, device: str, progress: bool,
            console: Console):
    """Run (or resume) the preset's search; returns its `SearchOutcome`."""
    from .search import SearchOptions, run_search
    settings = evolution_settings(p)
    return run_search(SearchOptions(checkpoint=str(model_file), data=str(data), out=str(out), budget_macs=p.budget,
                             device=device, eval_samples=p.eval_samples,
                             confirm_samples=p.confirm_samples or p.eval_samples, settings=settings,
                             resume=(out / "search_state.json").exists(), progress=progress), console=console)


def report_indices(p: DemoPreset, n: int):
    """The val images the preset's search never sees (neither its fitness nor its confirmation split)."""
    from ..evaluate import search_splits
    return search_splits(n, p.eval_samples, p.confirm_samples or p.eval_samples).rest


def val_split(data: Path, size: int):
    from ..data.datasets import build_dataset
    return build_dataset(str(data), "classification", "val", size, train=False)


def method_and_backbone(model):
    """The method and backbone of a toolkit model file's model (see `checkpoint.load`)."""
    from ..methods import get_method
    from ..tasks import backbone_of
    return get_method(model.sparsevit_meta["method"]), backbone_of(model)


def score(model, config, dataset, img_size: int, dev, indices) -> Tuple[float, float]:
    """(top-1 %, GMACs) of `model` under `config` (None: its stored config) on `indices` of `dataset`;
    the config stays applied."""
    from ..evaluate import evaluate  # torch: imported when a score is computed, not when the CLI starts
    method, backbone = method_and_backbone(model)
    config = method.validate(backbone, config if config is not None else model.sparsevit_meta["sparsity"])
    top1 = evaluate(model, method, config, dataset, "classification", 100, dev,
                    indices=indices)
    return top1, method.macs(backbone, config, img_size) / 1e9


METHOD_LABEL = {"sparsevit": "SparseViT", "sparsevit-v2": "SparseViT (Swin V2)", "psvit": "PSViT"}
