"""Latency prediction: run a sequence through the model many times, each starting at a random point
within a jiffy (and, with running vCPUs, a random reader offset), and collect each step's duration.

The durations of a step are a distribution because the tick phase decides when a 1-jiffy timer fires;
sampling the phase uniformly is what ``minivmm timing --jitter`` does on the real host.

Speed: a sequence whose steps do not depend on running vCPUs is a deterministic function of the
phase, piecewise linear (a duration either does not depend on the phase, or shrinks one-for-one as the
start moves towards the tick, with a jump of one jiffy where the timer moves to the next tick). Such a
sequence is simulated on an adaptively refined grid of phases, and each sample is read off the
piecewise-linear interpolant: exact away from the jumps, and within ``PHASE_RESOLUTION`` of a jump
beside it. Sequences with running vCPUs before their last step are sampled directly (Monte Carlo):
their readers' offsets are random too.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any

from kernel_model.costs import Costs
from kernel_model.invariants import InvariantChecker, Violation
from kernel_model.kvm_main import KvmModel
from kernel_model.platforms import get_platform
from kernel_model.sequences import Sequence, Step, step_number
from kernel_model.sim import Sim
from kernel_model.stats import quantiles
from kernel_model.variants import get_variant

@dataclass
class StepPrediction:
    """The predicted durations (ns) of one step over every sample."""

    step: Step
    durations: list[int] = field(default_factory=list)

    def stats(self) -> dict[str, float]:
        """min, p10, p50, p90, max in microseconds."""
        return quantiles(self.durations)


@dataclass
class Prediction:
    """A sequence under one variant, HZ and platform."""

    sequence: Sequence
    variant: str
    hz: int
    platform: str
    samples: int
    steps: list[StepPrediction]
    violations: list[Violation]

    def setup_durations(self) -> list[int]:
        """Per sample, the whole set-up (ns): every step's duration and every gap after the first step."""
        gaps = sum(sp.step.gap_ns for sp in self.steps[1:])
        return [sum(ds) + gaps for ds in zip(*(sp.durations for sp in self.steps))]

    def setup_stats(self) -> dict[str, float]:
        """min, p10, p50, p90, max of the whole set-up, in microseconds."""
        return quantiles(self.setup_durations())

    def to_json(self) -> dict[str, Any]:
        """Per step: its number, label and min/p10/p50/p90/max in microseconds (``p50_us``: the unit in
        the name)."""
        return {"sequence": self.sequence.name, "variant": self.variant, "hz": self.hz,
                "platform": self.platform, "samples": self.samples,
                "steps": [{"step": step_number(i), "op": sp.step.op, "label": sp.step.label,
                           **{f"{k}_us": v for k, v in sp.stats().items()}}
                          for i, sp in enumerate(self.steps)],
                "violations": [v.to_json() for v in self.violations]}


def run_step(kvm: KvmModel, step: Step, rng: random.Random) -> None:
    """Issue one step against the model (the caller times it): the op's spec says how."""
    step.spec.model(kvm, step.full_args, rng)


def simulate_once(sequence: Sequence, variant: str, hz: int, platform: str, phase: float,
                  rng: random.Random, costs: Costs | None = None,
                  checker: InvariantChecker | None = None) -> tuple[list[int], KvmModel]:
    """One run of the sequence starting at ``phase`` into a jiffy: each step's duration (ns)."""
    sim = Sim(hz, phase, costs, rng)
    kvm = KvmModel(sim, get_variant(variant), get_platform(platform), checker)
    durations = []
    for i, step in enumerate(sequence.steps):
        sim.run_until(sim.now + step.gap_ns)
        kvm.issuing(i)
        t0 = sim.now
        run_step(kvm, step, rng)
        durations.append(sim.now - t0)
    if kvm.vcpu_readers:
        kvm.stop_vcpus()
    return durations, kvm


#: Coarse grid of the phase interpolant, and the width below which an interval is not split further.
PHASE_GRID = 32
PHASE_RESOLUTION = 1e-6
#: Two durations that differ by at most this much (ns) count as equal when testing linearity.
LINEAR_TOLERANCE_NS = 2


def phase_deterministic(sequence: Sequence) -> bool:
    """Whether every timed step is a function of the tick phase alone (no vCPU runs before the last step)."""
    return all(step.op != "run" for step in sequence.steps[:-1])


class PhaseInterpolant:
    """Piecewise-linear durations as a function of the phase, refined where they are not linear."""

    def __init__(self, f: Callable[[float], list[int]], grid: int = PHASE_GRID,
                 resolution: float = PHASE_RESOLUTION) -> None:
        self.evaluations = 0

        def ev(phase: float) -> list[int]:
            self.evaluations += 1
            return f(phase)

        def linear(a: float, fa: list[int], b: float, fb: list[int], x: float, fx: list[int]) -> bool:
            w = (x - a) / (b - a)
            return all(abs(fa_i + (fb_i - fa_i) * w - fx_i) <= LINEAR_TOLERANCE_NS
                       for fa_i, fb_i, fx_i in zip(fa, fb, fx))

        # f(1) == f(0): starting one whole jiffy later changes nothing.
        f0 = ev(0.0)
        points = [(i / grid, f0 if i in (0, grid) else ev(i / grid)) for i in range(grid + 1)]
        segments: list[tuple[float, list[int], float, list[int]]] = []
        stack = [(points[i], points[i + 1]) for i in range(grid - 1, -1, -1)]
        while stack:
            (a, fa), (b, fb) = stack.pop()
            if b - a <= resolution:
                segments.append((a, fa, b, fa))  # a jump inside: constant on the left value
                continue
            q1, m, q3 = a + (b - a) / 4, (a + b) / 2, a + 3 * (b - a) / 4
            fm = ev(m)
            if linear(a, fa, b, fb, m, fm) and linear(a, fa, b, fb, q1, ev(q1)) and linear(a, fa, b, fb, q3, ev(q3)):
                segments.append((a, fa, b, fb))
            else:
                stack.append(((m, fm), (b, fb)))
                stack.append(((a, fa), (m, fm)))
        segments.sort(key=lambda seg: seg[0])
        self._starts = [seg[0] for seg in segments]
        self._segments = segments

    def __call__(self, phase: float) -> list[int]:
        """The interpolated durations at ``phase``."""
        i = bisect.bisect_right(self._starts, phase) - 1
        a, fa, b, fb = self._segments[i]
        w = (phase - a) / (b - a)
        return [round(x + (y - x) * w) for x, y in zip(fa, fb)]


def predict(sequence: Sequence, variant: str, hz: int, platform: str, samples: int = 1000,
            seed: int = 0, costs: Costs | None = None) -> Prediction:
    """Predict each step's duration distribution over ``samples`` uniformly drawn tick phases."""
    if samples < 1:
        raise ValueError("samples must be at least 1")
    rng = random.Random(seed)
    steps = [StepPrediction(s) for s in sequence.steps]
    checker = InvariantChecker()
    if phase_deterministic(sequence) and not (costs and (costs.timer_latency_samples
                                                         or costs.wakeup_latency_samples or costs.tick_slip)):
        draw: Callable[[float], list[int]] = PhaseInterpolant(lambda phase: simulate_once(
            sequence, variant, hz, platform, phase, random.Random(seed), costs, checker)[0])
    else:
        def draw(phase: float) -> list[int]:
            return simulate_once(sequence, variant, hz, platform, phase, rng, costs, checker)[0]
    for _ in range(samples):
        for sp, d in zip(steps, draw(rng.random())):
            sp.durations.append(d)
    violations = list({(v.kind, v.message): v for v in checker.violations}.values())
    return Prediction(sequence, variant, hz, platform, samples, steps, violations)
