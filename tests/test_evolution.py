"""Evolution engine on a synthetic problem: budget always respected, beats random search, resumable,
reproducible; Pareto front and plot."""
from __future__ import annotations

import json
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparsevit_cli.errors import UserError
from sparsevit_cli.search.evolution import (Budget, EvolutionSettings, pareto_front, plot_pareto, random_search,
                                            run_evolution)
from sparsevit_cli.search.space import load_space

WEIGHTS = [4.0, 2.0, 1.0, 0.5]  # early stages are the expensive ones, as in Swin at high resolution


def cost(config) -> float:
    """Synthetic 'GMACs': dense parts of each group, weighted per group (monotone in sparsity)."""
    return sum(w * sum(1.0 - v for v in g) for w, g in zip(WEIGHTS, config))


def make_metric(target):
    def metric(config) -> float:
        return -sum((v - t) ** 2 for g, tg in zip(config, target) for v, t in zip(g, tg))
    return metric


SWIN_S_TARGET = [[0.2], [0.3], [0.1, 0.2, 0.3, 0.4, 0.4, 0.5, 0.6, 0.7, 0.8], [0.5]]
SWIN_T_TARGET = [[0.1], [0.3], [0.4, 0.5, 0.7], [0.6]]
SMALL = EvolutionSettings(population=16, generations=6, parents=4, mutations=8, crossovers=8, seed=0)


def small(**kw) -> EvolutionSettings:
    return EvolutionSettings(**{**SMALL.__dict__, **kw})


class Counting:
    """An evaluate() that counts calls, remembers configs and can fail after `fail_after` calls."""

    def __init__(self, fn, fail_after: int | None = None):
        self.fn, self.fail_after, self.calls = fn, fail_after, []

    def __call__(self, config):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise RuntimeError("interrupted")
        self.calls.append(config)
        return self.fn(config)


# ---- (a) the budget is never violated
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hi=st.floats(0.35, 1.0), width=st.one_of(st.none(), st.floats(0.15, 0.3)), seed=st.integers(0, 10_000))
def test_every_evaluated_config_is_within_budget(hi, width, seed):
    space = load_space("swin_t")
    cheapest, dense = cost(space.decode(space.extreme("sparsest"))), cost(space.decode(space.extreme("dense")))
    max_cost = cheapest + hi * (dense - cheapest)
    min_cost = 0.0 if width is None else max_cost - width * (dense - cheapest)
    budget = Budget(max_cost=max_cost, min_cost=min_cost)
    evaluate = Counting(make_metric(SWIN_T_TARGET))
    result = run_evolution(space, evaluate, cost, budget, small(seed=seed, generations=4), progress=False)
    assert evaluate.calls, "nothing was evaluated"
    for config in evaluate.calls:
        space.encode(config)  # valid
        assert min_cost <= cost(config) <= max_cost
    assert len(evaluate.calls) == len(result.evaluated) == len({tuple(c["genome"]) for c in result.evaluated})
    assert min_cost <= result.best_cost <= max_cost


# ---- (b) evolution beats random search with the same number of evaluations
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_evolution_beats_random_search(seed):
    space = load_space("swin_s")  # ~17.7M configs, one clear optimum
    budget = Budget(max_cost=cost(SWIN_S_TARGET) + 0.5)
    metric = make_metric(SWIN_S_TARGET)
    evo = run_evolution(space, metric, cost, budget,
                        EvolutionSettings(population=30, generations=10, parents=8, mutations=15, crossovers=15,
                                          seed=seed), progress=False)
    rnd = random_search(space, metric, cost, budget, n=len(evo.evaluated), seed=seed)
    assert len(rnd.evaluated) <= len(evo.evaluated)
    assert evo.best_metric > rnd.best_metric
    assert evo.best_metric > -0.1  # close to the optimum (0)
    assert evo.top[0]["metric"] == evo.best_metric and evo.top == sorted(evo.top, key=lambda c: -c["metric"])


# ---- (c) impossible budgets are user errors, before anything is evaluated
def test_infeasible_budgets_raise_user_errors():
    space = load_space("swin_t")
    evaluate = Counting(make_metric(SWIN_T_TARGET))
    cheapest = cost(space.decode(space.extreme("sparsest")))
    with pytest.raises(UserError, match=rf"budget 1\.5 GMACs is below the cheapest config \({cheapest:.4g} GMACs"):
        run_evolution(space, evaluate, cost, Budget(max_cost=1.5), SMALL, progress=False)
    with pytest.raises(UserError, match="above the most expensive config"):
        run_evolution(space, evaluate, cost, Budget(max_cost=20, min_cost=10), SMALL, progress=False)
    with pytest.raises(UserError, match="above the budget"):
        run_evolution(space, evaluate, cost, Budget(max_cost=5, min_cost=6), SMALL, progress=False)
    with pytest.raises(UserError, match="below the cheapest"):
        random_search(space, evaluate, cost, Budget(max_cost=1.0), n=5)
    # feasible, but a hair-thin window: rejection sampling gives up with a clear message
    with pytest.raises(UserError, match=r"no initial config within the budget .* after 50 draws"):
        run_evolution(space, evaluate, cost, Budget(max_cost=5.0001, min_cost=5.0), small(max_tries=50), progress=False)
    with pytest.raises(UserError, match="'parents'"):
        run_evolution(space, evaluate, cost, Budget(max_cost=8), small(parents=40), progress=False)
    assert evaluate.calls == []


# ---- (d) resume after an interruption == uninterrupted run
def test_resume_after_interruption_matches_uninterrupted_run(tmp_path):
    space = load_space("swin_t")
    budget = Budget(max_cost=6.0)
    metric = make_metric(SWIN_T_TARGET)

    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    full = run_evolution(space, metric, cost, budget, SMALL, state_path=full_dir / "state.json",
                         history_path=full_dir / "history.jsonl", progress=False)

    interrupted = Counting(metric, fail_after=40)  # dies inside generation 2 or 3
    with pytest.raises(RuntimeError, match="interrupted"):
        run_evolution(space, interrupted, cost, budget, SMALL, state_path=cut_dir / "state.json",
                      history_path=cut_dir / "history.jsonl", progress=False)
    saved = json.loads((cut_dir / "state.json").read_text())
    assert 1 <= saved["generation"] < SMALL.generations and not saved["population_evaluated"]
    # every network scored before the interruption is journaled, the state a generation behind
    assert len(saved["evaluated"]) < len((cut_dir / "history.jsonl").read_text().splitlines()) == 40

    resumed_eval = Counting(metric)
    resumed = run_evolution(space, resumed_eval, cost, budget, SMALL, state_path=cut_dir / "state.json",
                            history_path=cut_dir / "history.jsonl", progress=False)
    # no network is scored twice: neither the finished generations nor the scored part of the cut one
    assert len(resumed_eval.calls) == len(resumed.evaluated) - 40
    assert resumed.best_genome == full.best_genome and resumed.best_metric == full.best_metric
    assert resumed.evaluated == full.evaluated and resumed.top == full.top
    history = (cut_dir / "history.jsonl").read_text()
    assert history == (full_dir / "history.jsonl").read_text()
    lines = [json.loads(line) for line in history.splitlines()]
    assert len(lines) == len(full.evaluated) == len({tuple(r["genome"]) for r in lines})
    assert set(lines[0]) == {"genome", "config", "network", "metric", "cost", "generation", "uniform"}

    # resuming a finished search evaluates nothing and gives the same answer
    again_eval = Counting(metric)
    again = run_evolution(space, again_eval, cost, budget, SMALL, state_path=cut_dir / "state.json", progress=False)
    assert again_eval.calls == [] and again.evaluated == full.evaluated

    # ...and resuming it with more generations continues exactly as a longer run would have
    longer = run_evolution(space, metric, cost, budget, small(generations=8), progress=False)
    extended = run_evolution(space, metric, cost, budget, small(generations=8), state_path=cut_dir / "state.json",
                             progress=False)
    assert extended.evaluated == longer.evaluated


def test_resume_refuses_a_state_from_other_settings(tmp_path):
    space = load_space("swin_t")
    state = tmp_path / "state.json"
    run_evolution(space, make_metric(SWIN_T_TARGET), cost, Budget(6.0), small(generations=2), state_path=state,
                  progress=False)
    with pytest.raises(UserError, match="different settings"):
        run_evolution(space, make_metric(SWIN_T_TARGET), cost, Budget(6.0), small(seed=5), state_path=state,
                      progress=False)
    with pytest.raises(UserError, match="different budget"):
        run_evolution(space, make_metric(SWIN_T_TARGET), cost, Budget(7.0), SMALL, state_path=state, progress=False)


# ---- (e) reproducible; rank-friendly
def test_same_seed_same_result_and_only_writer_writes(tmp_path):
    space = load_space("swin_t")
    budget = Budget(max_cost=6.0, min_cost=3.0)
    metric = make_metric(SWIN_T_TARGET)
    gens = []
    a = run_evolution(space, metric, cost, budget, SMALL, progress=False,
                      on_generation=lambda g, pop: gens.append((g, len(pop))))
    b = run_evolution(space, metric, cost, budget, SMALL, state_path=tmp_path / "s.json",
                      history_path=tmp_path / "h.jsonl", progress=False, write_files=False)  # a non-zero rank
    c = run_evolution(space, metric, cost, budget, small(seed=1), progress=False)
    assert a.evaluated == b.evaluated and a.best_genome == b.best_genome
    assert a.evaluated != c.evaluated
    assert list(tmp_path.iterdir()) == []
    assert gens == [(0, 16)] + [(g, 4 + 8 + 8) for g in range(1, SMALL.generations)]


def test_progress_bar_runs(capsys):
    space = load_space("swin_t")
    r = run_evolution(space, make_metric(SWIN_T_TARGET), cost, Budget(6.0), small(generations=2), progress=True)
    assert r.best_cost <= 6.0


# ---- (f) Pareto front and plot
def test_pareto_front_on_hand_points():
    points = [(1, 0.5), (2, 0.4), (2, 0.7), (3, 0.7), (0.5, 0.1), (4, 0.9), (2, 0.7), (5, 0.8)]
    assert pareto_front(points) == [4, 0, 2, 5]
    assert pareto_front([]) == []
    assert pareto_front([(1.0, 1.0)]) == [0]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), max_size=25))
def test_pareto_front_is_the_set_of_non_dominated_points(points):
    front = pareto_front(points)

    def dominates(q, p):
        return q[0] <= p[0] and q[1] >= p[1] and q != p
    expected = {p for p in points if not any(dominates(q, p) for q in points)}
    assert {points[i] for i in front} == expected
    assert len(front) == len(expected)  # one index per distinct point
    assert [points[i][0] for i in front] == sorted(points[i][0] for i in front)


def test_plot_pareto_writes_a_png(tmp_path):
    import matplotlib.image

    space = load_space("swin_t")
    result = run_evolution(space, make_metric(SWIN_T_TARGET), cost, Budget(6.0, min_cost=2.0), SMALL, progress=False)
    path = plot_pareto(result, tmp_path / "plots" / "pareto.png", metric_name="top-1 (%)")
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert matplotlib.image.imread(path).ndim == 3
    assert [p.name for p in path.parent.iterdir()] == ["pareto.png"]  # no temporary files left


@pytest.mark.parametrize("kw,needle", [
    ({"mutation_prob": float("nan")}, "'mutation_prob' (--mutation-prob) must be a probability in [0, 1], got nan"),
    ({"mutation_prob": 1.5}, "must be a probability in [0, 1], got 1.5"),
    ({"mutation_prob": -0.1}, "must be a probability in [0, 1]"),
    ({"mutation_prob": True}, "must be a probability in [0, 1]"),
    ({"population": 0}, "'population' (--population) must be a positive integer"),
    ({"generations": 2.5}, "'generations' (--generations) must be an integer"),
    ({"mutations": -1}, "'mutations' (--mutations) must be a non-negative integer"),
    ({"parents": 20}, "'parents' (--parents) (20) exceeds 'population' (16)"),
])
def test_settings_out_of_range_name_the_setting_and_option(kw, needle):
    with pytest.raises(UserError) as e:
        small(**kw).check()
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_resume_rewrites_history_from_the_state(tmp_path):
    """A kill between the history write and the state write leaves history.jsonl ahead of the state (or, with
    a writer that appends, with a duplicate or cut line): the resumed run takes the state as the truth."""
    space, budget, metric = load_space("swin_t"), Budget(6.0), make_metric(SWIN_T_TARGET)
    full = tmp_path / "full"
    run_evolution(space, metric, cost, budget, small(generations=3), state_path=full / "state.json",
                  history_path=full / "history.jsonl", progress=False)
    cut = tmp_path / "cut"
    run_evolution(space, metric, cost, budget, small(generations=2), state_path=cut / "state.json",
                  history_path=cut / "history.jsonl", progress=False)
    lines = (cut / "history.jsonl").read_text().splitlines(keepends=True)
    (cut / "history.jsonl").write_text("".join(lines + lines[-1:]) + lines[0][:7])  # duplicate + partial line
    run_evolution(space, metric, cost, budget, small(generations=3), state_path=cut / "state.json",
                  history_path=cut / "history.jsonl", progress=False)
    assert (cut / "history.jsonl").read_text() == (full / "history.jsonl").read_text()
    # resuming a finished search also repairs its history
    (cut / "history.jsonl").write_text("garbage")
    run_evolution(space, metric, cost, budget, small(generations=3), state_path=cut / "state.json",
                  history_path=cut / "history.jsonl", progress=False)
    assert (cut / "history.jsonl").read_text() == (full / "history.jsonl").read_text()


def test_fault_point_is_inert_unless_named(tmp_path, monkeypatch):
    from sparsevit_cli.search import evolution
    marker = tmp_path / "paused"
    monkeypatch.setenv(evolution.PAUSE_ENV, "state:2")
    monkeypatch.setenv(evolution.PAUSE_FILE_ENV, str(marker))
    monkeypatch.setattr(evolution, "_passes", {})
    slept = []
    monkeypatch.setattr(evolution.time, "sleep", slept.append)
    evolution.write_output(tmp_path / "a.txt", "hello world", "history")
    evolution.fault_point("state")
    assert not marker.exists() and not slept  # another point, then the first pass of this one
    evolution.write_output(tmp_path / "b.txt", "hello world", "state")
    assert marker.exists() and slept and (tmp_path / "b.txt").read_text() == "hello world"
    assert not list(tmp_path.glob(".*.tmp"))


def test_resume_refuses_another_run_naming_both_and_a_damaged_state(tmp_path):
    space, budget, metric = load_space("swin_t"), Budget(6.0), make_metric(SWIN_T_TARGET)
    state = tmp_path / "state.json"
    run_evolution(space, metric, cost, budget, small(generations=2), state_path=state, progress=False,
                  run={"model": "swin_a", "data": "/d"})
    with pytest.raises(UserError, match=r"different run \(model: 'swin_a' there, 'swin_b' now\)"):
        run_evolution(space, metric, cost, budget, small(generations=3), state_path=state, progress=False,
                      run={"model": "swin_b", "data": "/d"})
    data = json.loads(state.read_text())
    del data["rng"]
    state.write_text(json.dumps(data))
    with pytest.raises(UserError, match="is damaged"):
        run_evolution(space, metric, cost, budget, small(generations=3), state_path=state, progress=False,
                      run={"model": "swin_a", "data": "/d"})
