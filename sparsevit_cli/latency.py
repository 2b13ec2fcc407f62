"""Latency lookup tables for any method, calibrated against whole-model measurements.

A method's table (`Method.build_latency_table`) times the model's parts in isolation: each part runs on
hot caches, again and again on the same data, so the sum of parts misses a few to twenty percent of what
the whole model costs, mostly in one direction (more for PSViT's many small blocks than for Swin). One
factor, fitted here by least relative squares on a few whole-model measurements of configs drawn from the
search space, absorbs that systematic part; what remains is timing noise. The fit and its measurements
are stored in the table, so a saved table explains its own correction.
"""
from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path
from typing import Any, Dict, Sequence

import torch
import torch.nn as nn

from .errors import UserError, first_line
from .io import read_user_text
from .timing import time_models


def calibrated_table(method, model: nn.Module, backbone: nn.Module, x: torch.Tensor, space, calibration: int = 6,
                     warmup: int = 2, repeats: int = 5, seed: int = 12345) -> Dict[str, Any]:
    """Build `method`'s table for `backbone` on x's device, then fit its correction factor on `calibration`
    measured random configs of `space` (the whole `model` is timed: the latency a user deploys). The last
    calibration config stays applied: callers apply the config they run next, as every caller does."""
    table = method.build_latency_table(backbone, x, warmup=warmup, repeats=repeats)
    rng = random.Random(seed)
    points = []
    for _ in range(calibration):
        config = space.decode(space.sample(rng))
        method.apply(backbone, config)
        measured = time_models({"m": model}, x, warmup=warmup, repeats=repeats)["m"]
        points.append({"config": config, "predicted_ms": method.predict_latency(table, config),
                       "measured_ms": measured})
    table["calibration"] = points
    table["calibration_scale"] = _fit_scale(points)
    table["method"] = method.name  # a table of one method's parts means nothing to another
    return table


def _fit_scale(points) -> float:
    """argmin_s sum((s * predicted - measured) / measured)^2, kept within [0.5, 2] (a few noisy timings of a
    tiny model can fit anything; a correction beyond 2x would not be one)."""
    num = sum(p["predicted_ms"] / p["measured_ms"] for p in points)
    den = sum((p["predicted_ms"] / p["measured_ms"]) ** 2 for p in points)
    return min(2.0, max(0.5, num / den)) if den > 0 else 1.0


def predict_latency(method, table: Dict[str, Any], config) -> float:
    """Milliseconds of one forward under `config`: the method's sum of parts, calibrated."""
    return table.get("calibration_scale", 1.0) * method.predict_latency(table, config)


def read_latency_table(path: str | os.PathLike, method, img_size: int, batch_size: int,
                       probe_configs: Sequence) -> Dict[str, Any]:
    """A saved table, checked before a search relies on it: every way of not being this model's table (a
    directory, unreadable, not JSON, another method, image size or batch, parts that `probe_configs` need
    but it lacks) is one UserError line naming the file."""
    text = read_user_text(path, "latency table")  # a directory, unreadable, binary: one line naming it
    what = f"latency table '{Path(path)}'"
    try:
        table = json.loads(text)
    except ValueError as e:
        raise UserError(f"{what} is not a JSON latency table: {first_line(e)}") from None
    if not isinstance(table, dict):
        raise UserError(f"{what} is not a JSON latency table (a {type(table).__name__}, not a mapping)")
    if table.get("method", method.name) != method.name:
        raise UserError(f"{what} was built for method {table['method']}, the model runs {method.name}")
    if table.get("img_size") != img_size or table.get("batch_size") != batch_size:
        raise UserError(f"{what} was built for img_size {table.get('img_size')}, batch {table.get('batch_size')}, "
                        f"not {img_size}, {batch_size}")
    for config in probe_configs:
        try:
            ms = float(predict_latency(method, table, config))
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
            raise UserError(f"{what} does not fit this model ({type(e).__name__} {first_line(e)}); delete it "
                            f"to rebuild it") from None
        if not math.isfinite(ms):
            raise UserError(f"{what} predicts {ms} ms for {config}; delete it to rebuild it")
    return table
