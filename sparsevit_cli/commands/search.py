"""`sparsevit search`: evolutionary search of an adapted model's config under a MAC or latency budget.

Wires a model, a fitness split of the val images and a cost (analytic MACs, measured latency, or a latency
lookup table) into the DEAP engine of `evolution.py`, whose candidates are the networks the method's
`effective` configs name; then confirms the leaders and the best uniform config on a disjoint confirmation
split (`search/confirm.py`) and writes best.yaml (pick, both splits' image ids, the confirmation with its
intervals), history.jsonl and pareto.png.
Every task is searched the same way: the metric is the task's (top-1, mIoU, box AP, mask AP), a MAC
budget counts what the task model executes (backbone under the config + neck + heads: `Task.macs`), and
a measured latency budget times the whole task model end to end on a fixed batch of real val images.
"""
from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from rich.console import Console
from rich.table import Table

from ..batch_memory import BatchMemory
from ..errors import UserError
from ..io import FolderLock, ProgressReport, make_console, remove_stale_temp_files, yaml_text
from ..evaluate import (SharingCounts, evaluate_all, evaluate_images, evaluate_images_many, evaluate_records_many,
                        search_splits)
from ..latency import calibrated_table, predict_latency, read_latency_table
from ..timing import compile_failures_as_user_errors, compile_model, resolve_device, time_fn
from ..tasks import backbone_of, get_task
from .. import dist
from ..search.confirm import CONFIRM_TOP, DEFAULT_PICK_RULE, PICK_RULES, Confirmation, confirm, confirmed_candidates
from ..layers import EVAL_CHUNK, PREFIX_MEMORY_MIB, format_config
from ..search.evolution import Budget, EvolutionSettings, SearchResult, plot_pareto, run_evolution, write_output
from ..search.racing import race
from ..search.stats import LEVEL
from ..search.space import load_space
from .precheck import BudgetAsk, check_budget

#: what a MAC budget counts: the whole task model as executed, or its sparse backbone alone
MAC_SCOPES = ("model", "backbone")
#: what a search can rank candidates by: the task's metric, or (classification) the mean log-probability
#: of the true class, which moves with every image's confidence instead of only where a prediction flips
FITNESSES = ("logprob", "metric")


def fitness_label(fitness: str, metric_name: str) -> str:
    """What a fitness value is, in words (pareto.png's y-axis): on the fitness split of the val images."""
    what = "mean log-probability of the true class" if fitness == "logprob" else metric_name
    return f"{what} (fitness split)"


@dataclass
class SearchOutcome:
    """What `run_search` returns: best.yaml's mapping, the engine's result, the split and the confirmation
    (pick vs best uniform vs dense, with intervals) as typed objects."""

    report: Dict[str, Any]
    result: SearchResult
    confirmation: Confirmation
    splits: Any  # evaluate.SearchSplits
    #: block-pair executions of this run's fitness scoring (and what scoring each network alone executes)
    counts: SharingCounts = field(default_factory=SharingCounts)


@dataclass
class SearchOptions:
    checkpoint: str
    data: str
    out: str = "runs/search"
    space: Optional[str] = None
    budget_macs: Optional[str] = None  # "50%" of dense, or absolute "2.5GMACs"
    budget_macs_of: Optional[str] = None  # one of MAC_SCOPES (default: precheck.default_mac_scope of the task)
    budget_latency: Optional[str] = None  # "20ms" or "60%" of dense latency
    min_macs: Optional[str] = None
    min_latency: Optional[str] = None
    latency_table: Optional[str] = None  # path: load if it exists, else build and save there
    compile: bool = False  # time the torch.compile'd model (latency budget measured, not from a table)
    device: str = "cpu"
    img_size: Optional[int] = None
    batch_size: int = 1
    eval_samples: int = 1000   # fitness split: the val images every candidate is scored on
    confirm_samples: int = 1000  # confirmation split: the top candidates and the best uniform config re-scored
    confirm_top: int = CONFIRM_TOP
    pick: str = DEFAULT_PICK_RULE  # how the confirmation split picks (search.confirm.PICK_RULES)
    fitness: Optional[str] = None  # one of FITNESSES (default: the task's first)
    split_seed: int = 0
    eval_batch_size: int = 64
    settings: EvolutionSettings = field(default_factory=EvolutionSettings)
    resume: bool = False
    progress: bool = True
    shared_prefix: bool = True  # score a generation's networks as a tree over their shared block prefixes
    race: bool = False  # racing on growing subsets of the fitness images (search/racing.py)
    eval_chunk: int = EVAL_CHUNK  # networks scored together (and journaled together)
    prefix_memory: int = PREFIX_MEMORY_MIB  # MiB of decoded fitness batches and first wide blocks kept (BatchMemory)


def parse_budget(text: Optional[str], dense_value: float, unit: str, what: str) -> Optional[float]:
    """'50%' -> half of the dense cost; '2.5GMACs' or '20ms' -> absolute."""
    if text is None:
        return None
    value, percent = budget_number(text, unit, what)
    return value / 100.0 * dense_value if percent else value


#: the suffixes a budget in each unit may carry (case-insensitive); a bare number is refused, since
#: `--budget-latency 60` may mean 60 ms or 60% of dense
UNIT_SUFFIXES = {"GMACs": ("gmacs", "gmac", "g"), "ms": ("ms",)}


def budget_number(text: str, unit: str, what: str) -> Tuple[float, bool]:
    """(number, is a percentage) of a budget option, which must carry its unit (`2.5GMACs`, `20ms`) or `%`;
    UserError unless it is a positive, finite number with one of them."""
    t = str(text).strip().lower()
    percent = t.endswith("%")
    suffix = "%" if percent else next((s for s in UNIT_SUFFIXES[unit] if t.endswith(s)), None)
    number = t[: len(t) - len(suffix)].strip() if suffix else t
    try:
        value = float(number)
    except ValueError:
        raise UserError(f"{what} must be a number of {unit} or a percentage of dense (e.g. 50%), got '{text}'") from None
    if math.isnan(value):
        raise UserError(f"{what} '{text}' is not a number: give a positive, finite number of {unit} or a "
                        f"percentage of dense (e.g. 50%)")
    if math.isinf(value):
        raise UserError(f"{what} must be a finite number of {unit} or a percentage of dense, got '{text}'")
    if value <= 0:
        raise UserError(f"{what} must be positive, got '{text}'")
    if suffix is None:
        raise UserError(f"{what} '{text}' has no unit: say {number}{unit} or {number}% (of dense)")
    return value, percent


def latency_batch(task, dataset, batch_size: int, device: torch.device):
    """The fixed batch a measured latency is timed on: the first `batch_size` val images (repeated when the
    split has fewer), as the task collates them (a tensor, or a detector's list of images)."""
    items = [dataset[i % len(dataset)] for i in range(batch_size)]
    images, targets = task.collate(items)
    return task.to_device(images, targets, device)[0]


class LatencyCost:
    """Latency of a config in ms: measured end to end on the device on the batch `x` (cached per config;
    with `compile`, of the torch.compile'd model) or predicted from a per-block table."""

    def __init__(self, model, method, x, device: torch.device, table_path: Optional[str], console: Console,
                 space=None, compile: bool = False):
        self.backbone = backbone_of(model)
        self.model = model
        self.method = method
        self.x, self.device = x, device
        self.compile = compile
        self.cache: Dict[str, float] = {}
        self.table = None
        if table_path:
            img_size, batch_size = x.shape[-1], x.shape[0]
            p = Path(table_path)
            if os.path.lexists(p):  # whatever is there (a file, a directory) is the user's: read it or say why not
                probes = [space.decode(space.extreme(end)) for end in ("dense", "sparsest")]
                self.table = read_latency_table(p, method, img_size, batch_size, probes)
            else:
                def announce() -> None:
                    try:  # a place the table cannot go is found before the (slow) timing, not after it
                        p.parent.mkdir(parents=True, exist_ok=True)
                    except OSError as e:
                        raise UserError(f"cannot write latency table '{p}': {e.strerror or e}") from None
                    console.print(f"building latency table on {device} (once) -> {p}")
                # rank 0 writes; main_only raises its errors on every rank, so none waits for a rank that left
                dist.main_only(announce)
                # every rank times (keeping ranks in step); rank 0's table is the one all ranks use
                self.table = dist.broadcast_object(calibrated_table(method, model, self.backbone, self.x, space))
                dist.main_only(lambda: write_output(p, json.dumps(self.table, indent=1), "latency_table"))

    def measure(self, config) -> float:
        key = json.dumps(config)
        if key not in self.cache:
            self.method.apply(self.backbone, config)
            # compiled per config: the engine's window grids are compile-time constants of each config
            model = compile_model(self.model, self.x, fresh=True) if self.compile else self.model
            with compile_failures_as_user_errors(self.compile), torch.inference_mode():
                # a detector's input is a list of images: timed as one call
                ms = time_fn(lambda: model(self.x), self.device, warmup=1, repeats=5)
            # ranks time differently; all must see rank 0's number or their searches diverge
            self.cache[key] = dist.broadcast_object(ms)
        return self.cache[key]

    def __call__(self, config) -> float:
        if self.table is not None:
            return predict_latency(self.method, self.table, config)
        return self.measure(config)

    def table_error(self, configs: List) -> Optional[float]:
        """Median absolute relative error of the table against measurement on `configs`."""
        if self.table is None:
            return None
        errs = [abs(self(c) - self.measure(c)) / self.measure(c) for c in configs]
        return statistics.median(errs)


def run_search(opts: SearchOptions, console: Optional[Console] = None) -> SearchOutcome:
    """Check the options, then search with the output folder locked (one search per folder; rank 0 holds
    the lock under torchrun) and the process group, if any, joined for the run."""
    from ..io import check_output_dir, check_output_file

    console = console or make_console()
    # options first: a typo costs no model load
    device = resolve_device(opts.device)
    if (opts.budget_macs is None) == (opts.budget_latency is None):
        raise UserError("give exactly one budget: --budget-macs or --budget-latency")
    if opts.budget_macs_of is not None and opts.budget_macs_of not in MAC_SCOPES:
        raise UserError(f"--budget-macs-of must be one of {', '.join(MAC_SCOPES)}, got '{opts.budget_macs_of}'")
    elif opts.budget_macs_of is not None and opts.budget_macs is None:
        raise UserError("--budget-macs-of says what a --budget-macs counts; a latency budget times the whole model")
    for text, unit, what in ((opts.budget_macs, "GMACs", "--budget-macs"), (opts.min_macs, "GMACs", "--min-macs"),
                             (opts.budget_latency, "ms", "--budget-latency"), (opts.min_latency, "ms", "--min-latency")):
        if text is not None:
            budget_number(text, unit, what)
    opts.settings.check()
    if opts.pick not in PICK_RULES:
        raise UserError(f"--pick must be one of {', '.join(PICK_RULES)}, got '{opts.pick}'")
    if opts.fitness is not None and opts.fitness not in FITNESSES:
        raise UserError(f"--fitness must be one of {', '.join(FITNESSES)}, got '{opts.fitness}'")
    for value, option in ((opts.eval_samples, "--eval-samples"), (opts.confirm_samples, "--confirm-samples"),
                          (opts.confirm_top, "--confirm-top"), (opts.eval_chunk, "--eval-chunk")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{option} must be a positive integer, got {value!r}")
    if isinstance(opts.prefix_memory, bool) or not isinstance(opts.prefix_memory, int) or opts.prefix_memory < 0:
        raise UserError(f"--prefix-memory must be a number of MiB >= 0, got {opts.prefix_memory!r}")
    if opts.compile and opts.latency_table:
        raise UserError("--compile times the compiled model itself; a --latency-table predicts eager latency "
                        "per block: give one or the other")
    if opts.compile and opts.budget_latency is None:
        raise UserError("--compile applies to a latency budget (--budget-latency); MACs do not depend on it")
    if opts.latency_table and not os.path.lexists(opts.latency_table):  # to be built: it must be writable there
        check_output_file(opts.latency_table, "--latency-table", inputs={"--checkpoint": opts.checkpoint})
    out = check_output_dir(Path(opts.out))
    with dist.process_group(opts.device):
        lock = dist.main_only(lambda: FolderLock(out, "search output folder", kind="search").acquire())
        try:
            dist.main_only(lambda: remove_stale_temp_files(out))  # left by a killed run's atomic writes
            return _search(opts, device, out, console)
        finally:
            if lock is not None:
                lock.release()


def _search(opts: SearchOptions, device: torch.device, out: Path, console: Console) -> SearchOutcome:
    from ..model_file import load_model_file

    model, method, meta = load_model_file(opts.checkpoint)
    model = model.to(device)
    method_name = meta.method
    backbone = backbone_of(model)
    task = get_task(meta.task)
    img_size = meta.resolve_img_size(opts.img_size, own_size_only=True)
    space = load_space(opts.space or meta.space or method.default_space, group_sizes=method.group_sizes(backbone),
                       for_method=method_name, model_label="the model file")
    dataset = task.dataset(opts.data, "val", img_size, train=False)
    meta.check_data(dataset, opts.data, opts.checkpoint)
    # before any scoring: the budget against the cheapest and densest config (and the MAC scope's default)
    opts.budget_macs_of = check_budget(
        BudgetAsk(macs=opts.budget_macs, latency=opts.budget_latency, macs_of=opts.budget_macs_of), model=model,
        method=method, task=task, space=space, img_size=img_size, batch_size=opts.batch_size, device=device,
        dataset=dataset, console=console if dist.is_main() else None)

    fitness = opts.fitness or ("logprob" if "logprob" in task.image_scores_fitnesses else "metric")
    if fitness not in task.image_scores_fitnesses:
        raise UserError(f"--fitness {fitness} is not offered for a {task.name} model (offered: "
                        f"{', '.join(task.image_scores_fitnesses)})")
    if opts.race and "logprob" not in task.image_scores_fitnesses:
        raise UserError(f"--race bounds a fitness that is a mean over images (a classification model's logprob "
                        f"or top-1); a {task.name} model's {task.metric_name} is not: leave --race out")
    splits = search_splits(len(dataset), opts.eval_samples, opts.confirm_samples, opts.split_seed)
    if len(splits.fitness) < opts.eval_samples or len(splits.confirmation) < opts.confirm_samples:
        console.print(f"the val split has {splits.n} images: fitness and confirmation splits shrunk to "
                      f"{len(splits.fitness)} and {len(splits.confirmation)}")
    console.print(f"fitness ({fitness}) on {len(splits.fitness)} val images, confirmation on "
                  f"{len(splits.confirmation)} others (split seed {opts.split_seed}); "
                  f"{len(splits.rest)} never seen by the search")

    def network(config):
        return method.effective(backbone, config, img_size)

    # the fitness batches, decoded, and their first wide blocks, reused by every later generation (same images,
    # same weights)
    memory = BatchMemory(opts.prefix_memory * 2 ** 20) if opts.shared_prefix and opts.prefix_memory else None

    def image_scores(config, split: str):
        if split == "fitness":  # e.g. dense, for the report: on the fitness batches the memory holds
            return task.image_scores(dataset, evaluate_records_many(
                model, method, [config], dataset, task, opts.eval_batch_size, device, splits.fitness, img_size,
                memory=memory)[0])
        return evaluate_images(model, method, config, dataset, task, opts.eval_batch_size, device,
                               splits.confirmation)

    def metric(config) -> Dict[str, float]:
        scores = image_scores(config, "fitness")
        return {"fitness": scores.fitness(fitness), task.metric_name: scores.metric()}

    bar = ProgressReport("search", console=console, enabled=opts.progress and dist.is_main())
    counts = SharingCounts()

    def records_many(configs, indices):
        return evaluate_records_many(model, method, configs, dataset, task, opts.eval_batch_size, device, indices,
                                     img_size, share=opts.shared_prefix, counts=counts, progress=bar, memory=memory)

    def fitness_of(records, finished: bool = True) -> Dict[str, float]:
        scores = task.image_scores(dataset, records)
        return {"fitness": scores.fitness(fitness), task.metric_name: scores.metric(),
                **({} if finished else {"images": len(records)})}

    # racing never stops a uniform config: the pick is confirmed against the best of them
    uniform_configs = {repr(space.decode(space.uniform(v))) for v in space.uniform_values()}

    def metric_many(configs) -> List[Dict[str, float]]:
        """A chunk of networks: scored as a tree over shared prefixes and, with --race, on growing slices."""
        if not opts.race:
            return [fitness_of(r) for r in records_many(configs, splits.fitness)]
        ids = splits.fitness
        outcome = race(lambda alive, start, end: records_many([configs[i] for i in alive], ids[start:end]),
                       lambda records: task.image_scores(dataset, records).per_image(fitness), len(configs),
                       len(ids), opts.eval_batch_size * dist.world_size(),
                       keep=[repr(c) in uniform_configs for c in configs])
        return [fitness_of(r, done) for r, done in zip(outcome.records, outcome.finished)]

    def gmacs(config) -> float:
        return task.macs(model, method, config, img_size, opts.batch_size) / 1e9

    def backbone_gmacs(config) -> float:
        return task.backbone_macs(model, method, config, img_size, opts.batch_size) / 1e9

    dense_cfg = space.decode(space.extreme("dense"))
    if opts.budget_macs is not None:
        unit = "GMACs"
        cost = backbone_gmacs if opts.budget_macs_of == "backbone" else gmacs

        dense_cost = cost(dense_cfg)
        budget = Budget(max_cost=parse_budget(opts.budget_macs, dense_cost, unit, "--budget-macs"),
                        min_cost=parse_budget(opts.min_macs, dense_cost, unit, "--min-macs") or 0.0, unit=unit)
        latency = None
    else:
        unit = "ms"
        x = latency_batch(task, dataset, opts.batch_size, device)
        if not torch.is_tensor(x) and (opts.latency_table or opts.compile):
            raise UserError(f"a {task.name} model's latency is measured end to end in eager mode: "
                            f"{'--latency-table' if opts.latency_table else '--compile'} times image tensors "
                            f"through the backbone only; leave it out")
        latency = LatencyCost(model, method, x, device, opts.latency_table, console, space, compile=opts.compile)
        cost = latency
        dense_cost = latency(dense_cfg)
        budget = Budget(max_cost=parse_budget(opts.budget_latency, dense_cost, unit, "--budget-latency"),
                        min_cost=parse_budget(opts.min_latency, dense_cost, unit, "--min-latency") or 0.0, unit=unit)

    state_path = out / "search_state.json"
    for name in (state_path.name, "history.jsonl", "best.yaml", "pareto.png"):
        if (out / name).is_dir():  # found now, not when the search has run and its result cannot be written
            raise UserError(f"'{out / name}' is a directory; the search writes a file there")
    # rank 0's answer for every rank: rank 0 writes the state before generation 0, so a rank that looked later
    # would find this run's own state
    if dist.broadcast_object(state_path.exists()) and not opts.resume:
        raise UserError(f"'{out}' holds an unfinished or finished search; pass --resume to continue it "
                        f"or choose another --out")
    # what else the metrics and costs depend on: resuming from another model's or data set's state is refused
    run = {"checkpoint": str(Path(opts.checkpoint).resolve()), "model": meta.model, "method": method_name,
           "data": str(Path(opts.data).resolve()), "img_size": img_size, "batch_size": opts.batch_size,
           "eval_samples": opts.eval_samples, "device": device.type, "fitness": fitness,
           "splits": {"images": splits.n, "fitness": len(splits.fitness),
                      "confirmation": len(splits.confirmation), "seed": splits.seed},
           **({"budget_macs_of": "backbone"} if opts.budget_macs_of == "backbone" else {}),
           **({"compile": True} if opts.compile else {}),  # a compiled search's latencies are other numbers
           **({"race": True} if opts.race else {})}  # raced-out networks are scored on a slice only
    cheap = latency is None or latency.table is not None  # measured latency: only count what it may evaluate
    allowance = opts.settings.population + (opts.settings.generations - 1) * (opts.settings.mutations +
                                                                              opts.settings.crossovers)
    result = run_evolution(space, metric, cost, budget, opts.settings, state_path=state_path,
                           history_path=out / "history.jsonl",
                           write_files=dist.is_main(), run=run, network=network,
                           log=console.print if dist.is_main() else None,
                           evaluate_many=metric_many, chunk=opts.eval_chunk, progress=bar,
                           **({} if cheap else {"count_limit": allowance}))
    if dist.is_main() and counts.pairs_asked:
        console.print(f"fitness scoring ran {counts.pairs_run} block-pair executions"
                      + (f" ({counts.pairs_asked / counts.pairs_run:.2f}x fewer than the {counts.pairs_asked} of "
                         f"scoring each network alone: shared prefixes)" if counts.pairs_run < counts.pairs_asked
                         else "")
                      + (f", computing {counts.windows_asked / counts.windows_run:.2f}x fewer windows"
                         if 0 < counts.windows_run < counts.windows_asked else "")
                      + (f"; racing stopped {sum(1 for c in result.evaluated if c.get('images') is not None)} "
                         f"network(s) early" if opts.race else ""))
    if dist.is_main() and memory is not None and memory.hits:
        console.print(f"{len(memory)} fitness batches kept their first block (run wide) from one generation to "
                      f"the next, reused {memory.hits} times ({memory.used / 2 ** 20:.0f} MiB of --prefix-memory "
                      f"with the decoded batches)")
    # the confirmation split's networks (the leaders, the best uniform config, dense) scored together, as a
    # tree over their shared prefixes like the fitness split's (the same scores as one by one)
    confirming = [c["config"] for c in confirmed_candidates(result, opts.confirm_top)] + [dense_cfg]
    confirmed = dict(zip(map(repr, confirming), evaluate_images_many(
        model, method, confirming, dataset, task, opts.eval_batch_size, device, splits.confirmation, img_size,
        share=opts.shared_prefix)))

    def confirmation_scores(config, split: str):
        return confirmed[repr(config)] if split == "confirmation" and repr(config) in confirmed else \
            image_scores(config, split)

    conf = confirm(result, confirmation_scores, dense_cfg, dense_cost, fitness, task.metric_name,
                   opts.confirm_top, seed=opts.split_seed, rule=opts.pick)
    best_cfg = conf.pick.config
    report: Dict[str, Any] = {
        "method": method_name, "model": meta.model, "model_args": dict(meta.model_args),
        "method_options": dict(meta.method_options),
        "img_size": img_size, "task": task.name, "sparsity": best_cfg, "metric": task.metric_name,
        "metric_value": conf.pick.confirm_metric, "cost": conf.pick.cost, "cost_unit": unit,
        "dense_cost": dense_cost, "budget": budget.max_cost,
        "gmacs": gmacs(best_cfg), "dense_gmacs": gmacs(dense_cfg),
        "backbone_gmacs": backbone_gmacs(best_cfg), "dense_backbone_gmacs": backbone_gmacs(dense_cfg),
        **({"budget_macs_of": opts.budget_macs_of} if opts.budget_macs is not None else {}),
        "searched_on": opts.checkpoint, "eval_samples": len(splits.fitness),
        "search": {"evaluations": result.evaluations, "repeats_skipped": result.repeats_skipped,
                   "distinct_networks_in_budget": result.distinct_in_budget, "allowance": result.allowance,
                   "exhaustive": result.exhaustive},
        "confirmation": conf.model_dump(),
        # the images the search saw, so `evaluate --config best.yaml` can leave the fitness ones out
        "search_split": {"data": str(Path(opts.data).resolve()), "split": "val", **splits.to_dict()},
    }
    scores = evaluate_all(model, method, best_cfg, dataset, task, opts.eval_batch_size, device,
                          indices=splits.confirmation)
    if set(scores) != {task.metric_name}:  # e.g. box AP beside an instance-segmentation search's mask AP
        report["scores"] = scores
    if latency is not None and latency.table is not None:
        # how far the table is from measurement, on the configs that matter (the top of the search)
        report["latency_table_median_abs_error"] = latency.table_error([t["config"] for t in result.top[:5]])
    if dist.is_main():
        write_output(out / "best.yaml", yaml_text(report), "best")
        from ..timm_models import describe_architecture
        pick = (conf.pick.cost, conf.pick.fitness) if conf.pick.fitness is not None else None
        plot_pareto(result, out / "pareto.png", fitness_label(fitness, task.metric_name), pick=pick,
                    title=f"{describe_architecture(backbone)}, {task.name}: {len(result.evaluated)} networks searched")
        console.print(_top_table(result, unit, dense_cost, fitness, task.metric_name))
        console.print(confirmation_table(conf, unit))
        console.print(conf.verdict)
        console.print(f"best config -> {out / 'best.yaml'}")
    return SearchOutcome(report=report, result=result, confirmation=conf, splits=splits, counts=counts)


def confirmation_table(conf: Confirmation, unit: str, title: Optional[str] = None) -> Table:
    """Pick vs best uniform vs dense: the metric on both splits, the cost, and the pick's paired differences
    with their 95% bootstrap intervals (and McNemar's p for top-1) on the confirmation images."""
    table = Table(title=title or f"{conf.metric} of the pick, confirmed on {conf.confirmation_images} images "
                                 f"it was not ranked on")
    for col in ("", "config", f"fitness ({conf.fitness_images})", f"confirm ({conf.confirmation_images})", unit,
                "pick minus it, 95% CI"):
        table.add_column(col, justify="right")
    diffs = {c.b: c for c in conf.comparisons}
    for row in (conf.pick, conf.uniform, conf.dense):
        c = diffs.get(row.name)
        ci = "" if c is None else _interval(c) + (f" p={c.mcnemar_p:.2g}" if c.mcnemar_p is not None else "")
        label = row.name + (f" {row.uniform:g}" if row.name == "best uniform" and row.uniform is not None else "")
        table.add_row(label, format_config(row.config), f"{row.fitness_metric:.2f}", f"{row.confirm_metric:.2f}",
                      f"{row.cost:.3g}", ci)
    table.caption = (f"fitness: {conf.fitness} on the fitness images; the pick is the best of "
                     f"{len(conf.candidates)} candidates on the confirmation images"
                     + (" (not the fitness' own pick)" if conf.fitness_pick_differs else "")
                     + (f"; the best of them, {format_config(conf.candidates[0].config)}, was set aside (pick rule "
                        f"gain-shown: {_interval(conf.gain_test or conf.set_aside)} over uniform, not shown)"
                        if conf.set_aside else ""))
    return table


def _interval(c) -> str:
    """A comparison's difference and interval, its level named when it is not the usual 95%."""
    level = "" if c.level == LEVEL else f" ({c.level * 100:.3g}% CI)"
    return f"{c.diff:+.2f} [{c.low:+.2f}, {c.high:+.2f}]{level}"


def _top_table(result, unit: str, dense_cost: float, fitness: str, metric_name: str) -> Table:
    """The fitness ranking (the search's own view, before the confirmation split has its say)."""
    table = Table(title=f"top candidates by fitness ({result.evaluations} distinct networks evaluated)")
    logprob = fitness != "metric"
    for col in ("rank", fitness, *([metric_name] if logprob else []), unit, "of dense", "generation", "config"):
        table.add_column(col, justify="right")
    for i, t in enumerate(result.top[:10]):
        extra = [f"{t.get('scores', {}).get(metric_name, float('nan')):.2f}"] if logprob else []
        table.add_row(str(i + 1), f"{t['metric']:.4f}" if logprob else f"{t['metric']:.2f}", *extra,
                      f"{t['cost']:.3g}", f"{t['cost'] / dense_cost:.0%}", str(t["generation"]),
                      format_config(t["config"]))
    return table
