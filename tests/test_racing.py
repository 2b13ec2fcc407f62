"""Racing on growing slices drops a candidate only by the stated bound: the upper end of its per-image
differences to the leader below 0 (Student's t, RACE_LEVEL Bonferroni-corrected over the round's comparisons),
checked on hand-built per-image scores."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import t

from sparsevit_cli.search.racing import RACE_LEVEL, bound, race, slice_ends, survivors


def test_bound_is_the_t_interval_of_the_mean():
    v = [1.0, 2.0, 3.0, 4.0]
    b = bound(v, 0.95)
    half = t.ppf(0.975, 3) * np.std(v, ddof=1) / 2.0
    assert b.mean == 2.5 and b.low == pytest.approx(2.5 - half) and b.high == pytest.approx(2.5 + half)
    assert bound([1.0]).low == -np.inf  # one image bounds nothing


def test_a_candidate_stops_only_when_its_paired_difference_to_the_leader_is_below_zero():
    rng = np.random.default_rng(1)
    hard = rng.normal(0, 5, 16)  # what each image does to every candidate: large, shared
    leader = 10.0 + hard
    noise = np.array([-1.0, 1.0] * 8)  # the candidates' own per-image differences: sd ~1.03
    each = 1 - (1 - RACE_LEVEL) / 2  # two comparisons with the leader in this round
    half = t.ppf(0.5 + each / 2, 15) * np.std(noise, ddof=1) / 4.0
    # mean difference just short of one half width: the bound reaches 0, kept; just past it: dropped
    kept, dropped = leader - half + 1e-6 + noise, leader - half - 1e-6 + noise
    assert survivors([leader, kept, dropped]) == [True, True, False]
    assert bound(dropped - leader, each).high < 0 <= bound(kept - leader, each).high
    # unpaired, the shared image effects hide the same gap: separate intervals overlap
    assert bound(dropped).high > bound(leader).low
    # Bonferroni: with more candidates in the round each comparison is stricter, and the same gap is kept
    ties = [leader + 0.5 * noise for _ in range(20)]
    assert survivors([leader, dropped] + ties)[1]
    # noisier differences widen the interval: the same mean gap no longer drops it
    assert survivors([leader, leader - half - 1e-6 + 5 * noise]) == [True, True]


def test_slices_end_on_whole_batches_and_at_n():
    assert slice_ends(100, 8) == [24, 48, 100]
    assert slice_ends(10, 8) == [8, 10]
    assert slice_ends(5, 8) == [5]


def test_race_scores_survivors_on_every_image_and_stops_the_others_at_a_slice():
    n = 64
    rng = np.random.default_rng(0)
    truth = [0.0, -0.05, -3.0, -6.0]  # two close, two far behind
    per_image = [m + rng.normal(0, 0.5, n) for m in truth]
    asked = []

    def score(alive, start, end):
        asked.append((list(alive), start, end))
        return [list(per_image[i][start:end]) for i in alive]

    out = race(score, np.asarray, len(truth), n, step=4)
    assert asked[0] == ([0, 1, 2, 3], 0, 16)  # everyone on the first quarter
    assert out.finished == [True, True, False, False] and out.images == [64, 64, 16, 16]
    assert all(np.array_equal(out.records[i], per_image[i][:out.images[i]]) for i in range(4))
    # what was dropped was dropped by the bound on the images it had seen
    first = [per_image[i][:16] for i in range(4)]
    each = 1 - (1 - RACE_LEVEL) / 3
    assert [bound(first[i] - first[0], each).high < 0 for i in range(4)] == [False, False, True, True]


def test_a_kept_candidate_is_never_stopped():
    """The search keeps its uniform configs in the race (the pick is set against the best of them): a flagged
    candidate goes on to every image even when the bound would stop it."""
    n = 64
    rng = np.random.default_rng(0)
    per_image = [m + rng.normal(0, 0.5, n) for m in (0.0, -3.0, -6.0)]
    score = lambda alive, start, end: [list(per_image[i][start:end]) for i in alive]  # noqa: E731
    assert race(score, np.asarray, 3, n, step=4).finished == [True, False, False]
    out = race(score, np.asarray, 3, n, step=4, keep=[False, False, True])
    assert out.finished == [True, False, True] and out.images == [64, 16, 64]
