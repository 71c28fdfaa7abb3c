#!/usr/bin/env python3
"""Accuracy of the model against the host: the stalled step's p10/p50/p90, measured vs predicted.

    python3 scripts/bench_timing_accuracy.py [--repeat 300] [--sequence registrations-first]

Runs the sequence with --jitter on the host, predicts it with the model at the host's HZ and platform
(with the measured gaps), and prints, for the step where the stall lands, the measured and predicted
quantiles of the best-fitting variant and their relative difference (target: within 15%), plus the
timer overhead per timed ioctl (target: under 2 us).
"""

from __future__ import annotations

import argparse
import sys

from kernel_model.sequences import load_sequence
from kernel_model.stats import quantiles
from minivmm.host import read_host_info
from minivmm.timing.compare import compare
from minivmm.timing.runner import measure


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=300)
    parser.add_argument("--sequence", default="registrations-first")
    args = parser.parse_args()
    host = read_host_info()
    if host.hz is None or host.platform is None:
        print("cannot read CONFIG_HZ or the KVM platform on this host", file=sys.stderr)
        return 2
    seq = load_sequence(args.sequence)
    reps, overhead = measure(seq, args.repeat, jitter=True, hz=host.hz)
    c = compare(seq, reps, host.hz, host.platform, samples=5000)
    print(f"host HZ={host.hz} platform={host.platform}; {args.repeat} repetitions of {seq.name} with jitter")
    print(f"timer overhead per timed ioctl: median {overhead['p50_ns'] / 1000:.2f} us, "
          f"min {overhead['min_ns'] / 1000:.2f} us")
    print(f"verdict: {c.verdict.text}")
    if c.stalled_step is None or c.verdict.variant is None:
        print("no stalled step to compare")
        return 0
    i = c.stalled_step
    m = quantiles(c.measured[i])
    p = c.predictions[c.verdict.variant].steps[i].stats()
    print(f"stalled step: {seq.steps[i].label} (model: {c.verdict.variant})")
    print(f"{'':6} {'measured':>10} {'model':>10} {'diff':>7}")
    for q in ("p10", "p50", "p90"):
        print(f"{q:6} {m[q] / 1000:>8.2f}ms {p[q] / 1000:>8.2f}ms {100 * (p[q] - m[q]) / m[q]:>+6.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
