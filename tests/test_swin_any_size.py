"""The sparse Swin (V1, V2, whole model and features_only backbone) on any input size the patch divides:
square, portrait, landscape and a batch padded to a common size, at every stage, dense or pruned.

At sparsity 0 it is timm's dynamic-size Swin (``strict_img_size=False``: masks follow the input) bit for
bit. Pruned, it is checked against a slow reference built from timm's dense blocks: a block's output is
timm's block on the whole map where the engine keeps the window, and its input elsewhere."""
from functools import lru_cache

import timm
import torch
import pytest

import sparsevit_cli as sv
from sparsevit_cli.swin.patch import swin_stages

V1 = "swin_tiny_patch4_window7_224"
V2 = "swinv2_tiny_window8_256"
#: 64 px, window 4: stage maps 16, 8, 4 at the built size; stage 2 has two block pairs (a dense pair can lead a
#: pruned one); at 4x4 timm drops the shift of the last stage, as it does for Swin-T's 7x7 stage at 224
MICRO = dict(img_size=64, embed_dim=16, depths=[2, 4, 2], num_heads=[1, 2, 2], window_size=4)
#: portrait, landscape, and one whose stage maps are odd (patch merging pads) and not window multiples
SIZES = [(80, 48), (44, 92), (36, 60)]
#: a pruned stage, a stage whose first pair keeps every window (timm's block) before a pruned pair, and a
#: stage that prunes nothing (timm's own stage: what crashed on non-square inputs)
CONFIG = [[0.5], [0.0, 0.6], [0.0]]


@lru_cache(maxsize=None)  # built once per kind; tests set the sparsity they run
def models(name, features_only=False):
    """(timm's dynamic-size model, a sparse copy built at the static size) with the same perturbed weights:
    timm's init makes norms trivial (and V2's post-norms zero), which would make comparisons vacuous."""
    torch.manual_seed(0)
    ref = timm.create_model(name, strict_img_size=False, features_only=features_only, **MICRO).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.2 * torch.randn_like(p))
    static = timm.create_model(name, features_only=features_only, **MICRO).eval()
    static.load_state_dict(ref.state_dict())
    return ref, sv.sparsify(static)


def padded_batch():
    """Two images of different shapes zero-padded to one canvas, as torchvision's detection transform does."""
    g = torch.Generator().manual_seed(1)
    x = torch.zeros(2, 3, 56, 72)
    x[0, :, :56, :40] = torch.randn(3, 56, 40, generator=g)
    x[1, :, :32, :72] = torch.randn(3, 32, 72, generator=g)
    return x


INPUTS = [pytest.param(lambda hw=hw: torch.randn(2, 3, *hw), id=f"{hw[0]}x{hw[1]}") for hw in SIZES]
INPUTS.append(pytest.param(padded_batch, id="padded-batch"))


@pytest.mark.parametrize("name", [V1, V2])
@pytest.mark.parametrize("make_input", INPUTS)
def test_sparsity_zero_is_timms_dynamic_size_swin(name, make_input):
    x = make_input()
    for features_only in (False, True):
        ref, sparse = models(name, features_only)
        sparse.set_sparsity(0.0)
        with torch.no_grad():
            a, b = ref(x), sparse(x)
        if features_only:
            assert len(a) == len(b) == 3 and all(torch.equal(u, v) for u, v in zip(a, b))
        else:
            assert torch.equal(a, b)
            a = ref.forward_intermediates(x, intermediates_only=True)
            b = sparse.forward_intermediates(x, intermediates_only=True)
            assert all(torch.equal(u, v) for u, v in zip(a, b))


def slow_reference(ref, x, kept):
    """Stage outputs (NHWC) of timm's dynamic-size model where block i of a stage outputs timm's block on the
    whole map at the tokens `kept[stage][i]` marks, and its own input elsewhere."""
    outs = []
    h = ref.patch_embed(x)
    for stage, masks in zip(swin_stages(ref), kept):
        h = stage.downsample(h)
        for block, mask in zip(stage.blocks, masks):
            h = torch.where(mask[..., None], block(h), h)
        outs.append(h)
    return outs


@pytest.mark.parametrize("name", [V1, V2])
@pytest.mark.parametrize("make_input", INPUTS)
def test_pruned_blocks_are_timms_on_kept_windows_and_identity_elsewhere(name, make_input):
    x = make_input()
    ref, sparse = models(name, features_only=name == V2)  # the V2 case runs the features backbone
    sparse.set_sparsity(CONFIG)
    with torch.no_grad():
        kept = sparse.kept_window_masks(x)
        outs = sparse.forward_stages(x)
        expected = slow_reference(ref, x, kept)
    fractions = [[m.float().mean().item() for m in stage] for stage in kept]
    assert all(f == 1.0 for f in fractions[2]) and fractions[1][:2] == [1.0, 1.0]  # dense stage, dense pair
    assert all(f < 0.9 for f in fractions[0] + fractions[1][2:])  # the pruned blocks really drop windows
    for a, b in zip(outs, expected):
        assert a.shape == b.shape
        assert ((a - b).abs().max() / b.abs().max()).item() < 1e-5
    if name == V2:  # what the backbone returns is its stage maps
        with torch.no_grad():
            feats = sparse(x)
        assert all(torch.equal(f, o) for f, o in zip(feats, outs))  # NHWC, as timm's features net


def test_index_tables_and_masks_are_built_once_per_size():
    _, sparse = models.__wrapped__(V1)  # a fresh model: empty caches
    stage = swin_stages(sparse)[0]
    with torch.no_grad():
        for hw in [(80, 48), (44, 92), (80, 48)]:
            sparse.set_sparsity(0.5)(torch.randn(1, 3, *hw))
            sparse.set_sparsity(0.0)(torch.randn(1, 3, *hw))
    assert sorted(k[:2] for k in stage._grid_cache) == [(11, 23), (20, 12)]
    shifted = stage.blocks[1]
    grids = stage._grid_cache[(20, 12, "cpu")]
    assert grids[1].mask is next(m for k, m in shifted._shift_masks.items() if k[:2] == (20, 12))  # one tensor
    assert len(shifted._shift_masks) == 2
