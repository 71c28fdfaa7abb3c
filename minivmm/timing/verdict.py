"""Which kernel variant the host behaves like: likelihoods over the steps where the variants differ.

For each variant and step the model predicts a distribution of durations (one value for a fixed cost,
a spread over tick phases for a stall). Around every predicted sample goes the noise model
(:mod:`minivmm.timing.noise`, on ``ln(duration)``), which makes each prediction a density, the
*predictive distribution*. Then:

- **Discriminating steps.** A step counts only where the variants' predictive distributions differ:
  by more than :data:`DIFFERENT` at some duration, in cumulative probability. Where every variant
  predicts the same (a ``KVM_CREATE_VM``, an ioctl the model does not model and carries at its
  measured cost), the step would add the same to every variant's likelihood and is left out, so that
  it can neither dilute nor decide anything.
- **Likelihood and posterior.** A variant's log-likelihood is the sum over the discriminating steps of
  the log-likelihood of each step's samples: each sample a predicted duration (its own tick phase)
  times the step's bias times its own scatter, the bias integrated over its distribution
  (:func:`log_likelihood`; densities of ``ln(duration)``, whose Jacobian is the same for every
  variant). Under a uniform prior over the
  variants, the posterior of each is its likelihood over their sum. The verdict names the most likely
  variant and its log-likelihood ratio to the runner-up. One trace (one sample per step) and a timing
  run (many) go through the same code.
- **Fit.** The posterior says which variant is most likely, not whether any fits. A variant *fits* a
  step (:class:`StepFit`) when one sample lies inside its predictive distribution (two-sided, at
  :data:`FIT_ALPHA` with Bonferroni over the discriminating steps), or, for several samples, when the
  bias they imply is one the noise model allows and, that bias removed, the shares of samples below
  the predicted p10/p50/p90 stay near 0.1/0.5/0.9: within the Kolmogorov-Smirnov critical value, and
  never less than :data:`FIT_FLOOR` (many samples would otherwise reject a prediction a few percent
  off). This compares the distributions in probability, so samples moving between two tick modes
  move the shares by their number, not the comparison by a jiffy. A step that no variant fits is
  *unexplained*: it is named, and it does not count against the verdict (it tells which variant the
  host runs no more than it tells any other).
- **Cannot tell apart.** Variants whose log-likelihood is within :data:`TIE_LLR` of the best (odds
  under 20:1) cannot be told apart by these measurements. The verdict then names the step that
  separates them: the one where their predictions differ most (by the expected log-likelihood ratio
  per sample, the Kullback-Leibler divergence), in this sequence if it has one, or else in a named
  sequence, with how many repetitions would take the odds past 20:1.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from typing import Any, TextIO

from kernel_model.sequences import step_number
from kernel_model.stats import is_stall, ks_critical, quantiles
from kernel_model.variants import VARIANTS
from minivmm.durations import fmt_us
from minivmm.timing.noise import NoiseModel

#: Two predictive distributions differ at a step when their cumulative probabilities differ by more
#: than this at some duration.
DIFFERENT = 0.02
#: A log-likelihood ratio below ln(20) (odds under 20:1, "strong" evidence on Kass and Raftery's
#: scale) leaves two variants undecided.
TIE_LLR = math.log(20)
#: Family-wise level of the fit test over the discriminating steps (Bonferroni): a variant whose
#: predictions are right is called a miss in at most 5% of runs.
FIT_ALPHA = 0.05
#: The smallest Kolmogorov-Smirnov distance that counts as a misfit, however many samples: a
#: prediction whose cumulative shares are everywhere within 25 points of the measured ones fits.
FIT_FLOOR = 0.25
#: The grid of log-durations, in the smaller of the noise's two scales: predicted and measured
#: durations are handled as weighted points on it (an eighth of the noise is far below what it blurs).
GRID_PER_SCALE = 8


def _logsumexp(xs: Seq[float]) -> float:
    top = max(xs)
    if top == -math.inf:
        return -math.inf
    return top + math.log(math.fsum(math.exp(x - top) for x in xs))


def grid_step(noise: NoiseModel) -> float:
    """The spacing of the log-duration grid for ``noise``."""
    return min(noise.bias.scale, noise.scatter.scale) / GRID_PER_SCALE


def grid_points(values_ns: Seq[float], h: float) -> tuple[tuple[int, int], ...]:
    """Durations as (grid index of ln duration, count), sorted by index."""
    counts = Counter(round(math.log(max(float(d), 1.0)) / h) for d in values_ns)
    return tuple(sorted(counts.items()))


class Predictive:
    """One variant's predicted durations of one step, on the log-duration grid, with the noise model.

    :meth:`logpdf`, :meth:`cdf` and :meth:`sf` are those of one sample (bias and scatter together,
    :attr:`NoiseModel.single`); :func:`log_likelihood` integrates over the step's one bias instead."""

    def __init__(self, durations_ns: Seq[float], noise: NoiseModel) -> None:
        self.noise = noise
        self.h = grid_step(noise)
        counted = grid_points(durations_ns, self.h)
        n = sum(c for _, c in counted)
        self.points = tuple((k, c / n) for k, c in counted)
        self.single = noise.single
        self.stats_us = quantiles(int(d) for d in durations_ns)

    def logpdf(self, y: float) -> float:
        """One sample's log density at ln(duration) ``y``."""
        return _logsumexp([math.log(w) + self.single.logpdf(y - k * self.h) for k, w in self.points])

    def cdf(self, y: float) -> float:
        """One sample's P(ln duration <= y)."""
        return math.fsum(w * self.single.cdf(y - k * self.h) for k, w in self.points)

    def sf(self, y: float) -> float:
        """One sample's P(ln duration > y), from the upper tail (small values keep their digits)."""
        return math.fsum(w * self.single.sf(y - k * self.h) for k, w in self.points)

    def span(self) -> tuple[float, float]:
        """The range of ln(duration) where one sample has nearly all its mass."""
        pad = 12 * self.single.scale
        loc = self.single.location
        return self.points[0][0] * self.h + loc - pad, self.points[-1][0] * self.h + loc + pad


def _grid(preds: Seq[Predictive], per_scale: int) -> list[float]:
    lo = min(p.span()[0] for p in preds)
    hi = max(p.span()[1] for p in preds)
    step = preds[0].single.scale / per_scale
    return [lo + k * step for k in range(int((hi - lo) / step) + 2)]


def cdf_distance(a: Predictive, b: Predictive) -> float:
    """The largest difference of two predictive distributions' cumulative probabilities (one sample)."""
    if a.points == b.points:
        return 0.0
    return max(abs(a.cdf(y) - b.cdf(y)) for y in _grid((a, b), 4))


def divergence(a: Predictive, b: Predictive) -> float:
    """The Kullback-Leibler divergence KL(a || b) of one sample, in nats: the log-likelihood ratio one
    sample from ``a`` gives for ``a`` over ``b``, on average."""
    if a.points == b.points:
        return 0.0
    grid = _grid((a, b), 8)
    dy = grid[1] - grid[0]
    total = 0.0
    for y in grid:
        la = a.logpdf(y)
        if la > -50:
            total += math.exp(la) * (la - b.logpdf(y)) * dy
    return max(total, 0.0)


@dataclass(frozen=True)
class Measured:
    """One step's measured samples as (grid index of ln duration, count), sorted."""

    points: tuple[tuple[int, int], ...]
    n: int
    h: float

    @classmethod
    def of(cls, samples_ns: Seq[float], noise: NoiseModel) -> Measured:
        """Put ``samples_ns`` (ns) on the grid the predictions use."""
        h = grid_step(noise)
        points = grid_points(samples_ns, h)
        return cls(points, sum(c for _, c in points), h)


def _weighted_median(points: Seq[tuple[int, float]]) -> int:
    total = sum(w for _, w in points)
    run = 0.0
    for k, w in points:
        run += w
        if run >= total / 2:
            return k
    return points[-1][0]


def log_likelihood(m: Measured, p: Predictive) -> float:
    """The log-likelihood of one step's samples under its prediction (:func:`group_log_likelihood`
    of the step alone)."""
    return group_log_likelihood([(m, p)])


def group_log_likelihood(group: Seq[tuple[Measured, Predictive]]) -> float:
    """The log-likelihood of the samples of steps that share one bias: each sample is a predicted
    duration (its own tick phase) times the bias times its own scatter, and the bias is integrated over
    its distribution, on the grid from ten scales around its center and around the bias the samples
    imply."""
    p0 = group[0][1]
    noise, h = p0.noise, p0.h
    bias, scatter = noise.bias, noise.scatter
    implied = sorted(_weighted_median([(k, float(c)) for k, c in m.points]) - _weighted_median(p.points)
                     for m, p in group)
    reach = round(10 * scatter.scale / h)
    lo = min(round((bias.location - 10 * bias.scale) / h), implied[len(implied) // 2] - reach)
    hi = max(round((bias.location + 10 * bias.scale) / h), implied[len(implied) // 2] + reach)
    stride = max(1, GRID_PER_SCALE // 4)
    cache: dict[int, float] = {}

    def f_scatter(i: int) -> float:
        v = cache.get(i)
        if v is None:
            v = cache[i] = math.exp(scatter.logpdf(i * h))
        return v

    mixers = []
    for m, p in group:
        conv: dict[int, float] = {}

        def mixed(d: int, p: Predictive = p, conv: dict[int, float] = conv) -> float:
            """sum_j w_j f_scatter(d - j): one sample at grid offset d from the bias."""
            v = conv.get(d)
            if v is None:
                v = conv[d] = max(math.fsum(w * f_scatter(d - j) for j, w in p.points), 1e-300)
            return v
        mixers.append((m, mixed))
    terms = []
    for b in range(lo, hi + 1, stride):
        total = math.fsum(c * math.log(mixed(k - b)) for m, mixed in mixers for k, c in m.points)
        terms.append(bias.logpdf(b * h) + math.log(stride * h) + total)
    return _logsumexp(terms)


def bias_groups(steps: Seq[int], ops: Seq[str], predicted_p50_ns: Seq[float]) -> list[list[int]]:
    """The steps that share one bias under a variant: every step of an op whose prediction is a fixed
    cost (the model's cost of that op is what the bias corrects, the same in each), and each stall
    alone (most of a stall is a timer's wait, not the op's cost)."""
    groups: dict[object, list[int]] = {}
    for i in steps:
        key: object = ("stall", i) if is_stall(predicted_p50_ns[i]) else ("op", ops[i])
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def implied_bias(m: Measured, p: Predictive) -> float:
    """The bias (ln ratio) the samples imply: the samples' median less the prediction's."""
    return (_weighted_median([(k, float(c)) for k, c in m.points]) - _weighted_median(p.points)) * p.h


#: The predicted quantiles at which the share of samples below is compared.
SHARE_QUANTILES = (0.1, 0.5, 0.9)


def quantile_of(cdf: Callable[[float], float], q: float, lo: float, hi: float) -> float:
    """The ``y`` in [lo, hi] where ``cdf`` reaches ``q`` (bisection)."""
    for _ in range(50):
        mid = (lo + hi) / 2
        if cdf(mid) < q:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def share_distance(m: Measured, cdf: Callable[[float], float], lo: float, hi: float) -> tuple[float, list[float]]:
    """The largest gap, over the predicted p10/p50/p90, between the share of samples below it and its
    level (0.1, 0.5, 0.9), and the shares: a comparison in probability, which samples moving between
    tick modes move by their share, not by a jiffy."""
    points = [(k * m.h, c) for k, c in m.points]
    shares = []
    for q in SHARE_QUANTILES:
        y = quantile_of(cdf, q, lo, hi)
        shares.append(sum(c for x, c in points if x < y) / m.n)
    return max(abs(s - q) for s, q in zip(shares, SHARE_QUANTILES)), shares


def shape_cdf(p: Predictive, bias: float) -> Callable[[float], float]:
    """The prediction moved by ``bias``, with the scatter around each point: what the samples of a
    step whose bias is known should follow."""
    scatter = p.noise.scatter
    return lambda y: math.fsum(w * scatter.cdf(y - k * p.h - bias) for k, w in p.points)


@dataclass
class StepFit:
    """How one variant's prediction of one step met its samples.

    One sample is checked against one sample's predictive distribution (bias and scatter together):
    ``tail_p`` is its two-sided tail probability. Several are checked twice: the bias they imply
    against the bias distribution (``bias_p``, two-sided), and their spread, with that bias removed,
    against the prediction's: ``shares`` of the samples below the predicted p10/p50/p90 must stay
    within ``critical`` of 0.1/0.5/0.9 (``distance`` is the largest gap; ``critical`` is the
    Kolmogorov-Smirnov critical value at ``alpha``, never less than :data:`FIT_FLOOR`). The step's
    part of the likelihood is not here: steps of one op share a bias (:func:`bias_groups`)."""

    n: int
    alpha: float
    tail_p: float = 1.0
    bias: float = 0.0
    bias_p: float = 1.0
    distance: float = 0.0
    shares: list[float] = field(default_factory=list)
    critical: float = 1.0

    @property
    def fits(self) -> bool:
        """Whether the samples are what the prediction allows (see the class docstring)."""
        if self.n == 1:
            return self.tail_p >= self.alpha
        return self.bias_p >= self.alpha and self.distance <= self.critical

    def to_json(self) -> dict[str, Any]:
        """The JSON form."""
        return {"fits": self.fits, "tail_p": self.tail_p,
                "bias": self.bias, "bias_p": self.bias_p, "shares_below_p10_p50_p90": self.shares,
                "share_distance": self.distance, "critical": self.critical}


def step_fit(m: Measured, p: Predictive, alpha: float) -> StepFit:
    """The :class:`StepFit` of the samples ``m`` under ``p`` at level ``alpha``."""
    if m.n == 1:
        y = m.points[0][0] * m.h
        return StepFit(1, alpha, tail_p=min(1.0, 2 * min(p.cdf(y), p.sf(y))))
    bias = implied_bias(m, p)
    b = p.noise.bias
    bias_p = min(1.0, 2 * min(b.cdf(bias), b.sf(bias)))
    lo, hi = p.span()
    distance, shares = share_distance(m, shape_cdf(p, bias), lo + bias, hi + bias)
    return StepFit(m.n, alpha, bias=bias, bias_p=bias_p, distance=distance, shares=shares,
                   critical=max(ks_critical(m.n, alpha), FIT_FLOOR))


@dataclass
class VariantFit:
    """One variant over the discriminating steps."""

    variant: str
    log_likelihood: float
    posterior: float
    misses: list[int]          # discriminating steps it does not fit (unexplained ones excluded)

    @property
    def fits(self) -> bool:
        """It fits every discriminating step some variant explains."""
        return not self.misses


@dataclass
class Separation:
    """Where two variants' predictions differ most: a step of this sequence or of a named one."""

    variants: tuple[str, str]
    sequence: str
    step: int
    label: str
    p50_us: tuple[float, float]
    divergence: float          # nats per sample (the smaller of the two directions)
    in_this_sequence: bool

    def to_json(self) -> dict[str, Any]:
        """The JSON form."""
        return {"variants": list(self.variants), "sequence": self.sequence, "step": step_number(self.step),
                "label": self.label, "p50_us": list(self.p50_us), "divergence_nats": self.divergence,
                "in_this_sequence": self.in_this_sequence}


@dataclass
class Verdict:
    """Which variant the host behaves like, how strongly, and what the measurements cannot decide."""

    variant: str | None                 # the most likely variant if it fits; None if none fits
    best: str                           # the most likely variant, whether it fits or not
    matches_well: bool
    ties: list[str]                     # variants within TIE_LLR of the best
    runner_up: str | None
    llr_to_runner_up: float | None      # nats; None with one variant
    variants: list[VariantFit]          # most likely first
    discriminating: list[int]
    unexplained: list[int]
    fits: dict[tuple[int, str], StepFit]
    noise: NoiseModel
    samples_per_step: int
    separation: Separation | None = None
    text: str = ""
    labels: list[str] = field(default_factory=list)

    @property
    def posterior(self) -> dict[str, float]:
        """The posterior over the variants under a uniform prior."""
        return {vf.variant: vf.posterior for vf in self.variants}

    def to_json(self) -> dict[str, Any]:
        """The ``verdict`` object of the timing and trace documents."""
        return {
            "variant": self.variant, "most_likely": self.best, "matches_well": self.matches_well,
            "ties": self.ties, "runner_up": self.runner_up, "llr_to_runner_up": _finite(self.llr_to_runner_up),
            "posterior": {vf.variant: vf.posterior for vf in self.variants},
            "log_likelihood": {vf.variant: _finite(vf.log_likelihood) for vf in self.variants},
            "fits": {vf.variant: {"fits": vf.fits, "misses": [step_number(i) for i in vf.misses]}
                     for vf in self.variants},
            "discriminating_steps": [
                {"step": step_number(i), "label": self.labels[i],
                 "variants": {v: self.fits[i, v].to_json() for v in self.posterior}} for i in self.discriminating],
            "unexplained_steps": [step_number(i) for i in self.unexplained],
            "samples_per_step": self.samples_per_step, "noise": self.noise.to_json(),
            "separation": self.separation.to_json() if self.separation else None, "text": self.text}


def _finite(x: float | None) -> float | None:
    if x is None:
        return None
    return x if math.isfinite(x) else (-1e308 if x < 0 else 1e308)


def discriminating_steps(preds: dict[str, list[Predictive]]) -> list[int]:
    """The steps where some two variants' predictive distributions differ (:data:`DIFFERENT`)."""
    variants = list(preds)
    n = len(preds[variants[0]])
    out = []
    for i in range(n):
        row = [preds[v][i] for v in variants]
        if all(p.points == row[0].points for p in row):
            continue
        distinct: dict[tuple[tuple[float, float], ...], Predictive] = {}
        for p in row:
            distinct.setdefault(p.points, p)
        ps = list(distinct.values())
        if any(cdf_distance(ps[a], ps[b]) > DIFFERENT for a in range(len(ps)) for b in range(a + 1, len(ps))):
            out.append(i)
    return out


def judge(measured: list[list[int]], predicted: dict[str, list[list[int]]], noise: NoiseModel,
          labels: list[str] | None = None, ops: list[str] | None = None) -> Verdict:
    """The verdict of ``measured`` (per step, its samples in ns) against each variant's ``predicted``
    samples per step (see the module docstring). ``labels`` name the steps in the text; ``ops`` are
    their ops, whose fixed-cost steps share one bias (:func:`bias_groups`; None: every step its own)."""
    variants = list(predicted)
    if not variants:
        raise ValueError("no variants to judge")
    preds = {v: [Predictive(d, noise) for d in predicted[v]] for v in variants}
    steps = discriminating_steps(preds)
    samples = {i: Measured.of(measured[i], noise) for i in steps}
    n_min = min((len(s) for s in measured), default=0)
    alpha = FIT_ALPHA / max(1, len(steps))
    fits = {(i, v): step_fit(samples[i], preds[v][i], alpha) for i in steps for v in variants}
    unexplained = [i for i in steps if not any(fits[i, v].fits for v in variants)]
    op_of = ops or [f"step {i}" for i in range(len(measured))]
    ll = {}
    for v in variants:
        p50 = [preds[v][i].stats_us["p50"] * 1000 for i in range(len(measured))]
        groups = bias_groups(steps, op_of, p50)
        ll[v] = math.fsum(group_log_likelihood([(samples[i], preds[v][i]) for i in g]) for g in groups)
    top = max(ll.values())
    weights = {v: math.exp(ll[v] - top) for v in variants}
    total = math.fsum(weights.values())
    order = sorted(variants, key=lambda v: -ll[v])
    vfits = []
    for v in order:
        misses = [i for i in steps if i not in unexplained and not fits[i, v].fits]
        vfits.append(VariantFit(v, ll[v], weights[v] / total, misses))
    best = order[0]
    runner = order[1] if len(order) > 1 else None
    llr = ll[best] - ll[runner] if runner is not None else None
    ties = [v for v in order[1:] if ll[best] - ll[v] < TIE_LLR]
    matches = vfits[0].fits and len(unexplained) < max(1, len(steps))
    verdict = Verdict(best if matches else None, best, matches, ties, runner, llr, vfits, steps, unexplained,
                      fits, noise, n_min, labels=list(labels or [f"#{step_number(i)}" for i in range(len(measured))]))
    if ties:
        verdict.separation = separating_step(best, ties[0], preds, verdict.labels)
    return verdict


def separating_step(a: str, b: str, preds: dict[str, list[Predictive]], labels: list[str]) -> Separation | None:
    """The step of this sequence where ``a`` and ``b`` differ most (by the smaller of the two KL
    divergences), or None where no step of it separates them."""
    best: tuple[float, int] | None = None
    for i, (pa, pb) in enumerate(zip(preds[a], preds[b])):
        if pa.points == pb.points:
            continue
        d = min(divergence(pa, pb), divergence(pb, pa))
        if best is None or d > best[0]:
            best = (d, i)
    if best is None or best[0] < 1e-3:
        return None
    d, i = best
    return Separation((a, b), "this sequence", i, labels[i], (preds[a][i].stats_us["p50"], preds[b][i].stats_us["p50"]),
                      d, True)


def separating_named_step(a: str, b: str, hz: int, platform: str, noise: NoiseModel,
                          samples: int = 400) -> Separation | None:
    """Where a named sequence (one without running vCPUs, so predicted quickly) separates ``a`` and
    ``b`` the most, for a run whose own sequence cannot."""
    from kernel_model.predict import phase_deterministic, predict
    from kernel_model.sequences import SEQUENCES, SequenceError, validate

    best: Separation | None = None
    for name, seq in SEQUENCES.items():
        if not phase_deterministic(seq):
            continue
        try:
            validate(seq, platform)
        except SequenceError:
            continue
        pa = [Predictive(sp.durations, noise) for sp in predict(seq, a, hz, platform, samples=samples).steps]
        pb = [Predictive(sp.durations, noise) for sp in predict(seq, b, hz, platform, samples=samples).steps]
        sep = separating_step(a, b, {a: pa, b: pb}, [s.label for s in seq.steps])
        if sep is not None and (best is None or sep.divergence > best.divergence):
            best = Separation(sep.variants, name, sep.step, sep.label, sep.p50_us, sep.divergence, False)
    return best


def render_table(v: Verdict, out: TextIO) -> None:
    """The table behind the verdict: per variant its log-likelihood over the discriminating steps, its
    posterior under a uniform prior, and whether it fits (or the first step it misses)."""
    w = out.write
    n = len(v.discriminating)
    noise = v.noise
    w(f"\nlikelihood per variant over the {n} step{'s' if n != 1 else ''} where their predictions differ "
      f"(noise on ln(measured/predicted): {noise.describe()}; {noise.source})\n")
    w(f"  {'variant':<22} {'log-likelihood':>14} {'posterior':>11}  fit\n")
    for vf in v.variants:
        if vf.fits:
            fit = "fits"
        else:
            i = vf.misses[0]
            more = f" (+{len(vf.misses) - 1} more)" if len(vf.misses) > 1 else ""
            fit = f"misses {v.labels[i]}{more}"
        w(f"  {vf.variant:<22} {vf.log_likelihood:>14.1f} {fmt_posterior(vf.posterior):>11}  {fit}\n")


def strength(llr: float) -> str:
    """Kass and Raftery's words for a log-likelihood ratio (natural log of the Bayes factor)."""
    if llr < 1.1:
        return "barely worth mentioning"
    if llr < TIE_LLR:
        return "positive"
    if llr < 5:
        return "strong"
    return "very strong"


def fmt_posterior(p: float) -> str:
    """0.731, 0.99997, >0.999999, <1e-6: as many digits as tell the values apart."""
    if p > 1 - 1e-6:
        return ">0.999999"
    if p < 1e-6:
        return "<1e-6"
    if p > 0.999:
        return f"{p:.6f}".rstrip("0")
    return f"{p:.3g}"


def describe(v: Verdict, measured: list[list[int]], preds_p50_us: dict[str, list[float]]) -> str:
    """The verdict's sentence(s) (see the module docstring for what each says)."""
    best = v.variants[0]
    n_steps = len(v.discriminating)
    if n_steps == 0:
        return ("No step of this sequence tells the variants apart: every variant predicts the same for every "
                "step, so the measurements cannot say which kernel the host runs.")
    desc = VARIANTS[best.variant] if best.variant in VARIANTS else None
    what = f" ({desc.source}: {desc.description})" if desc else ""
    samples = "one sample each" if v.samples_per_step == 1 else f"{v.samples_per_step} samples each"
    basis = f"from {n_steps} step{'s' if n_steps != 1 else ''} where the variants' predictions differ ({samples})"
    if v.llr_to_runner_up is not None and v.runner_up is not None:
        odds = math.exp(min(v.llr_to_runner_up, 700))
        odds_text = f"odds {odds:,.0f}:1" if odds < 1e6 else "odds over 1,000,000:1"
        strength_text = (f"posterior {fmt_posterior(best.posterior)} under a uniform prior; log-likelihood ratio "
                         f"{v.llr_to_runner_up:.1f} to {v.runner_up}, the runner-up ({odds_text}, "
                         f"{strength(v.llr_to_runner_up)})")
    else:
        strength_text = "the only variant"
    if not v.matches_well:
        i = best.misses[0] if best.misses else None
        miss = ""
        if i is not None:
            miss = (f": it misses {v.labels[i]} ({_measured(measured[i])}, predicted p50 "
                    f"{fmt_us(preds_p50_us[best.variant][i])})")
        text = (f"No kernel variant matches the host well. The most likely, {best.variant}{what}, has "
                f"{strength_text}, {basis}{miss}. The host may run a kernel the model does not know, or its "
                "costs differ from the model's.")
    else:
        text = f"The host behaves like {best.variant}{what}: {strength_text}, {basis}."
    if v.ties:
        text += " " + tie_text(v)
    if v.unexplained:
        names = "; ".join(f"{v.labels[i]} ({_measured(measured[i])})" for i in v.unexplained[:3])
        more = f" and {len(v.unexplained) - 3} more" if len(v.unexplained) > 3 else ""
        text += (f" No variant explains {names}{more}: left out of the judgement (what no variant predicts "
                 "says nothing about which one the host runs).")
    return text


def _measured(samples: Seq[int]) -> str:
    """``measured 1.20 ms`` for one sample, ``measured p50 1.20 ms`` for several."""
    p50 = quantiles(samples)["p50"]
    return f"measured {fmt_us(p50)}" if len(samples) == 1 else f"measured p50 {fmt_us(p50)}"


def tie_text(v: Verdict) -> str:
    """Why the tied variants cannot be told apart, and what would separate them."""
    best = v.best
    tied = ", ".join(v.ties)
    llr = v.llr_to_runner_up or 0.0
    head = (f"These measurements cannot tell {best} from {tied} (log-likelihood ratio {llr:.1f}, under "
            f"ln 20 = {TIE_LLR:.1f})")
    sep = v.separation
    if sep is None:
        return head + "."
    a, b = sep.variants
    pa, pb = sep.p50_us
    if sep.in_this_sequence:
        return (head + f": {sep.label} is where they differ most ({a} predicts {fmt_us(pa)}, {b} "
                f"{fmt_us(pb)}), and its samples fit both.")
    return (head + f": no step of this sequence separates them; {sep.label} in the {sep.sequence} sequence "
            f"(step #{step_number(sep.step)}) does ({a} predicts {fmt_us(pa)}, {b} {fmt_us(pb)}).")

