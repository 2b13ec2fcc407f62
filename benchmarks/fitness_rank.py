"""Which fitness ranks a search's leaders best? On an adapted classifier (a model file, e.g. the demo's
runs/demo/adapt/model.safetensors), draw distinct in-budget networks at random, score each on the fitness
split (top-1 and mean log-probability of the true class) and on the confirmation split (top-1), and report
Spearman's rank correlation of each fitness with the confirmation top-1 among the top candidates by that
fitness (and among all). The fitness that ranks the leaders more like unseen images do is the better
default (`sparsevit search --fitness`).

    python benchmarks/fitness_rank.py --checkpoint runs/demo/adapt/model.safetensors --data runs/demo/data
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from sparsevit_cli.evaluate import evaluate_images, search_splits
from sparsevit_cli.model_file import load_model_file
from sparsevit_cli.search.evolution import Budget, random_search
from sparsevit_cli.search.space import load_space
from sparsevit_cli.search.stats import spearman
from sparsevit_cli.tasks import backbone_of, get_task


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--budget", type=float, default=0.5, help="MAC budget, fraction of dense")
    ap.add_argument("--candidates", type=int, default=40, help="distinct in-budget networks drawn")
    ap.add_argument("--top", type=int, default=10, help="leaders the correlation is measured among")
    ap.add_argument("--fitness-samples", type=int, default=800)
    ap.add_argument("--confirm-samples", type=int, default=800)
    ap.add_argument("--split-seeds", type=int, default=3, help="repeat over this many fitness/confirmation splits")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    model, method, meta = load_model_file(args.checkpoint)
    model.eval()
    backbone = backbone_of(model)
    task = get_task(meta.task)
    img_size = meta.image_size
    val = task.dataset(args.data, "val", img_size, train=False)
    space = load_space(meta.space or method.default_space, group_sizes=method.group_sizes(backbone))
    dense = method.macs(backbone, method.dense_config(backbone), img_size)
    dev = torch.device("cpu")
    cache: Dict[str, Any] = {}

    def per_image(config):
        key = json.dumps(method.effective(backbone, config, img_size))
        if key not in cache:  # every val image once per network; splits are index sets into it
            cache[key] = evaluate_images(model, method, config, val, task, 100, dev, list(range(len(val))))
        return cache[key]

    drawn = random_search(space, lambda c: 0.0, lambda c: method.macs(backbone, c, img_size) / dense,
                          Budget(max_cost=args.budget), n=args.candidates, seed=0,
                          network=lambda c: method.effective(backbone, c, img_size))
    configs = [c["config"] for c in drawn.evaluated]
    runs = []
    for seed in range(args.split_seeds):
        splits = search_splits(len(val), args.fitness_samples, args.confirm_samples, seed)
        rows = []
        for config in configs:
            s = per_image(config)
            fit = [s.correct[i] for i in splits.fitness], [s.logprob[i] for i in splits.fitness]
            rows.append({"top1": 100.0 * sum(fit[0]) / len(fit[0]), "logprob": sum(fit[1]) / len(fit[1]),
                         "confirm": 100.0 * sum(s.correct[i] for i in splits.confirmation) / len(splits.confirmation)})
        run = {"split_seed": seed}
        for fitness in ("logprob", "top1"):
            leaders = sorted(rows, key=lambda r: -r[fitness])[: args.top]
            run[fitness] = {"spearman_top": spearman([r[fitness] for r in leaders], [r["confirm"] for r in leaders]),
                            "spearman_all": spearman([r[fitness] for r in rows], [r["confirm"] for r in rows]),
                            "leader_confirm": leaders[0]["confirm"],
                            "best_confirm": max(r["confirm"] for r in rows)}
        runs.append(run)
        print(json.dumps(run))
    summary = {f: {k: sum(r[f][k] for r in runs) / len(runs) for k in runs[0][f]} for f in ("logprob", "top1")}
    result = {"checkpoint": args.checkpoint, "candidates": len(configs), "top": args.top, "budget": args.budget,
              "fitness_samples": args.fitness_samples, "confirm_samples": args.confirm_samples, "runs": runs,
              "mean": summary}
    print(json.dumps({"mean": summary}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
