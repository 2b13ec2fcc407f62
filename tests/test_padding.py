"""Padding is never computed: a window whose input pixels are all exactly 0 (torchvision's detection transform
and letterboxing pad with zeros after normalising) is never kept and does not count against the kept budget;
each image keeps round((1-s) * its real windows). Exact (timm's model) at sparsity 0.

Micro Swins (64 px, window 4, stage strides 4 / 8 / 16) on letterboxed and mixed-aspect batches: seconds."""
import pytest
import timm
import torch
import torch.nn.functional as F

import sparsevit_cli as sv
import sparsevit_cli.swin.patch as engine
from sparsevit_cli.swin.patch import Kept, swin_stages

MICRO = dict(img_size=64, embed_dim=16, depths=[2, 2, 2], num_heads=[1, 2, 2], window_size=4)
FAMILIES = {"v1": "swin_tiny_patch4_window7_224", "v2": "swinv2_tiny_window8_256"}
RATIOS = [0.1, 0.3, 0.5, 0.8]


def micro(family, features_only=False):
    torch.manual_seed(0)
    model = timm.create_model(FAMILIES[family], features_only=features_only, strict_img_size=False, **MICRO)
    with torch.no_grad():  # non-trivial norms, so scores do not tie
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model.eval()


def letterboxed():
    """A 16:9 image (64x36 px) letterboxed on a 64x64 canvas (bands above and below), and a 16:9 one on the
    left of a 96x64 canvas... both on one 64x96 batch canvas: zero pixels wherever there is no image."""
    g = torch.Generator().manual_seed(1)
    x = torch.zeros(2, 3, 64, 96)
    x[0, :, 14:50, :64] = torch.randn(3, 36, 64, generator=g)  # letterbox: bands of 14 px top and bottom
    x[1, :, :54, :96] = torch.randn(3, 54, 96, generator=g)
    return x


def mixed():
    """A portrait and a landscape image batched on a common canvas (what a detector's transform does)."""
    g = torch.Generator().manual_seed(2)
    x = torch.zeros(2, 3, 96, 96)
    x[0, :, :96, :52] = torch.randn(3, 96, 52, generator=g)
    x[1, :, :40, :96] = torch.randn(3, 40, 96, generator=g)
    return x


def spy_kept(model, x):
    """[(stage stride, grid, Kept or None)] for every block that runs on a stage buffer, for one forward."""
    seen = []
    stages = swin_stages(model)
    for stage in stages:
        run = stage.sparse_block

        def spy(block, buf, grid, kept, run=run, stage=stage):
            seen.append((stage._token_stride, grid, kept))
            return run(block, buf, grid, kept)
        stage.sparse_block = spy
    try:
        with torch.no_grad():
            model(x)
    finally:
        for stage in stages:
            del stage.sparse_block
    return seen


def real_windows_of(x, stride, grid):
    """(B, nW) bool, computed here from the pixels: a window is real when a pixel under one of its tokens is
    non-zero in some channel (a token covers stride x stride pixels)."""
    pixels = (x != 0).any(dim=1, keepdim=True).float()
    tokens = F.max_pool2d(pixels, stride, stride, ceil_mode=True).flatten(1) > 0
    tokens = torch.cat([tokens, torch.zeros(x.shape[0], 1, dtype=torch.bool)], 1)
    return tokens[:, grid.index].any(-1)


@pytest.mark.parametrize("family", ["v1", "v2"])
@pytest.mark.parametrize("make", [letterboxed, mixed])
def test_padding_windows_are_never_kept_nor_counted(family, make):
    x = make()
    model = sv.sparsify(micro(family))
    for r in RATIOS:
        model.set_sparsity(r)
        seen = spy_kept(model, x)
        assert seen and any(k is not None for _, _, k in seen)
        padded = 0
        for i, (stride, grid, kept) in enumerate(seen):
            real = real_windows_of(x, stride, grid)
            padded += int((~real).sum())
            if kept is None:  # every window of every image: only when no image has a padding window
                assert real.all()
                continue
            # the pair's budget: the real windows of its plain grid (the block before a shifted one)
            plain = real if grid.mask is None else real_windows_of(x, *seen[i - 1][:2])
            assert grid.mask is None or seen[i - 1][1].mask is None
            ids = kept.by_image(x.shape[0])
            for b, w in enumerate(ids):
                n_real, n_plain = int(real[b].sum()), int(plain[b].sum())
                assert real[b, w].all(), f"ratio {r}: a padding window kept"
                budget = max(1, int((1 - r) * n_plain + 0.5))  # counted from the real windows
                assert len(w) == min(budget, max(1, n_real)), (r, len(w), n_real, n_plain)
                assert len(set(w.tolist())) == len(w)
        assert padded > 0  # the batch does pad in some stage


@pytest.mark.parametrize("family", ["v1", "v2"])
def test_exact_at_sparsity_zero_on_padded_batches(family):
    ref = micro(family)
    model = sv.sparsify(micro(family))
    for make in (letterboxed, mixed):
        with torch.no_grad():
            assert torch.equal(model(make()), ref(make()))


def test_features_backbone_under_a_detector_keeps_no_padding():
    """The features_only backbone through `forward_intermediates`... and timm's FeatureListNet call (what the
    detectors and segmenters run) see the same padding."""
    x = mixed()
    whole = sv.sparsify(micro("v1"), 0.5)
    feats = sv.sparsify(micro("v1", features_only=True), 0.5)
    for model, call in ((whole, lambda m: m.forward_intermediates(x, intermediates_only=True)),
                        (feats, lambda m: m(x))):
        seen = []
        for stage in swin_stages(model):
            run = stage.sparse_block
            stage.sparse_block = (lambda b, buf, g, k, run=run, s=stage: (seen.append((s._token_stride, g, k)),
                                                                           run(b, buf, g, k))[1])
        with torch.no_grad():
            call(model)
        for stage in swin_stages(model):
            del stage.sparse_block
        assert seen
        for stride, grid, kept in seen:
            real = real_windows_of(x, stride, grid)
            for b, w in enumerate(kept.by_image(2)):
                assert real[b, w].all()


@pytest.mark.parametrize("family", ["v1", "v2"])
def test_a_padded_image_keeps_what_it_keeps_alone(family):
    """The budget is the real windows': an image zero-padded on the right, or letterboxed at the top of a
    square canvas, keeps as many windows in every block, plain and shifted, as the image alone (the shifted
    grid cuts the image's edge rows into extra windows; the pair's count comes from its plain grid)."""
    g = torch.Generator().manual_seed(3)
    alone = torch.randn(1, 3, 64, 32, generator=g)
    right = torch.zeros(1, 3, 64, 96)
    right[..., :32] = alone
    wide = torch.randn(1, 3, 40, 96, generator=g)  # 12:5, letterboxed on a 96 x 96 canvas
    letterbox = torch.zeros(1, 3, 96, 96)
    letterbox[:, :, :40] = wide
    model = sv.sparsify(micro(family), 0.5)
    def counts(x):  # stages 1 and 2 (in later ones the image alone can be one window: timm's own block runs)
        return [(stride, g.mask is not None, len(k.window)) for stride, g, k in spy_kept(model, x) if stride < 16]
    assert counts(alone) == counts(right)
    assert counts(wide) == counts(letterbox)
    assert [shifted for _, shifted, _ in counts(letterbox)] == [False, True, False, True]


def test_a_stage_called_on_its_own_treats_every_window_as_real():
    """A stage run without the model's patch embedding (no recorded input of its size) prunes as before."""
    model = sv.sparsify(micro("v1"), 0.5)
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
        stage = swin_stages(model)[1]
        out = stage(torch.randn(1, 12, 12, 16))  # a map of another size than the recorded input gives
    assert out.shape == (1, 6, 6, 32)


def test_a_torchvision_detector_computes_no_padding_window():
    """Under Faster R-CNN: its transform resizes a portrait and a landscape image and pads them with zeros to
    one batch; the sparse backbone keeps no window of that padding, and the detector still detects."""
    from sparsevit_cli.detection.models import build_detector

    torch.manual_seed(0)
    body = timm.create_model(FAMILIES["v1"], img_size=64, embed_dim=16, depths=[2, 2], num_heads=[1, 2],
                             window_size=4)
    det = build_detector(body, 3, masks=False, box_score_thresh=0.0, fpn_channels=32,
                         rpn_pre_nms_top_n_test=50, rpn_post_nms_top_n_test=20, box_detections_per_img=10).eval()
    sv.sparsify(det.backbone.body, 0.5)
    images = [torch.rand(3, *hw, generator=torch.Generator().manual_seed(i)) for i, hw in enumerate([(64, 24), (24, 64)])]
    with torch.no_grad():
        batch = det.transform(images)[0].tensors
    seen = []
    for stage in swin_stages(det.backbone.body):
        run = stage.sparse_block
        stage.sparse_block = (lambda b, buf, g, k, run=run, s=stage: (seen.append((s._token_stride, g, k)),
                                                                       run(b, buf, g, k))[1])
    try:
        with torch.no_grad():
            out = det(images)
    finally:
        for stage in swin_stages(det.backbone.body):
            del stage.sparse_block
    assert len(out) == 2 and seen
    padding = 0
    for stride, grid, kept in seen:
        real = real_windows_of(batch, stride, grid)
        padding += int((~real).sum())
        for b, w in enumerate(kept.by_image(2)):
            assert real[b, w].all()
    assert padding > 0
