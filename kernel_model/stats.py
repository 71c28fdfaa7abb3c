"""The statistics every report shares: percentiles, the stall rule, and tick modes.

One home for each of these, because reports put their results side by side: ``minivmm timing``,
``trace``, ``model``, ``compare`` and the gate, and the differential harness must all mean the same
thing by "p90", "a stall" and "the second tick mode".

Tick modes. A step that waits for an SRCU grace period ends on a timer tick, so its duration is
(1, 2] jiffies minus the gap since the registration, plus a few tens of microseconds, when the
grace-period timer fires on time, and one jiffy more when it slips a tick. Over random tick phases
that is a mixture of jiffy-wide modes, and its median moves by a whole jiffy when a few percent of
the samples change mode. Comparing such steps median to median in time is therefore noise; what
holds up is comparing, per mode, the share of samples in it (:attr:`TickModes.shares`) and the
quantiles within it (:attr:`TickModes.within`), or the share of measured samples below each
predicted quantile (:func:`share_below`). :func:`compare_modes` does both, with the agreement rule
the differential harness and the README's fidelity tables use (every share up to sampling noise), for
a model against the host and for the host's odd repetitions against its even ones alike.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from typing import NamedTuple

#: A step whose duration is at least this (ns) is a stall: a grace-period wait is ~1 jiffy or more,
#: and no set-up ioctl's own work comes near 1 ms on the hosts measured.
STALL_NS = 1_000_000

#: The quantiles every report shows beside min and max.
PERCENTILES = (10, 50, 90)


def is_stall(duration_ns: float) -> bool:
    """Whether a duration (or a step's median, in ns) counts as a stall: the one comparison, ``>=``."""
    return duration_ns >= STALL_NS


def longest_stall(medians_ns: Sequence[float]) -> int | None:
    """The index of the longest of some steps' medians when it is a stall, else None: the step a report
    calls *the* stalled one (``minivmm timing`` applies it to the call_srcu variant's predictions)."""
    if not medians_ns:
        return None
    worst = max(range(len(medians_ns)), key=lambda i: medians_ns[i])
    return worst if is_stall(medians_ns[worst]) else None


def percentile_sorted(sorted_values: Sequence[float], p: float) -> float:
    """The p-th percentile of values already sorted ascending: linear interpolation between the
    closest ranks (numpy's default method), so p=50 of an even count is the mean of the middle two."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p} outside [0, 100]")
    k = (len(sorted_values) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def percentile(values: Iterable[float], p: float) -> float:
    """The p-th percentile of ``values`` in any order (see :func:`percentile_sorted`)."""
    return percentile_sorted(sorted(values), p)


def median(values: Iterable[float]) -> float:
    """The median (the mean of the two middle values for an even count)."""
    return percentile(values, 50)


def quantiles(samples_ns: Iterable[int]) -> dict[str, float]:
    """min, p10, p50, p90 and max of durations in ns, given in microseconds: the one summary every
    report shows (keys ``min``, ``p10``, ``p50``, ``p90``, ``max``)."""
    s = sorted(samples_ns)
    if not s:
        raise ValueError("quantiles of no samples")
    out = {"min": s[0] / 1000, "max": s[-1] / 1000}
    for p in PERCENTILES:
        out[f"p{p}"] = percentile_sorted(s, p) / 1000
    return out


def share_below(samples: Iterable[float], thresholds: Sequence[float]) -> list[float]:
    """For each threshold, the share of ``samples`` strictly below it.

    Given a prediction's p10/p50/p90 as thresholds, a sample drawn from the predicted distribution
    gives shares near 0.1/0.5/0.9 whatever the distribution's shape: a comparison in probability,
    which a jiffy-wide jump of a median between two tick modes does not upset."""
    s = sorted(samples)
    if not s:
        raise ValueError("share of no samples")
    return [bisect.bisect_left(s, t) / len(s) for t in thresholds]


class TickModes(NamedTuple):
    """Samples split into jiffy-wide modes: mode k holds the samples in
    ``[origin + k*tick, origin + (k+1)*tick)``; samples below ``origin`` count in mode 0."""

    tick_ns: int
    origin_ns: float
    #: Per mode, from mode 0 to the highest one holding a sample: the share of all samples in it.
    shares: tuple[float, ...]
    #: Per mode: p10, p50, p90 of the samples in it (ns), None for an empty mode.
    within: tuple[tuple[float, float, float] | None, ...]

    def share(self, mode: int) -> float:
        """The share of samples in ``mode`` (0 for a mode past the highest one seen)."""
        return self.shares[mode] if 0 <= mode < len(self.shares) else 0.0

    def share_from(self, mode: int) -> float:
        """The share of samples in ``mode`` or any later one (e.g. every slipped tick from mode 1)."""
        return sum(self.shares[max(mode, 0):])


def tick_mode(duration_ns: float, origin_ns: float, tick_ns: int) -> int:
    """The jiffy-wide mode a duration falls in, counted from ``origin_ns`` (0 at or below it)."""
    if tick_ns <= 0:
        raise ValueError("tick_ns must be positive")
    return max(0, math.floor((duration_ns - origin_ns) / tick_ns))


def tick_modes(samples: Iterable[float], tick_ns: int, origin_ns: float) -> TickModes:
    """Split ``samples`` (ns) into jiffy-wide modes from ``origin_ns``.

    The origin is where mode 0 begins: for a stall the model predicts, the model's lowest duration
    (one jiffy minus the gap since the registration, plus the fixed costs after the timer) puts every
    on-time timer in mode 0 and every timer that slipped a tick in mode 1; for two measured runs
    compared with each other, the lower of their minima serves. Use the same origin for every side of
    a comparison."""
    buckets: dict[int, list[float]] = {}
    for x in samples:
        buckets.setdefault(tick_mode(x, origin_ns, tick_ns), []).append(x)
    if not buckets:
        raise ValueError("tick modes of no samples")
    n = sum(len(b) for b in buckets.values())
    top = max(buckets)
    shares = tuple(len(buckets.get(k, ())) / n for k in range(top + 1))
    within: list[tuple[float, float, float] | None] = []
    for k in range(top + 1):
        b = sorted(buckets.get(k, ()))
        within.append((percentile_sorted(b, 10), percentile_sorted(b, 50), percentile_sorted(b, 90)) if b else None)
    return TickModes(tick_ns, origin_ns, shares, tuple(within))


def tick_ns(hz: int) -> int:
    """One jiffy in ns at ``hz``."""
    if hz <= 0:
        raise ValueError("HZ must be positive")
    return 1_000_000_000 // hz


#: How far two shares of runs may differ and still agree, in standard errors of their difference (and
#: at least SHARE_FLOOR): a two-sided test at about 1%, so two samples of one distribution agree 99%
#: of the time. Shares of a few hundred runs are uncertain by several percent: comparing them in
#: probability, not in time, is what a two-mode stall allows.
SHARE_SIGMAS = 2.58
SHARE_FLOOR = 0.02
#: A mode is compared within (its quantiles) only if each side has at least this many samples in it.
WITHIN_MIN_SAMPLES = 10
#: Within a mode, a quantile may be off by this much time before the share below it counts against
#: agreement: steps that wait for no timer take tens of µs, and a fixed cost a few µs off would
#: otherwise put every sample on one side of the other's quantiles.
WITHIN_SLACK_NS = 200_000


def shares_agree(p1: float, n1: int, p2: float, n2: int) -> bool:
    """Whether two shares, of ``n1`` and ``n2`` runs, are the same share up to sampling noise
    (SHARE_SIGMAS standard errors of the difference, with the pooled share, or SHARE_FLOOR)."""
    if n1 < 1 or n2 < 1:
        raise ValueError("shares of no runs")
    pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
    se = math.sqrt(max(pooled * (1 - pooled), 0.0) * (1 / n1 + 1 / n2))
    return abs(p1 - p2) <= max(SHARE_SIGMAS * se, SHARE_FLOOR)


class ModeComparison(NamedTuple):
    """Two sets of durations of one step, ``a`` and ``b``, split into the same tick modes, and whether
    they agree: every mode's share of runs (:func:`shares_agree`), and in every mode both sides hold
    WITHIN_MIN_SAMPLES samples of, the share of ``a``'s samples below ``b``'s p10, p50 and p90 there
    (:func:`share_below`): 0.1, 0.5 and 0.9 up to sampling noise (:func:`shares_agree`, taking ``b``'s
    quantile as a share of its own samples), with each quantile free to move by WITHIN_SLACK_NS."""

    a: TickModes
    b: TickModes
    n_a: int
    n_b: int
    #: Per mode: do its shares agree.
    shares_ok: tuple[bool, ...]
    #: Per mode: the shares of a's samples in it below b's p10/p50/p90 there (None: too few samples).
    below: tuple[tuple[float, float, float] | None, ...]
    #: Per mode: do those shares agree (None: not compared).
    within_ok: tuple[bool | None, ...]

    @property
    def ok(self) -> bool:
        """All shares agree, and every within-mode comparison made agrees."""
        return all(self.shares_ok) and all(w is not False for w in self.within_ok)

    def describe(self, ms: float = 1e6) -> str:
        """``mode 0: 91%/90% [p10/p50/p90 ms a vs b]; mode 1: ...`` for every mode either side holds,
        a miss marked ``!``."""
        parts = []
        for k, (ok, wok) in enumerate(zip(self.shares_ok, self.within_ok)):
            sa, sb = self.a.share(k), self.b.share(k)
            if not sa and not sb:
                continue
            text = f"mode {k}: {sa:.1%}/{sb:.1%}{'' if ok else '!'}"
            wa = self.a.within[k] if k < len(self.a.within) else None
            wb = self.b.within[k] if k < len(self.b.within) else None
            if wa is not None and wb is not None:
                text += (" [" + "/".join(f"{x / ms:.2f}" for x in wa) + " vs "
                         + "/".join(f"{x / ms:.2f}" for x in wb) + ("" if wok is not False else "!") + "]")
            parts.append(text)
        return "; ".join(parts)


def compare_modes(a: Sequence[float], b: Sequence[float], tick: int, origin_ns: float) -> ModeComparison:
    """Split ``a`` and ``b`` into tick modes from ``origin_ns`` (:func:`tick_modes`) and compare them mode
    by mode (:class:`ModeComparison`)."""
    ma, mb = tick_modes(a, tick, origin_ns), tick_modes(b, tick, origin_ns)
    top = max(len(ma.shares), len(mb.shares))
    in_a: dict[int, list[float]] = {}
    in_b: dict[int, list[float]] = {}
    for x in a:
        in_a.setdefault(tick_mode(x, origin_ns, tick), []).append(x)
    for x in b:
        in_b.setdefault(tick_mode(x, origin_ns, tick), []).append(x)
    shares_ok = tuple(shares_agree(ma.share(k), len(a), mb.share(k), len(b)) for k in range(top))
    below: list[tuple[float, float, float] | None] = []
    within_ok: list[bool | None] = []
    for k in range(top):
        xa, xb = in_a.get(k, []), in_b.get(k, [])
        wb = mb.within[k] if k < len(mb.within) else None
        if wb is None or min(len(xa), len(xb)) < WITHIN_MIN_SAMPLES:
            below.append(None)
            within_ok.append(None)
            continue
        got = share_below(xa, wb)
        lo = share_below(xa, [q - WITHIN_SLACK_NS for q in wb])
        hi = share_below(xa, [q + WITHIN_SLACK_NS for q in wb])
        below.append((got[0], got[1], got[2]))
        within_ok.append(all(shares_agree(min(max(p / 100, lo_k), hi_k), len(xa), p / 100, len(xb))
                             for lo_k, hi_k, p in zip(lo, hi, PERCENTILES)))
    return ModeComparison(ma, mb, len(a), len(b), shares_ok, tuple(below), tuple(within_ok))


def trimmed_mean(values: Iterable[float], proportion: float = 0.1) -> float:
    """The mean of ``values`` after dropping ``proportion`` of them at each end (rounded down).

    Unlike the median, it moves in proportion when samples change tick mode: a tenth of the samples
    moving one jiffy later moves it by about a tenth of a jiffy, where a median can jump a whole jiffy
    when the modes hold about half the samples each. Unlike the mean, a few samples delayed by an
    unrelated preemption barely move it."""
    s = sorted(values)
    if not s:
        raise ValueError("trimmed mean of no values")
    if not 0 <= proportion < 0.5:
        raise ValueError(f"trim proportion {proportion} outside [0, 0.5)")
    k = int(len(s) * proportion)
    kept = s[k:len(s) - k]
    return math.fsum(kept) / len(kept)


def student_t_logpdf(z: float, df: int) -> float:
    """The log density of Student's t with ``df`` degrees of freedom (location 0, scale 1) at ``z``."""
    if df < 1:
        raise ValueError("df must be at least 1")
    return (math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
            - (df + 1) / 2 * math.log1p(z * z / df))


def student_t_cdf(z: float, df: int) -> float:
    """P(T <= z) for Student's t with an integer ``df`` >= 1 (location 0, scale 1).

    The closed forms for integer degrees of freedom (Abramowitz and Stegun 26.7.3 and 26.7.4, with
    theta = atan(z / sqrt(df))): P(|T| <= |z|) is a finite trigonometric series. The far tail is
    computed from the symmetric side, ``1 - cdf(-z)`` never being formed, so a tail probability of
    1e-12 keeps its digits."""
    if df < 1:
        raise ValueError("df must be at least 1")
    if z > 0:
        return 1.0 - student_t_cdf(-z, df) if z < 1e-3 else _t_upper(-z, df, complement=True)
    return _t_upper(z, df, complement=False)


def _t_upper(z: float, df: int, complement: bool) -> float:
    """For z <= 0: P(T <= z) (``complement`` False) or P(T <= -z) (True), from P(|T| > |z|)."""
    t = -z
    if t == 0:
        return 0.5
    theta = math.atan(t / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    s = math.sin(theta)
    if df % 2:  # odd: A = (2/pi) * (theta + sin cos * (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ...))
        term, series = 1.0, 1.0 if df > 1 else 0.0
        for k in range(1, (df - 1) // 2):
            term *= (2 * k) / (2 * k + 1) * c2
            series += term
        inside = 2 / math.pi * (theta + s * math.cos(theta) * series)
    else:  # even: A = sin * (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...)
        term, series = 1.0, 1.0
        for k in range(1, df // 2):
            term *= (2 * k - 1) / (2 * k) * c2
            series += term
        inside = s * series
    outside = max(0.0, 1.0 - inside)  # P(|T| > t)
    if outside < 1e-8:  # the series loses digits here: the tail's leading term instead
        outside = 2 * math.exp(student_t_logpdf(t, df)) * t / df  # P(|T|>t) ~ 2 f(t) t / df for large t
    return 1.0 - outside / 2 if complement else outside / 2


def ks_critical(n: int, alpha: float) -> float:
    """The Kolmogorov-Smirnov distance above which ``n`` samples reject a fully specified continuous
    distribution at level ``alpha`` (two-sided). Exact for one sample (the sample lies outside the
    central 1 - alpha of the distribution: D > 1 - alpha/2); otherwise Stephens' approximation of the
    Kolmogorov distribution's quantile, c(alpha) / (sqrt(n) + 0.12 + 0.11 / sqrt(n)), never above the
    one-sample value."""
    if n < 1:
        raise ValueError("n must be at least 1")
    if not 0 < alpha < 1:
        raise ValueError("alpha must be in (0, 1)")
    one = 1 - alpha / 2
    if n == 1:
        return one
    c = math.sqrt(-math.log(alpha / 2) / 2)
    return min(one, c / (math.sqrt(n) + 0.12 + 0.11 / math.sqrt(n)))
