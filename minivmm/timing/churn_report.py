"""``minivmm timing --churn``: the measured churn (one thread, then N at once) beside each kernel
variant's prediction (:func:`kernel_model.churn.predict_churn`, with this run's own gaps and time
between cycles), and Firecracker's published creation rate for scale."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, TextIO

from kernel_model.churn import ChurnPrediction, predict_churn
from kernel_model.costs import Costs
from kernel_model.published import FIRECRACKER_CREATION_RATE
from kernel_model.sequences import Sequence, with_gaps
from kernel_model.stats import median
from kernel_model.variants import MAIN_VARIANTS
from minivmm.durations import fmt_us
from minivmm.timing.churn import ChurnRun
from minivmm.timing.compare import TimingHost


@dataclass
class ChurnComparison:
    """The runs (one per thread count, fewest threads first) and, per run, each variant's prediction."""

    sequence: Sequence
    runs: list[ChurnRun]
    predictions: list[dict[str, ChurnPrediction]]
    cpus: int
    loadavg: tuple[float, float, float]

    def closest(self) -> tuple[str, float]:
        """The variant whose predicted rates are closest to the measured ones (mean |ln ratio| over the
        runs), and that distance."""
        def distance(v: str) -> float:
            return statistics.fmean(abs(math.log(max(r.rate, 1e-9) / max(p[v].rate, 1e-9)))
                                    for r, p in zip(self.runs, self.predictions))
        best = min(self.predictions[0], key=distance)
        return best, distance(best)


def measured_gaps(seq: Sequence, run: ChurnRun) -> Sequence:
    """The sequence with each step's gap the median measured in ``run``."""
    cycles = run.all_cycles()
    return with_gaps(seq, [int(median(c.rep.gaps_ns[i] for c in cycles)) for i in range(len(seq.steps))])


def compare_churn(seq: Sequence, runs: list[ChurnRun], hz: int, platform: str, cpus: int,
                  loadavg: tuple[float, float, float], seed: int = 0, costs: Costs | None = None,
                  variants: tuple[str, ...] = MAIN_VARIANTS) -> ChurnComparison:
    """Predict each run under every variant with that run's gaps, time between cycles and size."""
    predictions = []
    for run in runs:
        host_seq = measured_gaps(seq, run)
        between = run.between_ns() or [0]
        per_thread = max(len(c) for c in run.cycles)
        predictions.append({v: predict_churn(host_seq, v, hz, platform, run.threads, per_thread, between, seed,
                                             costs) for v in variants})
    return ChurnComparison(seq, runs, predictions, cpus, loadavg)


def _p50_ms(values: list[int]) -> str:
    return fmt_us(median(values) / 1000) if values else "-"


def render(c: ChurnComparison, host: TimingHost, out: TextIO) -> None:
    """The churn report: measured per run, predicted per run and variant, the closest variant, and
    Firecracker's published rate for scale."""
    w = out.write
    per_thread = max(len(x) for x in c.runs[0].cycles)
    w(f"minivmm timing --churn: sequence {c.sequence.name}, {per_thread} cycles per thread, back to back "
      "(each a fresh VM: created, set up, destroyed)\n")
    w(f"host: kernel {host.kernel}, HZ={host.hz} ({host.hz_source}), platform {host.platform} "
      f"({host.platform_source}), {c.cpus} CPUs, load average {c.loadavg[0]:.2f} {c.loadavg[1]:.2f} "
      f"{c.loadavg[2]:.2f} at the start\n\n")
    teardown = len(c.sequence.steps) - 1 if c.sequence.destroys_vm else None
    w("measured       cycles/s   cycle p50" + ("   close(vm) p50" if teardown is not None else "")
      + "   between p50   CPU per cycle\n")
    for run in c.runs:
        cycles = run.all_cycles()
        close = ""
        if teardown is not None:
            close = _p50_ms([x.rep.durations_ns[teardown] for x in cycles]).rjust(16)
        w(f"{_threads(run.threads):<12}{run.rate:>11.1f}{_p50_ms([x.duration_ns for x in cycles]):>12}{close}"
          f"{_p50_ms(run.between_ns()):>14}{fmt_us(run.cpu_per_cycle_ns / 1000):>16}\n")
    variants = list(c.predictions[0])
    w(f"\nmodel at HZ={host.hz} on {host.platform} (this run's gaps and time between cycles), cycles/s "
      "[cycle p50]\n")
    cells = [[f"{p[v].rate:.1f} [{_p50_ms(p[v].cycle_ns)}]" for v in variants] for p in c.predictions]
    col = max(len(x) for row in cells for x in row + variants) + 3
    w(" " * 12 + "".join(v.rjust(col) for v in variants) + "\n")
    for run, row in zip(c.runs, cells):
        w(f"{_threads(run.threads):<12}" + "".join(x.rjust(col) for x in row) + "\n")
    best, distance = c.closest()
    w(f"\nclosest: {best} (mean |ln(measured/predicted rate)| {distance:.2f} over the runs)\n")
    fc = FIRECRACKER_CREATION_RATE
    w(f"\nFirecracker publishes {fc.per_core_per_s:g} microVMs per host core per second ({fc.example}; "
      f"{fc.conditions}): {fc.for_cores(c.cpus):g} per second for this host's {c.cpus} CPUs. Those cycles "
      "boot a guest; these only set a VM up and destroy it, so the kernel's part of a cycle is what they "
      f"show.\n  [1] {fc.source}\n")


def _threads(n: int) -> str:
    return f"{n} thread" + ("" if n == 1 else "s")


def to_json(c: ChurnComparison, host: TimingHost) -> dict[str, Any]:
    """The ``minivmm timing --churn --json`` document (``minivmm/schemas/churn.schema.json``)."""
    from dataclasses import asdict

    from minivmm.schemas import stamp

    teardown = len(c.sequence.steps) - 1 if c.sequence.destroys_vm else None
    runs = []
    for run, preds in zip(c.runs, c.predictions):
        cycles = run.all_cycles()
        runs.append({
            "threads": run.threads, "cycles": run.count, "wall_ns": run.wall_ns, "rate_per_s": run.rate,
            "cpu_ns": run.cpu_ns, "cycle_ns": [x.duration_ns for x in cycles],
            "teardown_ns": [x.rep.durations_ns[teardown] for x in cycles] if teardown is not None else None,
            "between_ns": run.between_ns(),
            "predicted": {v: {"rate_per_s": p.rate, "cycle_p50_ns": median(p.cycle_ns)} for v, p in preds.items()},
        })
    best, distance = c.closest()
    fc = FIRECRACKER_CREATION_RATE
    return stamp("churn", {
        "sequence": c.sequence.name, "host": asdict(host), "cpus": c.cpus, "loadavg": list(c.loadavg),
        "runs": runs, "closest": {"variant": best, "distance": distance},
        "published": {"per_core_per_s": fc.per_core_per_s, "for_this_host_per_s": fc.for_cores(c.cpus),
                      "conditions": fc.conditions, "source": fc.source}})
