"""No lost work, visible progress: every scored network is journaled the moment it is scored, so a search
interrupted anywhere (generation 0, an exhaustive enumeration, mid-generation) and run again scores no network
twice and ends with the uninterrupted result; progress lines appear, throttled, when output is not a terminal."""
from __future__ import annotations

import io
import json
import math

import pytest
from rich.console import Console

from sparsevit_cli.io import ProgressReport, append_durable, read_journal
from sparsevit_cli.search.evolution import Budget, EvolutionSettings, run_evolution
from sparsevit_cli.search.space import SearchSpace

CHOICES = [0.0, 0.2, 0.4, 0.5, 0.6, 0.8]


def space() -> SearchSpace:
    return SearchSpace.from_dict({"method": "sparsevit", "choices": CHOICES, "groups": [{"genes": 1}, {"genes": 2}]})


def kept(config):
    return [[max(1, math.floor((1 - s) * 4 + 0.5)) for s in g] for g in config]


def cost(config) -> float:
    return sum(k for g in kept(config) for k in g)


def score(config) -> float:
    return -sum((k - 2.5) ** 2 for g in kept(config) for k in g) + 0.01 * kept(config)[0][0]


class Interrupting:
    """A metric that counts its calls (by network) and raises KeyboardInterrupt (Ctrl-C) at call `stop_at`."""

    def __init__(self, stop_at=None):
        self.stop_at, self.calls = stop_at, []

    def __call__(self, config):
        if self.stop_at is not None and len(self.calls) == self.stop_at:
            raise KeyboardInterrupt
        self.calls.append(json.dumps(kept(config)))
        return score(config)

    def many(self, configs):
        return [self(c) for c in configs]


EXHAUSTIVE = EvolutionSettings(population=10, generations=5, parents=3, mutations=5, crossovers=5, seed=0)


@pytest.mark.parametrize("many", [False, True])
@pytest.mark.parametrize("stop_at", [0, 3, 11])
def test_ctrl_c_in_an_exhaustive_search_then_rerun_scores_no_network_twice(tmp_path, many, stop_at):
    budget = Budget(max_cost=9.0)
    full = run_evolution(space(), score, cost, budget, EXHAUSTIVE, progress=False, network=kept)
    assert full.exhaustive and len(full.evaluated) > 11

    state, history = tmp_path / "state.json", tmp_path / "history.jsonl"
    first = Interrupting(stop_at)
    kw = dict(progress=False, network=kept, state_path=state, history_path=history)
    with pytest.raises(KeyboardInterrupt):
        run_evolution(space(), first, cost, budget, EXHAUSTIVE,
                      **({"evaluate_many": first.many, "chunk": 1} if many else {}), **kw)
    assert state.exists()  # written before generation 0 was scored
    assert [r["network"] for r in read_journal(history)] == [json.dumps(k) for k in map(json.loads, first.calls)]
    again = Interrupting()
    resumed = run_evolution(space(), again, cost, budget, EXHAUSTIVE,
                            **({"evaluate_many": again.many, "chunk": 4} if many else {}), **kw)
    calls = first.calls + again.calls
    assert len(calls) == len(set(calls)) == len(full.evaluated)  # every network scored exactly once
    assert sorted(c["network"] for c in resumed.evaluated) == sorted(c["network"] for c in full.evaluated)
    assert resumed.best_config == full.best_config and resumed.best_metric == full.best_metric
    if not many:
        assert resumed.evaluated == full.evaluated
    lines = history.read_text().splitlines()
    assert len(lines) == len(set(lines)) == len(full.evaluated)


def test_resume_mid_generation_keeps_every_finished_score_and_survives_a_torn_line(tmp_path):
    budget = Budget(max_cost=10.0)
    settings = EvolutionSettings(population=6, generations=4, parents=3, mutations=3, crossovers=3, seed=1)
    kw = dict(progress=False, network=kept, index_limit=0)
    full = run_evolution(space(), score, cost, budget, settings, **kw)
    state, history = tmp_path / "state.json", tmp_path / "history.jsonl"
    kw.update(state_path=state, history_path=history)
    first = Interrupting(stop_at=8)  # generation 1 (6 networks in generation 0), two of it scored
    with pytest.raises(KeyboardInterrupt):
        run_evolution(space(), first, cost, budget, settings, **kw)
    saved = json.loads(state.read_text())
    assert saved["generation"] == 1 and len(saved["evaluated"]) == 6
    journal = read_journal(history)
    assert len(journal) == 8
    append_durable(history, '{"genome": [1, 2')  # a kill mid-append tears the last line
    again = Interrupting()
    resumed = run_evolution(space(), again, cost, budget, settings, **kw)
    assert len(again.calls) == len(full.evaluated) - 8 and not set(again.calls) & set(first.calls)
    for entry in journal:  # the finished networks keep their scores
        assert next(c for c in resumed.evaluated if c["network"] == entry["network"])["metric"] == entry["metric"]
    assert resumed.evaluated == full.evaluated
    assert history.read_text() == "".join(json.dumps(c) + "\n" for c in full.evaluated)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_plain_progress_lines_are_throttled_and_carry_counts_and_eta():
    out, clock = io.StringIO(), Clock()
    console = Console(file=out, width=200)
    assert not console.is_terminal
    report = ProgressReport("search", console=console, interval_s=30.0, clock=clock)
    report.add("networks", 10)
    report.add("images", 100)
    for i in range(10):
        report.update(1, completed=10 * (i + 1))
        clock.now += 12.0  # 12 s per network: a line every 30 s at most
        report.update(0, completed=i + 1, note=f"best {i}")
    report.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "search: 0/10 networks (0%), 10/100 images | 0s elapsed"  # the first update
    # then at 36 s, 72 s and 108 s (never two within 30 s), and the last when the stage ends
    assert lines[1] == "search: 3/10 networks (30%), 30/100 images, best 2 | 36s elapsed, ETA 1m24s"
    assert len(lines) == 5 and "| 1m12s elapsed" in lines[2] and "| 1m48s elapsed" in lines[3]
    assert lines[-1] == "search: 10/10 networks (100%), 100/100 images, best 9 | 2m00s elapsed"


def test_a_search_with_output_in_a_file_logs_progress_lines():
    out, clock = io.StringIO(), Clock()
    report = ProgressReport("search", console=Console(file=out, width=200), interval_s=0.0, clock=clock)

    def metric(config):
        clock.now += 1.0
        return score(config)
    result = run_evolution(space(), metric, cost, Budget(max_cost=9.0), EXHAUSTIVE, progress=report, network=kept)
    lines = out.getvalue().splitlines()
    n = len(result.evaluated)
    assert len(lines) == n + 1 and lines[0].startswith(f"search: 1/{n} networks")
    assert lines[-2].startswith(f"search: {n}/{n} networks (100%)")
