"""The statistics of ``minivmm compare`` and the gate, with the standard library only.

Set-up ioctl latencies are not normal: a step that waits for an SRCU grace period is bounded by the
scheduler tick and bimodal (it either catches the tick or waits one more), and fixed-cost steps have a
long right tail from the host's scheduling. So the tests here make no assumption about the shape:

- :func:`mann_whitney`: the Mann-Whitney U test (Wilcoxon rank-sum), two-sided, with the tie
  correction (ticks make ties) and the normal approximation with continuity correction, as
  ``scipy.stats.mannwhitneyu(..., method="asymptotic")`` computes it.
- :func:`cliffs_delta`: the effect size that goes with it, P(B > A) - P(B < A), in [-1, 1].
- :func:`holm`: Holm's step-down adjustment of p-values, so that testing every step of a sequence at
  once keeps the family-wise error rate at alpha.
- :func:`permutation_test`: the two-sided permutation test of a difference of a statistic (the gate's
  is the trimmed mean, :func:`kernel_model.stats.trimmed_mean`): exact under "both samples come from
  one distribution", whatever its shape, ticks and modes included.
- :func:`bootstrap_diff`: a percentile-bootstrap interval for the difference of any statistic.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kernel_model.stats import percentile


def ranks(values: Sequence[float]) -> tuple[list[float], list[int]]:
    """Average ranks (1-based; tied values share the mean of their ranks) and the sizes of the tie groups."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    ties: list[int] = []
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        rank = (i + j) / 2 + 1
        for k in range(i, j + 1):
            out[order[k]] = rank
        if j > i:
            ties.append(j - i + 1)
        i = j + 1
    return out, ties


@dataclass(frozen=True)
class MannWhitney:
    """The result of :func:`mann_whitney`: U of the second sample, its z score and the two-sided p-value."""

    u: float
    z: float
    p_value: float


def mann_whitney(a: Sequence[float], b: Sequence[float]) -> MannWhitney:
    """Two-sided Mann-Whitney U test of ``a`` against ``b``.

    ``u`` counts the pairs (x in a, y in b) with y > x (ties count one half), so u > n_a*n_b/2 means b
    tends to be larger. The p-value uses the normal approximation with the tie-corrected variance and a
    continuity correction; it is accurate for the sample sizes ``minivmm timing`` takes (the gate refuses
    fewer than :data:`minivmm.compare.gate.MIN_SAMPLES` per side). When every value is the same the
    samples cannot differ and p is 1.
    """
    na, nb = len(a), len(b)
    if na == 0 or nb == 0:
        raise ValueError("mann_whitney needs two non-empty samples")
    r, ties = ranks(list(a) + list(b))
    rb = sum(r[na:])
    u = rb - nb * (nb + 1) / 2
    n = na + nb
    mu = na * nb / 2
    tie_term = sum(t ** 3 - t for t in ties) / (n * (n - 1)) if n > 1 else 0.0
    var = na * nb / 12 * ((n + 1) - tie_term)
    if var <= 0:
        return MannWhitney(u, 0.0, 1.0)
    diff = abs(u - mu)
    z = max(diff - 0.5, 0.0) / math.sqrt(var)
    p = min(1.0, math.erfc(z / math.sqrt(2)))
    return MannWhitney(u, math.copysign(z, u - mu), p)


def cliffs_delta(a: Sequence[float], b: Sequence[float]) -> float:
    """Cliff's delta of ``b`` against ``a``: P(B > A) - P(B < A), from the U statistic. 0 is no shift,
    +1 means every value of b exceeds every value of a. Conventional reading (Romano et al. 2006):
    |d| < 0.147 negligible, < 0.33 small, < 0.474 medium, otherwise large."""
    u = mann_whitney(a, b).u
    return 2 * u / (len(a) * len(b)) - 1


def effect_label(delta: float) -> str:
    """Romano et al.'s names for the size of a Cliff's delta."""
    d = abs(delta)
    if d < 0.147:
        return "negligible"
    if d < 0.33:
        return "small"
    if d < 0.474:
        return "medium"
    return "large"


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order as given): the k-th smallest is multiplied by
    (m - k + 1), kept monotone, capped at 1. A step is significant at family-wise level alpha when its
    adjusted p-value is below alpha."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (m - k) * p_values[i]))
        adjusted[i] = running
    return adjusted


def permutation_test(a: Sequence[float], b: Sequence[float], statistic: Callable[[Sequence[float]], float],
                     permutations: int = 10_000, seed: int = 0, enough: int = 100) -> float:
    """The two-sided permutation p-value of ``statistic(b) - statistic(a)``: the share of random
    relabellings of the pooled samples whose difference is at least as far from 0 as the observed one,
    counted as (1 + extreme) / (1 + permutations) so it is never 0.

    It stops early once ``enough`` relabellings were as extreme: the p-value is then known to be at
    least about enough / permutations, well above any level a caller tests at, and the remaining
    relabellings would only refine a number that decides nothing. Seeded: the same samples give the
    same p-value."""
    if not a or not b:
        raise ValueError("a permutation test needs two non-empty samples")
    observed = abs(statistic(b) - statistic(a))
    pooled = list(a) + list(b)
    n_a = len(a)
    rng = random.Random(seed)
    extreme = 0
    done = 0
    tolerance = 1e-9 * max(1.0, observed)  # equal differences, up to rounding, count as extreme
    while done < permutations:
        rng.shuffle(pooled)
        if abs(statistic(pooled[n_a:]) - statistic(pooled[:n_a])) >= observed - tolerance:
            extreme += 1
        done += 1
        if extreme >= enough:
            break
    return (1 + extreme) / (1 + done)


def bootstrap_diff(a: Sequence[float], b: Sequence[float], statistic: Callable[[Sequence[float]], float],
                   confidence: float = 0.95, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """A percentile-bootstrap interval for ``statistic(b) - statistic(a)``: each sample resampled with
    replacement ``resamples`` times, the central ``confidence`` share of the differences. Seeded."""
    if not a or not b:
        raise ValueError("bootstrap needs two non-empty samples")
    if not 0 < confidence < 1:
        raise ValueError("confidence must be between 0 and 1")
    rng = random.Random(seed)
    diffs = [statistic(rng.choices(b, k=len(b))) - statistic(rng.choices(a, k=len(a))) for _ in range(resamples)]
    tail = (1 - confidence) / 2 * 100
    return percentile(diffs, tail), percentile(diffs, 100 - tail)
