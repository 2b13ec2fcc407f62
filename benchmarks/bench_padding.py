"""What a letterbox costs: a 16:9 image letterboxed on a square canvas (zero bands above and below, what a
fixed-size export or a square batch forces) against the same image alone, dense and window-sparse, in MACs and
in time measured in one run (interleaved). Padding windows are never kept nor counted (`PaddingMask`,
`block_counts`), so at sparsity s > 0 the letterbox costs about what the image costs alone; the dense model
computes the whole canvas. Never a test (`make bench-padding`; tests/test_bench_smoke.py runs `--smoke`).

MACs: torch.utils.flop_counter (an independent count of the matmuls and convolutions the forward ran; FLOPs / 2).
Random weights with trained-like LayerNorms (`bench_export.randomize_norms_`): cost does not depend on what
was learned. Target (issue 28): letterboxed / alone <= 1.15x at uniform 50%.
"""
import argparse
import json
from pathlib import Path

import timm
import torch
from rich.console import Console
from rich.table import Table
from torch.utils.flop_counter import FlopCounterMode

import sparsevit_cli as sv
from bench_export import randomize_norms_
from common import add_model_options, apply_smoke
from sparsevit_cli.io import atomic_write_json
from sparsevit_cli.timing import time_models_spread

RESULTS = Path(__file__).resolve().parent / "results"


def letterbox(image: torch.Tensor, side: int) -> torch.Tensor:
    """`image` (1, 3, h, side) centred on a zero side x side canvas."""
    canvas = image.new_zeros(1, 3, side, side)
    top = (side - image.shape[2]) // 2
    canvas[:, :, top: top + image.shape[2]] = image
    return canvas


def macs(model: torch.nn.Module, x: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() // 2


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(ap, img_size=512, repeats=10, warmup=2)
    ap.add_argument("--sizes", default="256,512", help="square canvases (px), comma-separated")
    ap.add_argument("--sparsity", type=float, default=0.5, help="uniform window sparsity")
    ap.add_argument("--results", default=str(RESULTS / "bench_padding.json"), help="'' for none")
    args = apply_smoke(ap.parse_args(argv))
    sizes = [args.img_size] if args.smoke else [int(s) for s in args.sizes.split(",")]
    rows = []
    for side in sizes:
        torch.manual_seed(0)
        model = sv.sparsify(randomize_norms_(timm.create_model(args.model, img_size=side, strict_img_size=False,
                                                               **args.model_args).eval()))
        h = side * 9 // 16 // 4 * 4  # 16:9, whole patches
        image = torch.rand(1, 3, h, side, generator=torch.Generator().manual_seed(side))
        inputs = {"alone": image, "letterboxed": letterbox(image, side)}
        for sparsity in (0.0, args.sparsity):
            model.set_sparsity(sparsity)
            count = {name: macs(model, x) for name, x in inputs.items()}
            # interleaved: one runner per input, each on its own tensor (time_models_spread feeds one input)
            runners = {name: (lambda x: lambda _: model(x))(x) for name, x in inputs.items()}
            ms = time_models_spread(runners, image, warmup=args.warmup, repeats=args.repeats)
            rows.append({"canvas": side, "image": [h, side], "sparsity": sparsity,
                         "gmacs": {k: v / 1e9 for k, v in count.items()},
                         "ms": {k: v.median for k, v in ms.items()},
                         "ms_iqr": {k: [v.low, v.high] for k, v in ms.items()},
                         "macs_ratio": count["letterboxed"] / count["alone"],
                         "time_ratio": ms["letterboxed"].median / ms["alone"].median})
    table = Table(title=f"{args.model}: a 16:9 image letterboxed on a square canvas vs alone, batch 1, CPU fp32, "
                        f"{torch.get_num_threads()} threads (median of {args.repeats}, interleaved)")
    for col in ("canvas", "image", "sparsity", "GMACs alone / letterboxed", "MACs ratio", "ms alone / letterboxed",
                "time ratio"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(f"{r['canvas']}²", f"{r['image'][0]}x{r['image'][1]}", f"{r['sparsity']:.0%}",
                      f"{r['gmacs']['alone']:.2f} / {r['gmacs']['letterboxed']:.2f}", f"{r['macs_ratio']:.3f}x",
                      f"{r['ms']['alone']:.1f} / {r['ms']['letterboxed']:.1f}", f"{r['time_ratio']:.3f}x")
    Console(width=140).print(table)
    sparse = [r for r in rows if r["sparsity"] > 0]
    worst = max(max(r["macs_ratio"], r["time_ratio"]) for r in sparse)
    verdict = "holds" if worst <= 1.15 else "does not hold"
    print(f"letterboxed / alone at {args.sparsity:.0%}: at most {worst:.3f}x (target <= 1.15x: {verdict})")
    if args.results and not args.smoke:
        atomic_write_json(Path(args.results), {"model": args.model, "threads": torch.get_num_threads(),
                                               "repeats": args.repeats, "rows": rows}, None, "results")
    return rows


if __name__ == "__main__":
    main()
