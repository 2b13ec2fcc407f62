"""The Swin latency lookup table: what it measures and how a prediction is assembled from it."""
import pytest
import timm
import torch

import sparsevit_cli as sv
from sparsevit_cli.latency import calibrated_table, predict_latency
from sparsevit_cli.methods import get_method
from sparsevit_cli.swin import patch
from sparsevit_cli.swin.latency import build_swin_latency_table, predict_swin_latency
from sparsevit_cli.swin.patch import RATIO_CHOICES
from sparsevit_cli.search.space import load_space

MICRO = dict(img_size=64, embed_dim=16, depths=[2, 4], num_heads=[1, 2], window_size=4)


@pytest.fixture(scope="module")
def table():
    torch.manual_seed(0)
    model = sv.sparsify(timm.create_model("swin_tiny_patch4_window7_224", **MICRO).eval())
    return model, build_swin_latency_table(model, torch.randn(1, 3, 64, 64), warmup=0, repeats=1)


def test_table_covers_every_pair_and_ratio(table):
    model, t = table
    assert [len(stage) for stage in t["pairs_ms"]] == model.pair_counts() == [1, 2]
    assert all(set(p) == {f"{r:g}" for r in RATIO_CHOICES} for s in t["pairs_ms"] for p in s)
    assert all(v > 0 for s in t["pairs_ms"] for p in s for v in p.values())
    assert t["windows"] == [[16, 16], [4, 4, 4, 4]] and t["img_size"] == 64 and t["batch_size"] == 1


@pytest.mark.parametrize("score", ["l2", "l2-centered"])
def test_table_times_the_models_own_window_score_and_restores_its_config(score, monkeypatch):
    model = sv.sparsify(timm.create_model("swin_tiny_patch4_window7_224", **MICRO).eval(), window_score=score)
    model.set_sparsity([[0.3], [0.4, 0.7]])
    calls = {name: 0 for name in patch.WINDOW_SCORES}
    for name, fn in list(patch.WINDOW_SCORES.items()):
        def counted(x, fn=fn, name=name):
            calls[name] += 1
            return fn(x)
        monkeypatch.setitem(patch.WINDOW_SCORES, name, counted)
    build_swin_latency_table(model, torch.randn(1, 3, 64, 64), warmup=0, repeats=1)
    assert calls[score] > 0 and all(n == 0 for name, n in calls.items() if name != score)
    assert model.sparsity == [[0.3], [0.4, 0.7]] and model.window_score == score


def test_prediction_is_fixed_plus_scaled_pairs_plus_scoring_of_pruning_stages(table):
    _, t = table
    dense = [[0.0], [0.0, 0.0]]
    pairs = t["pairs_ms"][0][0]["0"] + t["pairs_ms"][1][0]["0"] + t["pairs_ms"][1][1]["0"]
    assert predict_swin_latency(t, dense) == pytest.approx(t["fixed_ms"] + pairs)
    cfg = [[0.0], [0.0, 0.5]]  # only stage 2 prunes, so only stage 2 scores
    pairs = t["pairs_ms"][0][0]["0"] + t["pairs_ms"][1][0]["0"] + t["pairs_ms"][1][1]["0.5"]
    assert predict_swin_latency(t, cfg) == pytest.approx(t["fixed_ms"] + pairs + t["scoring_ms"][1])


def test_calibration_scales_predictions(table):
    model, _ = table
    method = get_method("sparsevit")
    space = load_space("swin_auto", group_sizes=method.group_sizes(model))
    t = calibrated_table(method, model, model, torch.randn(1, 3, 64, 64), space, calibration=3, warmup=0, repeats=1)
    assert 0.5 <= t["calibration_scale"] <= 2.0 and len(t["calibration"]) == 3
    cfg = [[0.2], [0.2, 0.6]]
    assert predict_latency(method, t, cfg) == pytest.approx(t["calibration_scale"] * predict_swin_latency(t, cfg))
    point = t["calibration"][0]
    assert point["predicted_ms"] == pytest.approx(predict_swin_latency(t, point["config"])) and point["measured_ms"] > 0


def test_saved_table_is_checked_before_use(table, tmp_path):
    """A calibrated table names its method; reading one back checks method, size and that it covers the space."""
    import json
    from sparsevit_cli.errors import UserError
    from sparsevit_cli.latency import read_latency_table
    model, _ = table
    method = get_method("sparsevit")
    space = load_space("swin_auto", group_sizes=method.group_sizes(model))
    t = calibrated_table(method, model, model, torch.randn(1, 3, 64, 64), space, calibration=1, warmup=0, repeats=1)
    assert t["method"] == "sparsevit"
    path = tmp_path / "t.json"
    path.write_text(json.dumps(t))
    probes = [space.decode(space.extreme("dense")), space.decode(space.extreme("sparsest"))]
    assert read_latency_table(path, method, 64, 1, probes) == json.loads(json.dumps(t))
    with pytest.raises(UserError, match="was built for method sparsevit, the model runs psvit"):
        read_latency_table(path, get_method("psvit"), 64, 1, [])
    with pytest.raises(UserError, match="was built for img_size 64, batch 1, not 96, 1"):
        read_latency_table(path, method, 96, 1, probes)
    with pytest.raises(UserError, match="does not fit this model"):  # a table of a shallower model
        read_latency_table(path, method, 64, 1, [[[0.0], [0.0, 0.0, 0.0]]])
