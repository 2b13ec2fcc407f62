"""How well the per-block latency table predicts measured latency (issue: median absolute error <= 5%).

    python benchmarks/bench_latency_table.py [--model swin_tiny_patch4_window7_224] [--img-size 448]
        [--configs 12] [--device cpu] [--method-model deit_small_patch16_224]

Builds the calibrated table once (what `sparsevit search --latency-table` does), then measures other random
valid configs
of the model's default search space on the device and prints predicted vs measured per config, and the
median / max absolute relative error. Random weights: latency does not depend on what was learned.
"""
import argparse
import random
import statistics

import torch
from rich.console import Console
from rich.table import Table

from sparsevit_cli.latency import calibrated_table, predict_latency
from sparsevit_cli.timing import resolve_device, time_models
from sparsevit_cli.methods import method_for_model
from sparsevit_cli.timm_models import create_timm_model
from sparsevit_cli.search.space import load_space
from common import add_model_options, apply_smoke


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(ap, img_size=448, repeats=7, batch_size=1, device="cpu")
    ap.add_argument("--configs", type=int, default=12)
    ap.add_argument("--calibration", type=int, default=6, help="measured configs the table is calibrated on")
    ap.add_argument("--seed", type=int, default=0)
    args = apply_smoke(ap.parse_args(argv), configs=1, calibration=1)

    torch.manual_seed(args.seed)
    dev = resolve_device(args.device)
    model = create_timm_model(args.model, img_size=args.img_size, **args.model_args).eval().to(dev)
    method = method_for_model(model)
    model = method.wrap(model)
    space = load_space(method.default_space, group_sizes=method.group_sizes(model))
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=dev)
    table = calibrated_table(method, model, model, x, space, calibration=args.calibration, repeats=args.repeats)

    rng = random.Random(args.seed)
    configs = [space.decode(space.extreme("dense")), space.decode(space.extreme("sparsest"))]
    configs += [space.decode(space.sample(rng)) for _ in range(args.configs)]
    out = Table(title=f"latency table vs measurement: {args.model} @ {args.img_size}², batch {args.batch_size}, {dev}")
    for col in ("config", "predicted ms", "measured ms", "error"):
        out.add_column(col, justify="right")
    errors = []
    for cfg in configs:
        method.apply(model, cfg)
        measured = time_models({"m": model}, x, warmup=2, repeats=args.repeats)["m"]
        predicted = predict_latency(method, table, cfg)
        errors.append(abs(predicted - measured) / measured)
        out.add_row("|".join(",".join(f"{v:g}" for v in g) for g in cfg), f"{predicted:.1f}", f"{measured:.1f}",
                    f"{errors[-1]:.1%}")
    out.caption = f"calibration factor {table['calibration_scale']:.3f}; median absolute error {statistics.median(errors):.1%}, max {max(errors):.1%} (target: median <= 5%)"
    Console().print(out)
    return errors


if __name__ == "__main__":
    main()
