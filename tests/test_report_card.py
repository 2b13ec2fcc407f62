"""The report card's pieces on hand-built data: latency spread and its warning, the plot's data (the pick
where it is, curves by cost), pareto.png's marks, the architecture named from the model, the like-for-like
training line."""

import pytest

from sparsevit_cli.commands.pipeline import latency_warnings, plot_data
from sparsevit_cli.timing import MIN_SPREAD_REPEATS, Spread, unreliable


def row(label, kind, ms, low, high, metric=50.0, gmacs=1.0):
    return {"label": label, "kind": kind, "ms": ms, "ms_low": low, "ms_high": high, "metric": metric,
            "gmacs": gmacs, "backbone_gmacs": gmacs, "images_per_s": 1.0, "epochs": 3, "config": None}


def test_spread_is_median_and_interquartile_range():
    s = Spread.of([5.0, 1.0, 2.0, 3.0, 4.0])
    assert (s.median, s.low, s.high, s.repeats) == (3.0, 2.0, 4.0, 5)
    one = Spread.of([7.0])
    assert (one.median, one.low, one.high) == (7.0, 7.0, 7.0)
    assert Spread(10, 9, 11, 9).overlaps(Spread(10.5, 10.8, 12, 9))
    assert not Spread(10, 9, 11, 9).overlaps(Spread(12, 11.5, 13, 9))
    assert unreliable(Spread(10, 9, 11, 2), Spread(20, 19, 21, 2))  # too few repeats for a spread
    assert not unreliable(Spread(10, 9, 11, MIN_SPREAD_REPEATS), Spread(20, 19, 21, MIN_SPREAD_REPEATS))


def test_overlapping_spreads_warn_and_separated_ones_do_not():
    """A detector card timed under load (pick at 0.60x of dense) with spreads that overlap: warned."""
    card = {"repeats": 10, "rows": [row("dense", "dense", 100.0, 80.0, 170.0),
                                    row("uniform 60%*", "uniform", 60.0, 55.0, 65.0),  # clear of dense's range
                                    row("pick", "pick", 166.0, 120.0, 210.0)]}        # inside it: noise
    lines = latency_warnings(card)
    assert len(lines) == 1 and "latency of pick vs dense" in lines[0]
    assert "120-210 ms overlaps dense's 80-170 ms" in lines[0] and "0.60x" in lines[0]
    card["repeats"] = 3  # too few repeats: every comparison is flagged
    assert len(latency_warnings(card)) == 2 and "only 3 timed repeats" in latency_warnings(card)[0]


def test_plot_data_puts_each_row_where_it_is_and_orders_curves_by_cost():
    pick = row("pick", "pick", 6.0, 5.5, 7.0, metric=71.0, gmacs=0.4)
    card = {"rows": [row("dense", "dense", 10.0, 9.0, 11.0, metric=70.0, gmacs=1.0),
                     row("uniform 50%*", "uniform", 7.0, 6.0, 8.0, metric=68.0, gmacs=0.5), pick],
            # sparsity order; the 30% point was timed slower than 0% (noise): the latency panel orders by latency
            "curve": [row("uniform 0%", "uniform", 10.0, 9.0, 11.0, metric=70.0, gmacs=1.0),
                      row("uniform 30%", "uniform", 10.5, 8.0, 12.0, metric=69.5, gmacs=0.7),
                      row("uniform 50%", "uniform", 7.0, 6.0, 8.0, metric=68.0, gmacs=0.5)]}
    series = plot_data(card)
    by = {(s.panel, s.kind): s for s in series}
    assert (by["latency", "pick"].x, by["latency", "pick"].y) == ([6.0], [71.0])
    assert (by["latency", "pick"].x_low, by["latency", "pick"].x_high) == ([5.5], [7.0])
    assert (by["gmacs", "pick"].x, by["gmacs", "pick"].y) == ([0.4], [71.0])
    assert by["gmacs", "best uniform"].x == [0.5] and by["latency", "dense"].x == [10.0]
    assert by["gmacs", "curve"].x == [0.5, 0.7, 1.0] and by["latency", "curve"].x == [7.0, 10.0, 10.5]
    assert by["latency", "curve"].y == [68.0, 70.0, 69.5]  # each y stays with its own x


def test_pareto_star_is_the_pick():
    from sparsevit_cli.search.evolution import Budget, SearchResult, pareto_marks
    result = SearchResult(best_genome=[], best_config=[[0.5]], best_metric=-0.9, best_cost=0.5, evaluated=[],
                          top=[], budget=Budget(max_cost=0.6))
    assert pareto_marks(result) == {"pick": (0.5, -0.9)}
    marks = pareto_marks(result, pick=(0.55, -1.0))  # the confirmation split picked another candidate
    assert marks == {"pick": (0.55, -1.0), "best by fitness": (0.5, -0.9)}


def test_fitness_axis_says_what_it_is():
    from sparsevit_cli.commands.search import fitness_label
    assert fitness_label("logprob", "top1") == "mean log-probability of the true class (fitness split)"
    assert fitness_label("metric", "box_ap") == "box_ap (fitness split)"


@pytest.mark.parametrize("name,args,want", [
    ("swin_tiny_patch4_window7_224", dict(embed_dim=16, depths=[2, 4], num_heads=[1, 2], window_size=2, img_size=32),
     "Swin (embed 16, depths 2-4)"),
    ("deit_tiny_patch16_224", dict(embed_dim=32, depth=3, num_heads=2, img_size=32), "ViT (embed 32, depth 3)"),
])
def test_architecture_is_named_from_the_model(name, args, want):
    from sparsevit_cli.methods import sparsify
    from sparsevit_cli.timm_models import create_timm_model, describe_architecture
    model = create_timm_model(name, **args)
    assert describe_architecture(model) == want
    if name.startswith("swin"):  # the engine's patched class is still named for its family
        assert describe_architecture(sparsify(model)) == want


@pytest.mark.parametrize("stages,want_dense,want_pick,alike", [
    (dict(finetune=True, dense_finetune=True), 6, 6, True),     # dense finetuned as the pick
    (dict(finetune=True, dense_finetune=False), 3, 6, False),   # the dense stage's model: 3 fewer epochs
    (dict(finetune=False, dense_finetune=True), 5, 5, True),    # no finetune: the pick is the adapted weights
])
def test_training_line_says_whether_dense_and_pick_trained_alike(stages, want_dense, want_pick, alike):
    from pathlib import Path
    from sparsevit_cli.commands.pipeline import _training
    from sparsevit_cli.pipeline import PipelineConfig
    cfg = PipelineConfig.model_validate({"epochs": 3, "data": {"path": "data"}, "pipeline": {
        "dense": {"run": True}, "adapt": {"epochs": 2}, "finetune": {"run": stages["finetune"], "epochs": 1},
        "evaluate": {"dense_finetune": stages["dense_finetune"]}}})
    dense_ref = None if not stages["finetune"] else Path("dense.safetensors")
    t = _training(cfg, dense_ref)
    assert (t.dense, t.pick) == (want_dense, want_pick)
    assert t.line.startswith("Like-for-like" if alike else "Not like-for-like")
    if not alike:
        assert f"{want_pick - want_dense} epochs of extra training" in t.line
    assert t.adapted == 5  # dense 3 + adapt 2: the uniform curve and searched rows
