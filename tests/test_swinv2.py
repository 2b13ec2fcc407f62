"""SparseViT on Swin V2 (timm SwinTransformerV2): exact at sparsity 0, exact on kept windows and untouched
elsewhere when pruning, MACs equal to fvcore's count, the latency table, the method and the CLI pipeline."""
import copy

import pytest
import timm
import torch
import yaml

from sparsevit_cli.errors import UserError
from sparsevit_cli.latency import calibrated_table, predict_latency
from sparsevit_cli.methods import get_method, method_for_model
from sparsevit_cli.model_file import load, read_meta
from sparsevit_cli.search.space import load_space
from sparsevit_cli.swin.latency import predict_swin_latency
from sparsevit_cli import sparsify
from sparsevit_cli.swin.patch import RATIO_CHOICES, WINDOW_SCORES, swin_stages
from sparsevit_cli.swinv2.cost import position_bias_macs, swinv2_macs
from sparsevit_cli.swinv2.patch import SparseSwinTransformerV2, SparseSwinV2Stage, sparse_block_v2_, sparsify_v2
from sparsevit_cli.tasks import backbone_of
from cli_helpers import exit_code
from test_cost import assert_macs_match_fvcore, fvcore_macs

NAME = "swinv2_tiny_window8_256"
MICRO = dict(img_size=64, embed_dim=16, depths=[2, 2], num_heads=[1, 2], window_size=4)
#: image size -> model args: 64/w4 (16x16 and 8x8 maps, shifted windows), 128/w8 with a third stage whose
#: 8x8 map fits one window (timm drops the shift there), 72/w4 (18x18 and 9x9 maps: every stage padded)
SIZES = {
    64: MICRO,
    128: dict(img_size=128, embed_dim=16, depths=[2, 2, 2], num_heads=[1, 2, 2], window_size=8),
    72: dict(MICRO, img_size=72, depths=[2, 4]),
}


def dense_v2(img_size, seed=0):
    """A timm SwinTransformerV2 with every parameter perturbed: timm starts the post-norms at zero, which
    would make every block the identity and every comparison trivially exact."""
    torch.manual_seed(seed)
    model = timm.create_model(NAME, **SIZES[img_size]).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("img_size", sorted(SIZES))
def test_sparsity_zero_equals_timm(img_size):
    model = dense_v2(img_size)
    shifted = [b.shift_size for s in model.layers for b in s.blocks]
    assert any(any(s) for s in shifted)  # the shifted grid and its masks are exercised
    x = torch.randn(2, 3, img_size, img_size)
    with torch.no_grad():
        ref, ref_stages = model(x), model.forward_intermediates(x, intermediates_only=True)
        sparse = sparsify_v2(model)
        out, stages = sparse(x), sparse.forward_intermediates(x, intermediates_only=True)
    assert sparse is model and isinstance(sparse, SparseSwinTransformerV2)
    assert rel_err(out, ref) < 1e-5
    assert all(rel_err(a, b) < 1e-5 for a, b in zip(stages, ref_stages))
    with torch.no_grad():  # and pruning changes the result: the blocks do real work
        assert rel_err(sparse.set_sparsity(0.5)(x), ref) > 1e-3


@pytest.mark.parametrize("img_size", [64, 72])  # 72: padded windows in every stage
def test_features_only_backbone_is_timm_at_zero_and_runs_what_the_whole_sparse_model_runs(img_size):
    torch.manual_seed(0)
    dense = timm.create_model(NAME, features_only=True, **SIZES[img_size]).eval()
    with torch.no_grad():
        for p in dense.parameters():
            p.add_(0.2 * torch.randn_like(p))
    sparse = sparsify(copy.deepcopy(dense))  # the public sparsify picks the V2 engine by the method registry
    assert isinstance(sparse, SparseSwinTransformerV2)
    assert all(isinstance(s, SparseSwinV2Stage) for s in swin_stages(sparse)) and len(swin_stages(sparse)) == 2
    assert method_for_model(dense).name == "sparsevit-v2"
    x = torch.randn(2, 3, img_size, img_size)
    with torch.no_grad():
        ref, out = dense(x), sparse(x)
    assert len(out) == 2 and all(torch.equal(a, b) for a, b in zip(ref, out))  # timm's own stages, bit for bit
    # pruned: the backbone runs what the whole sparse classifier with its weights runs
    config = [[0.5], [0.5] * (len(sparse.layers_1.blocks) // 2)]
    config[1][-1] = 0.8
    full = timm.create_model(NAME, **SIZES[img_size]).eval()
    weights = {k.replace("layers_", "layers.", 1): v for k, v in dense.state_dict().items()}
    missing, unexpected = full.load_state_dict(weights, strict=False)
    assert not unexpected and all(k.startswith(("norm.", "head.")) for k in missing)
    full = sparsify_v2(full, config)
    sparse.set_sparsity(config)
    with torch.no_grad():
        out, ref = sparse(x), full.forward_intermediates(x, intermediates_only=True)
    assert all(rel_err(a.permute(0, 2, 3, 1), b) < 1e-6 for a, b in zip(ref, out))
    assert rel_err(dense(x)[-1], out[-1]) > 1e-3  # it really pruned
    assert_macs_match_fvcore(sparse, swinv2_macs, img_size, n_random=2, seed=img_size)


def _token_ids(grid, window_ids, n_tokens):
    """Flat token ids (padding excluded) that the given windows of `grid` cover."""
    ids = grid.index[window_ids].reshape(-1)
    return ids[ids < n_tokens]


@pytest.mark.parametrize("img_size", [64, 72])
@pytest.mark.parametrize("block_idx", [0, 1])  # plain and shifted grid
def test_pruned_block_is_exact_on_kept_windows_and_passes_the_rest_through(img_size, block_idx):
    model = sparsify_v2(dense_v2(img_size))
    x = torch.randn(2, 3, img_size, img_size)
    with torch.no_grad():
        stage_in = model.layers[0](model.patch_embed(x))  # a real stage-2 input
        stage = model.layers[1]
        stage_in = stage.downsample(stage_in)
        block = stage.blocks[block_idx]
        B, H, W, C = stage_in.shape
        grid = stage.grids(H, W, stage_in.device)[block_idx]
        # the reference: timm's own dense block on the whole map (a window's output depends only on it)
        ref = block(stage_in).reshape(B, H * W, C)
        window_ids = torch.stack([torch.randperm(grid.num_windows)[:3] for _ in range(B)])
        buf = torch.cat([stage_in.reshape(B, H * W, C), stage_in.new_zeros(B, 1, C)], 1)
        before = buf.clone()
        out = sparse_block_v2_(block, buf, grid, window_ids)[:, : H * W]
    for b in range(B):
        kept = _token_ids(grid, window_ids[b], H * W)
        rest = torch.ones(H * W, dtype=torch.bool)
        rest[kept] = False
        assert rel_err(out[b, kept], ref[b, kept]) < 1e-5
        assert torch.equal(out[b, rest], before[b, : H * W][rest])  # bit-identical pass-through
        assert rest.any() and not torch.allclose(out[b, kept], before[b, kept])


@pytest.mark.parametrize("score", sorted(WINDOW_SCORES))
def test_every_window_score_keeps_the_configured_windows(score):
    model = sparsify_v2(dense_v2(64), sparsity=[[0.5], [0.8]], window_score=score)
    x = torch.randn(2, 3, 64, 64)
    masks = model.kept_window_masks(x)
    # stage 1: 16x16 tokens in 16 windows of 16 -> 8 kept; stage 2: 8x8 in 4 windows -> 1 kept
    assert [[int(m[0].sum()) for m in stage] for stage in masks] == [[8 * 16] * 2, [16] * 2]
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()


@pytest.mark.parametrize("img_size", sorted(SIZES))
def test_analytic_macs_match_fvcore(img_size):
    assert_macs_match_fvcore(sparsify_v2(dense_v2(img_size)), swinv2_macs, img_size, n_random=4, seed=img_size)


def test_dense_macs_equal_timm_and_the_position_bias_is_per_forward():
    dense = dense_v2(64)
    with torch.no_grad():
        counted, counted_batch2 = fvcore_macs(dense, 64), fvcore_macs(dense, 64, batch=2)
    model = sparsify_v2(dense)
    cfg = [[0.0], [0.0]]
    assert abs(swinv2_macs(model, cfg, 64) - counted) <= 2  # fvcore rounds a few counts
    bias = position_bias_macs(model)
    # 4 blocks, 7x7 offsets of a 4x4 window, MLP 2 -> 512 -> heads (1, 1, 2, 2)
    assert bias == 49 * (2 * (2 * 512 + 512) + 2 * (2 * 512 + 1024))
    assert swinv2_macs(model, cfg, 64, batch_size=2) == 2 * swinv2_macs(model, cfg, 64) - bias
    assert abs(swinv2_macs(model, cfg, 64, batch_size=2) - counted_batch2) <= 2
    parts = swinv2_macs(model, [[0.5], [0.5]], 64, breakdown=True).parts
    assert parts["position_bias"] == bias and parts["scoring"] > 0


@pytest.fixture(scope="module")
def table():
    model = sparsify_v2(dense_v2(64))
    return model, get_method("sparsevit-v2").build_latency_table(model, torch.randn(1, 3, 64, 64), warmup=0, repeats=1)


def test_latency_table_covers_every_pair_and_ratio_and_predicts(table):
    model, t = table
    assert [len(stage) for stage in t["pairs_ms"]] == model.pair_counts() == [1, 1]
    assert all(set(p) == {f"{r:g}" for r in RATIO_CHOICES} for s in t["pairs_ms"] for p in s)
    assert all(v > 0 for s in t["pairs_ms"] for p in s for v in p.values())
    assert t["windows"] == [[16, 16], [4, 4]] and t["img_size"] == 64 and t["dense_ms"] > 0
    dense = t["pairs_ms"][0][0]["0"] + t["pairs_ms"][1][0]["0"]
    assert predict_swin_latency(t, [[0.0], [0.0]]) == pytest.approx(t["fixed_ms"] + dense)
    cfg = [[0.0], [0.5]]  # only stage 2 prunes, so only stage 2 scores
    expected = t["fixed_ms"] + t["pairs_ms"][0][0]["0"] + t["pairs_ms"][1][0]["0.5"] + t["scoring_ms"][1]
    assert get_method("sparsevit-v2").predict_latency(t, cfg) == pytest.approx(expected)


def test_latency_table_times_the_v2_block_restores_the_config_and_calibrates(monkeypatch):
    calls = []

    def counted(block, *args):
        calls.append(type(block).__name__)
        return sparse_block_v2_(block, *args)

    monkeypatch.setattr(SparseSwinV2Stage, "sparse_block", staticmethod(counted))
    model = sparsify_v2(dense_v2(64), sparsity=[[0.3], [0.6]], window_score="l2")
    method = get_method("sparsevit-v2")
    with torch.no_grad():  # a dense stage is timm's own stage: no sparse block runs
        model.set_sparsity(0.0)(torch.randn(1, 3, 64, 64))
    assert calls == []
    model.set_sparsity([[0.3], [0.6]])
    space = load_space("swinv2_auto", group_sizes=method.group_sizes(model))
    t = calibrated_table(method, model, model, torch.randn(1, 3, 64, 64), space, calibration=2, warmup=0, repeats=1)
    assert 0.5 <= t["calibration_scale"] <= 2.0 and len(t["calibration"]) == 2
    cfg = [[0.2], [0.6]]
    assert predict_latency(method, t, cfg) == pytest.approx(t["calibration_scale"] * method.predict_latency(t, cfg))
    method.apply(model, [[0.3], [0.6]])
    method.build_latency_table(model, torch.randn(1, 3, 64, 64), warmup=0, repeats=1)
    assert model.sparsity == [[0.3], [0.6]] and model.window_score == "l2"
    assert calls and set(calls) == {"SparseSwinTransformerV2Block"}  # timm's V2 block, its mask per size


def test_method_is_picked_for_swin_v2_and_not_for_swin_v1():
    v2 = timm.create_model(NAME, **MICRO)
    method = method_for_model(v2)
    assert method.name == "sparsevit-v2" and method.default_space == "swinv2_auto"
    assert tuple(method.gene_values) == RATIO_CHOICES  # the V1 ratios: the same stage engine runs them
    assert method.group_sizes(v2) == [1, 1] and not isinstance(v2, SparseSwinTransformerV2)
    v1 = timm.create_model("swin_tiny_patch4_window7_224", img_size=64, embed_dim=16, depths=[2, 2],
                           num_heads=[1, 2], window_size=4)
    assert method_for_model(v1).name == "sparsevit" and not method.supports(v1)
    wrapped = method.wrap(v2, window_score="l2")
    assert method.options(wrapped) == {"window_score": "l2"}
    assert method.validate(wrapped, [[0.2], 0.4]) == [[0.2], [0.4]]
    # a sparse model only takes the settings given; a V1 Swin is refused in one line
    assert sparsify_v2(wrapped, sparsity=[[0.2], [0.4]]) is wrapped and wrapped.window_score == "l2"
    assert wrapped.sparsity == [[0.2], [0.4]] and [s.ratios for s in wrapped.layers] == [[0.2], [0.4]]
    with pytest.raises(UserError, match="needs a timm SwinTransformerV2 or its features_only=True backbone, "
                                        "got SwinTransformer$"):
        sparsify_v2(v1)
    space = load_space(method.default_space, group_sizes=method.group_sizes(wrapped))
    assert space.method == "sparsevit-v2" and [g.size for g in space.groups] == [1, 1]


# ---- the pipeline through the CLI: finetune (dense) -> adapt -> search -> export -----------------------

@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    from sparsevit_cli.data.demo import write_demo_data
    d = tmp_path_factory.mktemp("swinv2")
    write_demo_data(d / "data", img_size=64, n_train=24, n_val=12, seed=0)

    def run_yaml(name, **over):
        cfg = {"model": {"name": NAME, "args": MICRO}, "data": {"path": str(d / "data")}, "epochs": 1,
               "batch_size": 8, "eval_batch_size": 12, "out": str(d / name), "seed": 0, **over}
        path = d / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    runs = {"dense": d / "dense" / "model.safetensors", "adapted": d / "adapt" / "model.safetensors",
            "search": d / "search", "onnx": d / "model.onnx"}
    runs["dense_code"] = exit_code(["finetune", run_yaml("dense"), "--no-progress"])
    runs["adapt_code"] = exit_code(["adapt", "--config", run_yaml("adapt", checkpoint=str(runs["dense"])),
                                    "--no-progress"])
    runs["search_code"] = exit_code(
        ["search", "--checkpoint", runs["adapted"], "--data", d / "data", "--out", runs["search"],
         "--budget-macs", "60%", "--population", "6", "--generations", "2", "--parents", "3", "--mutations", "3",
         "--crossovers", "3", "--eval-samples", "12", "--no-progress"])
    runs["export_code"] = exit_code(["export", "--checkpoint", runs["adapted"], "--config", runs["search"] / "best.yaml",
                                     "--format", "onnx", "--out", runs["onnx"], "--no-time"])
    return runs


def test_pipeline_finetune_adapt_search_export(pipeline, capsys):
    assert pipeline["dense_code"] == 0 and read_meta(pipeline["dense"])["method"] == "sparsevit-v2"
    assert pipeline["adapt_code"] == 0 and read_meta(pipeline["adapted"])["space"] == "swinv2_auto"
    assert pipeline["search_code"] == 0
    best = yaml.safe_load((pipeline["search"] / "best.yaml").read_text())
    assert best["method"] == "sparsevit-v2" and best["gmacs"] <= 0.6 * best["dense_gmacs"] + 1e-12
    model = load(pipeline["adapted"])
    assert isinstance(backbone_of(model), SparseSwinTransformerV2)
    assert get_method("sparsevit-v2").macs(backbone_of(model), best["sparsity"], 64) / 1e9 == pytest.approx(best["gmacs"])
    assert pipeline["export_code"] == 0 and pipeline["onnx"].is_file()
    capsys.readouterr()


def test_exported_onnx_matches_the_sparse_model(pipeline):
    ort = pytest.importorskip("onnxruntime")
    assert pipeline["export_code"] == 0
    best = yaml.safe_load((pipeline["search"] / "best.yaml").read_text())
    model = load(pipeline["adapted"]).eval()
    get_method("sparsevit-v2").apply(backbone_of(model), best["sparsity"])
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x).numpy()
    session = ort.InferenceSession(str(pipeline["onnx"]), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert abs(out - ref).max() <= 1e-4 * max(1.0, abs(ref).max())
