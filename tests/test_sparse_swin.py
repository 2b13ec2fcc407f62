"""The window-sparse Swin engine against timm's dense model."""
import copy
import math

import pytest
import timm
import torch

import sparsevit_cli as sv
from sparsevit_cli.errors import UserError
from sparsevit_cli.swin.patch import Kept, SparseSwinStage, build_grid, kept_windows, sparse_block_
from timm.models.swin_transformer import SwinTransformer


def randomize_(model):
    """Trained-like weights: at timm's init every LayerNorm has weight 1 and bias 0, so all tokens after a
    norm have the same energy and window scores tie; real checkpoints are not like that."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "relative_position_bias_table" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            elif "norm" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5 + (1.0 if n.endswith("weight") else 0.0))
    return model


def make_pair(name="swin_tiny_patch4_window7_224", img_size=224, seed=0, **kw):
    torch.manual_seed(seed)
    dense = timm.create_model(name, img_size=img_size, **kw).eval()
    randomize_(dense)
    sparse = sv.sparsify(copy.deepcopy(dense))
    return dense, sparse


def rel_err(a, b):
    return ((a - b).abs().max() / a.abs().max()).item()


@pytest.mark.parametrize("name,img_size", [
    ("swin_tiny_patch4_window7_224", 224),
    ("swin_tiny_patch4_window7_224", 448),
    ("swin_small_patch4_window7_224", 224),
    ("swin_small_patch4_window7_224", 448),
    ("swin_tiny_patch4_window7_224", 256),  # needs padding at every stage
])
def test_sparsity_zero_equals_timm(name, img_size):
    dense, sparse = make_pair(name, img_size)
    x = torch.randn(2, 3, img_size, img_size)
    with torch.no_grad():
        ref = dense(x)
        out = sparse(x)
    assert rel_err(ref, out) < 1e-5
    # multi-scale outputs for dense-prediction heads match too
    with torch.no_grad():
        ref_i = dense.forward_intermediates(x, intermediates_only=True)
        out_i = sparse.forward_intermediates(x, intermediates_only=True)
    assert len(ref_i) == len(out_i) == 4
    for a, b in zip(ref_i, out_i):
        assert a.shape == b.shape and rel_err(a, b) < 1e-5


def test_sparsify_is_in_place_and_shares_parameters():
    dense = timm.create_model("swin_tiny_patch4_window7_224")
    params = {n: p.data_ptr() for n, p in dense.named_parameters()}
    sparse = sv.sparsify(dense)
    assert sparse is dense
    assert {n: p.data_ptr() for n, p in sparse.named_parameters()} == params
    assert set(sparse.state_dict()) == set(timm.create_model("swin_tiny_patch4_window7_224").state_dict())


def _stage_input(dense, x, stage):
    """NHWC input of `stage`'s first block in the dense model."""
    with torch.no_grad():
        h = dense.patch_embed(x)
        for i in range(stage):
            h = dense.layers[i](h)
        return dense.layers[stage].downsample(h)


def _windows(t, grid):
    """(B, nW, N, C) tokens of each window of `grid` from an NHWC map (padding -> zeros)."""
    B, H, W, C = t.shape
    flat = torch.cat([t.reshape(B, H * W, C), t.new_zeros(B, 1, C)], 1)
    return flat[:, grid.index]


@pytest.mark.parametrize("block_idx", [0, 1])  # plain W-MSA and shifted SW-MSA
@pytest.mark.parametrize("img_size", [224, 256])
def test_one_pruned_block_matches_dense_on_kept_windows(block_idx, img_size):
    dense, sparse = make_pair(img_size=img_size)
    x = torch.randn(2, 3, img_size, img_size)
    stage = 1
    h = _stage_input(dense, x, stage)
    block = dense.layers[stage].blocks[block_idx]
    with torch.no_grad():
        ref = block(h)
    B, H, W, C = h.shape
    grid = build_grid(block, H, W, h.device)
    if block_idx == 1:
        assert grid.mask is not None  # really a shifted block with timm's masks
    k = kept_windows(grid.num_windows, 0.5)
    g = torch.Generator().manual_seed(1)
    ids = torch.stack([torch.randperm(grid.num_windows, generator=g)[:k] for _ in range(B)])
    buf = torch.cat([h.reshape(B, H * W, C), h.new_zeros(B, 1, C)], 1)
    with torch.no_grad():
        sparse_block_(block, buf, grid, ids)
    out = buf[:, : H * W].reshape(B, H, W, C)
    ref_w, out_w, in_w = _windows(ref, grid), _windows(out, grid), _windows(h, grid)
    valid = (grid.index < H * W)
    for b in range(B):
        kept = torch.zeros(grid.num_windows, dtype=torch.bool)
        kept[ids[b]] = True
        kv = valid[kept]
        assert rel_err(ref_w[b][kept][kv], out_w[b][kept][kv]) < 1e-5
        # unkept windows: bit-identical to the input (pass-through)
        assert torch.equal(out_w[b][~kept], in_w[b][~kept])


def forward_spying_blocks(sparse, x, spy):
    """One no-grad forward of `sparse` on x in which every block that runs on a stage buffer goes through
    ``spy(run, block, buf, grid, ids)`` (`run`: the real `SparseSwinStage.sparse_block`)."""
    run = SparseSwinStage.sparse_block
    SparseSwinStage.sparse_block = staticmethod(lambda *args: spy(run, *args))
    try:
        with torch.no_grad():
            sparse(x)
    finally:
        SparseSwinStage.sparse_block = staticmethod(run)


def _window_ids_by_block(sparse, x):
    """{id(block): the (B, k) window ids it ran on (None = all)} for one forward of x, for the blocks that
    run on the stage buffer (those from a stage's first pruned block on; earlier ones are timm's blocks)."""
    seen = {}

    def spy(run, block, buf, grid, ids):
        if isinstance(ids, Kept):  # the same count per image here (no padding): (B, k)
            ids = torch.stack(ids.by_image(buf.shape[0]))
        seen.setdefault(id(block), ids)
        return run(block, buf, grid, ids)

    forward_spying_blocks(sparse, x, spy)
    return seen


@pytest.mark.parametrize("score", ["l2", "l2-centered"])
def test_windows_are_chosen_by_l2_magnitude_once_per_stage(score):
    _, sparse = make_pair(img_size=224)
    sparse.set_window_score(score)
    # without the patch-embed norm, token energy follows the input's magnitude, so we know the answer
    sparse.patch_embed.norm = torch.nn.Identity()
    sparse.set_sparsity([[0.5], [0.0], [0.0, 0.0, 0.0], [0.0]])
    x = torch.randn(1, 3, 224, 224) * 0.01
    x[..., 168:, 168:] += 5.0 * torch.randn(1, 3, 56, 56)  # a busy bottom-right corner
    ids0 = _window_ids_by_block(sparse, x)[id(sparse.layers[0].blocks[0])]
    assert ids0.shape == (1, kept_windows(64, 0.5))
    # stage input energies decide: windows covering the busy corner (window rows/cols 6-7) rank first
    with torch.no_grad():
        h = sparse.patch_embed(x)
    grid = sparse.layers[0].grids(56, 56, x.device)[0]
    tokens = h.reshape(1, -1, 96)
    if score == "l2-centered":
        tokens = tokens - tokens.mean(dim=1, keepdim=True)
    e = torch.cat([(tokens ** 2).sum(-1), torch.zeros(1, 1)], 1)
    expect = e[:, grid.index].sum(-1).argsort(dim=1, descending=True)[:, : ids0.shape[1]]
    assert set(ids0[0].tolist()) == set(expect[0].tolist())
    assert set(ids0[0, :4].tolist()) == {54, 55, 62, 63}  # ranked first


def _first_kept_windows(sparse, x):
    """Window ids the first block of stage 1 keeps for x."""
    return set(_window_ids_by_block(sparse, x)[id(sparse.layers[0].blocks[0])][0].tolist())


def test_centered_score_finds_a_dark_object_that_raw_l2_ranks_last():
    # a bright, flat background (most of the image) and one dark object window: every token shares the
    # background's large feature, so raw ||x||^2 prefers the background; the deviation from the image's
    # mean token singles out the object
    _, sparse = make_pair(img_size=224)
    sparse.patch_embed.norm = torch.nn.Identity()
    sparse.set_sparsity([[0.8], [0.0], [0.0, 0.0, 0.0], [0.0]])
    x = torch.full((1, 3, 224, 224), 3.0)
    # exactly window (3, 3) of the 8 x 8 stage-1 grid: id 27 (not exactly 0: that would be padding)
    x[..., 84:112, 84:112] = 0.01
    with torch.no_grad():
        h = sparse.patch_embed(x).reshape(1, -1, 96)
    assert (h[0, 0] ** 2).sum() > (h[0, 21 * 56 + 21] ** 2).sum()  # background token outweighs object token
    sparse.set_window_score("l2-centered")
    assert 27 in _first_kept_windows(sparse, x)
    sparse.set_window_score("l2")
    assert 27 not in _first_kept_windows(sparse, x)


def test_mean_abs_ranks_like_the_released_code_at_the_first_pruning_block():
    """mean-abs, recomputed independently the released code's way: token score mean_c |x|, window score the
    L2 norm of its token scores, ranked on the input of the stage's first pruning block (here block 2, after
    two dense blocks); the shifted grid on the same map rolled by half a window."""
    micro = dict(embed_dim=16, depths=[2, 4], num_heads=[1, 2], window_size=4)
    dense, sparse = make_pair(img_size=128, **micro)  # stage 2: 16 x 16 tokens, 16 windows of 4 x 4
    sparse.set_window_score("mean-abs").set_sparsity([[0.0], [0.0, 0.5]])
    x = torch.randn(2, 3, 128, 128)
    x[0, :, :64, :64] *= 4.0  # different bright regions per image
    x[1, :, 64:, 32:96] *= 4.0
    ids = _window_ids_by_block(sparse, x)
    stage = sparse.layers[1]
    with torch.no_grad():
        h = _stage_input(dense, x, 1)
        h = dense.layers[1].blocks[1](dense.layers[1].blocks[0](h))  # the input of block 2
    act = h.abs().mean(-1)  # (B, 16, 16)
    k = kept_windows(16, 0.5)
    for block, rolled in ((2, act), (3, torch.roll(act, shifts=(-2, -2), dims=(1, 2)))):
        windows = rolled.view(2, 4, 4, 4, 4).permute(0, 1, 3, 2, 4).reshape(2, 16, 16)
        scores = torch.linalg.vector_norm(windows, ord=2, dim=-1)
        expect = torch.topk(scores, k, dim=1).indices
        got = ids[id(stage.blocks[block])]
        assert got.shape == (2, k)
        for b in range(2):
            assert set(got[b].tolist()) == set(expect[b].tolist()), (block, b)
    assert id(stage.blocks[0]) not in ids and id(stage.blocks[1]) not in ids  # dense blocks: timm's own
    # ranked at the pruning block, not at the stage input: the stage input's mean-abs order differs here
    with torch.no_grad():
        act_in = _stage_input(dense, x, 1).abs().mean(-1)
    at_input = torch.linalg.vector_norm(act_in.view(2, 4, 4, 4, 4).permute(0, 1, 3, 2, 4).reshape(2, 16, 16), dim=-1)
    assert any(set(torch.topk(at_input[b], k).indices.tolist()) != set(ids[id(stage.blocks[2])][b].tolist())
               for b in range(2))


def test_mean_abs_exports_to_onnx_and_picks_windows_per_input(tmp_path):
    from sparsevit_cli.commands.export import export_model
    micro = dict(embed_dim=16, depths=[2, 2], num_heads=[1, 2], window_size=4, num_classes=10)
    _, sparse = make_pair(img_size=64, **micro)
    sparse.set_window_score("mean-abs").set_sparsity([[0.5], [0.5]])
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(2, 3, 64, 64, generator=g), torch.randn(2, 3, 64, 64, generator=g)
    b[:, :, 32:, 32:] *= 5.0
    path = tmp_path / "m.onnx"
    export_model(sparse, "onnx", path, [a], tolerance=1e-4, time_it=False)
    import onnxruntime as ort
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: b.numpy()})[0])
    with torch.no_grad():
        assert rel_err(sparse(b), got) < 1e-4  # b's own windows, not those of the traced input


def test_unknown_window_score_is_a_one_line_error_and_leaves_the_model_alone():
    dense, _ = make_pair()
    with pytest.raises(UserError, match="unknown window score 'l1'.*l2-centered"):
        sv.sparsify(dense, window_score="l1")
    assert type(dense) is SwinTransformer


def test_kept_window_count_rule():
    assert kept_windows(64, 0.0) == 64
    assert kept_windows(64, 0.5) == 32
    assert kept_windows(9, 0.8) == 2
    assert kept_windows(1, 0.8) == 1  # at least one
    assert kept_windows(5, 0.7) == 2  # round(1.5) -> 2 (half up)


def test_pruned_model_differs_and_is_deterministic():
    dense, sparse = make_pair(img_size=224)
    x = torch.randn(2, 3, 224, 224)
    sparse.set_sparsity([[0.0], [0.2], [0.4, 0.5, 0.6], [0.8]])
    with torch.no_grad():
        a, b, ref = sparse(x), sparse(x), dense(x)
    assert torch.equal(a, b)
    assert rel_err(ref, a) > 1e-3


def test_per_image_selection_in_a_batch():
    """Each image keeps its own windows: a batch gives the same result as images one by one."""
    _, sparse = make_pair(img_size=224)
    sparse.set_sparsity(0.6)
    x = torch.randn(3, 3, 224, 224)
    x[1, :, 100:, 100:] *= 10
    with torch.no_grad():
        batch = sparse(x)
        single = torch.cat([sparse(x[i: i + 1]) for i in range(3)])
    assert rel_err(single, batch) < 1e-5


def test_training_step_and_gradients():
    _, sparse = make_pair(img_size=224, drop_path_rate=0.1)
    sparse.train()
    sparse.set_sparsity([[0.3], [0.3], [0.3, 0.5, 0.5], [0.8]])
    x = torch.randn(2, 3, 224, 224)
    opt = torch.optim.SGD(sparse.parameters(), lr=0.01)
    loss = torch.nn.functional.cross_entropy(sparse(x), torch.tensor([1, 2]))
    loss.backward()
    missing = [n for n, p in sparse.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    zero = [n for n, p in sparse.named_parameters() if p.grad.abs().sum() == 0]
    assert not zero, zero
    before = sparse.head.fc.weight.clone()
    opt.step()
    assert not torch.equal(before, sparse.head.fc.weight)


def test_gradient_matches_dense_at_sparsity_zero():
    dense, sparse = make_pair(img_size=224)
    x = torch.randn(2, 3, 224, 224)
    for m in (dense, sparse):
        m.zero_grad()
        m(x).square().mean().backward()
    for (n, p), (_, q) in zip(dense.named_parameters(), sparse.named_parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-6), n


@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_low_precision(dtype):
    dense, sparse = make_pair(img_size=224)
    dense, sparse = dense.to(dtype), sparse.to(dtype)
    x = torch.randn(2, 3, 224, 224, dtype=dtype)
    with torch.no_grad():
        ref, out = dense(x), sparse(x)
    assert out.dtype == dtype
    assert rel_err(ref.float(), out.float()) < 2e-2
    sparse.set_sparsity(0.5)
    with torch.no_grad():
        assert torch.isfinite(sparse(x).float()).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_fp16():
    dense, sparse = make_pair(img_size=224)
    dense, sparse = dense.cuda().half(), sparse.cuda().half()
    x = torch.randn(2, 3, 224, 224, device="cuda", dtype=torch.half)
    with torch.no_grad():
        assert rel_err(dense(x).float(), sparse(x).float()) < 2e-2


@pytest.mark.parametrize("bad,msg", [
    ([[0.0], [0.2], [0.4, 0.5], [0.8]], "needs 3 ratio"),
    ([[0.0], [0.2], [0.6, 0.5, 0.6], [0.8]], "non-decreasing"),
    ([[0.0], [0.25], [0.4, 0.5, 0.6], [0.8]], "not one of"),
    ([[0.0], [0.2], [0.4, 0.5, 0.6], [0.9]], "not one of"),
    ([[0.0], [0.2], [0.4, 0.5, 0.6]], "one list per stage"),
])
def test_invalid_configs(bad, msg):
    _, sparse = make_pair(img_size=224)
    with pytest.raises(sv.UserError, match=msg):
        sparse.set_sparsity(bad)


def test_sparsify_rejects_non_swin():
    with pytest.raises(sv.UserError, match="SwinTransformer"):
        sv.sparsify(timm.create_model("vit_tiny_patch16_224"))
