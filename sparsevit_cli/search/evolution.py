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
* Resumable, losing no scored network: the whole state (population, caches, RNG state) is written
  atomically when a population is drawn or bred (so also before generation 0 is scored), and every network
  is appended to history.jsonl (fsync'd) the moment it is scored. A resumed run takes the state, adds the
  journaled networks of the generation it was scoring and scores only the others, so no network is ever
  scored twice (in generation 0 and in an exhaustive enumeration too), and it ends with exactly the result
  of an uninterrupted one. history.jsonl is then rewritten (whole, atomically) from that merge, so a kill
  mid-append can neither duplicate nor cut a line.
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from deap import base, creator, tools

from ..io import ProgressReport, append_durable, atomic_write, read_journal
from ..errors import UserError
from ..layers import EVAL_CHUNK
from .space import Config, Genome, SearchSpace

# DEAP's creator adds classes to a module-wide namespace; creating them twice only warns, but
# guarding keeps repeated imports (and tests) quiet.
if not hasattr(creator, "FitnessMax"):
    creator.create("FitnessMax", base.Fitness, weights=(1.0,))
if not hasattr(creator, "Individual"):
    creator.create("Individual", list, fitness=creator.FitnessMax)

STATE_VERSION = 2  # 2: candidates keyed by the network they run


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
    """Outcome of a search. Candidates are dicts: genome, config, network (what it executes), metric (the
    fitness), cost, generation, uniform (the value of a uniform config, else None), scores (what else the
    metric function reported, e.g. top-1 beside a log-probability fitness)."""

    best_genome: Genome
    best_config: Config
    best_metric: float
    best_cost: float
    #: every distinct network evaluated, in evaluation order (`generation` = when first evaluated)
    evaluated: List[Dict[str, Any]]
    #: the best candidates, by metric (then lower cost)
    top: List[Dict[str, Any]]
    budget: Budget
    generations: int = 0
    #: networks evaluated (calls of the metric): never more than one per network
    evaluations: int = 0
    #: drawn configs that execute a network already evaluated or drawn, so were not evaluated (re-drawn)
    repeats_skipped: int = 0
    #: distinct networks inside the budget (None: the space is too large to count them)
    distinct_in_budget: Optional[int] = None
    #: the evaluations the settings allow (first population + children of every later generation)
    allowance: int = 0
    #: every distinct network in the budget was evaluated (the space fit the allowance)
    exhaustive: bool = False
    #: the uniform configs inside the budget (all in the first population), best first
    uniform: List[Dict[str, Any]] = field(default_factory=list)


#: the metric function returns the fitness, or a dict {"fitness": value, <other scores>...} (with "images":
#: the number of fitness images it was scored on when racing stopped it early)
MetricFn = Callable[[Config], Union[float, Dict[str, float]]]
#: scores several networks at once (e.g. sharing their common prefixes): one MetricFn result per config
ManyMetricFn = Callable[[List[Config]], List[Union[float, Dict[str, float]]]]
#: networks `evaluate_many` gets per call (`layers.EVAL_CHUNK`): journaled when the call returns
CostFn = Callable[[Config], float]
NetworkFn = Callable[[Config], Any]

#: spaces with at most this many genomes are indexed by network (every genome's network computed once)
INDEX_LIMIT = 200_000
#: ... and when they have at most this many networks, the cost of each is computed to count those in budget
COUNT_LIMIT = 20_000
#: draws a mutant or crossover child gets to run a new network inside the budget
CHILD_TRIES = 100


def _key(genome: Sequence[int]) -> Tuple[int, ...]:
    return tuple(int(i) for i in genome)


def _rank(evaluated: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Best first: fully scored before raced out (scored on a first slice only, `images` set), then higher
    metric, then lower cost, then earlier (a total, reproducible order)."""
    order = sorted(range(len(evaluated)), key=lambda i: (evaluated[i].get("images") is not None,
                                                         -evaluated[i]["metric"], evaluated[i]["cost"], i))
    return [evaluated[i] for i in order]


def _result(evaluated: List[Dict[str, Any]], budget: Budget, generations: int, top_k: int,
            **extra: Any) -> SearchResult:
    ranked = _rank(evaluated)
    best = ranked[0]
    return SearchResult(best_genome=list(best["genome"]), best_config=best["config"], best_metric=best["metric"],
                        best_cost=best["cost"], evaluated=evaluated, top=ranked[:top_k], budget=budget,
                        generations=generations, uniform=[c for c in ranked if c.get("uniform") is not None],
                        evaluations=len(evaluated), **extra)


class _Networks:
    """What each genome executes (its network key), the cost of each network (cached), the budget checks,
    and, for spaces small enough, the index of every distinct network (and of those inside the budget)."""

    def __init__(self, space: SearchSpace, cost: CostFn, budget: Budget, network: Optional[NetworkFn]):
        self.space, self.fn, self.budget, self.network = space, cost, budget, network
        self.keys: Dict[Tuple[int, ...], str] = {}
        self.cache: Dict[str, float] = {}
        self.index: Optional[Dict[str, Genome]] = None       # network -> its first genome (lexicographic)
        self.in_budget: Optional[List[str]] = None            # networks inside the budget, in index order

    def key(self, genome: Sequence[int]) -> str:
        k = _key(genome)
        if k not in self.keys:
            self.keys[k] = json.dumps(self.network(self.space.decode(genome)) if self.network else list(k))
        return self.keys[k]

    def __call__(self, genome: Sequence[int]) -> float:
        k = self.key(genome)
        if k not in self.cache:
            value = float(self.fn(self.space.decode(genome)))
            if not math.isfinite(value):
                raise UserError(f"cost of config {self.space.decode(genome)} is {value}")
            self.cache[k] = value
        return self.cache[k]

    def fits(self, genome: Sequence[int]) -> bool:
        return self.budget.contains(self(genome))

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

    def build_index(self, index_limit: int, count_limit: int) -> None:
        """Index the space's networks (when it has at most `index_limit` genomes) and count those inside the
        budget (when there are at most `count_limit` networks: each costs one cost call)."""
        if self.space.num_configs() > index_limit:
            return
        if self.network is None and self.space.num_configs() > count_limit:
            return  # every genome its own network, too many to cost: an index would tell nothing new
        index: Dict[str, Genome] = {}
        for genome in self.space.all_genomes():
            index.setdefault(self.key(genome), genome)
        self.index = index
        if len(index) <= count_limit:
            self.in_budget = [k for k, g in index.items() if self.fits(g)]
            if not self.in_budget:
                raise UserError(f"no config lies within the budget {self.budget.describe()}: widen it")

    def uniform(self) -> List[Tuple[float, Genome]]:
        """(value, genome) of every distinct uniform config inside the budget, densest first: a value every
        searched group offers, set on every searched gene."""
        out, seen = [], set()
        for v in self.space.uniform_values():
            genome = self.space.uniform(v)
            if self.key(genome) not in seen and self.fits(genome):
                seen.add(self.key(genome))
                out.append((v, genome))
        return out


class _Draws:
    """Draws of networks no candidate runs yet: uniform over the distinct networks inside the budget when the
    space is indexed, else rejection sampling of genomes; mutants and crossover children re-drawn until they
    run a new network inside the budget. Each draw that repeats a network is counted and re-drawn."""

    def __init__(self, nets: _Networks, rng: random.Random, settings: EvolutionSettings):
        self.nets, self.rng, self.settings = nets, rng, settings
        self.repeats = 0

    def _new(self, draw: Callable[[], Genome], taken: set, tries: Optional[int] = None) -> Optional[Genome]:
        for _ in range(tries or self.settings.max_tries):
            genome = draw()
            if self.nets.key(genome) in taken:
                self.repeats += 1
            elif self.nets.fits(genome):
                return genome
        return None

    def sample(self, taken: set) -> Optional[Genome]:
        nets = self.nets
        pool = nets.in_budget if nets.in_budget is not None else (list(nets.index) if nets.index is not None else None)
        if pool is None:
            return self._new(lambda: self.nets.space.sample(self.rng), taken)
        free = [k for k in pool if k not in taken]
        for _ in range(self.settings.max_tries):
            if not free:
                return None
            k = free.pop(self.rng.randrange(len(free)))
            if nets.fits(nets.index[k]):  # always, when the index holds only networks in budget
                return list(nets.index[k])
        return None

    # a variation operator gets fewer tries than a fresh draw: near converged parents most of its draws
    # repeat a network, and a fresh draw replaces it once they are used up
    def mutant(self, parent: Genome, taken: set) -> Optional[Genome]:
        return self._new(lambda: self.nets.space.mutate(parent, self.rng, self.settings.mutation_prob), taken,
                         CHILD_TRIES)

    def child(self, a: Genome, b: Genome, taken: set) -> Optional[Genome]:
        return self._new(lambda: self.nets.space.crossover(a, b, self.rng)[0], taken, CHILD_TRIES)


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
                  run: Optional[Dict[str, Any]] = None, network: Optional[NetworkFn] = None,
                  log: Optional[Callable[[str], None]] = None, index_limit: int = INDEX_LIMIT,
                  count_limit: int = COUNT_LIMIT, evaluate_many: Optional[ManyMetricFn] = None,
                  chunk: int = EVAL_CHUNK) -> SearchResult:
    """Search the config with the best `evaluate` whose `cost` lies in `budget`.

    With `evaluate_many`, a generation's networks not yet scored are scored `chunk` at a time, in the
    lexicographic order of their networks (neighbours share prefixes), by one call each; `evaluate` is then
    unused. `progress` is True/False or a `ProgressReport` to count networks on (its first counter).

    `network(config)` (JSON-able) says what a config executes (the method's `effective` config): configs
    with the same network are one candidate, evaluated and costed once, and every draw is of a network no
    candidate runs yet. Every uniform config inside the budget is in the first population. When the
    distinct networks inside the budget are no more than the evaluations the settings allow, all of them
    are evaluated (one generation) instead. `log` gets one line per such fact.

    `run` (JSON-able) names what else the metric and cost depend on (model, data, image size, ...): a
    state file written for another run is refused, naming the first difference.

    `evaluate`/`cost` take a config (list of groups of values); higher metric is better (`evaluate` may
    return {"fitness": value, <other scores>}: the others are kept as the candidate's `scores`). If
    `state_path` exists the search resumes from it. `history_path` gets one JSON line per evaluated
    network, appended (fsync'd) as it is scored; a resumed run keeps them and never scores them again. `on_generation(gen,
    population)` is called after each generation with the population's candidates (dicts: genome,
    config, metric, cost), on every rank. Only `write_files=True` writes state and history.
    """
    settings.check()
    say = log or (lambda line: None)
    state_path = Path(state_path) if state_path is not None else None
    history_path = Path(history_path) if history_path is not None else None
    rng = random.Random(settings.seed)
    nets = _Networks(space, cost, budget, network)
    draws = _Draws(nets, rng, settings)
    compat = _compat(space, budget, settings, run)

    metrics: Dict[str, float] = {}
    evaluated: List[Dict[str, Any]] = []
    generation = 0            # index of the generation `population` belongs to
    population_done = False   # whether `population` has been evaluated already
    population = None
    if state_path is not None and state_path.is_file():
        state = _load_state(state_path, compat)
        try:
            rng.setstate(_rng_from_json(state["rng"]))
            evaluated = state["evaluated"]
            metrics = {c["network"]: c["metric"] for c in evaluated}
            nets.cache = {k: float(v) for k, v in state["costs"]}
            generation, population_done = state["generation"], state["population_evaluated"]
            population = [creator.Individual(g) for g in state["population"]]
            draws.repeats = int(state["repeats_skipped"])
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise UserError(f"search state '{state_path}' is damaged ({type(e).__name__} {e}); "
                            f"use another output folder") from None
        if not population_done and history_path is not None:
            # networks scored after the state was written: the journal has them (a torn last line skipped)
            current = {nets.key(ind) for ind in population}
            for entry in read_journal(history_path)[len(evaluated):]:
                k = entry.get("network") if isinstance(entry, dict) else None
                if k in current and k not in metrics and entry.get("generation") == generation:
                    evaluated.append(entry)
                    metrics[k] = entry["metric"]
        if write_files and history_path is not None:
            # the run may have died after writing history, before the state, or mid-append: history follows
            # the state and the journal's whole lines
            write_output(history_path, _history_text(evaluated), "history")

    nets.check_feasible()
    nets.build_index(index_limit, count_limit)
    uniform = nets.uniform()
    uniform_of = {nets.key(g): v for v, g in uniform}
    first = max(settings.population, len(uniform))
    allowance = first + (settings.generations - 1) * (settings.mutations + settings.crossovers)
    exhaustive = nets.in_budget is not None and len(nets.in_budget) <= allowance
    if nets.index is None:
        say(f"{space.num_configs()} configs in the space: too many to count the distinct networks; draws are "
            f"of networks not yet evaluated")
    elif nets.in_budget is None:
        say(f"{space.num_configs()} configs in the space run {len(nets.index)} distinct networks (too many to "
            f"count those in the budget)")
    else:
        say(f"{space.num_configs()} configs in the space run {len(nets.index)} distinct networks; "
            f"{len(nets.in_budget)} fit the budget {budget.describe()}")
    if exhaustive:
        say(f"all {len(nets.in_budget)} networks in the budget fit the {allowance} evaluations the settings "
            f"allow: evaluating every one of them (no evolution needed)")
    say(f"{len(uniform)} uniform config(s) in the budget, all in the first population"
        + (f": {', '.join(f'{v:g}' for v, _ in uniform)}" if uniform else ""))
    if population is None:
        population = [creator.Individual(g) for _, g in uniform]
        taken = {nets.key(g) for g in population}
        wanted = len(nets.in_budget) if exhaustive else first
        if exhaustive:  # every network, in index order (deterministic), after the uniform ones
            population += [creator.Individual(nets.index[k]) for k in nets.in_budget if k not in taken]
        while len(population) < wanted:
            genome = draws.sample(taken)
            if genome is None:
                break
            taken.add(nets.key(genome))
            population.append(creator.Individual(genome))
        if not population:
            raise UserError(f"no initial config within the budget {budget.describe()} after {settings.max_tries} "
                            f"draws; widen the budget or allow more tries")
        fresh = True
    else:
        fresh = False
    generations = 1 if exhaustive else settings.generations

    def save() -> None:
        """Checkpoint: everything needed to continue exactly where this run is now."""
        if not write_files:
            return
        if history_path is not None:
            write_output(history_path, _history_text(evaluated), "history")
        if state_path is not None:
            state = {"version": STATE_VERSION, "compat": compat, "generation": generation,
                     "population": [list(p) for p in population], "population_evaluated": population_done,
                     "evaluated": evaluated, "costs": [[k, v] for k, v in nets.cache.items()],
                     "repeats_skipped": draws.repeats, "rng": _rng_to_json(rng.getstate())}
            write_output(state_path, json.dumps(state), "state")

    def candidate(ind) -> Dict[str, Any]:
        return {"genome": list(ind), "config": space.decode(ind), "metric": metrics[nets.key(ind)], "cost": nets(ind)}

    if fresh:
        save()  # the first population, before it is scored: a kill in generation 0 loses nothing scored

    total = len(nets.in_budget) if exhaustive else allowance
    bar = progress if isinstance(progress, ProgressReport) else ProgressReport("search", enabled=bool(progress))
    if not bar.counters:
        bar.add("networks", total, completed=len(evaluated))

    def record(ind, value) -> None:
        k = nets.key(ind)
        config = space.decode(ind)
        fitness, scores = _fitness(value, config)
        images = scores.pop("images", None)
        metrics[k] = fitness
        entry = {"genome": list(ind), "config": config, "network": k, "metric": fitness, "cost": nets(ind),
                 "generation": generation, "uniform": uniform_of.get(k), **({"scores": scores} if scores else {}),
                 **({"images": int(images)} if images is not None else {})}
        evaluated.append(entry)
        if write_files and history_path is not None:
            append_durable(history_path, json.dumps(entry) + "\n")
        fault_point("evaluate")
        best = _rank(evaluated)[0]
        bar.update(0, completed=len(evaluated),
                   note=f"best {best['metric']:.4g} @ {best['cost']:.4g} {budget.unit}, generation {generation + 1}")

    try:
        while True:
            if not population_done:
                # evaluate: each distinct network once over the whole search
                pending, seen = [], set()
                for ind in population:
                    k = nets.key(ind)
                    if k not in metrics and k not in seen:
                        seen.add(k)
                        pending.append(ind)
                if evaluate_many is None:
                    for ind in pending:
                        record(ind, evaluate(space.decode(ind)))
                else:
                    # neighbours share prefixes; the widest first, so the first block a chunk runs wide on a
                    # batch (kept across chunks, `BatchMemory`) covers the later chunks' counts
                    pending.sort(key=lambda ind: json.loads(nets.key(ind)), reverse=True)
                    for i in range(0, len(pending), max(1, chunk)):
                        part = pending[i: i + max(1, chunk)]
                        for ind, value in zip(part, evaluate_many([space.decode(ind) for ind in part])):
                            record(ind, value)
                population_done = True
                if on_generation is not None:
                    on_generation(generation, [candidate(ind) for ind in population])
                if generation + 1 >= generations:
                    save()  # finished; a resume with more generations breeds on from here
            if generation + 1 >= generations:
                break
            # select the best distinct parents, then breed the next generation from them: every child a
            # network no candidate has run yet
            for ind in population:
                ind.fitness.values = (metrics[nets.key(ind)],)
            parents = tools.selBest(_distinct(population, nets.key), settings.parents)
            taken = set(metrics)
            children = []
            for i in range(settings.mutations + settings.crossovers):
                genome = (draws.mutant(rng.choice(parents), taken) if i < settings.mutations
                          else draws.child(*_pair(parents, rng), taken))
                if genome is None:  # the parents' neighbourhood is used up: a fresh network instead
                    genome = draws.sample(taken)
                if genome is not None:
                    taken.add(nets.key(genome))
                    children.append(creator.Individual(genome))
            population = [creator.Individual(p) for p in parents] + children
            generation, population_done = generation + 1, False
            save()
    finally:
        bar.close()
    say(f"{len(evaluated)} distinct networks evaluated, each once; {draws.repeats} draws repeated a network "
        f"already drawn or evaluated and were drawn again instead")
    return _result(evaluated, budget, max(generations, generation + 1), top_k, repeats_skipped=draws.repeats,
                   distinct_in_budget=None if nets.in_budget is None else len(nets.in_budget),
                   allowance=allowance, exhaustive=exhaustive)


def _fitness(value: Union[float, Dict[str, float]], config: Config) -> Tuple[float, Dict[str, float]]:
    """(fitness, other scores) of what a metric function returned; UserError on NaN."""
    scores = dict(value) if isinstance(value, dict) else {}
    fitness = float(scores.pop("fitness") if isinstance(value, dict) else value)
    if math.isnan(fitness):
        raise UserError(f"the metric of config {config} is NaN")
    return fitness, scores


def _distinct(population: List[list], key: Callable[[Sequence[int]], str]) -> List[list]:
    """First occurrence of each network, so duplicates cannot crowd out other parents."""
    seen: set = set()
    out = []
    for ind in population:
        if key(ind) not in seen:
            seen.add(key(ind))
            out.append(ind)
    return out


def _pair(parents: List[list], rng: random.Random) -> Tuple[list, list]:
    if len(parents) == 1:
        return parents[0], parents[0]
    a, b = rng.sample(parents, 2)
    return a, b


# ---- baseline
def random_search(space: SearchSpace, evaluate: MetricFn, cost: CostFn, budget: Budget, n: int, seed: int = 0,
                  max_tries: int = 10_000, top_k: int = 20, network: Optional[NetworkFn] = None,
                  index_limit: int = INDEX_LIMIT, count_limit: int = COUNT_LIMIT) -> SearchResult:
    """Best of `n` distinct in-budget networks drawn at random (uniformly over the networks when the space
    is indexed): the baseline evolution must beat, with the same number of distinct evaluations."""
    if n < 1:
        raise UserError(f"random search needs at least one sample, got {n}")
    rng = random.Random(seed)
    nets = _Networks(space, cost, budget, network)
    nets.check_feasible()
    nets.build_index(index_limit, count_limit)
    draws = _Draws(nets, rng, EvolutionSettings(max_tries=max_tries, seed=seed))
    taken: set = set()
    evaluated: List[Dict[str, Any]] = []
    while len(evaluated) < n:
        genome = draws.sample(taken)
        if genome is None:
            if not evaluated:
                raise UserError(f"no random config within the budget {budget.describe()} after {max_tries} "
                                f"draws; widen the budget or allow more tries")
            break  # every network in the budget drawn
        k = nets.key(genome)
        taken.add(k)
        config = space.decode(genome)
        fitness, scores = _fitness(evaluate(config), config)
        evaluated.append({"genome": genome, "config": config, "network": k, "metric": fitness,
                          "cost": nets(genome), "generation": 0, "uniform": None,
                          **({"scores": scores} if scores else {})})
    return _result(evaluated, budget, 1, top_k, repeats_skipped=draws.repeats,
                   distinct_in_budget=None if nets.in_budget is None else len(nets.in_budget), allowance=n)


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


def pareto_marks(result: SearchResult, pick: Optional[Tuple[float, float]] = None) -> Dict[str, Tuple[float, float]]:
    """The (cost, fitness) points pareto.png marks: `pick` (the confirmed pick, which the star marks; the
    fitness' own best when none is given) and, when it differs, the best by fitness before confirmation."""
    best = (result.best_cost, result.best_metric)
    marks = {"pick": pick if pick is not None else best}
    if pick is not None and pick != best:
        marks["best by fitness"] = best
    return marks


def plot_pareto(result: SearchResult, path: Path, metric_name: str = "metric", title: Optional[str] = None,
                pick: Optional[Tuple[float, float]] = None) -> Path:
    """PNG of every candidate (cost vs fitness, coloured by generation), the Pareto front, the budget and the
    pick (`pareto_marks`); `metric_name` names the y-axis (what the fitness is, on which images)."""
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
    marks = pareto_marks(result, pick)
    if "best by fitness" in marks:
        ax.plot(*[[v] for v in marks["best by fitness"]], "o", mfc="none", mec="black", ms=10,
                label="best by fitness (not the pick after confirmation)")
    ax.plot(*[[v] for v in marks["pick"]], "*", color="gold", mec="black", ms=14, label="pick")
    ax.axvline(result.budget.max_cost, ls="--", color="gray", lw=1, label=f"budget ({result.budget.max_cost:.4g} {unit})")
    if result.budget.min_cost > 0:
        ax.axvline(result.budget.min_cost, ls=":", color="gray", lw=1, label="minimum cost")
    ax.set_xlabel(f"cost ({unit})")
    ax.set_ylabel(metric_name)
    ax.set_title(title or f"search: {len(result.evaluated)} configs evaluated", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()

    atomic_write(path, lambda f: fig.savefig(f, format="png"), binary=True)
    return path
