"""`--smoke` settings shared by the benchmark scripts: a micro Swin that runs in seconds on CPU, so that the
test suite can check every script still runs (tests/test_bench_smoke.py); no timing is asserted."""
import argparse

# two stages with 4x4-token windows: several windows per stage at 64 px, so sparsity still has work to skip
MICRO_SWIN = dict(embed_dim=16, depths=[2, 2], num_heads=[1, 2], window_size=4)
SMOKE_IMG_SIZE = 64


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
