"""A search that earns its keep: one evaluation per network, small spaces enumerated, uniform configs in the
first population, disjoint recorded splits, the pick confirmed on other images, and the statistics behind
its intervals checked against hand-computed cases."""
from __future__ import annotations

import math

import numpy as np
import pytest
import timm

from sparsevit_cli import sparsify
from sparsevit_cli.errors import UserError
from sparsevit_cli.evaluate import search_splits
from sparsevit_cli.methods import get_method
from sparsevit_cli.search.confirm import DEFAULT_PICK_RULE, compare, confirm
from sparsevit_cli.search.evolution import Budget, EvolutionSettings, random_search, run_evolution
from sparsevit_cli.search.space import SearchSpace
from sparsevit_cli.search.stats import (binomial_two_sided, mcnemar_exact, mean_bootstrap, paired_bootstrap,
                                        ranks, spearman)
from sparsevit_cli.tasks import TopOneScores

CHOICES = [0.0, 0.2, 0.4, 0.5, 0.6, 0.8]


def space(sizes=(1, 2)) -> SearchSpace:
    return SearchSpace.from_dict({"method": "sparsevit", "choices": CHOICES,
                                  "groups": [{"genes": n} for n in sizes]})


def kept(config):
    """Like SparseViT on 4 windows per block: 0.4, 0.5 and 0.6 all keep 2 windows."""
    return [[max(1, math.floor((1 - s) * 4 + 0.5)) for s in g] for g in config]


def cost(config) -> float:
    return sum(k for g in kept(config) for k in g)  # cost follows what runs, as MACs do


class Counting:
    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, config):
        self.calls.append(config)
        return self.fn(config)


def score(config) -> float:
    return -sum((k - 2) ** 2 for g in kept(config) for k in g)


# ---- effective configs
def test_sparsevit_effective_config_is_the_kept_window_counts():
    model = sparsify(timm.create_model("swin_tiny_patch4_window7_224", img_size=64, embed_dim=16, depths=[2, 2],
                                       num_heads=[1, 2], window_size=4, num_classes=10))
    method = get_method("sparsevit")
    # stage 1: 16 windows, stage 2: 4: 0.4, 0.5 and 0.6 keep 2 of stage 2's 4 windows
    runs = [method.effective(model, [[0.0], [s]], 64) for s in (0.4, 0.5, 0.6)]
    assert runs[0] == runs[1] == runs[2] == [[16, 16], [2, 2]]
    assert method.effective(model, [[0.5], [0.8]], 64) == [[8, 8], [1, 1]]
    assert method.macs(model, [[0.0], [0.4]], 64) == method.macs(model, [[0.0], [0.6]], 64)


def test_two_genomes_that_keep_the_same_windows_are_one_evaluation():
    sp = space()
    evaluate = Counting(score)
    settings = EvolutionSettings(population=6, generations=4, parents=3, mutations=4, crossovers=4, seed=0)
    result = run_evolution(sp, evaluate, cost, Budget(max_cost=9.0), settings, progress=False, network=kept,
                           index_limit=0)  # not indexed: draws of genomes, deduplicated by network
    networks = [str(kept(c)) for c in evaluate.calls]
    assert len(networks) == len(set(networks)) == result.evaluations == len(result.evaluated)
    assert result.repeats_skipped > 0  # genomes that run an evaluated network were drawn, and not evaluated

    # 0.4 / 0.5 / 0.6 everywhere: three uniform genomes, one network, one evaluation
    uniform = [c for c in result.evaluated if c["uniform"] is not None]
    # 0.5 and 0.6 run 0.4's network; dense costs 12 > 9
    assert sorted(c["uniform"] for c in uniform) == [0.2, 0.4, 0.8]


def test_a_space_whose_networks_fit_the_allowance_is_enumerated_exactly_once():
    sp = space()
    all_networks = {str(kept(sp.decode(g))) for g in sp.all_genomes() if cost(sp.decode(g)) <= 9.0}
    evaluate = Counting(score)
    lines = []
    settings = EvolutionSettings(population=10, generations=5, parents=3, mutations=5, crossovers=5, seed=0)
    result = run_evolution(sp, evaluate, cost, Budget(max_cost=9.0), settings, progress=False, network=kept,
                           log=lines.append)
    assert result.exhaustive and result.distinct_in_budget == len(all_networks) <= result.allowance
    assert sorted(str(kept(c)) for c in evaluate.calls) == sorted(all_networks)  # each exactly once
    assert any(f"evaluating every one of them" in line for line in lines)
    assert any(f"{len(all_networks)} fit the budget" in line for line in lines)
    assert result.best_metric == max(score(sp.decode(g)) for g in sp.all_genomes() if cost(sp.decode(g)) <= 9.0)


def test_every_uniform_config_in_the_budget_is_in_generation_0():
    sp = space((2, 3))
    first = []
    settings = EvolutionSettings(population=3, generations=2, parents=2, mutations=2, crossovers=2, seed=3)
    result = run_evolution(sp, score, cost, Budget(max_cost=13.0), settings, progress=False, network=kept,
                           on_generation=lambda g, pop: first.extend(pop) if g == 0 else None, count_limit=0)
    fits = [v for v in CHOICES if cost([[v] * 2, [v] * 3]) <= 13.0]
    assert fits == [0.4, 0.5, 0.6, 0.8]  # 0.2 keeps 3 of 4 windows: 15 > 13
    configs = [c["config"] for c in first]
    for v in (0.4, 0.8):  # 0.5 and 0.6 run 0.4's network
        assert [[v] * 2, [v] * 3] in configs
    assert {c["uniform"] for c in result.uniform} == {0.4, 0.8}
    assert len(first) >= 3


def test_random_search_draws_distinct_networks():
    sp = space()
    evaluate = Counting(score)
    result = random_search(sp, evaluate, cost, Budget(max_cost=9.0), n=5, seed=0, network=kept)
    assert len({str(kept(c)) for c in evaluate.calls}) == len(evaluate.calls) == 5 == result.evaluations


# ---- splits
def test_splits_are_disjoint_deterministic_and_shrink_to_fit():
    a, b = search_splits(100, 30, 40, seed=1), search_splits(100, 30, 40, seed=1)
    assert a == b and len(a.fitness) == 30 and len(a.confirmation) == 40 and len(a.rest) == 30
    assert not set(a.fitness) & set(a.confirmation) and sorted(a.fitness + a.confirmation + a.rest) == list(range(100))
    assert search_splits(100, 30, 40, seed=2).fitness != a.fitness
    small = search_splits(10, 1000, 1000)
    assert len(small.fitness) == len(small.confirmation) == 5 and not small.rest
    with pytest.raises(UserError, match="at least 2 images"):
        search_splits(1, 5, 5)


# ---- statistics against hand-computed cases
def test_exact_mcnemar_against_hand_computed_binomial_tails():
    # only the discordant pairs count: 0 vs 5 -> 2 * (1/2)^5; 1 vs 9 -> 2 * (1 + 10) / 2^10
    assert mcnemar_exact([1] * 5 + [1, 0], [0] * 5 + [1, 0]) == pytest.approx(2 / 32)
    assert binomial_two_sided(1, 10) == pytest.approx(22 / 1024)
    assert binomial_two_sided(3, 6) == 1.0 and mcnemar_exact([1, 0], [1, 0]) == 1.0  # no discordant pair
    assert binomial_two_sided(2, 7) == pytest.approx(2 * (1 + 7 + 21) / 128)
    scipy_stats = pytest.importorskip("scipy.stats")
    for k, n in ((0, 5), (1, 10), (4, 30), (12, 25)):
        assert binomial_two_sided(k, n) == pytest.approx(scipy_stats.binomtest(k, n, 0.5).pvalue)


def test_bootstrap_interval_against_the_exact_bootstrap_distribution():
    # two images, differences 100 and 0: a resample's mean is 0 (p 1/4), 50 (1/2) or 100 (1/4), so the
    # 2.5% and 97.5% percentiles are 0 and 100 and the point estimate 50
    iv = mean_bootstrap([100.0, 0.0], [0.0, 0.0], resamples=4000, seed=0)
    assert (iv.diff, iv.low, iv.high) == (50.0, 0.0, 100.0) and iv.holds_zero()
    # identical per-image differences: every resample gives the same mean
    iv = mean_bootstrap([100.0] * 5, [0.0] * 5, resamples=100)
    assert (iv.diff, iv.low, iv.high) == (100.0, 100.0, 100.0) and not iv.holds_zero()
    # the generic path (a metric recomputed per resample) agrees with the vectorised one
    a = TopOneScores([1, 1, 0, 1, 0, 1, 1, 0], [0.0] * 8)
    b = TopOneScores([1, 0, 0, 1, 0, 0, 1, 1], [0.0] * 8)
    slow = paired_bootstrap(a.metric, b.metric, 8, resamples=500, seed=4)
    fast = mean_bootstrap(a.correct * 100.0, b.correct * 100.0, resamples=500, seed=4)
    assert slow == fast


def test_spearman_against_hand_computed_ranks():
    assert ranks([10, 20, 20, 5]) == [2.0, 3.5, 3.5, 1.0]
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # d = ranks differ by (0, 1, -1): rho = 1 - 6 * 2 / (3 * 8) = 0.5
    assert spearman([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    scipy_stats = pytest.importorskip("scipy.stats")
    x, y = [3.1, 2.0, 2.0, 5.5, 4.0, 1.0], [1.0, 0.5, 0.7, 3.0, 0.7, 0.1]
    assert spearman(x, y) == pytest.approx(scipy_stats.spearmanr(x, y).statistic)


# ---- confirmation
def _result_with(candidates):
    """A finished search over `candidates` (config, fitness, per-image confirmation correctness)."""
    from sparsevit_cli.search.evolution import _result
    evaluated = [{"genome": [i], "config": cfg, "network": str(cfg), "metric": fit, "cost": 1.0 + i,
                  "generation": 0, "uniform": uni} for i, (cfg, fit, _, uni) in enumerate(candidates)]
    return _result(evaluated, Budget(10.0), 1, 20)


def test_the_confirmation_pick_is_reported_when_it_differs_from_the_fitness_pick():
    n = 200
    rng = np.random.default_rng(0)
    base = rng.random(n) < 0.6
    better = base | (rng.random(n) < 0.5)            # right wherever base is, and on about half of the rest
    table = {"A": base, "B": better, "U": base & (rng.random(n) < 0.9), "D": better | base}
    candidates = [([[0.5]], 3.0, "A", None),          # the fitness' pick, average on new images
                  ([[0.6]], 2.0, "B", None),          # ranked second by fitness, best on new images
                  ([[0.4]], 1.0, "U", 0.4)]           # the best uniform config
    by_config = {str(c[0]): table[c[2]] for c in candidates}
    by_config[str([[0.0]])] = table["D"]

    def scores(config, split):
        return TopOneScores(by_config[str(config)], np.zeros(n))

    conf = confirm(_result_with(candidates), scores, [[0.0]], 20.0, "metric", "top1", top=2)
    assert conf.pick.config == [[0.6]] and conf.fitness_pick_differs and conf.pick.fitness_rank == 2
    # the best uniform config is re-scored although it is outside the top 2 by fitness
    assert conf.uniform.config == [[0.4]] and conf.uniform.uniform == 0.4
    assert [[0.4]] in [c.config for c in conf.candidates] and len(conf.candidates) == 3
    assert conf.pick.confirm_metric == pytest.approx(better.mean() * 100)
    pick_vs_uniform = conf.comparisons[0]
    assert (pick_vs_uniform.a, pick_vs_uniform.b) == ("pick", "best uniform")
    assert pick_vs_uniform.low > 0 and conf.gain_over_uniform and "beats the best uniform" in conf.verdict
    assert pick_vs_uniform.mcnemar_p == pytest.approx(mcnemar_exact(better, table["U"]))


def test_when_the_interval_holds_zero_the_verdict_says_no_gain_was_shown():
    a = TopOneScores([1, 0, 1, 0, 1, 1], [0.0] * 6)
    b = TopOneScores([0, 1, 1, 0, 1, 1], [0.0] * 6)
    c = compare("pick", a, "best uniform", b)
    assert c.low < 0 < c.high and "within noise" in c.words and c.mcnemar_p == 1.0

    def scores(config, split):
        return {str([[0.5]]): a, str([[0.4]]): b, str([[0.0]]): a}[str(config)]

    conf = confirm(_result_with([([[0.5]], 2.0, None, None), ([[0.4]], 1.0, None, 0.4)]), scores, [[0.0]], 5.0,
                   "metric", "top1", rule="best")
    assert "No gain over uniform was shown at this budget" in conf.verdict and not conf.gain_over_uniform


def test_gain_shown_rule_picks_uniform_unless_the_gain_is_shown():
    """Under --pick gain-shown a candidate that is best on the confirmation split but not shown better than the
    best uniform config is set aside (and reported); one whose gain is shown is picked as under 'best'."""
    a = TopOneScores([1, 0, 1, 0, 1, 1], [0.0] * 6)   # best on confirmation, gain within noise
    b = TopOneScores([0, 1, 1, 0, 1, 0], [0.0] * 6)   # the best uniform config
    scores_of = {str([[0.5]]): a, str([[0.4]]): b, str([[0.0]]): a}

    def scores(config, split):
        return scores_of[str(config)]

    result = _result_with([([[0.5]], 2.0, None, None), ([[0.4]], 1.0, None, 0.4)])
    plain = confirm(result, scores, [[0.0]], 5.0, "metric", "top1", rule="best")
    assert plain.pick.config == [[0.5]] and plain.rule == "best" and plain.set_aside is None
    guarded = confirm(result, scores, [[0.0]], 5.0, "metric", "top1")  # the default rule
    assert guarded.rule == "gain-shown" == DEFAULT_PICK_RULE
    assert guarded.rule == "gain-shown" and guarded.pick.config == [[0.4]] == guarded.uniform.config
    assert guarded.pick.confirm_metric == pytest.approx(50.0) and not guarded.gain_over_uniform
    assert (guarded.comparisons[0].diff, guarded.comparisons[0].low, guarded.comparisons[0].high) == (0, 0, 0)
    aside = guarded.set_aside
    assert aside is not None and (aside.a, aside.b) == ("best candidate", "best uniform")
    assert aside.diff == pytest.approx(plain.comparisons[0].diff) and aside.low < 0 < aside.high
    assert "so the pick is the best uniform config" in guarded.verdict
    assert guarded.candidates[0].config == [[0.5]]  # still listed first: best on the confirmation split

    # a shown gain: the rule changes nothing
    n = 400
    rng = np.random.default_rng(1)
    base = rng.random(n) < 0.5
    better = base | (rng.random(n) < 0.6)
    scores_of = {str([[0.5]]): TopOneScores(better, np.zeros(n)), str([[0.4]]): TopOneScores(base, np.zeros(n)),
                 str([[0.0]]): TopOneScores(better, np.zeros(n))}
    shown = confirm(result, scores, [[0.0]], 5.0, "metric", "top1", rule="gain-shown")
    assert shown.pick.config == [[0.5]] and shown.gain_over_uniform and shown.set_aside is None
    with pytest.raises(ValueError):
        confirm(result, scores, [[0.0]], 5.0, "metric", "top1", rule="maybe")


def test_a_gain_is_shown_only_at_the_family_level_over_the_candidates():
    """The best of 5 non-uniform candidates on the confirmation split is the largest of 5 noisy differences:
    its gain counts only when the interval excludes 0 at the Bonferroni level 1 - 0.05/5 = 99%. Hand-built:
    the best candidate is right on 4 more of 200 images than uniform (never worse). A resample misses all 4
    with probability (1 - 4/200)^200 = 1.8%: above the 0.5% tail, below the 2.5% one, so the plain 95%
    interval lies above 0 and the 99% one starts at 0."""
    from sparsevit_cli.search.stats import family_level
    assert family_level(1) == pytest.approx(0.95) and family_level(5) == pytest.approx(0.99)
    n = 200
    base = np.random.default_rng(3).random(n) < 0.5
    wrong = np.flatnonzero(~base)
    best = base.copy()
    best[wrong[:4]] = True
    rivals = []
    for k in range(4):  # each right on one more image than uniform
        r = base.copy()
        r[wrong[10 + k]] = True
        rivals.append(r)
    configs = [[[0.5]], [[0.2]], [[0.3]], [[0.4]], [[0.7]], [[0.6]]]  # 5 candidates, then uniform 0.6
    table = dict(zip(map(str, configs), [best, *rivals, base]))
    table[str([[0.0]])] = base

    def scores(config, split):
        return TopOneScores(table[str(config)], np.zeros(n))

    result = _result_with([(c, 10.0 - i, None, 0.6 if i == 5 else None) for i, c in enumerate(configs)])
    plain = confirm(result, scores, [[0.0]], 20.0, "metric", "top1", rule="best")
    assert plain.pick.config == [[0.5]] and plain.comparisons[0].diff == pytest.approx(2.0)
    assert plain.comparisons[0].low > 0 and plain.comparisons[0].level == 0.95    # the plain interval: "a gain"
    test = plain.gain_test
    assert test.level == pytest.approx(0.99) and test.low == 0 and not plain.gain_over_uniform
    assert plain.verdict == ("No gain over uniform was shown at this budget: pick - best uniform: +2.00 points "
                             f"(99% CI {test.low:+.2f}..{test.high:+.2f}): within noise, no difference shown; 99% "
                             f"because it is the best of 5 candidates, its 95% CI {plain.comparisons[0].low:+.2f}.."
                             f"{plain.comparisons[0].high:+.2f}.")
    guarded = confirm(result, scores, [[0.0]], 20.0, "metric", "top1", rule="gain-shown")
    assert guarded.pick.config == [[0.6]] and guarded.set_aside is not None and guarded.gain_test.low == 0
    assert "so the pick is the best uniform config" in guarded.verdict and "(99% CI" in guarded.verdict
    assert guarded.set_aside.words.startswith("best candidate - best uniform: +2.00 points (99% CI")
    # two more images for the best candidate: the gain clears the family level too and is picked
    best[wrong[4:6]] = True
    shown = confirm(result, scores, [[0.0]], 20.0, "metric", "top1", rule="gain-shown")
    assert shown.pick.config == [[0.5]] and shown.gain_over_uniform and shown.gain_test.low > 0


def test_tables_stay_readable_when_output_is_not_a_terminal(monkeypatch):
    import io

    monkeypatch.delenv("COLUMNS", raising=False)  # $COLUMNS, when set, is the width asked for

    from rich.table import Table

    from sparsevit_cli.io import PIPE_WIDTH, make_console

    console = make_console(file=io.StringIO())
    assert not console.is_terminal and console.width == PIPE_WIDTH
    table = Table()
    for col in ("model", "top-1 %", "GMACs", "of dense", "ideal", "ms b1", "speedup", "img/s b64", "speedup",
                "Sparsity config", "pick minus it, 95% CI"):
        table.add_column(col)
    table.add_row("SparseViT", "71.3", "0.123", "50%", "2.00x", "3.1", "1.60x", "2000", "1.70x",
                  "0.3|0.4,0.5,0.6", "+0.50 [-0.20, +1.20] p=0.38")
    console.print(table)
    text = console.file.getvalue()
    assert "…" not in text and "pick minus it, 95% CI" in text and "Sparsity config" in text


def test_miou_of_a_resample_is_the_miou_of_its_summed_confusion_matrices():
    from sparsevit_cli.tasks import IoUScores, mean_iou
    import torch

    # two images, two classes: image 0 all right (class 0: 3 px), image 1 confuses class 1 as 0 once
    cms = [np.array([3, 0, 0, 0]), np.array([0, 0, 1, 2])]
    s = IoUScores(cms, 2)
    # summed: [[3, 0], [1, 2]] -> IoU0 = 3 / 4, IoU1 = 2 / 3
    assert s.metric() == pytest.approx((3 / 4 + 2 / 3) / 2 * 100)
    assert s.metric(np.array([2, 0])) == pytest.approx(100.0)  # a resample of image 0 twice
    assert s.metric(np.array([0, 2])) == pytest.approx(mean_iou(torch.tensor([[0.0, 0.0], [2.0, 4.0]])))
