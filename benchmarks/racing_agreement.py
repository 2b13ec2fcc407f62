"""Does racing keep the pick? The same `sparsevit search` of a trained model with and without `--race`, for
several evolution seeds at one budget: each search's fitness pick and confirmed pick (best.yaml's), whether
the raced search picked the same network, and both picks' top-1 on the val images neither search saw (the
report split). Never a test (`make racing-agreement`; tests/test_bench_smoke.py runs `--smoke` only).

Setting: a finished `sparsevit demo` folder (`--demo`, default runs/demo: its adapted model
adapt/model.safetensors, its data/ and its demo_preset.json), searched as the demo searches it
(`workflow.evolution_settings`: the preset's population, generations, parents and children; its MAC budget,
fitness and confirmation images) with the evolution seed 0..N-1 (`--seeds N`), shared prefixes on in both
(they change no score), after one untimed warm-up search. Both searches of a seed draw the same splits (split
seed 0), so the report split (`evaluate.search_splits(...).rest`) is the same for both and unseen by either.

Per seed: raced pick - full pick on the report split with its paired 95% bootstrap interval (and McNemar's
p); pooled over seeds: each report image's raced-minus-full top-1 averaged over the seeds, one bootstrap over
images (what a user running either with some seed should expect). Each search's result is kept under --out
(a rerun reuses finished seeds). Results: --out/results.json and benchmarks/results/racing_agreement.json
(+ .md). The last line reads `racing kept the pick in K/N seeds (fitness pick K'/N); report top-1 raced -
full: D [LOW, HIGH] points pooled over N seeds`.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from common import ReportSplit, demo_run, markdown_table, random_model_file, results_table, warm_up_search
from sparsevit_cli.commands.search import SearchOptions, run_search
from sparsevit_cli.commands.workflow import PRESETS, evolution_settings
from sparsevit_cli.data.demo import write_demo_data
from sparsevit_cli.io import atomic_write_json, atomic_write_text, make_console
from sparsevit_cli.layers import format_config
from sparsevit_cli.search.confirm import compare
from sparsevit_cli.search.stats import mean_bootstrap

RESULTS = Path(__file__).resolve().parent / "results"
#: images per batch of the searches' scoring (the CLI's default; racing's slices are whole batches)
BATCH = 64
#: --smoke: the quick preset's micro Swin with random weights, 6 networks per search, 8 fitness images in
#: batches of 2 (the race has slices of 2, 4 and 8), 4 confirmation and 4 report images
SMOKE = replace(PRESETS["quick"], n_val=16, population=4, generations=2, parents=2, children=1, eval_samples=8,
                confirm_samples=4)
SMOKE_BATCH = 2


def smoke_demo(folder: Path) -> Path:
    """A demo folder of the SMOKE preset with random weights (the smoke run's stand-in for a trained one)."""
    p = SMOKE
    if not (folder / "data" / "val").exists():
        write_demo_data(folder / "data", img_size=p.img_size, n_train=1, n_val=p.n_val, seed=0,
                        num_classes=p.num_classes, digit_frac=p.digit_frac)
    random_model_file(folder / "adapt" / "model.safetensors", p.model, p.img_size, p.model_args, p.num_classes)
    atomic_write_json(folder / "demo_preset.json", {"preset": "quick", **asdict(p)})
    return folder


def search_once(checkpoint: Path, data: Path, out: Path, p, seed: int, race: bool, batch: int,
                device: str) -> Dict[str, Any]:
    """One search (or its recorded result, when this folder finished the same search before): picks, wall time,
    drops."""
    record = out / "run.json"
    same = {"checkpoint": str(Path(checkpoint).resolve()), "budget": p.budget, "eval_samples": p.eval_samples,
            "batch": batch, "settings": asdict(evolution_settings(p, seed=seed))}
    if record.exists():
        run = json.loads(record.read_text())
        if {k: run.get(k) for k in same} != same:
            raise SystemExit(f"'{record}' records another search (model, budget, images or settings): use a fresh "
                             f"--out")
        return run
    for f in ("search_state.json", "history.jsonl"):  # an interrupted search starts over: its wall time counts
        (out / f).unlink(missing_ok=True)
    opts = SearchOptions(checkpoint=str(checkpoint), data=str(data), out=str(out), budget_macs=p.budget,
                         device=device, eval_samples=p.eval_samples,
                         confirm_samples=p.confirm_samples or p.eval_samples, eval_batch_size=batch,
                         settings=evolution_settings(p, seed=seed), progress=False, race=race)
    t0 = time.perf_counter()
    outcome = run_search(opts, console=make_console(quiet=True))
    wall = time.perf_counter() - t0
    result = outcome.result
    run = {**same, "seed": seed, "race": race, "wall_s": wall, "networks": result.evaluations,
           "raced_out": sum(1 for c in result.evaluated if c.get("images") is not None),
           "pair_executions": outcome.counts.pairs_run,
           "fitness_pick": result.best_config, "pick": outcome.confirmation.pick.config,
           "pick_confirm_metric": outcome.confirmation.pick.confirm_metric,
           "pick_cost": outcome.confirmation.pick.cost, "report_images": outcome.splits.rest}
    atomic_write_json(record, run, 1, "run record")
    return run


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--demo", default="runs/demo",
                    help="a finished `sparsevit demo` folder (its adapted model, data and preset); "
                         "default %(default)s")
    ap.add_argument("--seeds", type=int, default=10,
                    help="evolution seeds 0..N-1 (the demo's trained default: about 1 minute per seed on 2 cores, "
                         "both searches and the report scoring); default %(default)s")
    ap.add_argument("--batch", type=int, default=BATCH, help="images per batch of the searches; default %(default)s")
    ap.add_argument("--device", default="cpu", help="cpu or cuda; default %(default)s")
    ap.add_argument("--out", default="runs/racing_agreement", help="working folder; default %(default)s")
    ap.add_argument("--results", default=None,
                    help="results JSON (+ .md beside it); default benchmarks/results/racing_agreement.json "
                         "(--smoke: none); '' for --out only")
    ap.add_argument("--smoke", action="store_true",
                    help="a micro Swin with random weights, 2 seeds (the tests run it)")
    args = ap.parse_args(argv)
    if args.seeds < 1 or args.batch < 1:
        ap.error("--seeds and --batch must be positive")
    out = Path(args.out)
    if args.smoke:
        args.seeds, args.batch = 2, SMOKE_BATCH
        folder = smoke_demo(out / "smoke_demo")
    else:
        folder = Path(args.demo)
    checkpoint, data, p = demo_run(folder)
    console = make_console()

    if not all((out / f"seed{seed}" / kind / "run.json").exists() for seed in range(args.seeds)
               for kind in ("full", "raced")):  # a search to time: its first-call costs are paid untimed first
        warm_up_search(SearchOptions(checkpoint=str(checkpoint), data=str(data), out=str(out / "warm_up"),
                                     budget_macs=p.budget, device=args.device, eval_samples=args.batch,
                                     confirm_samples=2, eval_batch_size=args.batch,
                                     settings=evolution_settings(p), progress=False, shared_prefix=False))
    runs: List[Dict[str, Dict[str, Any]]] = []
    for seed in range(args.seeds):
        pair = {kind: search_once(checkpoint, data, out / f"seed{seed}" / kind, p, seed, kind == "raced",
                                  args.batch, args.device) for kind in ("full", "raced")}
        runs.append(pair)
        console.print(f"seed {seed}: full {pair['full']['wall_s']:.0f} s, raced {pair['raced']['wall_s']:.0f} s, "
                      f"same pick: {'yes' if pair['full']['pick'] == pair['raced']['pick'] else 'no'}")

    # both picks of every seed on the report split (the same images for every search: split seed 0)
    scores = ReportSplit(checkpoint, data, p.eval_samples, p.confirm_samples or p.eval_samples, args.batch,
                         args.device)
    report = scores.indices
    if any(r[k]["report_images"] != report for r in runs for k in r):
        raise SystemExit("a search's report split differs from this run's (another data folder?): use a fresh --out")

    rows: List[Dict[str, Any]] = []
    for seed, pair in enumerate(runs):
        full, raced = pair["full"], pair["raced"]
        c = compare("raced pick", scores(raced["pick"]), "full pick", scores(full["pick"]), seed)
        rows.append({"seed": seed,
                     **{f"{kind}_{key}": pair[kind][key] for kind in ("full", "raced")
                        for key in ("fitness_pick", "pick", "wall_s", "networks", "raced_out", "pair_executions")},
                     "full_report_top1": scores(full["pick"]).metric(),
                     "raced_report_top1": scores(raced["pick"]).metric(),
                     "same_pick": raced["pick"] == full["pick"],
                     "same_fitness_pick": raced["fitness_pick"] == full["fitness_pick"],
                     "raced_minus_full": {"diff": c.diff, "low": c.low, "high": c.high, "mcnemar_p": c.mcnemar_p}})
    pooled = mean_bootstrap(np.mean([scores(r["raced_pick"]).correct for r in rows], axis=0) * 100.0,
                            np.mean([scores(r["full_pick"]).correct for r in rows], axis=0) * 100.0)
    doc = {"demo": str(folder), "checkpoint": str(checkpoint), "budget": p.budget,
           "evolution": asdict(evolution_settings(p)), "eval_samples": p.eval_samples,
           "confirm_samples": p.confirm_samples or p.eval_samples, "report_images": len(report), "seeds": args.seeds,
           "rows": rows,
           "same_pick": sum(r["same_pick"] for r in rows),
           "same_fitness_pick": sum(r["same_fitness_pick"] for r in rows),
           "pooled_raced_minus_full": {"diff": pooled.diff, "low": pooled.low, "high": pooled.high},
           "wall_ratio_mean": statistics.mean(r["full_wall_s"] / r["raced_wall_s"] for r in rows)}
    console.print(_table(doc))
    atomic_write_json(out / "results.json", doc, 1, "results")
    results = args.results if args.results is not None else (
        "" if args.smoke else str(RESULTS / "racing_agreement.json"))
    if results:
        atomic_write_json(Path(results), doc, 1, "results")
        atomic_write_text(Path(results).with_suffix(".md"), _markdown(doc), "results")
    console.print(_summary(doc), soft_wrap=True)  # one line, as the docstring says, whatever the width
    return doc


COLUMNS = ("seed", "full: fitness pick", "full: pick", "full: report top-1", "raced: fitness pick", "raced: pick",
           "raced: report top-1", "raced out", "same pick", "raced - full (95% CI)", "full s", "raced s")


def _cells(r: Dict[str, Any]) -> List[str]:
    d = r["raced_minus_full"]
    same = "yes" if r["same_pick"] else "no"
    if not r["same_fitness_pick"]:
        same += " (fitness pick differs)"
    return [str(r["seed"]), format_config(r["full_fitness_pick"]), format_config(r["full_pick"]),
            f"{r['full_report_top1']:.2f}", format_config(r["raced_fitness_pick"]), format_config(r["raced_pick"]),
            f"{r['raced_report_top1']:.2f}", f"{r['raced_raced_out']}/{r['raced_networks']}", same,
            f"{d['diff']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]", f"{r['full_wall_s']:.0f}",
            f"{r['raced_wall_s']:.0f}"]


def _title(doc: Dict[str, Any]) -> str:
    return (f"racing vs the full search: {doc['demo']}, {doc['budget']} MACs, {doc['seeds']} evolution seeds; "
            f"report top-1 on {doc['report_images']} val images neither search saw")


def _summary(doc: Dict[str, Any]) -> str:
    p = doc["pooled_raced_minus_full"]
    return (f"racing kept the pick in {doc['same_pick']}/{doc['seeds']} seeds (fitness pick "
            f"{doc['same_fitness_pick']}/{doc['seeds']}); report top-1 raced - full: {p['diff']:+.2f} "
            f"[{p['low']:+.2f}, {p['high']:+.2f}] points pooled over {doc['seeds']} seeds")


def _table(doc: Dict[str, Any]):
    return results_table(_title(doc), COLUMNS, [_cells(r) for r in doc["rows"]],
                         caption=f"pick: the confirmed pick (best.yaml's); raced - full: paired difference on the "
                                 f"report split, 95% bootstrap interval; full s / raced s: wall time of each search "
                                 f"(racing {doc['wall_ratio_mean']:.2f}x faster on average)")


def _markdown(doc: Dict[str, Any]) -> str:
    lines = [f"# {_title(doc)}", ""] + markdown_table(COLUMNS, [_cells(r) for r in doc["rows"]])
    lines += ["", f"- {_summary(doc)}", f"- the raced search's wall time: {doc['wall_ratio_mean']:.2f}x less "
                                       f"on average (shared prefixes on in both)"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main(sys.argv[1:])
