"""Measured against modelled: predictions for this host and the verdict (which variant the host
behaves like, and how strongly: :mod:`minivmm.timing.verdict`).

The model predicts each step with the gaps actually measured, under every main variant; the verdict
weighs the measured samples against those predictions, over the steps where the variants differ,
with the noise model of :mod:`minivmm.timing.noise` (a host profile's where it carries one).
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

from kernel_model.costs import Costs
from kernel_model.predict import Prediction, phase_deterministic, predict
from kernel_model.published import PublishedFigure, figures_for
from kernel_model.sequences import Sequence, step_name, step_number, with_gaps
from kernel_model.stats import longest_stall, quantiles
from kernel_model.variants import MAIN_VARIANTS
from minivmm.timing.noise import DEFAULT, NoiseModel
from minivmm.timing.runner import Repetition
from minivmm.timing.verdict import Verdict, describe, judge, separating_named_step


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
    #: The load average (1, 5, 15 minutes) at the end of the measurement.
    load_average: tuple[float, float, float] | None = None


@dataclass
class Comparison:
    """Everything the timing report shows."""

    sequence: Sequence
    repetitions: list[Repetition]
    measured: list[list[int]]
    gaps_ns: list[int]
    predictions: dict[str, Prediction]
    verdict: Verdict
    stalled_step: int | None
    published: dict[int, list[PublishedFigure]] = field(default_factory=dict)


def compare(seq: Sequence, reps: list[Repetition], hz: int, platform: str, samples: int,
            seed: int = 0, variants: tuple[str, ...] = MAIN_VARIANTS, costs: Costs | None = None,
            noise: NoiseModel = DEFAULT, labels: list[str] | None = None) -> Comparison:
    """Predict the sequence for this host with the gaps actually measured, and judge each variant.
    ``costs`` (e.g. a host profile's) replaces the model's defaults; ``noise`` is the noise model
    (:mod:`minivmm.timing.noise`); ``labels`` name the steps in the verdict (default: ``#i label``)."""
    n = len(seq.steps)
    measured = [[r.durations_ns[i] for r in reps] for i in range(n)]
    gaps = [int(statistics.median(r.gaps_ns[i] for r in reps)) for i in range(n)]
    host_seq = with_gaps(seq, gaps)
    if not phase_deterministic(host_seq):
        samples = min(samples, 200)  # Monte Carlo with running vCPUs: ~10 ms per sample
    predictions = {v: predict(host_seq, v, hz, platform, samples=samples, seed=seed, costs=costs)
                   for v in variants}
    verdict = judge_predictions(measured, predictions, noise, hz, platform,
                                labels or [step_name(i, s.label) for i, s in enumerate(seq.steps)])
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
    return Comparison(seq, reps, measured, gaps, predictions, verdict, stalled, published)


def judge_predictions(measured: list[list[int]], predictions: dict[str, Prediction], noise: NoiseModel,
                      hz: int, platform: str, labels: list[str]) -> Verdict:
    """The verdict (:func:`minivmm.timing.verdict.judge`) with its sentence; where the variants tie and
    no step of this sequence separates them, the step of a named sequence that does."""
    first = next(iter(predictions.values()))
    verdict = judge(measured, {v: [sp.durations for sp in p.steps] for v, p in predictions.items()}, noise, labels,
                    [sp.step.op for sp in first.steps])
    if verdict.ties and verdict.separation is None:
        verdict.separation = separating_named_step(verdict.best, verdict.ties[0], hz, platform, noise)
    p50s = {v: [sp.stats()["p50"] for sp in p.steps] for v, p in predictions.items()}
    verdict.text = describe(verdict, measured, p50s)
    return verdict


def with_units(stats: dict[str, float], unit: str = "us") -> dict[str, float]:
    """``{"p50": 1.5}`` -> ``{"p50_us": 1.5}``: the unit in the field name, as every JSON document has it."""
    return {f"{k}_{unit}": v for k, v in stats.items()}


def to_json(c: Comparison, host: TimingHost, overhead: dict[str, float]) -> dict[str, Any]:
    """The ``minivmm timing --json`` document (``minivmm/schemas/timing.schema.json``).

    Each step carries its raw samples in nanoseconds (``samples_ns``, one per repetition, in run order)
    so that ``minivmm compare`` and the gate can test on them; the quantiles beside them are in
    microseconds."""
    from minivmm.schemas import stamp
    from minivmm.timing.strace_lines import repetition_lines

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
    return stamp("timing", {
        "sequence": c.sequence.name, "repetitions": len(c.repetitions), "host": asdict(host),
        "timer_overhead_ns": overhead,
        "verdict": c.verdict.to_json(),
        "strace_example": repetition_lines(c.sequence, c.repetitions[0]),
        "steps": steps})
