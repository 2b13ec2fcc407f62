"""`sparsify` on timm ``features_only=True`` Swin backbones (bring your own detector), on micro models."""
import copy

import pytest
import timm
import torch

import sparsevit_cli as sv
from sparsevit_cli.swin.cost import swin_macs
from sparsevit_cli.swin.patch import SparseSwinStage, kept_windows
from test_cost import assert_macs_match_fvcore
from test_sparse_swin import forward_spying_blocks, randomize_, rel_err

MODEL = "swin_tiny_patch4_window7_224"
MICRO = dict(embed_dim=16, depths=[2, 2, 4], num_heads=[1, 2, 4], window_size=4)


def features_pair(img_size=64, **kw):
    """(dense features backbone, a sparse copy of it), trained-like norms so window scores do not tie."""
    torch.manual_seed(0)
    dense = randomize_(timm.create_model(MODEL, features_only=True, img_size=img_size, **MICRO, **kw)).eval()
    return dense, sv.sparsify(copy.deepcopy(dense))


def full_model_with(features, img_size):
    """The whole classifier holding `features`' weights (features_only names stages layers_i, timm layers.i)."""
    full = timm.create_model(MODEL, img_size=img_size, **MICRO).eval()
    weights = {k.replace("layers_", "layers.", 1): v for k, v in features.state_dict().items()}
    missing, unexpected = full.load_state_dict(weights, strict=False)
    assert not unexpected and all(k.startswith(("norm.", "head.")) for k in missing)
    return full


def test_sparsify_patches_the_features_backbone_in_place():
    dense = timm.create_model(MODEL, features_only=True, img_size=64, **MICRO)
    params = {n: p.data_ptr() for n, p in dense.named_parameters()}
    keys = set(dense.state_dict())
    sparse = sv.sparsify(dense)
    assert sparse is dense and isinstance(sparse, sv.SparseSwinTransformer)
    assert {n: p.data_ptr() for n, p in sparse.named_parameters()} == params and set(sparse.state_dict()) == keys
    assert all(isinstance(getattr(sparse, f"layers_{i}"), SparseSwinStage) for i in range(3))
    assert sparse.pair_counts() == [1, 1, 2] and sparse.sparsity == [[0.0], [0.0], [0.0, 0.0]]
    sparse.set_sparsity([[0.3], [0.5], [0.5, 0.8]]).set_window_score("mean-abs")
    assert sparse.layers_2.ratios == [0.5, 0.8] and sparse.layers_2.window_score == "mean-abs"
    assert sv.sparsify(sparse) is sparse and sparse.sparsity == [[0.3], [0.5], [0.5, 0.8]]  # settings kept
    with pytest.raises(sv.UserError, match="stage 3 has 2 block pair"):
        sparse.set_sparsity([[0.3], [0.5], [0.5]])


@pytest.mark.parametrize("img_size", [64, 72])  # 72: padded windows in every stage
def test_sparsity_zero_equals_the_dense_features_model(img_size):
    dense, sparse = features_pair(img_size)
    x = torch.randn(2, 3, img_size, img_size)
    with torch.no_grad():
        ref, out = dense(x), sparse(x)
    assert len(ref) == len(out) == 3
    assert all(torch.equal(a, b) for a, b in zip(ref, out))  # timm's own stages run: bit for bit


@pytest.mark.parametrize("score", ["l2-centered", "mean-abs"])
def test_pruned_backbone_runs_what_the_whole_sparse_model_runs(score):
    dense, sparse = features_pair(72)
    config = [[0.3], [0.5], [0.5, 0.8]]
    sparse.set_sparsity(config).set_window_score(score)
    full = sv.sparsify(full_model_with(dense, 72), config, window_score=score)
    x = torch.randn(2, 3, 72, 72)
    with torch.no_grad():
        out = sparse(x)
        ref = full.forward_intermediates(x, intermediates_only=True)
        dense_out = dense(x)
    for a, b in zip(ref, out):
        assert rel_err(a.permute(0, 2, 3, 1), b) < 1e-6
    assert rel_err(dense_out[-1], out[-1]) > 1e-3  # it really pruned


def test_pruned_block_is_exact_on_kept_windows_and_passes_the_rest_through():
    dense, sparse = features_pair(64)
    sparse.set_sparsity([[0.0], [0.5], [0.0, 0.0]])
    x = torch.randn(2, 3, 64, 64)
    captured = {}

    def spy(run, block, buf, grid, ids):
        before = buf.clone()
        out = run(block, buf, grid, ids)
        if ids is not None and not isinstance(ids, torch.Tensor):  # `Kept`: the same count per image here
            ids = torch.stack(ids.by_image(buf.shape[0]))
        captured.setdefault(id(block), (before, out.clone(), grid, ids))
        return out

    forward_spying_blocks(sparse, x, spy)
    stage = sparse.layers_1
    assert set(captured) == {id(stage.blocks[0]), id(stage.blocks[1])}
    before, after, grid, ids = captured[id(stage.blocks[0])]
    B, L, C = before.shape
    H = W = 8
    with torch.no_grad():
        ref = dense.layers_1.blocks[0](before[:, : H * W].reshape(B, H, W, C)).reshape(B, H * W, C)
    assert ids.shape == (2, kept_windows(grid.num_windows, 0.5))
    for b in range(B):
        kept = torch.zeros(grid.num_windows, dtype=torch.bool)
        kept[ids[b]] = True
        on, off = grid.index[kept].flatten(), grid.index[~kept].flatten()
        assert rel_err(ref[b, on], after[b, on]) < 1e-5
        assert torch.equal(after[b, off], before[b, off])


def test_macs_match_fvcore_without_a_head():
    _, sparse = features_pair(72)
    assert_macs_match_fvcore(sparse, swin_macs, 72, n_random=6, seed=0)
    assert "head" not in swin_macs(sparse, [[0.0], [0.0], [0.0, 0.0]], 72, breakdown=True).parts


def test_truncated_backbone_and_kept_window_masks():
    dense, sparse = features_pair(64, out_indices=(0, 1))  # timm drops the unused last stage
    assert sparse.pair_counts() == [1, 1]
    sparse.set_sparsity([[0.5], [0.5]])
    masks = sparse.kept_window_masks(torch.randn(2, 3, 64, 64))
    assert [[tuple(m.shape) for m in stage] for stage in masks] == [[(2, 16, 16)] * 2, [(2, 8, 8)] * 2]
    assert all(m.float().mean() == 0.5 for stage in masks for m in stage)
    assert all(s._kept_recorder is None for s in sparse.sparse_stages())


def test_user_detector_trains_on_the_sparse_backbone():
    """A bring-your-own neck (torchvision FPN) on the sparse backbone: gradients reach every weight that the
    kept windows use, and a new config per step needs no rebuild."""
    from torchvision.ops import FeaturePyramidNetwork
    _, backbone = features_pair(64)
    neck = FeaturePyramidNetwork(backbone.feature_info.channels(), 8)
    backbone.train()
    params = list(backbone.parameters()) + list(neck.parameters())
    opt = torch.optim.SGD(params, lr=0.01)
    x = torch.randn(2, 3, 64, 64)
    for cfg in ([[0.5], [0.5], [0.5, 0.8]], [[0.0], [0.3], [0.3, 0.3]]):
        backbone.set_sparsity(cfg)
        feats = {str(i): f.permute(0, 3, 1, 2) for i, f in enumerate(backbone(x))}  # timm gives NHWC
        loss = sum(o.square().mean() for o in neck(feats).values())
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in backbone.parameters())
        opt.step()


def test_sparsify_refuses_other_features_backbones():
    from sparsevit_cli.swin.patch import sparsifiable
    resnet = timm.create_model("resnet18", features_only=True)
    assert not sparsifiable(resnet) and sparsifiable(features_pair()[1])
    # the pipeline takes what sparsify takes: a features_only Swin picks SparseViT, a ResNet nothing
    assert sv.method_for_model(features_pair()[0]).name == "sparsevit"
    with pytest.raises(sv.UserError, match="no method supports FeatureListNet"):
        sv.method_for_model(resnet)
    with pytest.raises(sv.UserError, match="features_only"):
        sv.sparsify(resnet)
