"""Options shared by the benchmark scripts, and their `--smoke` settings: a micro Swin that runs in seconds on
CPU, so that the test suite can check every script still runs (tests/test_bench_smoke.py); no timing is
asserted."""
import argparse
from pathlib import Path
from typing import List, Optional, Sequence

# two stages with 4x4-token windows: several windows per stage at 64 px, so sparsity still has work to skip
MICRO_SWIN = dict(embed_dim=16, depths=[2, 2], num_heads=[1, 2], window_size=4)
SMOKE_IMG_SIZE = 64
#: a small Swin with several windows in every stage at 512 px (128x128 tokens, window 8: 16x16 windows in
#: stage 1, 2x2 in stage 4): the backbone of bench-det, bench-seg and bench-export's whole detectors
SMALL_SWIN = dict(embed_dim=32, depths=[2, 2, 6, 2], num_heads=[1, 2, 4, 8], window_size=8)
#: Faster R-CNN heads sized to that backbone and to a few objects per canvas (torchvision's defaults: 256-channel
#: FPN, 1000 proposals, 100 detections): an FPN twice as wide as stage 1 (Swin-T's detectors: 256 over 96)
LIGHT_HEADS = dict(fpn_channels=64, rpn_post_nms_top_n_test=100, box_detections_per_img=20)


def add_model_options(ap: argparse.ArgumentParser, img_size: int, repeats: int, warmup: Optional[int] = None,
                      batch_size: Optional[int] = None, device: Optional[str] = None) -> None:
    """--model (a timm name), --img-size and --repeats, plus --warmup, --batch-size and --device where the
    script takes them; then --smoke."""
    ap.add_argument("--model", default="swin_tiny_patch4_window7_224")
    ap.add_argument("--img-size", type=int, default=img_size)
    ap.add_argument("--repeats", type=int, default=repeats)
    for name, value in (("--warmup", warmup), ("--batch-size", batch_size)):
        if value is not None:
            ap.add_argument(name, type=int, default=value)
    if device is not None:
        ap.add_argument("--device", default=device)
    add_smoke_option(ap)


def add_pipeline_options(ap: argparse.ArgumentParser, train: int, val: int, dense_epochs: int, adapt_epochs: int,
                         finetune_epochs: int, train_batch_size: int, lr: float, eval_samples: int,
                         confirm_samples: int) -> None:
    """The sizes of a dense -> adapt -> search -> finetune run on demo canvases (bench-det, bench-seg): data,
    epochs per stage, and the search's fitness / confirmation splits (the rows are scored on the other val
    canvases, which the search never saw)."""
    ap.add_argument("--train", type=int, default=train, help="training canvases")
    ap.add_argument("--val", type=int, default=val, help="validation canvases")
    ap.add_argument("--dense-epochs", type=int, default=dense_epochs)
    ap.add_argument("--adapt-epochs", type=int, default=adapt_epochs)
    ap.add_argument("--finetune-epochs", type=int, default=finetune_epochs)
    ap.add_argument("--train-batch-size", type=int, default=train_batch_size)
    ap.add_argument("--lr", type=float, default=lr)
    ap.add_argument("--eval-samples", type=int, default=eval_samples, help="the search's fitness split (val canvases)")
    ap.add_argument("--confirm-samples", type=int, default=confirm_samples,
                    help="the search's confirmation split (val canvases); the rows are scored on the other val canvases")


def add_smoke_option(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--smoke", action="store_true", help="micro model on CPU, one repeat (the tests run it)")
    ap.set_defaults(model_args={})


def apply_smoke(args: argparse.Namespace, **settings) -> argparse.Namespace:
    """With `--smoke`: the micro Swin at 64 px, one untimed-quality repeat, and the script's own `settings`."""
    if args.smoke:
        settings = dict(model_args=MICRO_SWIN, img_size=SMOKE_IMG_SIZE, repeats=1, warmup=0, **settings)
        for key, value in settings.items():
            setattr(args, key, value)
    return args


def unseen_by_search(best_yaml: Path, n: int) -> Optional[List[int]]:
    """The val canvases (of `n`) a search neither ranked nor confirmed its candidates on (its best.yaml records
    both splits): scoring the pick on them carries no selection bias. None (all) when nothing is left."""
    from sparsevit_cli.io import read_sparsity_file

    split = read_sparsity_file(best_yaml).get("search_split") or {}
    seen = set(int(i) for i in split.get("fitness", [])) | set(int(i) for i in split.get("confirmation", []))
    rest = [i for i in range(n) if i not in seen]
    return rest or None


def random_model_file(path: Path, model: str, img_size: int, model_args: dict, num_classes: int = 10) -> Path:
    """A dense SparseViT model file of a timm Swin with random weights (seed 0), written once at `path`: for
    benchmarks whose numbers do not depend on training (a search's cost, the tests' smoke runs)."""
    if path.exists():
        return path
    import timm
    import torch

    from sparsevit_cli import sparsify
    from sparsevit_cli.model_file import save_model
    from sparsevit_cli.tasks import build_task_model

    torch.manual_seed(0)
    backbone = sparsify(timm.create_model(model, img_size=img_size, **model_args))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(path, build_task_model(backbone, "classification", num_classes),
               {"method": "sparsevit", "model": model, "model_args": dict(model_args), "img_size": img_size,
                "task": "classification", "num_classes": num_classes,
                "sparsity": [[0.0] * ((d + 1) // 2) for d in model_args["depths"]]})
    return path


def demo_run(folder: Path):
    """A finished `sparsevit demo` folder's trained (adapted) model file, data folder and preset: what a benchmark
    searches when it is given `--demo`. SystemExit naming what is missing."""
    import json

    from sparsevit_cli.commands.workflow import DemoPreset

    model, data, marker = folder / "adapt" / "model.safetensors", folder / "data", folder / "demo_preset.json"
    missing = [str(p) for p in (model, data, marker) if not p.exists()]
    if missing:
        raise SystemExit(f"--demo {folder}: not a finished demo run (missing {', '.join(missing)})")
    fields = {k: v for k, v in json.loads(marker.read_text()).items() if k != "preset"}
    fields["digit_frac"] = tuple(fields["digit_frac"])
    return model, data, DemoPreset(**fields)


def warm_up_search(opts) -> None:
    """An untimed search (`opts`: a `SearchOptions` on one batch of fitness images, scoring network by network)
    before the timed ones: the first search in a process pays for imports (plotting, scipy) and first-call
    initialisation of every network's shapes, which the later searches reuse; untimed here, they count against
    no mode."""
    import scipy.stats  # noqa: F401  (racing's bounds, imported on their first use)

    from sparsevit_cli.commands.search import run_search
    from sparsevit_cli.io import make_console

    for f in ("search_state.json", "history.jsonl"):
        (Path(opts.out) / f).unlink(missing_ok=True)
    run_search(opts, console=make_console(quiet=True))


class ReportSplit:
    """A trained model's per-image top-1 on the val images a search with these fitness and confirmation sizes
    (split seed 0, the search's default) never saw: `evaluate.search_splits(...).rest`, scored once per config."""

    def __init__(self, checkpoint: Path, data: Path, fitness: int, confirmation: int, batch: int, device: str):
        from sparsevit_cli.evaluate import search_splits
        from sparsevit_cli.model_file import load_model_file
        from sparsevit_cli.tasks import get_task
        from sparsevit_cli.timing import resolve_device

        model, self.method, meta = load_model_file(str(checkpoint))
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.task = get_task(meta.task)
        self.dataset = self.task.dataset(str(data), "val", meta.resolve_img_size(None, own_size_only=True),
                                         train=False)
        self.indices = search_splits(len(self.dataset), fitness, confirmation, 0).rest
        self.batch = batch
        self.memo = {}

    def __call__(self, config):
        import json

        from sparsevit_cli.evaluate import evaluate_images

        key = json.dumps(config)
        if key not in self.memo:
            self.memo[key] = evaluate_images(self.model, self.method, config, self.dataset, self.task, self.batch,
                                             self.device, self.indices)
        return self.memo[key]


def results_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]], caption: str = ""):
    """A script's results as a rich table (every column right-aligned), from the same cells as its markdown."""
    from rich.table import Table

    table = Table(title=title, caption=caption or None)
    for col in columns:
        table.add_column(col, justify="right")
    for cells in rows:
        table.add_row(*cells)
    return table


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
    """The lines of a markdown table of `rows` under `columns`."""
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)] + \
        ["| " + " | ".join(cells) + " |" for cells in rows]
