"""Measured against modelled: predictions for this host, goodness of fit per variant, the verdict.

The fit of a variant is the mean over every step of ``|ln(measured / predicted)|``: 0 is a perfect
match, 0.1 means ~10% apart, 0.69 a factor of two. Where the model predicts a distribution (a stall
whose length depends on the tick phase) the step's error is the mean over p10, p50 and p90; where it
predicts one value (an ioctl's fixed cost, ``Costs``) only the medians are compared, since the model
makes no claim about the host's scheduling noise around that value. A log ratio lets a 1 µs ioctl and
a 6 ms stall count alike, and a variant that misses a stall (or invents one) is off by a factor of
~100 on that step, which no small baseline error hides.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

from kernel_model.costs import Costs
from kernel_model.predict import Prediction, phase_deterministic, predict
from kernel_model.published import PublishedFigure, figures_for
from kernel_model.sequences import Sequence, step_number, with_gaps
from kernel_model.stats import PERCENTILES, longest_stall, quantiles
from kernel_model.variants import MAIN_VARIANTS, VARIANTS
from minivmm.timing.runner import Repetition

#: Below this fit the best variant "matches well"; above it the report says nothing matches well.
GOOD_FIT = 0.5
#: Variants whose fit is within this of the best one cannot be told apart by this sequence.
TIE = 0.05


@dataclass(frozen=True)
class TimingHost:
    """What a timing run knows about where it ran and how: the facts the report states and the JSON
    carries under ``host`` (``asdict`` at the edge, in :func:`to_json`)."""

    kernel: str | None
    machine: str
    #: The HZ and platform the model used (``--hz``/``--platform`` or the host's), and where each came from.
    hz: int
    hz_source: str | None
    platform: str
    platform_source: str
    backend_module: str | None
    srcutree_params: dict[str, Any]
    jitter: bool
    #: The host's own HZ and platform, when readable: a report warns when the model's differ.
    host_hz: int | None = None
    host_platform: str | None = None
    #: The repetitions asked for when Ctrl-C cut the run short (None: the run completed).
    partial: int | None = None
    #: The host profile the model used (``--profile``), if any.
    profile: str | None = None
    #: The CPUs' pressure (PSI "some", %) while measuring: above 20% the gate calls a run unusable.
    cpu_pressure_pct: float | None = None


@dataclass
class Fit:
    """How well one variant's predictions match the measurements."""

    variant: str
    score: float
    per_step: list[float]


@dataclass
class Verdict:
    """Which variant the host behaves like, and how sure that is."""

    variant: str | None
    matches_well: bool
    ties: list[str]
    fits: dict[str, float]
    text: str


@dataclass
class Comparison:
    """Everything the timing report shows."""

    sequence: Sequence
    repetitions: list[Repetition]
    measured: list[list[int]]
    gaps_ns: list[int]
    predictions: dict[str, Prediction]
    fits: list[Fit]
    verdict: Verdict
    stalled_step: int | None
    published: dict[int, list[PublishedFigure]] = field(default_factory=dict)


def fit(measured: list[list[int]], prediction: Prediction) -> Fit:
    """The mean |ln(measured/predicted)| over steps and quantiles (see the module docstring)."""
    per_step = []
    for samples, sp in zip(measured, prediction.steps):
        m, p = quantiles(samples), sp.stats()
        spread = p["p90"] > 1.01 * p["p10"]
        qs = PERCENTILES if spread else (50,)
        per_step.append(statistics.fmean(
            abs(math.log(max(m[f"p{q}"], 0.01) / max(p[f"p{q}"], 0.01))) for q in qs))
    return Fit(prediction.variant, statistics.fmean(per_step), per_step)


def decide(fits: list[Fit]) -> Verdict:
    """Name the best-fitting variant; say when it does not fit well or cannot be told from another."""
    ranked = sorted(fits, key=lambda f: f.score)
    best = ranked[0]
    ties = [f.variant for f in ranked[1:] if f.score - best.score <= TIE]
    scores = {f.variant: round(f.score, 3) for f in ranked}
    desc = VARIANTS[best.variant]
    if best.score > GOOD_FIT:
        text = (f"No kernel variant matches the host well: the closest, {best.variant}, is off by "
                f"{best.score:.2f} (mean |ln ratio|; {GOOD_FIT} or less counts as a match). The host may run "
                "a kernel the model does not know, or its costs differ from the model's.")
        return Verdict(None, False, ties, scores, text)
    text = (f"The host behaves like {best.variant} ({desc.source}: {desc.description}); "
            f"fit {best.score:.2f}")
    others = [f for f in ranked[1:] if f.variant not in ties]
    if others:
        text += f", next best {others[0].variant} at {others[0].score:.2f}"
    text += "."
    if ties:
        text += (f" This sequence cannot tell it from {', '.join(ties)} (fit within {TIE}): a sequence "
                 "whose memslot update follows the registrations (registrations-first) separates them.")
    return Verdict(best.variant, True, ties, scores, text)


def compare(seq: Sequence, reps: list[Repetition], hz: int, platform: str, samples: int,
            seed: int = 0, variants: tuple[str, ...] = MAIN_VARIANTS, costs: Costs | None = None) -> Comparison:
    """Predict the sequence for this host with the gaps actually measured, and fit each variant.
    ``costs`` (e.g. a host profile's) replaces the model's defaults."""
    n = len(seq.steps)
    measured = [[r.durations_ns[i] for r in reps] for i in range(n)]
    gaps = [int(statistics.median(r.gaps_ns[i] for r in reps)) for i in range(n)]
    host_seq = with_gaps(seq, gaps)
    if not phase_deterministic(host_seq):
        samples = min(samples, 200)  # Monte Carlo with running vCPUs: ~10 ms per sample
    predictions = {v: predict(host_seq, v, hz, platform, samples=samples, seed=seed, costs=costs)
                   for v in variants}
    fits = [fit(measured, predictions[v]) for v in variants]
    stalled = None
    if "call_srcu" in predictions:
        # The stall the published reports describe is a set-up step's; the teardown's wait is its own.
        setup = len(seq.setup_steps())
        stalled = longest_stall([sp.stats()["p50"] * 1000 for sp in predictions["call_srcu"].steps[:setup]])
    published: dict[int, list[PublishedFigure]] = {}
    first_registration = next((i for i, s in enumerate(seq.steps) if s.op == "ioeventfd"), None)
    for i, step in enumerate(seq.steps):
        figs = figures_for("stalled", hz) if i == stalled else []
        if i == first_registration:
            figs = figures_for("registration")
        if step.op == "vcpu" and step.args["id"] == 1:
            figs = figures_for("next_vcpu")
        if figs:
            published[i] = figs
    return Comparison(seq, reps, measured, gaps, predictions, fits, decide(fits), stalled, published)


def with_units(stats: dict[str, float], unit: str = "us") -> dict[str, float]:
    """``{"p50": 1.5}`` -> ``{"p50_us": 1.5}``: the unit in the field name, as every JSON document has it."""
    return {f"{k}_{unit}": v for k, v in stats.items()}


def to_json(c: Comparison, host: TimingHost, overhead: dict[str, float]) -> dict[str, Any]:
    """The ``minivmm timing --json`` document (``minivmm/schemas/timing.schema.json``).

    Each step carries its raw samples in nanoseconds (``samples_ns``, one per repetition, in run order)
    so that ``minivmm compare`` and the gate can test on them; the quantiles beside them are in
    microseconds."""
    from minivmm.schemas import stamp

    steps = []
    for i, step in enumerate(c.sequence.steps):
        steps.append({
            "step": step_number(i), "op": step.op, "label": step.label, "gap_ns": c.gaps_ns[i],
            "samples_ns": [int(d) for d in c.measured[i]],
            "measured": with_units(quantiles(c.measured[i])),
            "predicted": {v: with_units(p.steps[i].stats()) for v, p in c.predictions.items()},
            "published": [{"what": f.what, "hz": f.hz, "platform": f.platform, "before_s": f.before_s,
                           "after_s": f.after_s, "source": f.source} for f in c.published.get(i, [])],
            "stalled": i == c.stalled_step,
        })
    v = c.verdict
    return stamp("timing", {
        "sequence": c.sequence.name, "repetitions": len(c.repetitions), "host": asdict(host),
        "timer_overhead_ns": overhead,
        "verdict": {"variant": v.variant, "matches_well": v.matches_well, "ties": v.ties, "fit": v.fits,
                    "text": v.text},
        "strace_example": [r.strace_line() for r in c.repetitions[0].records if r is not None],
        "steps": steps})
