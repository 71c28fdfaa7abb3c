"""The comparison's statistics against known answers (reference values from scipy.stats 1.17, computed
once: scipy is not a dependency)."""

from __future__ import annotations

import random

import pytest

from kernel_model.stats import median, percentile, trimmed_mean
from minivmm.compare.stats import (
    bootstrap_diff,
    cliffs_delta,
    effect_label,
    holm,
    mann_whitney,
    permutation_test,
    ranks,
)

# A tick-bound bimodal step: 4 or 5 ms in two runs with different mixes (many ties).
BIMODAL_A = [4000 + 1000 * (i % 2) for i in range(30)]
BIMODAL_B = [4000 + 1000 * ((i + 1) % 3 == 0) for i in range(25)]
NORMAL_A = [1.288, 1.449, 0.066, -0.765, -1.092, 0.031, -1.022, -1.437, 0.199, 0.133, 0.546, -0.914, 0.005, -0.065,
            -1.506, 0.538, 0.321, 2.389, 0.203, -0.145, 1.233, 0.199, 0.909, -0.366, 0.218, 1.024, 0.696, 0.128,
            -1.082, 0.445, 0.077, 0.72, 0.216, 1.088, -0.052, 0.202, 0.667, -1.087, -0.402, -0.5]
NORMAL_B = [2.481, 0.407, 1.152, 1.119, 0.219, -1.051, 1.465, 0.093, 1.218, -0.805, 0.062, 1.757, 1.931, -0.802,
            -0.833, 0.456, 1.228, 0.661, 0.804, -0.489, 1.087, 1.617, 0.064, -0.933, -0.259, 1.262, -1.234, 0.408,
            -0.491, 0.369, 0.255, 0.516, 2.001, 0.921, 1.834, 0.359, 0.02, 0.879, -2.336, 0.46, 0.66, -0.735, 0.964,
            -0.059, -1.959, 0.287, -0.479, -0.021, 0.348, 1.751]


@pytest.mark.parametrize("a, b, u, p", [
    # scipy.stats.mannwhitneyu(b, a, alternative="two-sided", method="asymptotic", use_continuity=True)
    ([1, 2, 3, 4, 5], [6, 7, 8, 9, 10], 25.0, 0.012185780355344813),
    ([1, 1, 2, 2, 3, 3, 4], [2, 3, 3, 4, 4, 5, 5, 5], 47.0, 0.02879165366530196),
    (BIMODAL_A, BIMODAL_B, 307.5, 0.18505351724069075),
    (NORMAL_A, NORMAL_B, 1192.0, 0.11995024659438377),
])
def test_mann_whitney_matches_scipy(a, b, u, p):
    r = mann_whitney(a, b)
    assert r.u == u
    assert r.p_value == pytest.approx(p, rel=1e-9)


def test_mann_whitney_direction_identical_samples_and_empty():
    assert mann_whitney([1, 2, 3], [4, 5, 6]).z > 0 > mann_whitney([4, 5, 6], [1, 2, 3]).z
    assert mann_whitney([7] * 20, [7] * 30).p_value == 1.0
    with pytest.raises(ValueError):
        mann_whitney([], [1])


def test_ranks_average_ties():
    r, ties = ranks([10, 20, 20, 30, 20])
    assert r == [1, 3, 3, 5, 3] and ties == [3]


def test_cliffs_delta_known_values_and_labels():
    assert cliffs_delta([1, 2, 3], [4, 5, 6]) == 1.0
    assert cliffs_delta([4, 5, 6], [1, 2, 3]) == -1.0
    assert cliffs_delta([1, 2], [1, 2]) == 0.0
    # 2 of 4 pairs b > a, 1 tie, 1 b < a: (2 - 1) / 4
    assert cliffs_delta([1, 3], [2, 3]) == pytest.approx(0.25)
    assert [effect_label(d) for d in (0.1, -0.2, 0.4, -0.9)] == ["negligible", "small", "medium", "large"]


def test_holm_known_case():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == [1.0, 1.0]
    assert holm([]) == []


def test_median_and_percentile():
    assert median([3, 1, 2]) == 2 and median([4, 1, 3, 2]) == 2.5
    assert percentile([1, 2, 3, 4, 5], 10) == pytest.approx(1.4)  # numpy.percentile's default
    with pytest.raises(ValueError):
        median([])


def test_bootstrap_interval_of_a_difference_covers_a_known_shift():
    # scipy.stats.bootstrap of the median difference, method="percentile", n_resamples=20000: (-0.0705, 0.6015)
    lo, hi = bootstrap_diff(NORMAL_A, NORMAL_B, median, resamples=4000)
    assert lo == pytest.approx(-0.0705, abs=0.07) and hi == pytest.approx(0.6015, abs=0.07)
    assert bootstrap_diff([5] * 10, [7] * 12, median) == (2, 2)
    rng = random.Random(3)
    base = [rng.choice((4000, 8000)) + rng.randrange(300) for _ in range(100)]
    lo, hi = bootstrap_diff(base, [x + 8000 for x in base], trimmed_mean)
    assert lo <= 8000 <= hi and hi - lo < 2000  # the trimmed mean does not jump between the modes
    assert bootstrap_diff(base, base, trimmed_mean, seed=1) == bootstrap_diff(base, base, trimmed_mean, seed=1)
    with pytest.raises(ValueError):
        bootstrap_diff([], [1], median)


def test_permutation_test_of_a_known_case_and_its_floor():
    # Every relabelling of [1, 2] against [3, 4] gives |diff of means| <= 2, and 2 of the 6 splits give 2.
    p = permutation_test([1, 2], [3, 4], lambda x: sum(x) / len(x), permutations=20000, seed=1)
    assert p == pytest.approx(2 / 6, abs=0.02)
    assert permutation_test([7] * 5, [7] * 5, trimmed_mean, 100) == 1.0
    far = permutation_test(list(range(30)), list(range(1000, 1030)), trimmed_mean, permutations=999)
    assert far == pytest.approx(1 / 1000)  # never 0: the observed labelling counts
    with pytest.raises(ValueError):
        permutation_test([], [1], trimmed_mean)


def _tick_bound(rng: random.Random, n: int, jiffy_us: float = 4000.0, extra_jiffies: float = 0.0) -> list[int]:
    """Durations (ns) of a step that waits for the second tick after it starts: (1, 2] jiffies, set by
    the phase within a jiffy, plus a little scheduling noise; clustered at the ticks, with ties."""
    out = []
    for _ in range(n):
        phase = rng.random()
        wait = (2 - phase + extra_jiffies) * jiffy_us + rng.choice((0, 0, 0, 40, 120))
        out.append(int(round(wait, -1) * 1000))  # 10 us resolution: ties, as a coarse clock gives
    return out


def test_mann_whitney_keeps_its_level_on_tick_bound_samples_and_finds_a_jiffy():
    """A/A on the distribution this tool compares: false positives near alpha, not above; a one-jiffy
    shift is found every time at 100 repetitions per side."""
    rng = random.Random(11)
    trials = 400
    false = sum(mann_whitney(_tick_bound(rng, 100), _tick_bound(rng, 100)).p_value < 0.05 for _ in range(trials))
    assert false / trials <= 0.08
    found = sum(mann_whitney(_tick_bound(rng, 100), _tick_bound(rng, 100, extra_jiffies=1)).p_value < 0.01
                for _ in range(50))
    assert found == 50


def test_the_permutation_test_of_trimmed_means_keeps_its_level_on_tick_bound_samples_and_finds_a_jiffy():
    """A/A on the distribution the gate compares: false positives at alpha, not above; one more jiffy is
    found every time at 30 repetitions per side."""
    rng = random.Random(12)
    trials = 200
    false = sum(permutation_test(_tick_bound(rng, 30), _tick_bound(rng, 30), trimmed_mean, 999, seed=i) < 0.05
                for i in range(trials))
    assert false / trials <= 0.09
    found = sum(permutation_test(_tick_bound(rng, 30), _tick_bound(rng, 30, extra_jiffies=1), trimmed_mean, 999,
                                 seed=i) < 0.01 for i in range(30))
    assert found == 30


def test_the_bootstrap_interval_covers_the_true_shift_of_tick_bound_steps():
    """Coverage of the 95% interval of the trimmed means' difference for a half-jiffy shift of a
    (1, 2]-jiffy stall: near 95%."""
    rng = random.Random(12)
    trials = 80
    covered = 0
    for i in range(trials):
        a = _tick_bound(rng, 60)
        b = _tick_bound(rng, 60, extra_jiffies=0.5)
        lo, hi = bootstrap_diff(a, b, trimmed_mean, resamples=500, seed=i)
        covered += lo <= 2_000_000 <= hi  # half of a 4 ms jiffy
    assert 0.85 <= covered / trials <= 1.0
