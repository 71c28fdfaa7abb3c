"""The regression gate: a pure decision over two timing documents (baseline and current), so that the
exit-code contract of ``minivmm timing --baseline`` can be tested with recorded JSON, no kernel needed.

``minivmm timing --baseline`` measures and then calls :func:`decide`; ``minivmm compare --gate`` calls
it on a recorded current document. The CLI maps the outcome to an exit code (0 pass, 1 regressed,
125 unusable: ``git bisect run``'s skip); nothing here knows exit codes.

A step *regressed* when it changed significantly (see :mod:`minivmm.compare.ab`: the permutation test
of its 10% trimmed mean, Holm-adjusted over the steps, at ``alpha``) towards slower, by at least
``threshold`` of the baseline's trimmed mean and at least ``floor_us`` (default: a tenth of a jiffy at
the baseline's HZ). The trimmed mean, not the median: a grace-period wait is bimodal by tick phase and
its median jumps a jiffy when a few samples change mode, which is how two runs of one kernel looked
like a 42% regression. The measurement is *unusable* when it cannot decide: fewer than
:data:`~minivmm.compare.ab.MIN_SAMPLES` repetitions in either document, or a step whose trimmed mean
moved past the threshold without the test confirming it (too noisy: repeat with more repetitions, on a
quieter host), or a run made on a busy host (CPU pressure over
:data:`~minivmm.timing.pressure.BUSY_PRESSURE_PCT`, where grace periods end late: that wins even over a
regression, which the load alone can produce). A confirmed regression wins over an undecided step: one
is enough to call the commit bad. ``scripts/aa_gate.py`` measures the false-alarm rate and the power.
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass, field
from typing import Any

from minivmm.compare.ab import (
    DEFAULT_ALPHA,
    MIN_SAMPLES,
    Comparison,
    Settings,
    StepChange,
    compare_documents,
    document_load,
)
from minivmm.compare.documents import TimingDocument
from minivmm.durations import fmt_delta
from minivmm.safetext import safe
from minivmm.timing.pressure import BUSY_PRESSURE_PCT

#: ``--threshold``'s default: a step must get 20% slower (and significantly so) to fail the gate.
DEFAULT_THRESHOLD = 0.20


class GateOutcome(str, enum.Enum):
    """The gate's decision; the CLI maps it to 0, 1 and 125."""

    PASS = "pass"
    REGRESSED = "regressed"
    UNUSABLE = "unusable"


@dataclass
class GateResult:
    """The decision, the steps behind it and one line saying why."""

    outcome: GateOutcome
    text: str
    baseline: str
    threshold: float
    floor_us: float
    alpha: float
    regressed: list[StepChange] = field(default_factory=list)
    undecided: list[StepChange] = field(default_factory=list)
    comparison: Comparison | None = None

    @property
    def warnings(self) -> list[str]:
        """What differs between the baseline's host and this one (HZ, platform, kernel)."""
        return self.comparison.warnings if self.comparison is not None else []

    def to_json(self) -> dict[str, Any]:
        """The ``gate`` object of the timing and compare documents."""
        return {"outcome": self.outcome.value, "baseline": self.baseline, "threshold_pct": self.threshold * 100,
                "floor_us": self.floor_us, "alpha": self.alpha,
                "regressed": [c.step.name for c in self.regressed],
                "undecided": [c.step.name for c in self.undecided], "warnings": self.warnings, "text": self.text}


def parse_threshold(text: str) -> float:
    """``"20%"`` -> 0.2. Only a percentage with its sign is accepted: ``0.2`` could mean 0.2% or 20%."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*%\s*", text)
    if not m:
        raise ValueError(f"{text!r} is not a percentage; write it like 20%")
    value = float(m.group(1)) / 100
    if not math.isfinite(value) or value <= 0 or value > 100:
        raise ValueError(f"{text!r} is out of range: give a percentage above 0% and at most 10000%")
    return value


def decide(baseline: TimingDocument, current: TimingDocument, threshold: float = DEFAULT_THRESHOLD,
           alpha: float = DEFAULT_ALPHA, floor_us: float | None = None, seed: int = 0,
           resamples: int = Settings.resamples) -> GateResult:
    """Did ``current`` regress against ``baseline``? Raises :class:`~minivmm.compare.ab.NotComparable`
    when they time different sequences (bad input, not a measurement problem). ``resamples``: the
    bootstrap intervals' (they are shown, they decide nothing)."""
    settings = Settings(alpha=alpha, threshold=threshold, floor_us=floor_us, seed=seed, resamples=resamples)
    c = compare_documents([baseline, current], settings)
    floor = c.settings.floor_us or 0.0

    def result(outcome: GateOutcome, text: str, regressed: list[StepChange] | None = None,
               undecided: list[StepChange] | None = None) -> GateResult:
        return GateResult(outcome, text, baseline.path, threshold, floor, alpha, regressed or [],
                          undecided or [], c)

    few = [d for d in (baseline, current) if min(len(s.samples_ns) for s in d.steps) < MIN_SAMPLES]
    busy = [d for d in (baseline, current) if document_load(d).busy]
    regressed = [ch for ch in c.changes if ch.significant and ch.delta_us > 0]
    undecided = [ch for ch in c.changes if not ch.significant and ch.delta_us >= ch.needed_us]
    if busy:
        reason = ", ".join(f"{safe(d.path)}: {document_load(d).describe()}" for d in busy)
        return result(GateOutcome.UNUSABLE, f"unusable: measured on a busy host ({reason}; over "
                      f"{BUSY_PRESSURE_PCT:g}% CPU pressure grace periods end late, so a slower step says more "
                      "about the load than the kernel); rerun on a quiet host", regressed, undecided)
    if regressed:
        names = "; ".join(f"{safe(ch.step.name)} {fmt_delta(ch.delta_us)} "
                          f"({(ch.change or 0) * 100:+.0f}%, p={ch.p_adjusted:.2g})" for ch in regressed)
        return result(GateOutcome.REGRESSED, f"regressed: {names} (threshold {threshold:.0%})", regressed,
                      undecided)
    if few:
        reason = ", ".join(f"{safe(d.path)} has {min(len(s.samples_ns) for s in d.steps)}" for d in few)
        return result(GateOutcome.UNUSABLE, f"unusable: too few repetitions to decide ({reason}; at least "
                      f"{MIN_SAMPLES} needed)")
    if undecided:
        names = "; ".join(f"{safe(ch.step.name)} {fmt_delta(ch.delta_us)} "
                          f"({(ch.change or 0) * 100:+.0f}%) but p={ch.p_adjusted:.2g}" for ch in undecided)
        return result(GateOutcome.UNUSABLE, f"unusable: too noisy to decide: {names}; repeat with more "
                      "repetitions on a quieter host", undecided=undecided)
    return result(GateOutcome.PASS, f"pass: no step regressed by {threshold:.0%} (and {floor:g} us) "
                  f"or more at alpha {alpha:g} (Holm over {len(c.changes)} steps)")
