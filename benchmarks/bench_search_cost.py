"""What a search costs: the same `sparsevit search` with and without shared-prefix evaluation (scoring a
chunk of networks as a tree over their per-block kept-window counts, `evaluate.evaluate_records_many`) and
with and without racing on growing slices (`search/racing.py`). Never a test (`make bench-search-cost`;
tests/test_bench_smoke.py runs `--smoke` only).

Settings (`--setting`):

* `demo` (default): the demo's exhaustive search. The demo's default model (Swin, embed 32, depths [2, 4],
  2x2-token windows at 64 px: 64 windows in stage 1, 16 per block in stage 2), its default search space and
  50% MAC budget, its 800 fitness and 800 confirmation images, and a first population larger than the 93
  networks in the budget, so that generation 0 scores every one of them (the run checks `result.exhaustive`).
* `bench-search`: `benchmarks/bench_search.py`'s SETTING (Swin embed 32, depths [2, 4], 4x4-token windows at
  128 px), its evolution (population 12, 4 generations, 4 parents, 4 mutations and 4 crossovers each) and its
  1000 fitness and 1000 confirmation images, at the 50% MAC budget of its 30/50/70%.

`--quick` scores the same networks on fewer images (128 fitness, 32 confirmation, in batches of 32, so that
racing's 25/50/100% slices are 1, 2 and 4 batches): <= 5 minutes for the demo setting's four modes. Random
weights unless `--demo` names a finished `sparsevit demo` folder (or --checkpoint a trained model file with
--data its data folder): the cost does not depend on the weights, but racing's drops (and so whether it keeps
the pick) do, so read racing's pick on a trained model only (and `benchmarks/racing_agreement.py` for how
often it keeps it over seeds).

Per mode (one network at a time, shared prefixes, racing, shared prefixes + racing; after one untimed warm-up
search on one batch of images): wall time of the whole search (fitness scoring, confirmation, outputs),
block-pair executions of the fitness scoring, kept-window executions (the work: windows computed, where the
evaluator counts them), networks raced out, the fitness pick and the confirmed pick (what best.yaml says) and
whether it is one-at-a-time's; the largest fitness difference of a shared-prefix mode to the same search
without shared prefixes, and of racing to one network at a time, over every network both scored on the same
images (0: identical); with trained weights, each confirmed pick's top-1 on the val images no search saw and
its paired difference to one at a time's pick. Results: --out/results.json and
benchmarks/results/bench_search_cost[_<setting>][_trained][_quick].json (+ .md). The last two lines read
`racing: N.NNx faster in total (shared prefixes + racing), same pick: yes/no` and `shared-prefix evaluation:
N.NNx faster, fitness identical (max diff D)`.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Optional


from bench_search import SETTING as BENCH_SEARCH
from common import ReportSplit, demo_run, markdown_table, random_model_file, results_table, warm_up_search
from sparsevit_cli.commands.search import SearchOptions, run_search
from sparsevit_cli.commands.workflow import PRESETS, DemoPreset, evolution_settings
from sparsevit_cli.data.demo import write_demo_data
from sparsevit_cli.io import atomic_write_json, atomic_write_text, make_console
from sparsevit_cli.layers import format_config
from sparsevit_cli.search.confirm import compare
from sparsevit_cli.search.evolution import EvolutionSettings

RESULTS = Path(__file__).resolve().parent / "results"
#: (name, shared prefixes, racing)
MODES = [("one network at a time", False, False), ("shared prefixes", True, False), ("racing", False, True),
         ("shared prefixes + racing", True, True)]
SETTINGS = ("demo", "bench-search")
#: the demo setting's first population: more than the 93 networks in the demo's 50% budget, so that
#: generation 0 scores every one of them (an exhaustive search)
EXHAUSTIVE_POPULATION = 128
#: bench_search's MAC budgets are 30/50/70% of dense; this benchmark searches at the middle one
BENCH_SEARCH_BUDGET = "50%"
#: --quick: fitness and confirmation images (the demo setting's four modes: about 1 minute on 2 quiet cores by
#: estimate, from the demo's measured throughput and image loading; well under 5 minutes)
QUICK_EVAL, QUICK_CONFIRM = 128, 32
#: images per batch of the fitness scoring (the CLI's default; racing's slices are whole batches)
BATCH = 64
QUICK_BATCH = 32  # 128 quick fitness images: racing's slices of 25/50/100% are 1, 2 and 4 batches


@dataclass(frozen=True)
class CostSetting:
    name: str
    preset: DemoPreset  # model, image size and demo data
    evolution: EvolutionSettings
    budget: str
    eval_samples: int
    confirm_samples: int
    batch: int
    n_val: int  # val images written for random-weight runs (the splits need eval + confirm)


def setting(name: str, quick: bool, smoke: bool) -> CostSetting:
    if smoke:  # the micro Swin of the quick demo on a few images: every mode runs, nothing is timed
        p = PRESETS["quick"]
        return CostSetting("smoke", p, replace(evolution_settings(p), population=8, generations=1), "60%",
                           eval_samples=4, confirm_samples=2, batch=2, n_val=10)  # 4 report images
    if name == "demo":
        p = PRESETS["default"]
        evo = replace(evolution_settings(p), population=EXHAUSTIVE_POPULATION, generations=1)
        budget = p.budget
    else:
        p = BENCH_SEARCH
        evo, budget = evolution_settings(p), BENCH_SEARCH_BUDGET
    eval_samples = QUICK_EVAL if quick else p.eval_samples
    confirm_samples = QUICK_CONFIRM if quick else (p.confirm_samples or p.eval_samples)
    return CostSetting(name, p, evo, budget, eval_samples, confirm_samples, QUICK_BATCH if quick else BATCH,
                       eval_samples + confirm_samples)


def results_path(name: str, trained: bool, quick: bool) -> Path:
    """Each setting, weights and size its own file, so that no run overwrites another's."""
    stem = "bench_search_cost" + ("" if name == "demo" else "_" + name.replace("-", "_"))
    return RESULTS / (stem + ("_trained" if trained else "") + ("_quick" if quick else "") + ".json")


def main(argv: Optional[List[str]] = None) -> List[Dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--setting", choices=SETTINGS, default="demo",
                    help="demo: the demo's exhaustive search (93 networks, 800 fitness images); bench-search: "
                         "bench_search.py's evolution (36 networks, 1000 fitness images); default %(default)s")
    ap.add_argument("--quick", action="store_true",
                    help=f"the same networks on {QUICK_EVAL} fitness and {QUICK_CONFIRM} confirmation images in "
                         f"batches of {QUICK_BATCH} (demo setting, all four modes: about 1-2 minutes on 2 quiet "
                         f"cores, <= 5); default: the setting's own images (demo: about 5-10 minutes, "
                         f"bench-search: about 7-15)")
    ap.add_argument("--eval-samples", type=int, default=None,
                    help="fitness images (default: the setting's, or --quick's)")
    ap.add_argument("--confirm-samples", type=int, default=None,
                    help="confirmation images (default: the setting's, or --quick's)")
    ap.add_argument("--smoke", action="store_true", help="micro model, a few images (the tests run it)")
    ap.add_argument("--demo", default=None,
                    help="a finished `sparsevit demo` folder: search its adapted model on its data, with the "
                         "setting's search and images (default: the setting's model with random weights on fresh "
                         "demo data)")
    ap.add_argument("--checkpoint", default=None, help="a trained model file to search (default: random weights)")
    ap.add_argument("--data", default=None, help="its data folder (with --checkpoint)")
    ap.add_argument("--modes", default=None,
                    help="comma-separated mode numbers to run, 0 (one at a time) always included: 1 shared "
                         "prefixes, 2 racing, 3 both; default all")
    ap.add_argument("--device", default="cpu", help="cpu or cuda; default %(default)s")
    ap.add_argument("--out", default=None, help="working folder (default runs/bench_search_cost/<setting>[_quick])")
    ap.add_argument("--results", default=None,
                    help="results JSON (+ .md beside it); default benchmarks/results/bench_search_cost"
                         "[_<setting>][_trained][_quick].json (--smoke: none); '' for --out only")
    args = ap.parse_args(argv)
    if args.demo and (args.checkpoint or args.data):
        raise SystemExit("--demo names the model file and the data: leave --checkpoint and --data out")
    if bool(args.checkpoint) != bool(args.data):
        raise SystemExit("--checkpoint and --data go together")
    try:
        picked = sorted({int(i) for i in args.modes.split(",")} - {0}) if args.modes is not None else [1, 2, 3]
        modes = [MODES[0]] + [MODES[i] for i in picked if 0 < i < len(MODES) or ap.error(f"no mode {i}")]
    except ValueError:
        ap.error(f"--modes takes mode numbers 1-3 separated by commas, got '{args.modes}'")
    for value, option in ((args.eval_samples, "--eval-samples"), (args.confirm_samples, "--confirm-samples")):
        if value is not None and value < 1:
            ap.error(f"{option} must be a positive number of images, got {value}")
    console = make_console()
    s = setting(args.setting, args.quick, args.smoke)
    if args.eval_samples or args.confirm_samples:
        s = replace(s, eval_samples=args.eval_samples or s.eval_samples,
                    confirm_samples=args.confirm_samples or s.confirm_samples)
        s = replace(s, n_val=s.eval_samples + s.confirm_samples)
    out = Path(args.out or f"runs/bench_search_cost/{s.name}{'_quick' if args.quick else ''}")
    out.mkdir(parents=True, exist_ok=True)
    if args.demo:
        checkpoint, data, _ = demo_run(Path(args.demo))
    elif args.checkpoint:
        checkpoint, data = Path(args.checkpoint), Path(args.data)
    else:
        p = s.preset
        data = out / f"data_{s.n_val}"
        if not (data / "val").exists():
            write_demo_data(data, img_size=p.img_size, n_train=1, n_val=s.n_val, seed=0,
                            num_classes=p.num_classes, digit_frac=p.digit_frac)
        checkpoint = random_model_file(out / "model.safetensors", p.model, p.img_size, p.model_args, p.num_classes)
    trained = bool(args.demo or args.checkpoint)
    warm_up_search(SearchOptions(checkpoint=str(checkpoint), data=str(data), out=str(out / "warm_up"),
                                 budget_macs=s.budget, device=args.device, eval_samples=s.batch, confirm_samples=2,
                                 eval_batch_size=s.batch, settings=s.evolution, progress=False, shared_prefix=False))
    load_before = os.getloadavg()
    rows: List[Dict[str, Any]] = []
    fitness: Dict[str, Dict[Any, float]] = {}
    for name, shared, racing in modes:
        run_out = out / name.replace(" ", "_").replace("+", "and")
        opts = SearchOptions(checkpoint=str(checkpoint), data=str(data), out=str(run_out), budget_macs=s.budget,
                             device=args.device, eval_samples=s.eval_samples, confirm_samples=s.confirm_samples,
                             eval_batch_size=s.batch, settings=s.evolution, progress=False, shared_prefix=shared,
                             race=racing, resume=False)
        for f in ("search_state.json", "history.jsonl"):  # a fresh search each time
            (run_out / f).unlink(missing_ok=True)
        t0 = time.perf_counter()
        outcome = run_search(opts, console=make_console(quiet=True))
        wall = time.perf_counter() - t0
        result, counts = outcome.result, outcome.counts
        # each network's fitness, keyed with the images it was scored on (a raced-out network saw a slice)
        fitness[name] = {(c["network"], c.get("images")): c["metric"] for c in result.evaluated}
        rows.append({"mode": name, "shared_prefix": shared, "racing": racing, "wall_s": wall,
                     "pair_executions": counts.pairs_run, "pair_executions_alone": counts.pairs_asked,
                     # kept windows computed, and what scoring each network alone computes (where counted)
                     "window_executions": getattr(counts, "windows_run", None),
                     "window_executions_alone": getattr(counts, "windows_asked", None),
                     "networks": result.evaluations, "exhaustive": result.exhaustive,
                     "distinct_in_budget": result.distinct_in_budget,
                     "raced_out": sum(1 for c in result.evaluated if c.get("images") is not None),
                     "fitness_pick": result.best_config, "pick": outcome.confirmation.pick.config,
                     "pick_confirm_metric": outcome.confirmation.pick.confirm_metric})
        console.print(f"{name}: {wall:.1f} s")
        if s.name == "demo" and not result.exhaustive:
            console.print(f"[yellow]not the demo's exhaustive search: {result.evaluations} of "
                          f"{result.distinct_in_budget} networks in the budget scored (raise EXHAUSTIVE_POPULATION)[/]")
    base = rows[0]
    for r in rows:
        r["speedup_wall"] = base["wall_s"] / r["wall_s"]
        r["fewer_pair_executions"] = base["pair_executions"] / max(1, r["pair_executions"])
        r["fewer_window_executions"] = (base["window_executions"] / max(1, r["window_executions"])
                                        if r["window_executions"] and base["window_executions"] else None)
        r["same_pick"] = r["pick"] == base["pick"]
        r["same_fitness_pick"] = r["fitness_pick"] == base["fitness_pick"]
    if trained or args.smoke:  # each mode's pick on the val images no search saw: same pick, or within noise?
        report = ReportSplit(checkpoint, data, s.eval_samples, s.confirm_samples, s.batch, args.device)
        for r in rows:
            c = compare(r["mode"], report(r["pick"]), base["mode"], report(base["pick"]))
            r["report_images"], r["report_top1"] = len(report.indices), report(r["pick"]).metric()
            r["report_vs_alone"] = {"diff": c.diff, "low": c.low, "high": c.high, "mcnemar_p": c.mcnemar_p}
    # shared prefixes against the same search without them, racing against one network at a time: every
    # network both scored on the same images (a race's survivors are scored on every fitness image)
    diffs: Dict[str, Dict[str, Any]] = {}
    for name, shared, racing in modes[1:]:
        alone = next((n for n, sh, ra in modes if ra == racing and not sh), None) if shared else modes[0][0]
        if alone is not None:
            common = set(fitness[name]) & set(fitness[alone])
            diffs[name] = {"vs": alone, "networks": len(common),
                           "max_diff": max((abs(fitness[name][k] - fitness[alone][k]) for k in common),
                                           default=float("nan"))}
    for r in rows:
        r["max_fitness_diff"] = diffs[r["mode"]]["max_diff"] if r["mode"] in diffs else None
    doc = {"setting": {"name": s.name, "model": s.preset.model, "model_args": s.preset.model_args,
                       "img_size": s.preset.img_size, "budget": s.budget, "evolution": asdict(s.evolution),
                       "eval_samples": s.eval_samples, "confirm_samples": s.confirm_samples, "batch": s.batch,
                       "quick": args.quick},
           "checkpoint": str(checkpoint) if trained else "random weights", "data": str(data),
           "cpus": os.cpu_count(), "load_average_before": load_before, "load_average_after": os.getloadavg(),
           "rows": rows, "fitness_diffs": diffs}
    console.print(_table(doc))
    atomic_write_json(out / "results.json", doc, None, "results")
    results = args.results if args.results is not None else (
        "" if args.smoke else str(results_path(s.name, trained, args.quick)))
    if results:
        atomic_write_json(Path(results), doc, 1, "results")
        atomic_write_text(Path(results).with_suffix(".md"), _markdown(doc), "results")
    for line in _verdicts(doc):
        console.print(line, soft_wrap=True)  # one line each, whatever the width
    return rows


COLUMNS = ("mode", "wall s", "x faster", "block-pair executions", "x fewer", "kept-window executions", "x fewer",
           "raced out", "fitness pick", "confirmed pick", "same pick as one at a time",
           "report top-1 (minus one at a time's, 95% CI)")


def _cells(r: Dict[str, Any]) -> List[str]:
    """One row in COLUMNS' order (the terminal table and the markdown share them); a kept-window count the
    evaluator does not make reads '-'."""
    windows = r["window_executions"]
    same = "yes" if r["same_pick"] else "no"
    if not r["same_fitness_pick"]:
        same += " (fitness pick differs)"
    return [r["mode"], f"{r['wall_s']:.1f}", f"{r['speedup_wall']:.2f}", str(r["pair_executions"]),
            f"{r['fewer_pair_executions']:.2f}", "-" if windows is None else str(windows),
            "-" if r["fewer_window_executions"] is None else f"{r['fewer_window_executions']:.2f}",
            str(r["raced_out"]), format_config(r["fitness_pick"]), format_config(r["pick"]), same, _report(r)]


def _report(r: Dict[str, Any]) -> str:
    """The pick's top-1 on the report split and its difference to one at a time's (trained weights only)."""
    if "report_top1" not in r:
        return "-"
    d = r["report_vs_alone"]
    return f"{r['report_top1']:.2f} ({d['diff']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}])"


def _verdicts(doc: Dict[str, Any]) -> List[str]:
    """The racing line and (last) the shared-prefix line, for the modes that ran."""
    rows, lines = doc["rows"], []
    both = next((r for r in rows if r["shared_prefix"] and r["racing"]), None)
    if both is not None:
        lines.append(f"racing: {both['speedup_wall']:.2f}x faster in total (shared prefixes + racing), "
                     f"same pick: {'yes' if both['same_pick'] else 'no'}")
    tree = next((r for r in rows if r["shared_prefix"] and not r["racing"]), None)
    if tree is not None:
        d = doc["fitness_diffs"][tree["mode"]]["max_diff"]
        lines.append(f"shared-prefix evaluation: {tree['speedup_wall']:.2f}x faster, fitness "
                     f"{'identical' if d == 0 else 'NOT identical'} (max diff {d:.3g})")
    return lines


def _title(doc: Dict[str, Any]) -> str:
    s, base = doc["setting"], doc["rows"][0]
    scope = (" (exhaustive)" if base["exhaustive"] else
             f" (not exhaustive: {base['distinct_in_budget']} in the budget)")
    return (f"search cost, {s['name']} setting: {base['networks']} networks{scope} at {s['budget']} MACs, "
            f"{s['eval_samples']} fitness images, {doc['checkpoint']}")


def _table(doc: Dict[str, Any]):
    return results_table(_title(doc), COLUMNS, [_cells(r) for r in doc["rows"]],
                         caption="block-pair and kept-window executions: of the fitness scoring; x faster / x "
                                 "fewer: against one network at a time; same pick: the confirmed pick (best.yaml's); "
                                 "report top-1: the pick on the val images no search saw (trained weights only)")


def _markdown(doc: Dict[str, Any]) -> str:
    before, after = (", ".join(f"{v:.1f}" for v in doc[k]) for k in ("load_average_before", "load_average_after"))
    lines = [f"# {_title(doc)}", "", f"{doc['cpus']} CPUs; load average (1, 5, 15 min) before the timed searches "
                                     f"{before}, after {after}.", ""]
    lines += markdown_table(COLUMNS, [_cells(r) for r in doc["rows"]])
    lines += [""] + [f"- {name} vs {d['vs']}: max fitness difference {d['max_diff']:.3g} over {d['networks']} "
                     f"networks" for name, d in doc["fitness_diffs"].items()]
    lines += [""] + _verdicts(doc)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main(sys.argv[1:])
