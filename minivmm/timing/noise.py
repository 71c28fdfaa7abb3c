"""The noise model: how far measured durations may lie from the model's prediction of them.

The model predicts a fixed-cost ioctl as one value (``kernel_model.costs.Costs``) and a stall as a
distribution over tick phases. A host adds two things the model leaves out, both relative, so the
noise model works on ``ln(measured / predicted)``:

- **bias**: the host's own cost of the ioctl differs from the model's by a factor, the same for every
  repetition of a step (a faster CPU, another kernel build, QEMU's larger arguments). Student's t with
  ``bias_df`` degrees of freedom, location ``bias_location`` and scale ``bias_scale``.
- **scatter**: each repetition then varies around that (an ioctl preempted, a cache cold). Student's t
  with ``scatter_df`` degrees of freedom, location 0, scale ``scatter_scale``.

A step's bias is drawn once for all its samples, so a hundred repetitions of a step tell the bias
well but do not make a few percent of it decisive: the evidence from one step saturates, as it
should when the doubt is about the model's cost, not about the samples. The t's tails are heavy on
purpose: an ioctl delayed 100 ms, which no variant predicts, costs every variant nearly the same
instead of deciding the verdict.

Where the figures come from: the scatter from a host profile where it carries one (``minivmm timing
--calibrate`` measures the spread of its fixed-cost ioctls on this host), otherwise from
:data:`DEFAULT`; the bias always from :data:`DEFAULT`, fitted by ``scripts/noise_model.py`` on a host
whose kernel is known (each step's median log-ratio is its bias, the rest its scatter).

The same relative noise is put around each predicted sample of a stall too. It is wider there than a
stall's own noise (a late wake-up is tens of microseconds, not a share of the stall), which makes a
stall weaker evidence between two variants that both predict it, never stronger.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

from kernel_model.stats import median, student_t_cdf, student_t_logpdf

#: Degrees of freedom a fit chooses among.
DF_CHOICES = (1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30)


class StudentT(NamedTuple):
    """Student's t with ``df`` degrees of freedom, ``location`` and ``scale``."""

    location: float
    scale: float
    df: int

    def logpdf(self, x: float) -> float:
        """The log density at ``x``."""
        return student_t_logpdf((x - self.location) / self.scale, self.df) - math.log(self.scale)

    def cdf(self, x: float) -> float:
        """P(X <= x)."""
        return student_t_cdf((x - self.location) / self.scale, self.df)

    def sf(self, x: float) -> float:
        """P(X > x), from the other tail so that small values keep their digits."""
        return student_t_cdf((self.location - x) / self.scale, self.df)


class NoiseModel(NamedTuple):
    """Bias (per step) and scatter (per sample) of ln(measured / predicted); see the module docstring."""

    bias: StudentT
    scatter: StudentT
    #: Where the figures come from, as the report states it.
    source: str

    @property
    def single(self) -> Marginal:
        """One sample's log-ratio, bias and scatter together (their convolution, tabulated once)."""
        return marginal(self.bias, self.scatter)

    def with_scatter(self, scatter: StudentT, source: str) -> NoiseModel:
        """The same bias with another scatter (a host profile's)."""
        return NoiseModel(self.bias, StudentT(0.0, scatter.scale, scatter.df), f"{source}; bias: {self.source}")

    def to_json(self) -> dict[str, object]:
        """``{"bias": {...}, "scatter": {...}, "source": ...}``."""
        return {"bias": self.bias._asdict(), "scatter": self.scatter._asdict(), "source": self.source}

    def describe(self) -> str:
        """``bias t(df 2) at -0.1, scale 0.4; scatter t(df 3), scale 0.12``."""
        b, s = self.bias, self.scatter
        return (f"bias per step t(df {b.df}) at {b.location:+g}, scale {b.scale:g}; scatter per sample "
                f"t(df {s.df}), scale {s.scale:g}")


class Marginal:
    """The distribution of bias + scatter (one sample's log-ratio): their convolution, tabulated on a
    grid of an eighth of the smaller scale over twelve of the larger around the bias's center, and
    beyond it the sum of the two tails (whichever is heavier decides there)."""

    def __init__(self, bias: StudentT, scatter: StudentT) -> None:
        self.bias, self.scatter = bias, scatter
        h = min(bias.scale, scatter.scale) / 8
        half = math.ceil(12 * max(bias.scale, scatter.scale) / h)
        reach = math.ceil(10 * bias.scale / h)
        self.h, self.x0, self.n = h, bias.location - half * h, 2 * half + 1
        #: The scale one sample's log-ratio spreads over (for ranges, not for probabilities).
        self.scale = math.hypot(bias.scale, scatter.scale)
        self.location = bias.location
        weights = [math.exp(bias.logpdf(bias.location + j * h)) * h for j in range(-reach, reach + 1)]
        below = bias.cdf(bias.location - (reach + 0.5) * h)  # bias mass under the grid: all of it below x
        offsets = range(-half - reach, half + reach + 1)
        f = {k: math.exp(scatter.logpdf(k * h)) for k in offsets}
        big_f = {k: scatter.cdf(k * h) for k in offsets}
        self.pdf_table, self.cdf_table = [], []
        grid = list(zip(range(-reach, reach + 1), weights))
        for i in range(-half, half + 1):
            self.pdf_table.append(math.fsum(w * f[i - j] for j, w in grid))
            self.cdf_table.append(below + math.fsum(w * big_f[i - j] for j, w in grid))

    def _index(self, x: float) -> float | None:
        t = (x - self.x0) / self.h
        return t if 0 <= t <= self.n - 1 else None

    def _interp(self, table: list[float], t: float) -> float:
        i = min(int(t), self.n - 2)
        return table[i] + (table[i + 1] - table[i]) * (t - i)

    def logpdf(self, x: float) -> float:
        """The log density at ``x``."""
        t = self._index(x)
        if t is not None:
            return math.log(max(self._interp(self.pdf_table, t), 1e-300))
        return math.log(math.exp(self.bias.logpdf(x)) + math.exp(self.scatter.logpdf(x - self.location)) + 1e-300)

    def cdf(self, x: float) -> float:
        """P(X <= x)."""
        t = self._index(x)
        if t is not None:
            return min(1.0, self._interp(self.cdf_table, t))
        if x < self.x0:
            return min(1.0, self.bias.cdf(x) + self.scatter.cdf(x - self.location))
        return max(0.0, 1.0 - self.sf(x))

    def sf(self, x: float) -> float:
        """P(X > x), from the upper tail where the table ends."""
        t = self._index(x)
        if t is not None:
            return max(0.0, 1.0 - self._interp(self.cdf_table, t))
        if x > self.x0:
            return min(1.0, self.bias.sf(x) + self.scatter.sf(x - self.location))
        return max(0.0, 1.0 - self.cdf(x))


@functools.lru_cache(maxsize=8)
def marginal(bias: StudentT, scatter: StudentT) -> Marginal:
    """The tabulated :class:`Marginal` of ``bias`` and ``scatter`` (made once per pair)."""
    return Marginal(bias, scatter)


#: Fitted by ``python scripts/noise_model.py --repeat 60`` on this project's x86_64 PVM host (kernel
#: 6.18.44, HZ=250), against call_srcu: 3,420 log-ratios of 57 fixed-cost steps of the five named
#: sequences, taken while other jobs shared the host's two CPUs (CPU pressure 35%, load average 2.4).
#: The bias is wide because this kernel's costs are not the model's (KVM_CREATE_VM takes ~95 us here,
#: 250 us in the model); a host closer to the model's costs gets a narrower fit.
DEFAULT = NoiseModel(bias=StudentT(-0.28, 0.58, 30), scatter=StudentT(0.0, 0.14, 2),
                     source="default: fitted by scripts/noise_model.py on a PVM host at HZ=250")


def fit_t(values: Sequence[float], center: bool = True) -> StudentT:
    """The Student's t (location, scale, df among :data:`DF_CHOICES`) of the highest likelihood for
    ``values``: for each df, the location and scale by the EM iteration for the t (each value weighted
    by (df + 1) / (df + z^2)), then the df whose fit is the most likely. ``center`` False keeps the
    location at 0 (for a scatter, whose center is each step's own)."""
    r = [float(x) for x in values if math.isfinite(x)]
    if len(r) < 10:
        raise ValueError(f"{len(r)} log-ratios are too few to fit a noise model (10 or more needed)")
    best: tuple[float, StudentT] | None = None
    for df in DF_CHOICES:
        loc = median(r) if center else 0.0
        scale = max(median(abs(x - loc) for x in r), 1e-3)
        for _ in range(300):
            w = [(df + 1) / (df + ((x - loc) / scale) ** 2) for x in r]
            new_loc = math.fsum(wi * x for wi, x in zip(w, r)) / math.fsum(w) if center else 0.0
            new_scale = max(math.sqrt(math.fsum(wi * (x - new_loc) ** 2 for wi, x in zip(w, r)) / len(r)), 1e-3)
            done = abs(new_loc - loc) < 1e-9 and abs(new_scale - scale) < 1e-9
            loc, scale = new_loc, new_scale
            if done:
                break
        t = StudentT(round(loc, 4), round(scale, 4), df)
        ll = math.fsum(t.logpdf(x) for x in r)
        if best is None or ll > best[0]:
            best = (ll, t)
    assert best is not None
    return best[1]


def fit(steps: Sequence[Sequence[float]], source: str) -> NoiseModel:
    """The noise model of log-ratios grouped by step: each step's median is its bias, the log-ratios
    less their step's median are the scatter."""
    biases = [median(s) for s in steps if s]
    scatter = [x - median(s) for s in steps if s for x in s]
    return NoiseModel(fit_t(biases), fit_t(scatter, center=False), source)
