"""The statistics a search reports its pick with: paired bootstrap intervals over images, the exact McNemar
test for top-1, and Spearman's rank correlation (how well a fitness ranks the leaders).

Everything here works on per-image scores (`tasks.ImageScores`): a metric is recomputed on a resample of
the images given as a weight per image (how often the resample drew it), so top-1, mIoU and COCO AP are
all bootstrapped the same way, by resampling images and recomputing the metric.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import numpy as np

#: bootstrap resamples per comparison: plenty for a 95% percentile interval of a mean (top-1, mIoU); COCO
#: AP recomputes a whole COCOeval per resample, so it gets fewer (its interval's ends are then rougher)
RESAMPLES = 2000
RESAMPLES_SLOW = 100
#: the level of every reported interval
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A paired difference (a - b, metric points) with its bootstrap interval (95% unless `level` says)."""

    diff: float
    low: float
    high: float
    resamples: int
    level: float = LEVEL

    def holds_zero(self) -> bool:
        return self.low <= 0.0 <= self.high


def resample_weights(n: int, resamples: int, seed: int = 0) -> np.ndarray:
    """(resamples, n) counts: how often each of n images is drawn in each bootstrap resample of n draws."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=resamples)


def paired_bootstrap(metric_a: Callable[[Optional[np.ndarray]], float],
                     metric_b: Callable[[Optional[np.ndarray]], float], n: int, resamples: int = RESAMPLES,
                     seed: int = 0, level: float = LEVEL) -> Interval:
    """metric_a(None) - metric_b(None) and the percentile interval of that difference over `resamples`
    paired resamples of the n images (both metrics see the same resample). `metric_x(weights)` recomputes a
    metric with each image counted `weights[i]` times."""
    diff = metric_a(None) - metric_b(None)
    if n == 0 or resamples < 1:
        return Interval(diff, diff, diff, 0, level)
    diffs = np.array([metric_a(w) - metric_b(w) for w in resample_weights(n, resamples, seed)])
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(diffs, [tail, 100.0 - tail])
    return Interval(float(diff), float(low), float(high), int(resamples), level)


def mean_bootstrap(values_a: Sequence[float], values_b: Sequence[float], resamples: int = RESAMPLES,
                   seed: int = 0, level: float = LEVEL) -> Interval:
    """`paired_bootstrap` of two per-image values' means, vectorised (top-1: values are 0/100 per image)."""
    a, b = np.asarray(values_a, dtype=np.float64), np.asarray(values_b, dtype=np.float64)
    d = a - b
    n = len(d)
    if n == 0:
        return Interval(0.0, 0.0, 0.0, 0, level)
    w = resample_weights(n, resamples, seed)
    diffs = w @ d / n
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(diffs, [tail, 100.0 - tail])
    return Interval(float(d.mean()), float(low), float(high), int(resamples), level)


def mcnemar_exact(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> float:
    """Two-sided exact McNemar p: a binomial test (p = 1/2) on the discordant pairs, the images exactly one
    of the two classifiers gets right. 1.0 when they never disagree."""
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    only_a = int((a & ~b).sum())
    only_b = int((~a & b).sum())
    return binomial_two_sided(min(only_a, only_b), only_a + only_b)


def binomial_two_sided(k: int, n: int) -> float:
    """P(X <= k or X >= n - k) for X ~ Binomial(n, 1/2), k <= n/2: the exact two-sided test of a fair split
    (symmetric, so twice the lower tail, capped at 1). Exact integer arithmetic: no rounding of small tails."""
    if n == 0:
        return 1.0
    k = min(k, n - k)
    tail = sum(math.comb(n, i) for i in range(k + 1))
    return min(1.0, 2 * tail / 2 ** n)


def ranks(values: Sequence[float]) -> List[float]:
    """1-based ranks, ties sharing their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return out


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (Pearson's of the tie-averaged ranks); NaN when either side is constant
    or there are fewer than two pairs."""
    if len(x) != len(y):
        raise ValueError(f"spearman needs pairs, got {len(x)} and {len(y)} values")
    if len(x) < 2:
        return float("nan")
    rx, ry = np.array(ranks(x)), np.array(ranks(y))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt(float((rx ** 2).sum() * (ry ** 2).sum()))
    return float((rx * ry).sum() / denom) if denom > 0 else float("nan")


def describe(interval: Interval, what: str, unit: str = "points") -> str:
    """The interval in words: a gain shown, a loss shown, or within noise (the words the README uses)."""
    text = f"{interval.diff:+.2f} {unit} ({interval.level * 100:.3g}% CI {interval.low:+.2f}..{interval.high:+.2f})"
    if interval.holds_zero():
        return f"{what}: {text}: within noise, no difference shown"
    return f"{what}: {text}: " + ("holds, better" if interval.low > 0 else "holds, worse")


def family_level(comparisons: int, level: float = LEVEL) -> float:
    """Bonferroni: the level at which each of `comparisons` intervals must exclude 0 so that, when none of the
    differences is real, the chance that any of them does stays below 1 - `level` (the best of several
    candidates has the largest of several noisy differences: its plain interval is optimistic)."""
    return 1.0 - (1.0 - level) / max(1, comparisons)
