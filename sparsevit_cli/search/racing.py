"""Racing on growing subsets (successive halving with confidence bounds, as in F-Race and Hoeffding/Bernstein
races): every candidate of a round is scored on a first slice of the fitness images; a candidate that is
shown worse than the leader on the images seen so far stops there, the others go on to the next, larger
slice, until the survivors have seen every fitness image.

Every candidate in the race has seen the same images, so a candidate is compared with the leader (the highest
mean so far) image by image: the bound is on the mean of its per-image differences to the leader, mean +- t *
sd / sqrt(n) (Student's t, two-sided, n - 1 degrees of freedom), and the candidate stops when the upper end is
below 0. Paired, the differences cancel what is hard or easy about each image, which two separate intervals
(one per candidate) carry: on the demo's trained supernet the separate intervals stopped none of 93 networks.
Each comparison is at `level` Bonferroni-corrected over the candidates compared in the round (the
chance that any candidate at least as good as the leader stops stays below 1 - level). The race needs a
fitness that is a mean over images (classification's log-probability or top-1); a survivor's fitness is
computed from its records over all fitness images, the same number as scoring it without racing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Sequence

import numpy as np

#: the level of a round's comparisons with the leader, together (Bonferroni): a candidate stops only when
#: its paired difference to the leader is below 0 at this level
RACE_LEVEL = 0.99
#: the shares of the fitness images after which the race drops candidates (the last is 1: every image)
RACE_SLICES = (0.25, 0.5, 1.0)


@dataclass(frozen=True)
class Bound:
    mean: float
    low: float
    high: float
    n: int


def bound(values: Sequence[float], level: float = RACE_LEVEL) -> Bound:
    """Mean and two-sided t interval of per-image values (no interval from fewer than 2 values)."""
    from scipy.stats import t

    v = np.asarray(values, dtype=np.float64)
    n = len(v)
    mean = float(v.mean()) if n else float("nan")
    if n < 2:
        return Bound(mean, -np.inf, np.inf, n)
    half = float(t.ppf(0.5 + level / 2, n - 1) * v.std(ddof=1) / np.sqrt(n))
    return Bound(mean, mean - half, mean + half, n)


def survivors(values: Sequence[Sequence[float]], level: float = RACE_LEVEL) -> List[bool]:
    """Which candidates go on: all but those whose per-image difference to the leader (same images, same
    order) has an upper bound below 0, each at `level` Bonferroni-corrected over the len(values) - 1
    comparisons."""
    values = [np.asarray(v, dtype=np.float64) for v in values]
    leader = max(range(len(values)), key=lambda i: values[i].mean())
    each = 1.0 - (1.0 - level) / max(1, len(values) - 1)
    return [i == leader or bound(v - values[leader], each).high >= 0.0 for i, v in enumerate(values)]


def slice_ends(n: int, step: int, slices: Sequence[float] = RACE_SLICES) -> List[int]:
    """Where the race's slices of n images end: at the given shares, rounded to whole multiples of `step`
    (the batch a rank scores, so every image is scored in the same batch as without racing), distinct,
    the last at n."""
    inner = {max(step, int(round(s * n / step)) * step) for s in slices if s < 1.0}
    return sorted({e for e in inner if e < n} | {n})


@dataclass
class RaceOutcome:
    #: per candidate: the records over the images it was scored on (all fitness images for survivors)
    records: List[list]
    #: per candidate: the images it was scored on
    images: List[int]
    #: per candidate: whether it was scored on every fitness image
    finished: List[bool]


def race(score: Callable[[List[int], int, int], List[list]], per_image: Callable[[list], np.ndarray],
         candidates: int, n: int, step: int, level: float = RACE_LEVEL,
         slices: Sequence[float] = RACE_SLICES, keep: Sequence[bool] = ()) -> RaceOutcome:
    """Race `candidates` over n fitness images. `score(ids, start, end)` returns, for the candidates `ids`,
    their records on images [start, end); `per_image(records)` their per-image fitness values. Candidates
    flagged in `keep` are never stopped (the search keeps its uniform configs: the pick is set against the
    best of them)."""
    records: List[list] = [[] for _ in range(candidates)]
    alive = list(range(candidates))
    start = 0
    for end in slice_ends(n, step, slices):
        for i, part in zip(alive, score(alive, start, end)):
            records[i] += list(part)
        start = end
        if end < n and len(alive) > 1:
            going = survivors([per_image(records[i]) for i in alive], level)
            alive = [i for i, k in zip(alive, going) if k or (i < len(keep) and keep[i])]
    return RaceOutcome(records=records, images=[len(r) for r in records],
                       finished=[len(r) == n for r in records])
