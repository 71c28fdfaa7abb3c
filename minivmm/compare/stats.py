"""The statistics of ``minivmm compare`` and the gate, with the standard library only.

Set-up ioctl latencies are not normal: a step that waits for an SRCU grace period is bounded by the
scheduler tick and bimodal (it either catches the tick or waits one more), and fixed-cost steps have a
long right tail from the host's scheduling. So the tests here make no assumption about the shape:

- :func:`mann_whitney`: the Mann-Whitney U test (Wilcoxon rank-sum), two-sided, with the tie
  correction (ticks make ties) and the normal approximation with continuity correction, as
  ``scipy.stats.mannwhitneyu(..., method="asymptotic")`` computes it.
- :func:`cliffs_delta`: the effect size that goes with it, P(B > A) - P(B < A), in [-1, 1].
- :func:`bootstrap_median_diff`: a percentile-bootstrap confidence interval for median(B) - median(A),
  as Firecracker's A/B tests report the change of a statistic with its interval.
- :func:`holm`: Holm's step-down adjustment of p-values, so that testing every step of a sequence at
  once keeps the family-wise error rate at alpha.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
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


def bootstrap_medians(values: Sequence[float], resamples: int, rng: random.Random) -> list[float]:
    """The medians of ``resamples`` bootstrap resamples of ``values`` (each n draws with replacement),
    drawn exactly but without building the resamples.

    The k-th smallest of n draws from the empirical distribution is F^-1(U_(k)), where U_(k), the k-th
    smallest of n uniforms, is Beta(k, n + 1 - k); for an even n the next one is U_(k) plus (1 - U_(k))
    times the smallest of the n - k uniforms above it, Beta(1, n - k). So each resample costs two beta
    draws instead of n draws and a sort: the same distribution, and 100 000 repetitions stay fast."""
    s = sorted(values)
    n = len(s)
    if n == 0:
        raise ValueError("bootstrap of no values")
    k = (n + 1) // 2  # the (lower) middle rank, 1-based
    out = []
    for _ in range(resamples):
        u = rng.betavariate(k, n + 1 - k)
        low = s[min(int(u * n), n - 1)]
        if n % 2:
            out.append(float(low))
        else:
            v = u + (1 - u) * rng.betavariate(1, n - k)
            out.append((low + s[min(int(v * n), n - 1)]) / 2)
    return out


def bootstrap_median_diff(a: Sequence[float], b: Sequence[float], confidence: float = 0.95,
                          resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """A percentile-bootstrap interval for median(b) - median(a): resample each sample with replacement
    ``resamples`` times (see :func:`bootstrap_medians`) and take the central ``confidence`` share of the
    medians' differences. Seeded, so a comparison prints the same interval every time."""
    if not a or not b:
        raise ValueError("bootstrap needs two non-empty samples")
    if not 0 < confidence < 1:
        raise ValueError("confidence must be between 0 and 1")
    rng = random.Random(seed)
    med_a = bootstrap_medians(a, resamples, rng)
    med_b = bootstrap_medians(b, resamples, rng)
    diffs = [y - x for x, y in zip(med_a, med_b)]
    tail = (1 - confidence) / 2 * 100
    return percentile(diffs, tail), percentile(diffs, 100 - tail)


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
