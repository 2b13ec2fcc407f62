"""The evolutionary search engine (DEAP), independent of models: the caller supplies a metric and a cost.

The algorithm is the one of the SparseViT reference (itself from Once-for-All): a population drawn
uniformly from the configs within the budget; each generation keeps the best `parents` by metric and
refills with mutants of random parents and crossover children of random parent pairs, every child
re-drawn until it fits the budget. Written with a DEAP toolbox, like the DEAP examples.

Properties the rest of the tool relies on:

* Reproducible: all randomness comes from one `random.Random(seed)`, never the global `random`, so every
  torch-distributed rank running this with the same seed (and the same, rank-reduced metric) agrees on
  every population; only the rank with `write_files=True` touches the disk.
* Cheap on repeats: a genome's metric and cost are computed once (caches keyed by genome).
* Resumable: after each generation the whole state (population, caches, RNG state) is written
  atomically; a resumed run ends with exactly the result of an uninterrupted one. The state file is the
  truth: history.jsonl is rewritten from it (whole, atomically) when a run resumes, so a kill between the
  two writes can neither duplicate nor cut a line.
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from deap import base, creator, tools

from ..io import atomic_write
from ..errors import UserError
from .space import Config, Genome, SearchSpace

# DEAP's creator adds classes to a module-wide namespace; creating them twice only warns, but
# guarding keeps repeated imports (and tests) quiet.
if not hasattr(creator, "FitnessMax"):
    creator.create("FitnessMax", base.Fitness, weights=(1.0,))
if not hasattr(creator, "Individual"):
    creator.create("Individual", list, fitness=creator.FitnessMax)

STATE_VERSION = 1


@dataclass
class EvolutionSettings:
    population: int = 50        # size of the initial (random) population
    generations: int = 20
    parents: int = 10           # best configs kept each generation
    mutations: int = 25         # mutants of random parents per generation
    crossovers: int = 25        # crossover children of random parent pairs per generation
    mutation_prob: float = 0.1  # per-gene probability of resampling in a mutant
    max_tries: int = 10_000     # draws allowed to find one in-budget config
    seed: int = 0

    def check(self) -> None:
        """UserError on settings that cannot run (named as the setting and as its command-line option)."""
        def name(key: str) -> str:
            return f"evolution setting '{key}' (--{key.replace('_', '-')})"

        for key in ("population", "generations", "parents", "max_tries", "mutations", "crossovers", "seed"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int):
                raise UserError(f"{name(key)} must be an integer, got {value!r}")
        for key in ("population", "generations", "parents", "max_tries"):
            if getattr(self, key) < 1:
                raise UserError(f"{name(key)} must be a positive integer, got {getattr(self, key)!r}")
        for key in ("mutations", "crossovers"):
            if getattr(self, key) < 0:
                raise UserError(f"{name(key)} must be a non-negative integer, got {getattr(self, key)!r}")
        p = self.mutation_prob
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:  # NaN fails too
            raise UserError(f"{name('mutation_prob')} must be a probability in [0, 1], got {p!r}")
        if self.parents > self.population:
            raise UserError(f"{name('parents')} ({self.parents}) exceeds 'population' ({self.population})")


@dataclass
class Budget:
    max_cost: float            # e.g. GMACs or ms
    min_cost: float = 0.0      # lower bound, as --min-macs/--min-latency in the SparseViT reference
    unit: str = "GMACs"

    def contains(self, cost: float) -> bool:
        return self.min_cost <= cost <= self.max_cost

    def describe(self) -> str:
        if self.min_cost > 0:
            return f"[{self.min_cost:.4g}, {self.max_cost:.4g}] {self.unit}"
        return f"{self.max_cost:.4g} {self.unit}"


@dataclass
class SearchResult:
    """Outcome of a search. Candidates are dicts: genome, config, metric, cost, generation."""

    best_genome: Genome
    best_config: Config
    best_metric: float
    best_cost: float
    #: every distinct config evaluated, in evaluation order (`generation` = when first evaluated)
    evaluated: List[Dict[str, Any]]
    #: the best candidates, by metric (then lower cost)
    top: List[Dict[str, Any]]
    budget: Budget
    generations: int = 0


MetricFn = Callable[[Config], float]
CostFn = Callable[[Config], float]


def _key(genome: Sequence[int]) -> Tuple[int, ...]:
    return tuple(int(i) for i in genome)


def _rank(evaluated: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Best first: higher metric, then lower cost, then earlier (a total, reproducible order)."""
    order = sorted(range(len(evaluated)), key=lambda i: (-evaluated[i]["metric"], evaluated[i]["cost"], i))
    return [evaluated[i] for i in order]


def _result(evaluated: List[Dict[str, Any]], budget: Budget, generations: int, top_k: int) -> SearchResult:
    ranked = _rank(evaluated)
    best = ranked[0]
    return SearchResult(best_genome=list(best["genome"]), best_config=best["config"], best_metric=best["metric"],
                        best_cost=best["cost"], evaluated=evaluated, top=ranked[:top_k], budget=budget,
                        generations=generations)


class _Costs:
    """Cached cost of genomes, plus the budget checks every search does before sampling."""

    def __init__(self, space: SearchSpace, cost: CostFn, budget: Budget):
        self.space, self.fn, self.budget = space, cost, budget
        self.cache: Dict[Tuple[int, ...], float] = {}

    def __call__(self, genome: Sequence[int]) -> float:
        k = _key(genome)
        if k not in self.cache:
            value = float(self.fn(self.space.decode(genome)))
            if not math.isfinite(value):
                raise UserError(f"cost of config {self.space.decode(genome)} is {value}")
            self.cache[k] = value
        return self.cache[k]

    def check_feasible(self) -> None:
        b = self.budget
        if not b.min_cost <= b.max_cost:
            raise UserError(f"minimum cost {b.min_cost:.4g} {b.unit} is above the budget {b.max_cost:.4g} {b.unit}")
        cheapest = self(self.space.extreme("sparsest"))
        if cheapest > b.max_cost:
            raise UserError(f"budget {b.max_cost:.4g} {b.unit} is below the cheapest config "
                            f"({cheapest:.4g} {b.unit}, everything at the highest sparsity)")
        densest = self(self.space.extreme("dense"))
        if densest < b.min_cost:
            raise UserError(f"minimum cost {b.min_cost:.4g} {b.unit} is above the most expensive config "
                            f"({densest:.4g} {b.unit}, dense)")


def _in_budget(draw: Callable[[], Genome], costs: _Costs, max_tries: int, what: str):
    """Rejection sampling: re-draw until the config fits the budget, as an Individual."""
    for _ in range(max_tries):
        genome = draw()
        if costs.budget.contains(costs(genome)):
            return creator.Individual(genome)
    raise UserError(f"no {what} within the budget {costs.budget.describe()} after {max_tries} draws; "
                    f"widen the budget or allow more tries")


def _make_toolbox(space: SearchSpace, rng: random.Random, settings: EvolutionSettings, costs: _Costs) -> base.Toolbox:
    toolbox = base.Toolbox()
    # variation operators straight from the space: they return valid genomes by construction
    toolbox.register("random_genome", space.sample, rng)
    toolbox.register("mutate", space.mutate, rng=rng, prob=settings.mutation_prob)
    toolbox.register("mate", space.crossover, rng=rng)
    # ...and budget-aware wrappers that re-draw an operator until its result fits the budget
    toolbox.register("in_budget", _in_budget, costs=costs, max_tries=settings.max_tries)
    toolbox.register("individual", lambda: toolbox.in_budget(toolbox.random_genome, what="initial config"))
    toolbox.register("population", tools.initRepeat, list, toolbox.individual)
    toolbox.register("mutant", lambda parent: toolbox.in_budget(lambda: toolbox.mutate(parent), what="mutant"))
    toolbox.register("child", lambda a, b: toolbox.in_budget(lambda: toolbox.mate(a, b)[0], what="crossover child"))
    toolbox.register("select", tools.selBest)
    return toolbox


# ---- state files
def _rng_to_json(state: tuple) -> list:
    version, internal, gauss_next = state
    return [version, list(internal), gauss_next]


def _rng_from_json(data: list) -> tuple:
    version, internal, gauss_next = data
    return (version, tuple(internal), gauss_next)


def _compat(space: SearchSpace, budget: Budget, settings: EvolutionSettings,
            run: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """What must match between a state file and the run resuming it (generations may grow)."""
    s = asdict(settings)
    s.pop("generations")
    return {"space": space.to_dict()["groups"], "budget": asdict(budget), "settings": s, "run": run or {}}


def _first_difference(old: Any, new: Any) -> str:
    """Where two compat entries differ, in words: 'model: 'a' there, 'b' now'."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new), key=str):
            if old.get(k) != new.get(k):
                return f"{k}: {old.get(k)!r} there, {new.get(k)!r} now"
    return f"{old!r} there, {new!r} now"


def _load_state(path: Path, compat: Dict[str, Any]) -> Dict[str, Any]:
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read search state '{path}': {e}")
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise UserError(f"search state '{path}' is not a state file of this version")
    have = state.get("compat") if isinstance(state.get("compat"), dict) else {}
    for key, want in compat.items():
        want = json.loads(json.dumps(want))
        if want != have.get(key):
            raise UserError(f"search state '{path}' was written with a different {key} "
                            f"({_first_difference(have.get(key), want)}); resume with the same options or use "
                            f"another output folder")
    return state


def _history_text(evaluated: List[Dict[str, Any]]) -> str:
    return "".join(json.dumps(c) + "\n" for c in evaluated)


# ---- fault injection (tests/test_search.py kills `sparsevit search` at these points and resumes it)
PAUSE_ENV = "SPARSEVIT_TEST_PAUSE"            # "point" or "point:n": stop the n-th time (default 1st) at point
PAUSE_FILE_ENV = "SPARSEVIT_TEST_PAUSE_FILE"  # created once stopped, so the test kills at a known place
_passes: Dict[str, int] = {}


def fault_point(point: str) -> None:
    """Test hook: with SPARSEVIT_TEST_PAUSE naming `point`, signal the test and sleep until killed.
    Unset (every real run), it costs one environment lookup."""
    spec = os.environ.get(PAUSE_ENV)
    if not spec or spec.partition(":")[0] != point:
        return
    _passes[point] = _passes.get(point, 0) + 1
    if _passes[point] == int(spec.partition(":")[2] or 1):
        Path(os.environ[PAUSE_FILE_ENV]).write_text(str(os.getpid()))
        time.sleep(3600)


def write_output(path: Path, text: str, point: str) -> None:
    """Write an output file atomically, with fault point `point` halfway through the temporary file (where
    a kill hurts most: the data half written, the target not yet replaced). A failed write is one UserError
    line and leaves the previous file in place."""
    def write(f) -> None:
        f.write(text[: len(text) // 2])
        f.flush()
        fault_point(point)
        f.write(text[len(text) // 2:])
    try:
        atomic_write(path, write)
    except OSError as e:  # full disk, read-only folder, ...: the previous file is intact
        raise UserError(f"cannot write '{path}': {e.strerror or e} (the previous version, if any, is kept)") from None


# ---- the search
def run_evolution(space: SearchSpace, evaluate: MetricFn, cost: CostFn, budget: Budget,
                  settings: EvolutionSettings, state_path: Optional[Path] = None,
                  history_path: Optional[Path] = None,
                  on_generation: Optional[Callable[[int, List[Dict[str, Any]]], None]] = None,
                  progress: bool = True, write_files: bool = True, top_k: int = 20,
                  run: Optional[Dict[str, Any]] = None) -> SearchResult:
    """Search the config with the best `evaluate` whose `cost` lies in `budget`.

    `run` (JSON-able) names what else the metric and cost depend on (model, data, image size, ...): a
    state file written for another run is refused, naming the first difference.

    `evaluate`/`cost` take a config (list of groups of values); higher metric is better. If
    `state_path` exists the search resumes from it. `history_path` gets one JSON line per evaluated
    config (rewritten each generation, so resuming never duplicates lines). `on_generation(gen,
    population)` is called after each generation with the population's candidates (dicts: genome,
    config, metric, cost), on every rank. Only `write_files=True` writes state and history.
    """
    settings.check()
    state_path = Path(state_path) if state_path is not None else None
    history_path = Path(history_path) if history_path is not None else None
    rng = random.Random(settings.seed)
    costs = _Costs(space, cost, budget)
    toolbox = _make_toolbox(space, rng, settings, costs)
    compat = _compat(space, budget, settings, run)

    metrics: Dict[Tuple[int, ...], float] = {}
    evaluated: List[Dict[str, Any]] = []
    generation = 0            # index of the generation `population` belongs to
    population_done = False   # whether `population` has been evaluated already
    population = None
    if state_path is not None and state_path.is_file():
        state = _load_state(state_path, compat)
        try:
            rng.setstate(_rng_from_json(state["rng"]))
            evaluated = state["evaluated"]
            metrics = {_key(c["genome"]): c["metric"] for c in evaluated}
            costs.cache = {_key(g): c for g, c in state["costs"]}
            generation, population_done = state["generation"], state["population_evaluated"]
            population = [creator.Individual(g) for g in state["population"]]
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise UserError(f"search state '{state_path}' is damaged ({type(e).__name__} {e}); "
                            f"use another output folder") from None
        if write_files and history_path is not None:
            # the run may have died after writing history, before the state: history follows the state
            write_output(history_path, _history_text(evaluated), "history")

    costs.check_feasible()
    if population is None:
        population = toolbox.population(n=settings.population)

    def save() -> None:
        """Checkpoint: everything needed to continue exactly where this run is now."""
        if not write_files:
            return
        if history_path is not None:
            write_output(history_path, _history_text(evaluated), "history")
        if state_path is not None:
            state = {"version": STATE_VERSION, "compat": compat, "generation": generation,
                     "population": [list(p) for p in population], "population_evaluated": population_done,
                     "evaluated": evaluated, "costs": [[list(k), v] for k, v in costs.cache.items()],
                     "rng": _rng_to_json(rng.getstate())}
            write_output(state_path, json.dumps(state), "state")

    bar = _Progress(settings.generations, budget.unit) if progress else None
    try:
        if bar is not None:
            bar.update(generation, evaluated)
        while True:
            if not population_done:
                # evaluate: each distinct genome once over the whole search
                for ind in population:
                    k = _key(ind)
                    if k not in metrics:
                        config = space.decode(ind)
                        value = float(evaluate(config))
                        if math.isnan(value):
                            raise UserError(f"the metric of config {config} is NaN")
                        metrics[k] = value
                        evaluated.append({"genome": list(k), "config": config, "metric": value,
                                          "cost": costs(ind), "generation": generation})
                        fault_point("evaluate")
                        if bar is not None:
                            bar.update(generation, evaluated)
                population_done = True
                if on_generation is not None:
                    on_generation(generation, [{"genome": list(ind), "config": space.decode(ind),
                                                "metric": metrics[_key(ind)], "cost": costs(ind)}
                                               for ind in population])
                if generation + 1 >= settings.generations:
                    save()  # finished; a resume with more generations breeds on from here
            if generation + 1 >= settings.generations:
                break
            # select the best distinct parents, then breed the next generation from them
            for ind in population:
                ind.fitness.values = (metrics[_key(ind)],)
            parents = toolbox.select(_distinct(population), settings.parents)
            mutants = [toolbox.mutant(rng.choice(parents)) for _ in range(settings.mutations)]
            children = [toolbox.child(*_pair(parents, rng)) for _ in range(settings.crossovers)]
            population = [creator.Individual(p) for p in parents] + mutants + children
            generation, population_done = generation + 1, False
            save()
            if bar is not None:
                bar.update(generation, evaluated)
        if bar is not None:
            bar.update(settings.generations, evaluated)
    finally:
        if bar is not None:
            bar.stop()
    return _result(evaluated, budget, max(settings.generations, generation + 1), top_k)


def _distinct(population: List[list]) -> List[list]:
    """First occurrence of each genome, so duplicates cannot crowd out other parents."""
    seen: set = set()
    out = []
    for ind in population:
        if _key(ind) not in seen:
            seen.add(_key(ind))
            out.append(ind)
    return out


def _pair(parents: List[list], rng: random.Random) -> Tuple[list, list]:
    if len(parents) == 1:
        return parents[0], parents[0]
    a, b = rng.sample(parents, 2)
    return a, b


class _Progress:
    """A rich progress bar over generations; the label shows the evaluations and the best so far."""

    def __init__(self, generations: int, unit: str):
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
        self.unit = unit
        self.generations = generations
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                 TextColumn("{task.completed}/{task.total} generations"), TimeElapsedColumn())
        self.task = self.progress.add_task("search", total=generations)
        self.progress.start()

    def update(self, generation: int, evaluated: List[Dict[str, Any]]) -> None:
        label = f"{len(evaluated)} configs evaluated"
        if evaluated:
            best = max(evaluated, key=lambda c: c["metric"])
            label += f", best {best['metric']:.4g} @ {best['cost']:.4g} {self.unit}"
        self.progress.update(self.task, completed=min(generation, self.generations), description=label)

    def stop(self) -> None:
        self.progress.stop()


# ---- baseline
def random_search(space: SearchSpace, evaluate: MetricFn, cost: CostFn, budget: Budget, n: int, seed: int = 0,
                  max_tries: int = 10_000, top_k: int = 20) -> SearchResult:
    """Best of `n` uniform in-budget draws (repeats are evaluated once): the baseline evolution must beat."""
    if n < 1:
        raise UserError(f"random search needs at least one sample, got {n}")
    rng = random.Random(seed)
    costs = _Costs(space, cost, budget)
    costs.check_feasible()
    seen: set = set()
    evaluated: List[Dict[str, Any]] = []
    for _ in range(n):
        genome = list(_in_budget(lambda: space.sample(rng), costs, max_tries, "random config"))
        if _key(genome) in seen:
            continue
        seen.add(_key(genome))
        config = space.decode(genome)
        evaluated.append({"genome": genome, "config": config, "metric": float(evaluate(config)),
                          "cost": costs(genome), "generation": 0})
    return _result(evaluated, budget, 1, top_k)


# ---- Pareto front
def pareto_front(points: Sequence[Tuple[float, float]]) -> List[int]:
    """Indices of the (cost, metric) points no other point beats (lower cost, higher metric), by cost.

    Of identical points only the first is kept, so the front draws as a clean staircase.
    """
    order = sorted((i for i, (c, m) in enumerate(points) if not (math.isnan(c) or math.isnan(m))),
                   key=lambda i: (points[i][0], -points[i][1], i))
    front: List[int] = []
    best = -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def plot_pareto(result: SearchResult, path: Path, metric_name: str = "metric", title: Optional[str] = None) -> Path:
    """PNG of every candidate (cost vs metric, coloured by generation), the Pareto front and the budget."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    unit = result.budget.unit
    costs = [c["cost"] for c in result.evaluated]
    values = [c["metric"] for c in result.evaluated]
    gens = [c["generation"] for c in result.evaluated]

    fig = Figure(figsize=(7, 4.5), dpi=120)
    FigureCanvasAgg(fig)  # Agg canvas without pyplot: no global backend state, works headless
    ax = fig.add_subplot(1, 1, 1)
    dots = ax.scatter(costs, values, c=gens, cmap="viridis", s=14, alpha=0.8, label="candidates")
    if max(gens, default=0) > 0:
        fig.colorbar(dots, ax=ax, label="generation")
    front = pareto_front(list(zip(costs, values)))
    if front:
        ax.plot([costs[i] for i in front], [values[i] for i in front], "-o", color="tab:red", ms=4, lw=1.5,
                drawstyle="steps-post", label="Pareto front")
    ax.plot([result.best_cost], [result.best_metric], "*", color="gold", mec="black", ms=14, label="best")
    ax.axvline(result.budget.max_cost, ls="--", color="gray", lw=1, label=f"budget ({result.budget.max_cost:.4g} {unit})")
    if result.budget.min_cost > 0:
        ax.axvline(result.budget.min_cost, ls=":", color="gray", lw=1, label="minimum cost")
    ax.set_xlabel(f"cost ({unit})")
    ax.set_ylabel(metric_name)
    ax.set_title(title or f"search: {len(result.evaluated)} configs evaluated")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()

    atomic_write(path, lambda f: fig.savefig(f, format="png"), binary=True)
    return path
