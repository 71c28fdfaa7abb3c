"""Latency prediction: run a sequence through the model many times, each starting at a random point
within a jiffy (and, with running vCPUs, a random reader offset), and collect each step's duration.

The durations of a step are a distribution because the tick phase decides when a 1-jiffy timer fires;
sampling the phase uniformly is what ``minivmm timing --jitter`` does on the real host.

Speed. Without a host profile (a quiet host: nothing random) a sequence whose steps do not depend on
running vCPUs is a deterministic function of the phase, piecewise linear: a duration either does not
depend on the phase or shrinks one-for-one as the start moves towards the tick, with a jump of one
jiffy where a timer moves to the next tick. Every such jump comes from a ``jiffies`` read changing
value, and each run reports how much later it could have started before any of its reads would
(``Sim.phase_slack``). The :class:`PhaseInterpolant` uses that to put its pieces' ends on the jumps
with a few runs each, and every sample is read off it: the cost is a few runs per jump, whatever the
sample count. With a profile, or with vCPUs running before the last step (their readers' offsets are
random too), every sample is its own run (Monte Carlo).
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kernel_model.costs import Costs
from kernel_model.invariants import InvariantChecker, Violation
from kernel_model.kvm_main import KvmModel
from kernel_model.platforms import get_platform
from kernel_model.sequences import Sequence, Step, check_bounds, step_number
from kernel_model.sim import NSEC_PER_SEC, Sim
from kernel_model.stats import quantiles
from kernel_model.tick import TracedTicks
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
                  checker: InvariantChecker | None = None,
                  held_ns: list[int | None] | None = None,
                  starts_ns: list[int] | None = None,
                  caller_cpu: int | None = None,
                  traced: TracedTicks | None = None,
                  wakeups_ns: list[tuple[int, ...]] | None = None) -> tuple[list[int], KvmModel]:
    """One run of the sequence starting at ``phase`` into a jiffy: each step's duration (ns). Each
    step's gap is a pause of exactly that length (``Sim.pause``).

    Two ways to pair the run with a host repetition (``kernel_model.differential``), for the steps the
    pairing does not test:

    - ``held_ns`` (per step, or None) holds a step to a duration measured on the host instead of the
      model's fixed costs: the caller stays busy until it has passed, and where the model's step took
      longer, the excess comes off the gaps that follow;
    - ``starts_ns`` (per step, ns from the run's start) replays the host's timeline instead of the
      gaps: each step starts where the host's did, or as soon as the model's previous step has ended
      if that is later; a waiter's drawn latency (a host profile's) that runs past the host's next
      start counts in its step's duration but does not hold up the next step (``Sim.resume_by``).
      With ``phase`` the host's own tick phase, every registration then arms its
      timer for the tick the host's did, and a waiting step's duration is the model's answer to the
      host's exact situation; ``caller_cpu``, the CPU the host's caller armed its timers on, and
      ``traced``, the CPUs' traced ticks and tick stops (kernel_model.tick.TracedTicks), complete it
      (otherwise drawn from the profile); ``wakeups_ns``, per step, how long each of the host
      caller's wake-ups in it waited for its CPU (traced), replaces the profile's drawn wake-up
      latencies with the host's (``Sim.replayed_wakeups``)."""
    sim = Sim(hz, phase, costs, rng, caller_cpu, traced)
    kvm = KvmModel(sim, get_variant(variant), get_platform(platform), checker)
    durations = []
    debt = 0  # ns the model's held steps ran past the host's, to come off the next gaps
    for i, step in enumerate(sequence.steps):
        if starts_ns is not None:
            sim.pause(starts_ns[i] - sim.now)
        else:
            gap = step.gap_ns - debt
            debt = max(0, -gap)
            sim.pause(max(0, gap))
        kvm.issuing(i)
        t0 = sim.now
        sim.resume_by = starts_ns[i + 1] if starts_ns is not None and i + 1 < len(starts_ns) else None
        sim.unserved_ns = 0
        sim.replayed_wakeups = list(wakeups_ns[i]) if wakeups_ns is not None else None
        run_step(kvm, step, rng)
        held = held_ns[i] if held_ns is not None else None
        if held is not None:
            took = sim.now - t0
            if took < held:
                sim.spend(held - took)
            else:
                debt += took - held
        durations.append(sim.now - t0 + sim.unserved_ns)
    if kvm.vcpu_readers:
        kvm.stop_vcpus()
    return durations, kvm


#: Two durations that differ by at most this much (ns) count as equal when testing linearity. Besides the
#: jumps of a jiffy, a duration has steps of a microsecond or a few where the phase moves a registration
#: from one grace period's batch of callbacks to the next (each callback costs ``Costs.callback``);
#: those, and bends, are interpolated across within this error, below what reports show.
LINEAR_TOLERANCE_NS = 5_000
#: The interpolant resolves features down to 1/PHASE_RESOLUTION of a jiffy (about 4 µs at HZ=250): a
#: narrower window where a duration differs (a registration landing between two grace-period steps a
#: few µs apart) holds fewer than one sample in PHASE_RESOLUTION, and may be interpolated across.
PHASE_RESOLUTION = 1024


def phase_deterministic(sequence: Sequence) -> bool:
    """Whether every timed step is a function of the tick phase alone (no vCPU runs before the last step)."""
    return all(step.op != "run" for step in sequence.steps[:-1])


def quiet(costs: Costs | None) -> bool:
    """Whether the costs draw nothing at random (no measured latencies, a quiet host's ticks)."""
    return costs is None or (not costs.timer_latency_samples and not costs.wakeup_latency_samples
                             and costs.cpus.quiet)


Run = Callable[[int], tuple[list[int], int]]


class PhaseInterpolant:
    """Durations as a piecewise-linear function of the phase (in ns into the jiffy). ``f(phase_ns)``
    returns the durations at that phase and the run's ``phase_slack``: how much later the run could
    start before any of its ``jiffies`` reads (or an order it relied on) would change.

    The phases are swept class by class: a run at a class's first phase says where the class ends,
    which is where a duration jumps by a jiffy (a timer moving to the next tick); a class narrower than
    the resolution is taken to run to the end of the jiffy, and halving does the rest. Within a class the
    durations are linear but for what the slack does not announce (the order of two events a few µs
    apart, see ``kernel_model.sim``): a class whose middle lies off the line through its ends (by more
    than ``tolerance``) is halved until it does, or until a piece is narrower than
    ``tick_ns / PHASE_RESOLUTION``."""

    def __init__(self, f: Run, tick_ns: int, tolerance: int = LINEAR_TOLERANCE_NS) -> None:
        self.evaluations = 0
        self.tolerance = tolerance
        self.resolution = max(1, tick_ns // PHASE_RESOLUTION)
        self._f = f
        self._cache: dict[int, tuple[list[int], int]] = {}
        segments: list[tuple[int, list[int], int, list[int]]] = []
        a = 0
        while a < tick_ns:
            fa, slack = self._ev(a)
            # A class narrower than the resolution says little (a run that reads jiffies in many places,
            # one grace period after another, always has a read near some tick): halving finds what
            # matters in it instead.
            nxt = tick_ns if slack < self.resolution else min(tick_ns, a + slack)
            b = nxt - 1
            self._refine(a, fa, b, self._ev(b)[0], segments)
            a = nxt
        segments.sort(key=lambda seg: seg[0])
        self._starts = [seg[0] for seg in segments]
        self._segments = segments
        self._cache.clear()

    def _refine(self, a: int, fa: list[int], b: int, fb: list[int],
                segments: list[tuple[int, list[int], int, list[int]]]) -> None:
        stack = [(a, fa, b, fb)]
        while stack:
            a, fa, b, fb = stack.pop()
            if b - a <= self.resolution or self._fits(a, fa, b, fb):
                segments.append((a, fa, b, fb))
                continue
            m = (a + b) // 2
            fm = self._ev(m)[0]
            stack.append((m, fm, b, fb))
            stack.append((a, fa, m, fm))

    def _ev(self, phase_ns: int) -> tuple[list[int], int]:
        got = self._cache.get(phase_ns)
        if got is None:
            self.evaluations += 1
            got = self._cache[phase_ns] = self._f(phase_ns)
        return got

    def _fits(self, a: int, fa: list[int], b: int, fb: list[int]) -> bool:
        """Whether the middle lies on the line through the ends."""
        m = (a + b) // 2
        if m in (a, b):
            return True
        w = (m - a) / (b - a)
        return all(abs(ya + (yb - ya) * w - ym) <= self.tolerance for ya, yb, ym in zip(fa, fb, self._ev(m)[0]))

    def __call__(self, phase_ns: int) -> list[int]:
        """The interpolated durations at ``phase_ns``."""
        i = bisect.bisect_right(self._starts, phase_ns) - 1
        a, fa, b, fb = self._segments[i]
        if b == a:
            return list(fa)
        w = min(max((phase_ns - a) / (b - a), 0.0), 1.0)
        return [round(x + (y - x) * w) for x, y in zip(fa, fb)]


def predict(sequence: Sequence, variant: str, hz: int, platform: str, samples: int = 1000,
            seed: int = 0, costs: Costs | None = None) -> Prediction:
    """Predict each step's duration distribution over ``samples`` uniformly drawn tick phases.
    ValueError (a ``SequenceError``) for a sequence past the model's bounds (``check_bounds``)."""
    if samples < 1:
        raise ValueError("samples must be at least 1")
    check_bounds(sequence)
    rng = random.Random(seed)
    steps = [StepPrediction(s) for s in sequence.steps]
    checker = InvariantChecker()
    tick = NSEC_PER_SEC // hz
    if phase_deterministic(sequence) and quiet(costs):
        def run(phase_ns: int) -> tuple[list[int], int]:
            durations, kvm = simulate_once(sequence, variant, hz, platform, (phase_ns + 0.5) / tick,
                                           random.Random(seed), costs, checker)
            return durations, kvm.sim.phase_slack
        interpolant = PhaseInterpolant(run, tick)

        def draw(phase: float) -> list[int]:
            return interpolant(int(phase * tick))
    else:
        def draw(phase: float) -> list[int]:
            return simulate_once(sequence, variant, hz, platform, phase, rng, costs, checker)[0]
    for _ in range(samples):
        for sp, d in zip(steps, draw(rng.random())):
            sp.durations.append(d)
    violations = list({(v.kind, v.message): v for v in checker.violations}.values())
    return Prediction(sequence, variant, hz, platform, samples, steps, violations)
