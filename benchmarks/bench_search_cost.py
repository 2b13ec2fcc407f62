"""What a search costs: the same `sparsevit search` with and without shared-prefix evaluation (scoring a
chunk of networks as a tree over their per-block kept-window counts, `evaluate.evaluate_records_many`) and
with and without racing on growing slices (`search/racing.py`). Never a test (`make bench-search-cost`;
tests/test_bench_smoke.py runs `--smoke` only).

Setting: the demo's default model (Swin, embed 32, depths [2, 4], 2x2-token windows at 64 px: 64 windows in
stage 1, 16 per block in stage 2), its default search space and 50% MAC budget, on the demo's val images;
random weights unless --checkpoint names a trained model file (e.g. a demo run's adapt/model.safetensors with
--data its data folder): the cost does not depend on the weights, but racing's drops (and so whether it keeps
the pick) do, so read racing's pick on a trained model only.

Per mode: wall time of the whole search (fitness scoring, confirmation, outputs), block-pair executions of
the fitness scoring, the pick (best fitness, and the confirmed pick), and for shared prefixes the largest
fitness difference to scoring each network alone over every network both scored (0: identical). Results:
--out/results.json and benchmarks/results/bench_search_cost.json (+ .md). The last line reads
`shared-prefix evaluation: N.NNx faster, fitness identical (max diff D)`.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import timm
import torch
from rich.table import Table

from sparsevit_cli import sparsify
from sparsevit_cli.commands.search import SearchOptions, run_search
from sparsevit_cli.commands.workflow import PRESETS
from sparsevit_cli.data.demo import write_demo_data
from sparsevit_cli.io import atomic_write_json, atomic_write_text, make_console
from sparsevit_cli.layers import format_config
from sparsevit_cli.model_file import save_model
from sparsevit_cli.search.evolution import EvolutionSettings
from sparsevit_cli.tasks import build_task_model

RESULTS = Path(__file__).resolve().parent / "results"
#: (name, shared prefixes, racing)
MODES = [("one network at a time", False, False), ("shared prefixes", True, False), ("racing", False, True),
         ("shared prefixes + racing", True, True)]


def setting(args) -> Dict[str, Any]:
    p = PRESETS["default"]
    if args.smoke:
        return dict(img_size=64, model_args=dict(embed_dim=16, depths=[2, 2], num_heads=[1, 2], window_size=2,
                                                 global_pool="max"),
                    n_val=8, eval_samples=4, confirm_samples=2, population=8, generations=1, parents=2,
                    children=2, budget="60%", batch=2)
    quick = args.quick
    return dict(img_size=p.img_size, model_args=dict(p.model_args), n_val=320 if quick else 1600,
                eval_samples=256 if quick else 800, confirm_samples=64 if quick else 800,
                population=64, generations=1, parents=p.parents, children=p.children, budget=p.budget, batch=64)


def model_file(s: Dict[str, Any], out: Path, num_classes: int = 10) -> Path:
    """A model file of the setting's Swin with random weights (the cost does not depend on them)."""
    path = out / "model.safetensors"
    if not path.exists():
        torch.manual_seed(0)
        backbone = sparsify(timm.create_model("swin_tiny_patch4_window7_224", img_size=s["img_size"],
                                              **s["model_args"]))
        save_model(path, build_task_model(backbone, "classification", num_classes),
                   {"method": "sparsevit", "model": "swin_tiny_patch4_window7_224", "model_args": s["model_args"],
                    "img_size": s["img_size"], "task": "classification", "num_classes": num_classes,
                    "sparsity": [[0.0] * ((d + 1) // 2) for d in s["model_args"]["depths"]]})
    return path


def main(argv: Optional[List[str]] = None) -> List[Dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/bench_search_cost")
    ap.add_argument("--quick", action="store_true", help="256 fitness images (<= 5 minutes on 2 cores)")
    ap.add_argument("--smoke", action="store_true", help="micro model, a few images (the tests run it)")
    ap.add_argument("--checkpoint", default=None, help="a trained model file to search (default: random weights)")
    ap.add_argument("--data", default=None, help="its data folder (with --checkpoint)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--results", default=str(RESULTS / "bench_search_cost.json"))
    args = ap.parse_args(argv)
    console = make_console()
    s = setting(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data) if args.data else out / "data"
    if args.data is None and not (data / "val").exists():
        write_demo_data(data, img_size=s["img_size"], n_train=1, n_val=s["n_val"], seed=0, digit_frac=(0.25, 0.4))
    checkpoint = Path(args.checkpoint) if args.checkpoint else model_file(s, out)
    settings = EvolutionSettings(population=s["population"], generations=s["generations"], parents=s["parents"],
                                 mutations=s["children"], crossovers=s["children"], seed=0)
    rows: List[Dict[str, Any]] = []
    histories: Dict[str, Dict[str, float]] = {}
    for name, shared, racing in (MODES[:2] if args.smoke else MODES):  # smoke: the tree against one at a time
        run_out = out / name.replace(" ", "_").replace("+", "and")
        opts = SearchOptions(checkpoint=str(checkpoint), data=str(data), out=str(run_out), budget_macs=s["budget"],
                             device=args.device, eval_samples=s["eval_samples"],
                             confirm_samples=s["confirm_samples"], eval_batch_size=s["batch"], settings=settings,
                             progress=False, shared_prefix=shared, race=racing, resume=False)
        for f in ("search_state.json", "history.jsonl"):  # a fresh search each time
            (run_out / f).unlink(missing_ok=True)
        t0 = time.perf_counter()
        outcome = run_search(opts, console=make_console(quiet=True))
        wall = time.perf_counter() - t0
        result = outcome.result
        histories[name] = {c["network"]: c["metric"] for c in result.evaluated if c.get("images") is None}
        rows.append({"mode": name, "shared_prefix": shared, "racing": racing, "wall_s": wall,
                     "pair_executions": outcome.counts.pairs_run, "pair_executions_alone": outcome.counts.pairs_asked,
                     "networks": result.evaluations, "exhaustive": result.exhaustive,
                     "raced_out": sum(1 for c in result.evaluated if c.get("images") is not None),
                     "fitness_pick": result.best_config, "pick": outcome.confirmation.pick.config,
                     "pick_report_metric": outcome.confirmation.pick.confirm_metric})
    base = rows[0]
    for r in rows:
        r["speedup_wall"] = base["wall_s"] / r["wall_s"]
        r["fewer_pair_executions"] = base["pair_executions"] / max(1, r["pair_executions"])
        r["same_pick"] = r["pick"] == base["pick"] and r["fitness_pick"] == base["fitness_pick"]
    alone, tree = histories[MODES[0][0]], histories[MODES[1][0]]
    common = set(alone) & set(tree)
    max_diff = max((abs(alone[k] - tree[k]) for k in common), default=float("nan"))
    table = Table(title=f"search cost: {base['networks']} networks"
                        f"{' (exhaustive)' if base['exhaustive'] else ''}, {s['eval_samples']} fitness images")
    for col in ("mode", "wall s", "x faster", "block-pair runs", "x fewer", "raced out", "pick", "same pick"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["mode"], f"{r['wall_s']:.1f}", f"{r['speedup_wall']:.2f}", str(r["pair_executions"]),
                      f"{r['fewer_pair_executions']:.2f}", str(r["raced_out"]), format_config(r["pick"]),
                      "yes" if r["same_pick"] else "no")
    console.print(table)
    doc = {"setting": {k: v for k, v in s.items()}, "checkpoint": str(args.checkpoint or "random weights"),
           "rows": rows, "max_fitness_diff": max_diff, "networks_compared": len(common)}
    atomic_write_json(out / "results.json", doc, None, "results")
    if not args.smoke:
        atomic_write_json(Path(args.results), doc, None, "results")
        lines = ["| mode | wall s | x faster | block-pair executions | x fewer | raced out | same pick |",
                 "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['mode']} | {r['wall_s']:.1f} | {r['speedup_wall']:.2f} | {r['pair_executions']} | "
                  f"{r['fewer_pair_executions']:.2f} | {r['raced_out']} | {'yes' if r['same_pick'] else 'no'} |"
                  for r in rows]
        atomic_write_text(Path(args.results).with_suffix(".md"), "\n".join(lines) + "\n", "results")
    identical = "identical" if max_diff == 0 else "NOT identical"
    console.print(f"shared-prefix evaluation: {rows[1]['speedup_wall']:.2f}x faster, fitness {identical} "
                  f"(max diff {max_diff:.3g})")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
