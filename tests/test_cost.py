"""Analytic MACs against fvcore's independent count of the model actually executing each config."""
import random

import pytest
import timm
import torch
from fvcore.nn import FlopCountAnalysis

import sparsevit_cli as sv
from sparsevit_cli.swin.cost import swin_macs
from sparsevit_cli.swin.patch import RATIO_CHOICES

# fvcore also counts normalisation and pooling as "flops"; MACs count matrix products only
NON_MAC_OPS = {"layer_norm", "batch_norm", "group_norm", "instance_norm", "adaptive_avg_pool2d"}


def fvcore_macs(model, img_size, batch=1):
    f = FlopCountAnalysis(model, torch.randn(batch, 3, img_size, img_size))
    f.unsupported_ops_warnings(False)
    f.uncalled_modules_warnings(False)
    return sum(v for op, v in f.by_operator().items() if op not in NON_MAC_OPS)


def random_config(model, rng):
    return [sorted(rng.choice(RATIO_CHOICES) for _ in range(n)) for n in model.pair_counts()]


def assert_macs_match_fvcore(model, macs, img_size, n_random, seed):
    """`macs(model, config, img_size)` within 0.5% of fvcore's count of the model running each config: the
    dense config and `n_random` random ones."""
    rng = random.Random(seed)
    configs = [[[0.0] * n for n in model.pair_counts()]] + [random_config(model, rng) for _ in range(n_random)]
    with torch.no_grad():
        for cfg in configs:
            model.set_sparsity(cfg)
            counted = fvcore_macs(model, img_size)
            analytic = macs(model, cfg, img_size)
            assert abs(analytic - counted) / counted < 0.005, (cfg, analytic, counted)


@pytest.mark.parametrize("img_size", [224, 256])  # 256 pads every stage's windows
def test_analytic_macs_match_fvcore(img_size):
    model = sv.sparsify(timm.create_model("swin_tiny_patch4_window7_224", img_size=img_size)).eval()
    assert_macs_match_fvcore(model, swin_macs, img_size, n_random=11, seed=img_size)


def test_dense_macs_equal_timm_dense_model():
    dense = timm.create_model("swin_tiny_patch4_window7_224").eval()
    counted = fvcore_macs(dense, 224)
    sparse = sv.sparsify(dense)
    assert swin_macs(sparse, [[0.0]] * 2 + [[0.0] * 3] + [[0.0]], 224) == counted


def test_macs_scale_with_batch_and_drop_with_sparsity():
    model = sv.sparsify(timm.create_model("swin_tiny_patch4_window7_224"))
    dense = swin_macs(model, [[0.0], [0.0], [0.0] * 3, [0.0]], 224)
    assert swin_macs(model, [[0.0], [0.0], [0.0] * 3, [0.0]], 224, batch_size=4) == 4 * dense
    costs = [swin_macs(model, [[s], [s], [s] * 3, [s]], 224) for s in RATIO_CHOICES]
    assert all(b < a for a, b in zip(costs, costs[1:]))
    parts = swin_macs(model, [[0.5], [0.5], [0.5] * 3, [0.5]], 224, breakdown=True).parts
    assert parts["scoring"] > 0 and parts["patch_embed"] > 0 and parts["head"] == 768 * 1000
