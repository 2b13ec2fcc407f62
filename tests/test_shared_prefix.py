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
from sparsevit_cli.batch_memory import BatchMemory
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


def micro_detector(tmp_path, n_val):
    """A micro Faster R-CNN on `n_val` demo detection canvases (64 px): (model, task, dataset)."""
    root = tmp_path / "data"
    write_demo_data(root, img_size=64, n_train=1, n_val=n_val, seed=0, detection=True)
    task = get_task("detection")
    dataset = task.dataset(root, "val", 64, train=False)
    model = task.build(micro(), dataset.num_classes, fpn_channels=16, rpn_pre_nms_top_n_test=50,
                       rpn_post_nms_top_n_test=20, box_detections_per_img=10, box_score_thresh=0.0).eval()
    return model, task, dataset


def test_tree_evaluation_equals_each_network_alone_for_a_detector(tmp_path):
    model, task, dataset = micro_detector(tmp_path, n_val=3)
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


# --- wide execution: a pruned block runs once per distinct input, at the widest count of the planned networks


def run_plan(model, cfgs, x, plan=True):
    """Forwards of `model` on `x` under each config, in order, in one `shared_prefixes` context (with the
    configs as its plan, or without one); (outputs, cache)."""
    with torch.no_grad(), shared_prefixes(model) as cache:
        if plan:
            cache.plan(cfgs)
        outs = []
        for j, c in enumerate(cfgs):
            cache.current = j
            outs.append(model.set_sparsity(c)(x))
    return outs, cache


def alone(model, cfgs, x):
    with torch.no_grad():
        return [model.set_sparsity(c)(x) for c in cfgs]


def counts_of(cache):
    return {k: getattr(cache, k) for k in ("pairs_run", "pairs_asked", "blocks_run", "blocks_asked", "windows_run",
                                           "windows_asked")}


def test_wide_execution_counts_by_hand_without_padding():
    """64 px, window 4, depths (2, 2): stage 1 has 16 windows per block, stage 2 has 4. Kept per image
    (round((1 - s) * nW)): stage 1 at 0.8 / 0.5 / 0.2 / 0.0: 3 / 8 / 13 / 16; stage 2 at 0.8 / 0.5 / 0.0: 1 / 2 / 4.
    Batch of 2 images, every count times 2.
    stage 1 block 0, one input: the pruned networks run it once at 13 (26 windows), the dense one alone (32);
    stage 1 block 1: inputs after 3, 8, 13 (twice: the last two networks share it) and 16: 4 runs, 6+16+26+32;
    stage 2 block 0: dense after 3 (8), after 8 (8), the two networks after 13 once at max(2, 1) = 2 (4), after 16 at 2 (4);
    stage 2 block 1: every network on its own input: 8 + 8 + 4 + 2 + 4."""
    model = micro().eval()
    cfgs = [[[0.8], [0.0]], [[0.5], [0.0]], [[0.2], [0.5]], [[0.2], [0.8]], [[0.0], [0.5]]]
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    tree, cache = run_plan(model, cfgs, x)
    assert all(torch.equal(a, b) for a, b in zip(alone(model, cfgs, x), tree))
    asked = [2 * (3 + 3 + 4 + 4), 2 * (8 + 8 + 4 + 4), 2 * (13 + 13 + 2 + 2), 2 * (13 + 13 + 1 + 1), 2 * (16 + 16 + 2 + 2)]
    assert counts_of(cache) == {
        "blocks_run": 2 + 4 + 4 + 5, "pairs_run": 2 + 4, "blocks_asked": 5 * 4, "pairs_asked": 5 * 2,
        "windows_run": (26 + 32) + (6 + 16 + 26 + 32) + (8 + 8 + 4 + 4) + (8 + 8 + 4 + 2 + 4),
        "windows_asked": sum(asked)}
    # without the plan each distinct prefix runs at its own counts (today's tree): stage 1 block 0 four times
    again, old = run_plan(model, cfgs, x, plan=False)
    assert all(torch.equal(a, b) for a, b in zip(tree, again))
    assert (old.blocks_run, old.pairs_run) == (4 + 4 + 5 + 5, 4 + 5) and old.windows_asked == sum(asked)
    assert old.windows_run == (6 + 16 + 26 + 32) * 2 + (8 + 8 + 4 + 2 + 4) * 2


@pytest.mark.parametrize("name", ["swin_tiny_patch4_window7_224", "swinv2_tiny_window8_256"])
def test_wide_execution_is_exact_under_padding_with_per_image_counts(name):
    """A full image and one whose right half is zero padding (64 px, window 4). Stage 1 (16 windows): the padded
    image has 8 real plain and 12 real shifted windows; a pair's count comes from its plain grid, so 0.2 keeps
    (13, 6) in both blocks: shared by all. Stage 2 (4 windows; the padded image: 2 real plain, 4 real
    shifted): block 0 at 0.5 / 0.3 / 0.2 / 0.1 keeps (2, 1) / (3, 1) / (3, 2) / (4, 2): one run at the
    per-image maximum (4, 2), 6 windows; block 1 keeps the same counts, each on its own input."""
    model = micro(name).eval()
    g = torch.Generator().manual_seed(5)
    full, half = torch.randn(3, 64, 64, generator=g), torch.randn(3, 64, 64, generator=g)
    half[:, :, 32:] = 0
    x = torch.stack([full, half])
    cfgs = [[[0.2], [s]] for s in (0.5, 0.3, 0.2, 0.1)]
    tree, cache = run_plan(model, cfgs, x)
    assert all(torch.equal(a, b) for a, b in zip(alone(model, cfgs, x), tree))
    assert len({tuple(t.flatten().tolist()) for t in tree}) == 4  # the four networks differ
    stage1 = (13 + 6) + (13 + 6)
    assert counts_of(cache) == {
        "blocks_run": 2 + 1 + 4, "pairs_run": 1 + 1, "blocks_asked": 4 * 4, "pairs_asked": 4 * 2,
        "windows_run": stage1 + 6 + (3 + 4 + 5 + 6),
        "windows_asked": 4 * stage1 + 2 * (3 + 4 + 5 + 6)}


def test_wide_execution_with_a_late_score_and_a_plan_in_any_order():
    """mean-abs ranks at the first pruning block (here stage 2's block 2 for some networks, block 0 for others);
    72 px pads windows; a plan that is not sorted, and forwards that leave the plan, stay exact."""
    model = micro(img_size=72, depths=(2, 4)).eval()
    model.set_window_score("mean-abs")
    R = (0.0, 0.5, 0.8)
    cfgs = [[[a], [b, c]] for a, b, c in itertools.product(R, R, R) if b <= c]
    x = torch.randn(2, 3, 72, 72, generator=torch.Generator().manual_seed(6))
    x[1, :, 40:] = 0
    expected = alone(model, cfgs, x)
    tree, cache = run_plan(model, cfgs, x)
    assert all(torch.equal(a, b) for a, b in zip(expected, tree))
    _, old = run_plan(model, cfgs, x, plan=False)
    assert cache.windows_asked == old.windows_asked and cache.blocks_run < old.blocks_run
    with torch.no_grad(), shared_prefixes(model) as cache:  # the plan says one thing, the forwards run another
        cache.plan(cfgs[::-1])
        for j, c in enumerate(cfgs):
            cache.current = j
            assert torch.equal(model.set_sparsity(c)(x), expected[j])


def test_resuming_at_the_first_pruned_block_after_an_early_ranking():
    """Stage 2 ranks at its input (l2-centered) and prunes from block 2 on: the second network resumes at block
    2 and needs the order ranked before it (this crashed before wide execution)."""
    model = micro(depths=(2, 4)).eval()
    cfgs = [[[0.0], [0.0, 0.5]], [[0.0], [0.0, 0.8]]]
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    for plan in (True, False):
        tree, cache = run_plan(model, cfgs, x, plan)
        assert all(torch.equal(a, b) for a, b in zip(alone(model, cfgs, x), tree))
        # stage 1 and stage 2's first pair once; block 2 once (wide) or twice; block 3 twice
        assert cache.blocks_run == 2 + 2 + (1 if plan else 2) + 2


def test_evaluate_records_many_runs_wide_and_counts_like_alone(tmp_path):
    """The search's scoring: records identical to each network alone for a detector, fewer windows computed
    than asked, and the not-shared path counts what it runs (run = asked)."""
    model, task, dataset = micro_detector(tmp_path, n_val=2)
    method = method_for_model(backbone_of(model))
    cfgs = [[[0.2], [0.5]], [[0.8], [0.8]], [[0.5], [0.8]]]
    counts, alone_counts = SharingCounts(), SharingCounts()
    tree = evaluate_records_many(model, method, cfgs, dataset, task, 2, CPU, [0, 1], 64, counts=counts)
    each = evaluate_records_many(model, method, cfgs, dataset, task, 2, CPU, [0, 1], 64, share=False,
                                 counts=alone_counts)
    assert all(same(a, b) for a, b in zip(tree, each))
    assert alone_counts.windows_run == alone_counts.windows_asked == counts.windows_asked > counts.windows_run > 0
    assert alone_counts.blocks_run == alone_counts.blocks_asked == counts.blocks_asked == 3 * 4
    # stage 1 block 0 once (wide), block 1 three times; stage 2 after 3 distinct stage-1 states, every block
    assert counts.blocks_run == 1 + 3 + 3 + 3 and counts.pairs_run == 1 + 3


def test_a_search_cuts_its_chunks_from_the_sorted_networks():
    """A generation's networks are sorted by their kept-window counts (the widest first) before they are cut into
    chunks, so each chunk is a subtree: 9 networks (stage 1 keeps 3 / 8 / 16 windows, stage 2 keeps 1 / 2 / 4)
    in chunks of 3 are three chunks that each share stage 1, fewer block runs than the same chunks cut from a
    list ordered by stage 2 first; the history (networks, scores, order) and the pick do not depend on the chunk
    size."""
    import json

    from sparsevit_cli.search.evolution import Budget, EvolutionSettings, run_evolution
    from sparsevit_cli.search.space import SearchSpace

    model = micro().eval()
    method = method_for_model(model)
    task = get_task("classification")
    model_task = task.build(model, 3).eval()
    data = ListSet((torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(8)), 0) for _ in range(2))
    space = SearchSpace.from_dict({"method": "sparsevit", "choices": [0.0, 0.5, 0.8],
                                   "groups": [{"genes": 1}, {"genes": 1}]})

    def network(config):
        return method.effective(model, config, 64)

    def score(config):  # distinct per network: no ties
        kept = network(config)
        return -abs(kept[0][0] - 8) * 10 - abs(kept[1][0] - 2) + 0.01 * kept[1][0]

    def search(chunk, run=True, memory=None):
        chunks, counts = [], SharingCounts()

        def many(configs):
            chunks.append([json.dumps(network(c)) for c in configs])
            if run:
                evaluate_records_many(model_task, method, configs, data, task, 2, CPU, [0, 1], 64, counts=counts,
                                      memory=memory)
            return [score(c) for c in configs]

        settings = EvolutionSettings(population=9, generations=2, parents=3, mutations=3, crossovers=3, seed=0)
        result = run_evolution(space, score, lambda c: 1.0, Budget(max_cost=2.0), settings, progress=False,
                               network=network, evaluate_many=many, chunk=chunk)
        return result, chunks, counts

    result, chunks, counts = search(3)
    assert result.exhaustive and [len(c) for c in chunks] == [3, 3, 3]
    flat = [k for c in chunks for k in c]
    assert flat == sorted(flat, key=json.loads, reverse=True) and len(set(flat)) == 9  # the widest first
    assert all(len({json.dumps(json.loads(k)[0]) for k in c}) == 1 for c in chunks)  # one stage-1 network each
    # with a memory across chunks: the chunk keeping 3 stage-1 windows takes them from the block the chunk
    # keeping 8 ran (kept even though no other network of that chunk needed it wide); the dense chunk runs none
    _, _, remembered = search(3, memory=BatchMemory(2 ** 30))
    assert remembered.pairs_run == counts.pairs_run - 1 and remembered.blocks_run == counts.blocks_run - 1
    whole, _, _ = search(100, run=False)
    assert [(c["network"], c["metric"]) for c in result.evaluated] == [(c["network"], c["metric"])
                                                                      for c in whole.evaluated]
    assert result.best_config == whole.best_config
    # the same chunk size over an order that is not a subtree per chunk: more executions
    unsorted = sorted((space.decode(g) for g in space.all_genomes()), key=lambda c: network(c)[::-1])
    other = SharingCounts()
    for i in range(0, 9, 3):
        evaluate_records_many(model_task, method, unsorted[i:i + 3], data, task, 2, CPU, [0, 1], 64, counts=other)
    assert counts.blocks_asked == other.blocks_asked and counts.blocks_run < other.blocks_run


def run_generations(model, generations, x, memory):
    """One `shared_prefixes` context per generation (a list of configs, run as a plan) on the same batch `x`,
    sharing `memory`; [(outputs, cache)] per generation."""
    done = []
    for cfgs in generations:
        with torch.no_grad(), shared_prefixes(model, memory=memory) as cache:
            cache.plan(cfgs)
            outs = []
            for j, c in enumerate(cfgs):
                cache.current = j
                outs.append(model.set_sparsity(c)(x))
        done.append((outs, cache))
    return done


@pytest.mark.parametrize("name", ["swin_tiny_patch4_window7_224", "swinv2_tiny_window8_256"])
def test_a_batch_memory_keeps_the_first_wide_block_from_one_generation_to_the_next(name):
    """Stage 1 (16 windows per image, batch of 2): generation 1 runs block 0 once at 13 (0.2); generation 2
    keeps at most 8 (0.5) there: it takes its rows from the kept output and runs block 0 not at all;
    generation 3 asks 14 (0.1) > 13, so block 0 runs again (wide, at 14) and replaces what was kept; generation
    4 (at most 14) runs it not at all. Every output equals the network alone."""
    model = micro(name).eval()
    g = torch.Generator().manual_seed(8)
    x = torch.randn(2, 3, 64, 64, generator=g)
    gens = [[[[0.2], [0.5]], [[0.5], [0.8]]], [[[0.5], [0.0]], [[0.8], [0.5]]], [[[0.1], [0.5]], [[0.5], [0.5]]],
            [[[0.1], [0.0]], [[0.2], [0.8]]]]
    memory = BatchMemory(2 ** 30)
    done = run_generations(model, gens, x, memory)
    for cfgs, (outs, _) in zip(gens, done):
        assert all(torch.equal(a, b) for a, b in zip(alone(model, cfgs, x), outs))
    block0 = [c.windows_run for _, c in done]
    without = run_generations(model, gens, x, None)
    # the stage-1 block 0 runs wide in generations 1 and 3 only; the others compute exactly 2 x 13 / 2 x 14
    # windows fewer than without the memory
    assert [w.windows_run - c for (_, w), c in zip(without, block0)] == [0, 2 * 8, 0, 2 * 14]
    assert [w.pairs_run - c.pairs_run for (_, w), (_, c) in zip(without, done)] == [0, 1, 0, 1]
    assert len(memory) == 1 and memory.hits == 3
    # another batch, or the same pixels under other padding, is another key: nothing found
    other = x.clone()
    other[1, :, :, 32:] = 0
    (_, c), = run_generations(model, gens[1:2], other, memory)
    assert c.pairs_run == without[1][1].pairs_run and memory.hits == 3 and len(memory) == 2


def test_a_batch_memory_over_its_budget_keeps_nothing_and_changes_nothing():
    model = micro().eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(9))
    gens = [[[[0.2], [0.5]], [[0.5], [0.8]]], [[[0.5], [0.0]], [[0.8], [0.5]]]]
    memory = BatchMemory(1000)  # bytes: less than one stage-1 map
    done = run_generations(model, gens, x, memory)
    without = run_generations(model, gens, x, None)
    assert len(memory) == 0 and memory.used == 0
    for (a, c), (b, w) in zip(done, without):
        assert all(torch.equal(p, q) for p, q in zip(a, b)) and counts_of(c) == counts_of(w)


def test_a_search_with_prefix_memory_scores_as_without_it(tmp_path):
    """Three generations of the search's scoring on the same fitness images through `evaluate_records_many`:
    identical records with and without the memory; the later ones (the last a single network) run one
    block-pair fewer per batch."""
    model, task, dataset = micro_detector(tmp_path, n_val=4)
    method = method_for_model(backbone_of(model))
    gens = [[[[0.2], [0.5]], [[0.8], [0.8]], [[0.5], [0.8]]], [[[0.5], [0.5]], [[0.8], [0.0]]], [[[0.5], [0.0]]]]
    memory = BatchMemory(2 ** 30)
    for cfgs in gens:
        with_memory, without = SharingCounts(), SharingCounts()
        a = evaluate_records_many(model, method, cfgs, dataset, task, 2, CPU, [0, 1, 2, 3], 64, counts=with_memory,
                                  memory=memory)
        b = evaluate_records_many(model, method, cfgs, dataset, task, 2, CPU, [0, 1, 2, 3], 64, counts=without)
        assert all(same(p, q) for p, q in zip(a, b))
        assert without.pairs_run - with_memory.pairs_run == (0 if cfgs is gens[0] else 2)  # 2 batches
    assert len(memory) == 2 and memory.hits == 4  # the last generation: one network, from the memory too


class CountingSet(ListSet):
    reads = 0

    def __getitem__(self, i):
        CountingSet.reads += 1
        return super().__getitem__(i)


def test_a_batch_memory_keeps_the_decoded_fitness_batches_within_its_budget():
    """The search's later generations read no image the memory holds (alone or as a tree), and score the same;
    a budget that holds one batch of two keeps that one and reads the other every time."""
    model = micro().eval()
    task = get_task("classification")
    model_task = task.build(model, 3).eval()
    g = torch.Generator().manual_seed(10)
    data = CountingSet((torch.randn(3, 64, 64, generator=g), i % 3) for i in range(4))
    method = method_for_model(model)
    cfgs = [[[0.2], [0.5]], [[0.5], [0.8]]]
    plain = evaluate_records_many(model_task, method, cfgs, data, task, 2, CPU, [0, 1, 2, 3], 64)
    memory = BatchMemory(2 ** 30)
    for configs, reads in ((cfgs, 4), (cfgs, 0), (cfgs[:1], 0)):  # a tree, again, then one network alone
        CountingSet.reads = 0
        got = evaluate_records_many(model_task, method, configs, data, task, 2, CPU, [0, 1, 2, 3], 64,
                                    memory=memory)
        assert all(same(a, b) for a, b in zip(got, plain)) and CountingSet.reads == reads
    one_batch = 2 * 3 * 64 * 64 * 4 + 2 * 8  # two images and two int64 labels
    small = BatchMemory(one_batch)
    for expected in (4, 2, 2):
        CountingSet.reads = 0
        evaluate_records_many(model_task, method, cfgs[:1], data, task, 2, CPU, [0, 1, 2, 3], 64, memory=small)
        assert CountingSet.reads == expected and small.used <= one_batch
