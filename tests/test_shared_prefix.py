"""Shared-prefix evaluation: scoring networks as a tree over their per-block kept-window counts gives exactly
(bit for bit, on CPU) what scoring each network alone gives, for classification (Swin V1 and V2),
segmentation and detection, with fewer block-pair executions; a family without the hook (PSViT) falls back."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import timm
import torch

from sparsevit_cli import sparsify
from sparsevit_cli.data.demo import write_demo_data
from sparsevit_cli.evaluate import SharingCounts, evaluate_records_many
from sparsevit_cli.methods import method_for_model, shares_prefixes
from sparsevit_cli.swin.patch import shared_prefixes
from sparsevit_cli.tasks import backbone_of, get_task

CPU = torch.device("cpu")
RATIOS = (0.0, 0.8)


def micro(name="swin_tiny_patch4_window7_224", img_size=64, depths=(2, 2), **kw):
    torch.manual_seed(0)
    model = timm.create_model(name, img_size=img_size, embed_dim=16, depths=list(depths),
                              num_heads=[1, 2, 2][: len(depths)], window_size=4, **kw)
    for m in model.modules():  # timm's V2 post-norms start at 0 (blocks add nothing): make every block count
        if isinstance(m, torch.nn.LayerNorm):
            torch.nn.init.normal_(m.weight, 1.0, 0.5)
    return sparsify(model)


def configs(groups=2):
    return [[[r] for r in rs] for rs in itertools.product(RATIOS, repeat=groups)]


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


class ListSet(list):
    num_classes = 3


def check_tree_equals_alone(model, task, dataset, cfgs, img_size=64, batch_size=2):
    method = method_for_model(backbone_of(model))
    assert shares_prefixes(method)
    indices = list(range(len(dataset)))
    counts, alone_counts = SharingCounts(), SharingCounts()
    tree = evaluate_records_many(model, method, cfgs, dataset, task, batch_size, CPU, indices, img_size,
                                 counts=counts)
    alone = evaluate_records_many(model, method, cfgs, dataset, task, batch_size, CPU, indices, img_size,
                                  share=False, counts=alone_counts)
    for c, a, b in zip(cfgs, tree, alone):
        assert same(a, b), c
    assert counts.pairs_asked == alone_counts.pairs_run == alone_counts.pairs_asked
    # each distinct prefix of block pairs once per batch
    backbone = backbone_of(model)
    pairs = [[k for stage in method.effective(backbone, c, img_size) for k in stage[::2]] for c in cfgs]
    prefixes = {tuple(p[:j]) for p in pairs for j in range(1, len(p) + 1)}
    batches = -(-len(dataset) // batch_size)
    assert counts.pairs_run == batches * len(prefixes) < counts.pairs_asked == batches * sum(map(len, pairs))
    return tree


@pytest.mark.parametrize("name", ["swin_tiny_patch4_window7_224", "swinv2_tiny_window8_256"])
def test_tree_evaluation_equals_each_network_alone_for_classification(name):
    task = get_task("classification")
    model = task.build(micro(name), 3).eval()
    g = torch.Generator().manual_seed(0)
    data = ListSet((torch.randn(3, 64, 64, generator=g), i % 3) for i in range(3))  # 3: a short last batch
    records = check_tree_equals_alone(model, task, data, configs())
    assert len({tuple(r[1] for r in recs) for recs in records}) > 1  # the networks do differ


def test_tree_evaluation_equals_each_network_alone_for_segmentation():
    task = get_task("segmentation")
    model = task.build(micro(), 3).eval()
    g = torch.Generator().manual_seed(1)
    data = ListSet((torch.randn(3, 64, 64, generator=g), torch.randint(0, 3, (64, 64), generator=g))
                   for _ in range(2))
    check_tree_equals_alone(model, task, data, configs())


def test_tree_evaluation_equals_each_network_alone_for_a_detector(tmp_path):
    root = tmp_path / "data"
    write_demo_data(root, img_size=64, n_train=1, n_val=3, seed=0, detection=True)
    task = get_task("detection")
    dataset = task.dataset(root, "val", 64, train=False)
    model = task.build(micro(), dataset.num_classes, fpn_channels=16, rpn_pre_nms_top_n_test=50,
                       rpn_post_nms_top_n_test=20, box_detections_per_img=10, box_score_thresh=0.0).eval()
    check_tree_equals_alone(model, task, dataset, configs())


def test_window_order_is_the_one_its_prefix_ranked_with_a_late_score_and_padding():
    """mean-abs ranks at the stage's first pruning block; 72 px pads the windows: still bit-exact."""
    model = micro(img_size=72, depths=(2, 4)).eval()
    model.set_window_score("mean-abs")
    cfgs = [[[a], [b, c]] for a, b, c in itertools.product((0.0, 0.5), (0.0, 0.5), (0.5, 0.8)) if b <= c]
    x = torch.randn(2, 3, 72, 72, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        alone = [model.set_sparsity(c)(x) for c in cfgs]
        with shared_prefixes(model) as cache:
            tree = [model.set_sparsity(c)(x) for c in reversed(cfgs)][::-1]  # any order: still exact
            again = model.set_sparsity(cfgs[0])(x + 1)  # another batch clears the cache
    assert all(torch.equal(a, b) for a, b in zip(alone, tree))
    assert torch.equal(again, model.set_sparsity(cfgs[0])(x + 1))
    assert cache.pairs_run < cache.pairs_asked


def test_a_family_without_the_hook_is_scored_network_by_network():
    from sparsevit_cli import psvit
    torch.manual_seed(0)
    vit = psvit(timm.create_model("vit_tiny_patch16_224", img_size=32, depth=4, embed_dim=16, num_heads=2,
                                  num_classes=3))
    method = method_for_model(vit)
    assert not shares_prefixes(method)
    task = get_task("classification")
    data = ListSet((torch.randn(3, 32, 32), i % 3) for i in range(2))
    cfg = method.dense_config(vit)
    counts = SharingCounts()
    records = evaluate_records_many(vit, method, [cfg, cfg], data, task, 2, CPU, [0, 1], 32, counts=counts)
    assert same(records[0], records[1]) and counts.pairs_run == counts.pairs_asked


def test_states_are_keyed_by_the_windows_each_image_keeps_under_padding():
    """64 px, window 4: stage 1 has 16 windows, stage 2 has 4 (plain and shifted grid). An image whose right
    half is zero padding has 2 real plain windows at stage 2 (4 shifted: they wrap around): ratios 0.0 / 0.1
    keep 4 of 4 windows without padding (the same effective count) but 0.1 keeps 2 of the padded image's
    plain ones (0.0 computes all 4, padding included), and 0.2 / 0.3 keep 3 of 4 but 2 / 1 of its real ones:
    such networks must not share the stage-2 state. An image real only in its top-left quarter has 4 real
    plain and 9 real shifted windows at stage 1: ratios 0.4 / 0.5 keep 10 / 8 of 16 (different effective
    counts) but 2 and 5 of its real ones each: on a batch of such images they compute the same thing and
    share it."""
    model = micro().eval()
    g = torch.Generator().manual_seed(3)
    full, half, q1, q2 = (torch.randn(3, 64, 64, generator=g) for _ in range(4))
    half[:, :, 32:] = 0
    for q in (q1, q2):
        q[:, 32:], q[:, :, 32:] = 0, 0
    mixed, quarters = torch.stack([full, half]), torch.stack([q1, q2])
    method = method_for_model(model)
    assert method.effective(model, [[0.0], [0.0]], 64) == method.effective(model, [[0.0], [0.1]], 64)
    assert method.effective(model, [[0.0], [0.2]], 64) == method.effective(model, [[0.0], [0.3]], 64)
    assert method.effective(model, [[0.4], [0.0]], 64) != method.effective(model, [[0.5], [0.0]], 64)
    with torch.no_grad():
        cfgs = [[[0.2], [s]] for s in (0.0, 0.1, 0.2, 0.3)]
        alone = [model.set_sparsity(c)(mixed) for c in cfgs]
        with shared_prefixes(model) as cache:
            tree = [model.set_sparsity(c)(mixed) for c in cfgs]
        assert all(torch.equal(a, b) for a, b in zip(alone, tree))
        assert len({tuple(t.flatten().tolist()) for t in tree}) == 4  # the four networks differ
        assert cache.pairs_run == 1 + 4 < cache.pairs_asked == 8  # stage 1 once, stage 2 per network

        cfgs = [[[0.4], [0.5]], [[0.5], [0.5]]]
        alone = [model.set_sparsity(c)(quarters) for c in cfgs]
        with shared_prefixes(model) as cache:
            tree = [model.set_sparsity(c)(quarters) for c in cfgs]
        assert all(torch.equal(a, b) for a, b in zip(alone, tree)) and torch.equal(alone[0], alone[1])
        assert cache.pairs_run == 2 < cache.pairs_asked == 4  # the second network is wholly cached
