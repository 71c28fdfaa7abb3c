#!/usr/bin/env python3
"""Fit the verdict's noise model (``minivmm.timing.noise``) on this host.

    python3 scripts/noise_model.py [--repeat 100] [--variant call_srcu] [--sequences a,b,...]

Times each named sequence on this host's KVM (``--repeat`` jittered repetitions, as ``minivmm timing``
does), predicts it under ``--variant`` with the measured gaps, and collects ``ln(measured /
predicted)`` for every sample of every step that the variant predicts as one fixed value (no spread
over tick phases, no stall): the model's cost error on this host plus the host's scheduling noise.
Then it fits the noise model to those log-ratios (``minivmm.timing.noise.fit``: each step's median
is its bias, the rest its scatter) and prints the fit, the load it was taken under, and the
log-ratios' quantiles.

``--variant`` must be the kernel variant this host is known to run (its kernel's source says which: a
v6.18+ kernel with commit 7d9a0273c459 is call_srcu): the fit is a calibration against a known
kernel, used afterwards to judge unknown ones. A benchmark, not a test: it needs /dev/kvm and takes a
few minutes.
"""

from __future__ import annotations

import argparse
import os
import sys

from kernel_model.predict import predict
from kernel_model.sequences import SEQUENCES, SequenceError, validate, with_gaps
from kernel_model.stats import is_stall, median, percentile
from minivmm.host import read_host_info
from minivmm.timing.noise import fit
from minivmm.timing.pressure import PressureWindow
from minivmm.timing.runner import measure

DEFAULT_SEQUENCES = "registrations-first,late-registration,firecracker,arm64-order,deregistrations-running"


def residuals_of(name: str, repeat: int, variant: str, hz: int, platform: str) -> list[list[float]]:
    """The log-ratios of one sequence's fixed-cost steps, per step (see the module docstring)."""
    import math

    seq = SEQUENCES[name]
    reps, _ = measure(seq, repeat, jitter=True, hz=hz, seed=1)
    gaps = [int(median(r.gaps_ns[i] for r in reps)) for i in range(len(seq.steps))]
    pred = predict(with_gaps(seq, gaps), variant, hz, platform, samples=200)
    out = []
    for i, sp in enumerate(pred.steps):
        lo, hi = min(sp.durations), max(sp.durations)
        if hi > lo * 1.01 or is_stall(hi):
            continue  # a spread over tick phases, or a stall: not a fixed cost
        out.append([math.log(max(r.durations_ns[i], 1) / hi) for r in reps])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=100)
    parser.add_argument("--variant", default="call_srcu")
    parser.add_argument("--sequences", default=DEFAULT_SEQUENCES)
    args = parser.parse_args()
    host = read_host_info()
    if host.hz is None or host.platform is None or host.kvm_error:
        print("needs /dev/kvm, CONFIG_HZ and a known KVM platform", file=sys.stderr)
        return 2
    window = PressureWindow.start()
    steps: list[list[float]] = []
    for name in args.sequences.split(","):
        try:
            validate(SEQUENCES[name], host.platform)
        except SequenceError as e:
            print(f"{name}: skipped ({e})")
            continue
        r = residuals_of(name, args.repeat, args.variant, host.hz, host.platform)
        print(f"{name}: {len(r)} fixed-cost steps, their median log-ratios "
              + " ".join(f"{median(s):+.2f}" for s in r))
        steps += r
    pressure = window.percent()
    load = os.getloadavg()
    model = fit(steps, f"fitted by scripts/noise_model.py on {host.platform} at HZ={host.hz}")
    flat = [x for s in steps for x in s]
    print(f"\n{len(flat)} log-ratios of {len(steps)} steps against {args.variant} at HZ={host.hz} on "
          f"{host.platform}; CPU pressure {pressure}%, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print("quantiles p1/p10/p50/p90/p99: " + " / ".join(f"{percentile(flat, q):+.3f}" for q in (1, 10, 50, 90, 99)))
    print(f"fit: bias {model.bias}, scatter {model.scatter}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
