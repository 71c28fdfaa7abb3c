"""Latency prediction: run a sequence through the model many times, each starting at a random point
within a jiffy (and, with running vCPUs, a random reader offset), and collect each step's duration.

The durations of a step are a distribution because the tick phase decides when a 1-jiffy timer fires;
sampling the phase uniformly is what ``minivmm timing --jitter`` does on the real host.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Optional

from kernel_model.costs import Costs
from kernel_model.invariants import InvariantChecker, Violation
from kernel_model.kvm import KvmModel
from kernel_model.platforms import get_platform
from kernel_model.sequences import Sequence, Step
from kernel_model.sim import Sim
from kernel_model.variants import get_variant

PERCENTILES = (10, 50, 90)


def percentile(sorted_values: list[int], p: float) -> float:
    """The p-th percentile (linear interpolation between closest ranks) of sorted values."""
    if not sorted_values:
        raise ValueError("no values")
    k = (len(sorted_values) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


@dataclass
class StepPrediction:
    """The predicted durations (ns) of one step over every sample."""

    step: Step
    durations: list[int] = field(default_factory=list)

    def stats(self) -> dict[str, float]:
        """min, p10, p50, p90, max in microseconds."""
        s = sorted(self.durations)
        out = {"min": s[0] / 1000, "max": s[-1] / 1000}
        for p in PERCENTILES:
            out[f"p{p}"] = percentile(s, p) / 1000
        return out


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

    def to_json(self) -> dict[str, Any]:
        """Per step: label and p10/p50/p90 (and min/max) in microseconds."""
        return {"sequence": self.sequence.name, "variant": self.variant, "hz": self.hz,
                "platform": self.platform, "samples": self.samples,
                "steps": [{"step": i, "op": sp.step.op, "label": sp.step.label, **sp.stats()}
                          for i, sp in enumerate(self.steps)],
                "violations": [v.to_json() for v in self.violations]}


def run_step(kvm: KvmModel, step: Step, rng: random.Random) -> None:
    """Issue one step against the model (the caller times it)."""
    a = step.args
    if step.op == "create_vm":
        kvm.sim.spend(kvm.costs.create_vm)
    elif step.op == "memslot":
        kvm.set_user_memory_region(a["slot"], a["base"], a["size"])
    elif step.op == "irqchip":
        kvm.create_irqchip()
    elif step.op == "ioeventfd":
        kvm.ioeventfd(a["addr"], a["len"], a.get("datamatch"), a.get("pio", False))
    elif step.op == "ioeventfd_deassign":
        kvm.ioeventfd_deassign(a["addr"], a["len"], a.get("datamatch"), a.get("pio", False))
    elif step.op == "vcpu":
        kvm.create_vcpu(a["id"])
    elif step.op == "run":
        kvm.run_vcpu(a["vcpu"], a["section"], a["period"], offset_ns=int(rng.random() * a["period"]))
    else:
        raise ValueError(f"unknown step {step.op!r}")


def simulate_once(sequence: Sequence, variant: str, hz: int, platform: str, phase: float,
                  rng: random.Random, costs: Optional[Costs] = None,
                  checker: Optional[InvariantChecker] = None) -> tuple[list[int], KvmModel]:
    """One run of the sequence starting at ``phase`` into a jiffy: each step's duration (ns)."""
    sim = Sim(hz, phase, costs)
    kvm = KvmModel(sim, get_variant(variant), get_platform(platform), checker)
    durations = []
    for step in sequence.steps:
        sim.run_until(sim.now + step.gap_ns)
        t0 = sim.now
        run_step(kvm, step, rng)
        durations.append(sim.now - t0)
    if kvm.vcpu_readers:
        kvm.stop_vcpus()
    return durations, kvm


def predict(sequence: Sequence, variant: str, hz: int, platform: str, samples: int = 1000,
            seed: int = 0, costs: Optional[Costs] = None) -> Prediction:
    """Predict each step's duration distribution over ``samples`` uniformly drawn tick phases."""
    if samples < 1:
        raise ValueError("samples must be at least 1")
    rng = random.Random(seed)
    steps = [StepPrediction(s) for s in sequence.steps]
    checker = InvariantChecker()
    for _ in range(samples):
        durations, _ = simulate_once(sequence, variant, hz, platform, rng.random(), rng, costs, checker)
        for sp, d in zip(steps, durations):
            sp.durations.append(d)
    return Prediction(sequence, variant, hz, platform, samples, steps, checker.violations)
