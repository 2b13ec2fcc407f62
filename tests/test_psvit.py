"""PSViT (token pooling + attention sharing on timm ViTs): exactness, cost, validity, training, export."""
import io
import json
import math
import random

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import get_shape

from sparsevit_cli.errors import UserError
from sparsevit_cli.methods import get_method, method_for_model
from sparsevit_cli.vit.patch import (PSViTTransformer, decode_genes, pool_positions, pool_tokens, psvit,
                                        validate_plan)
from sparsevit_cli.vit.cost import psvit_macs
from sparsevit_cli.search.space import load_space

# fvcore also counts normalisation as "flops"; MACs count matrix products only
NON_MAC_OPS = {"layer_norm", "batch_norm", "group_norm", "instance_norm", "adaptive_avg_pool2d"}


def _sdpa_macs(inputs, outputs):
    """fvcore has no handle for fused attention: Q·K^T plus attention·V."""
    q, k, v = (get_shape(inputs[i]) for i in range(3))
    rows = math.prod(q[:-1])
    return rows * k[-2] * q[-1] + rows * k[-2] * v[-1]


def fvcore_macs(model, img_size, batch=1):
    f = FlopCountAnalysis(model, torch.randn(batch, 3, img_size, img_size))
    f.unsupported_ops_warnings(False)
    f.uncalled_modules_warnings(False)
    f.set_op_handle("aten::scaled_dot_product_attention", _sdpa_macs)
    return sum(v for op, v in f.by_operator().items() if op not in NON_MAC_OPS)


def small_vit(**kw):
    """6 blocks, 9x9 patch grid (odd: pooling pads), 10 classes."""
    args = dict(depth=6, embed_dim=48, num_heads=3, img_size=72, patch_size=8, num_classes=10)
    args.update(kw)
    torch.manual_seed(0)
    return timm.create_model("vit_small_patch16_224", **args).eval()


@pytest.fixture
def deit():
    torch.manual_seed(0)
    return timm.create_model("deit_tiny_patch16_224").eval()


def rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max())


def random_plan(depth, grid, rng):
    """A random valid layer plan: pooling while the grid allows, sharing where the token count is unchanged."""
    pool, share = [0.0] * depth, [0.0] * depth
    h, w = grid
    for i in range(depth):
        if h * w > 1 and rng.random() < 0.3:
            pool[i] = 1.0
            h, w = (h + 1) // 2, (w + 1) // 2
        elif i > 0 and rng.random() < 0.5:
            share[i] = 1.0
    return [pool, share]


# ---- exactness ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["deit_tiny", "small_layerscale_qknorm_avg", "small_unfused"])
def test_dense_plan_equals_timm(which, deit):
    if which == "deit_tiny":
        model, size = deit, 224
    elif which == "small_layerscale_qknorm_avg":
        model, size = small_vit(init_values=0.1, qk_norm=True, global_pool="avg"), 72
    else:
        model, size = small_vit(), 72
        for blk in model.blocks:
            blk.attn.fused_attn = False
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        ref = model(x)
        ref_feats = model.forward_features(x)
        params = {k: v.data_ptr() for k, v in model.state_dict().items()}
        wrapped = psvit(model)
        assert wrapped is model and isinstance(model, PSViTTransformer)
        assert {k: v.data_ptr() for k, v in model.state_dict().items()} == params  # same tensors, same keys
        out = wrapped(x)
        feats = wrapped.forward_features(x)
    assert rel_err(out, ref) < 1e-5 and rel_err(feats, ref_feats) < 1e-5


def test_pooling_is_ceil_mode_average_and_keeps_class_token():
    x = torch.randn(2, 1 + 9 * 7, 5)
    y, grid = pool_tokens(x, (9, 7))
    assert grid == (5, 4) and y.shape == (2, 1 + 20, 5)
    assert torch.equal(y[:, 0], x[:, 0])
    ref = F.avg_pool2d(x[:, 1:].reshape(2, 9, 7, 5).permute(0, 3, 1, 2), 2, ceil_mode=True)
    assert rel_err(y[:, 1:], ref.flatten(2).transpose(1, 2)) < 1e-6
    y, grid = pool_tokens(torch.randn(1, 1 + 16, 3), (4, 4))
    assert grid == (2, 2) and y.shape == (1, 5, 3)


def test_pooling_reduces_tokens_and_macs(deit):
    model = psvit(small_vit())
    x = torch.randn(2, 3, 72, 72)
    dense_macs = psvit_macs(model, model.dense_plan(), 72)
    plan = [[0, 0, 1, 0, 1, 0], [0] * 6]
    model.set_config(plan)
    with torch.no_grad():
        feats = model.forward_features(x)
        logits = model(x)
    assert model.token_counts() == [82, 82, 26, 26, 10, 10]  # 9x9 -> 5x5 -> 3x3 (+ class token)
    assert feats.shape == (2, 10, 48) and logits.shape == (2, 10)
    assert psvit_macs(model, plan, 72) < 0.6 * dense_macs
    final, inter = model.forward_intermediates(x)
    assert [f.shape[-2:] for f in inter] == [(9, 9)] * 2 + [(5, 5)] * 2 + [(3, 3)] * 2
    assert final.shape == feats.shape
    # DeiT-T: 14x14 -> 7x7 -> 4x4 at blocks 4 and 8
    d = psvit(deit, [[0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0], [0] * 12])
    assert d.token_counts() == [197] * 4 + [50] * 4 + [17] * 4
    with torch.no_grad():
        assert d.forward_features(torch.randn(1, 3, 224, 224)).shape == (1, 17, 192)


def test_sharing_skips_qk_and_reuses_previous_attention():
    model = psvit(small_vit(), [[0] * 6, [0, 0, 1, 0, 0, 0]])
    calls = {i: 0 for i in range(6)}
    hooks = [blk.attn.qkv.register_forward_hook(lambda m, a, o, i=i: calls.__setitem__(i, calls[i] + 1))
             for i, blk in enumerate(model.blocks)]
    x = torch.randn(2, 3, 72, 72)
    with torch.no_grad():
        h, grid = model._embed(x)
        out, _, inter = model._blocks(h, grid, take=[0, 1, 2])
    for hk in hooks:
        hk.remove()
    assert calls == {0: 1, 1: 1, 2: 0, 3: 1, 4: 1, 5: 1}  # block 2 never calls the qkv Linear

    # manual: block 1's attention probabilities, block 2 with only V computed
    x1, x2 = inter[0][0], inter[1][0]
    b1, b2 = model.blocks[1], model.blocks[2]
    B, N, C = x1.shape
    heads, hd = b1.attn.num_heads, b1.attn.head_dim
    with torch.no_grad():
        q, k, _ = b1.attn.qkv(b1.norm1(x1)).reshape(B, N, 3, heads, hd).permute(2, 0, 3, 1, 4).unbind(0)
        probs = ((q * b1.attn.scale) @ k.transpose(-2, -1)).softmax(-1)
        v = (b2.norm1(x2) @ b2.attn.qkv.weight[2 * C:].T + b2.attn.qkv.bias[2 * C:])
        v = v.reshape(B, N, heads, hd).transpose(1, 2)
        y = x2 + b2.attn.proj((probs @ v).transpose(1, 2).reshape(B, N, C))
        y = y + b2.mlp(b2.norm2(y))
    assert rel_err(inter[2][0], y) < 1e-5

    # MACs drop by exactly Q and K projections plus Q·K^T in block 2
    dense = psvit_macs(model, model.dense_plan(), 72)
    assert dense - psvit_macs(model, model.psvit_plan, 72) == N * C * 2 * C + N * N * C


def test_sharing_with_fused_attention_matches_unfused_reference():
    """A block whose successor shares computes attention explicitly; same numbers as timm's unfused path."""
    fused = psvit(small_vit(), [[0, 0, 0, 1, 0, 0], [0, 1, 1, 0, 1, 1]])  # chained sharing, after a pooling
    ref = psvit(small_vit(), fused.psvit_plan)
    for blk in ref.blocks:
        blk.attn.fused_attn = False
    x = torch.randn(2, 3, 72, 72)
    with torch.no_grad():
        assert rel_err(fused(x), ref(x)) < 1e-5


# ---- cost -------------------------------------------------------------------------------------------------
def test_analytic_macs_match_fvcore():
    rng = random.Random(0)
    model = psvit(small_vit())
    plans = [model.dense_plan()] + [random_plan(6, (9, 9), rng) for _ in range(12)]
    for n, plan in enumerate(plans):
        for blk in model.blocks:  # both attention paths of the timm block
            blk.attn.fused_attn = n % 2 == 0
        model.set_config(plan)
        counted = fvcore_macs(model, 72)
        analytic = psvit_macs(model, plan, 72)
        assert abs(analytic - counted) / counted < 0.005, (plan, analytic, counted)
    assert psvit_macs(model, plans[3], 72, batch_size=3) == 3 * psvit_macs(model, plans[3], 72)


def test_analytic_macs_match_fvcore_deit(deit):
    method = get_method("psvit")
    model = psvit(deit)
    for genes in ([[0.0] * 3, [0.0] * 6], [[1.0, 0.0, 1.0], [0.0, 1.0, 1.0, 0.0, 1.0, 1.0]]):
        method.apply(model, genes)
        counted = fvcore_macs(model, 224)
        analytic = method.macs(model, genes, 224)
        assert abs(analytic - counted) / counted < 0.005, (genes, analytic, counted)
    parts = psvit_macs(model, model.dense_plan(), 224, breakdown=True).parts
    assert parts["head"] == 192 * 1000 and parts["patch_embed"] == 196 * 3 * 16 * 16 * 192


# ---- validity ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("plan, match", [
    ([[0] * 6, [1, 0, 0, 0, 0, 0]], "block 0 cannot share"),
    ([[0, 0, 1, 0, 0, 0], [0, 0, 1, 0, 0, 0]], "block 2 cannot share attention: it follows a pooling"),
    ([[1, 1, 1, 1, 1, 0], [0] * 6], "block 4: cannot pool, the patch grid is already 1x1"),
    ([[0] * 6, [0, 0.5, 0, 0, 0, 0]], "must be 0 or 1"),
    ([[0] * 5, [0] * 6], "one value per block"),
    ([[0] * 6], "2 groups"),
    ("dense", "2 groups"),
])
def test_invalid_plans_are_user_errors(plan, match):
    model = psvit(small_vit())
    with pytest.raises(UserError, match=match):
        model.set_config(plan)
    assert model.psvit_plan == model.dense_plan()  # a rejected plan changes nothing


def test_invalid_genes_and_values_are_user_errors():
    method = get_method("psvit")
    model = small_vit()
    with pytest.raises(UserError, match="pool group needs 2"):
        method.validate(model, [[0.0] * 3, [0.0] * 3])
    with pytest.raises(UserError, match="must be 0 or 1"):
        method.validate(model, [[0.0, 0.3], [0.0] * 3])
    with pytest.raises(UserError, match=r"must be in \[0, 1\]"):
        method.uniform_config(model, 1.5)
    with pytest.raises(UserError, match="at least 4 blocks"):
        method.group_sizes(small_vit(depth=2))


@pytest.mark.parametrize("kw, match", [
    (dict(class_token=False, global_pool="avg"), "no class token"),
    (dict(reg_tokens=2), "prefix tokens"),
    (dict(global_pool="map"), "global_pool is 'map'"),
    (dict(dynamic_img_size=True), "dynamic_img_size"),
])
def test_unsupported_models_are_user_errors(kw, match):
    with pytest.raises(UserError, match=match):
        psvit(small_vit(depth=2, **kw))


def test_non_vit_models_are_rejected():
    swin = timm.create_model("swin_tiny_patch4_window7_224", depths=(1, 1, 1, 1), embed_dim=32, num_heads=(1, 1, 1, 1))
    with pytest.raises(UserError, match="needs a timm VisionTransformer"):
        psvit(swin)
    assert method_for_model(swin).name == "sparsevit"


# ---- method, search space ---------------------------------------------------------------------------------
def test_method_interface_and_search_space(deit):
    method = get_method("psvit")
    assert method_for_model(deit) is method
    assert method.group_sizes(deit) == [3, 6] and pool_positions(12) == [4, 6, 8]
    assert pool_positions(6) == [2, 4] and pool_positions(24) == [6, 12, 18]
    assert not isinstance(deit, PSViTTransformer)  # the sizing helpers do not patch the model
    assert method.dense_config(deit) == [[0.0] * 3, [0.0] * 6]
    assert method.uniform_config(deit, 0.0) == method.dense_config(deit)
    assert method.uniform_config(deit, 0.5) == [[0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]]
    assert method.uniform_config(deit, 1.0) == [[1.0] * 3, [1.0] * 6]
    assert decode_genes(12, (14, 14), [[1, 0, 1], [0, 0, 1, 1, 1, 1]]) == [
        [0.0] * 4 + [1.0] + [0.0] * 3 + [1.0] + [0.0] * 3,
        [0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0]]

    # every genome of the space decodes to a valid plan; more genes on never costs more
    space = load_space("psvit_deit", group_sizes=method.group_sizes(deit))
    assert space.method == "psvit" and space.num_configs() == 512
    wrapped = psvit(small_vit())  # for the MAC function; DeiT's plans are checked without patching it
    dense_macs = method.macs(wrapped, method.dense_config(wrapped), 72)
    for genome in space.all_genomes():
        validate_plan(12, (14, 14), decode_genes(12, (14, 14), space.decode(genome)))
    small_space = load_space("psvit_deit", group_sizes=method.group_sizes(wrapped))
    assert small_space.group_sizes == [2, 3]
    x = torch.randn(1, 3, 72, 72)
    for genome in small_space.all_genomes():
        cfg = method.validate(wrapped, small_space.decode(genome))
        method.apply(wrapped, cfg)
        assert method.macs(wrapped, cfg, 72) <= dense_macs
    with torch.no_grad():
        assert wrapped(x).shape == (1, 10)
    # a tiny grid: pooling genes past 1x1 are ignored, still valid
    tiny = psvit(small_vit(img_size=16))  # 2x2 grid
    method.apply(tiny, [[1.0, 1.0], [1.0] * 3])
    assert tiny.token_counts() == [5, 5, 2, 2, 2, 2]


def test_latency_table_predicts_from_parts():
    method = get_method("psvit")
    model = psvit(small_vit())
    method.apply(model, [[1.0, 0.0], [0.0, 1.0, 0.0]])
    before = model.psvit_plan
    table = method.build_latency_table(model, torch.randn(1, 3, 72, 72), warmup=0, repeats=1)
    assert model.psvit_plan == before
    table = json.loads(json.dumps(table))  # JSON-able
    assert table["levels"] == [[9, 9], [5, 5], [3, 3]] and len(table["pool_ms"]) == 2
    assert set(table["blocks_ms"][1]["0"]) == {"attn", "share"} and set(table["blocks_ms"][2]) == {"0", "1"}
    dense = method.predict_latency(table, method.dense_config(model))
    assert dense == pytest.approx(table["dense_ms"])
    space = load_space("psvit_deit", group_sizes=method.group_sizes(model))
    for genome in space.all_genomes():
        assert method.predict_latency(table, space.decode(genome)) > 0


# ---- training, export -------------------------------------------------------------------------------------
def test_training_step_reaches_every_used_parameter():
    model = psvit(small_vit(drop_path_rate=0.1, attn_drop_rate=0.1), [[0, 0, 1, 0, 0, 0], [0, 1, 0, 1, 0, 1]])
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(4, 3, 72, 72), torch.randint(0, 10, (4,))
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    C = 48
    g = model.blocks[1].attn.qkv.weight.grad  # sharing block: Q and K rows unused, V rows trained
    assert g[: 2 * C].abs().sum() == 0 and g[2 * C:].abs().sum() > 0
    assert model.blocks[0].attn.qkv.weight.grad[: 2 * C].abs().sum() > 0  # its attention feeds block 1
    before = model.blocks[1].attn.proj.weight.detach().clone()
    opt.step()
    assert not torch.equal(before, model.blocks[1].attn.proj.weight)


def test_onnx_export_matches_onnxruntime():
    import onnxruntime as ort
    # pooling before block 0 and 3 (9x9 -> 5x5 -> 3x3, padded windows), chained sharing in 1 -> 2 and 4 -> 5
    model = psvit(small_vit(), [[1, 0, 0, 1, 0, 0], [0, 1, 1, 0, 1, 1]])
    x = torch.randn(2, 3, 72, 72)
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(model, (x,), buf, dynamo=False, opset_version=17, input_names=["x"], output_names=["y"])
        ref = model(x).numpy()
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"x": x.numpy()})[0]
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() / np.abs(ref).max() < 1e-4
