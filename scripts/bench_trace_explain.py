#!/usr/bin/env python3
"""How long ``minivmm trace`` takes to explain a large VMM set-up: QEMU with many vCPUs (a benchmark, not
a test; the load average is printed with the figure).

Traces ``qemu-system-x86_64 -machine q35 -m 128 -smp N`` until every vCPU has entered KVM_RUN (as
``minivmm trace --until first-run`` does), then times the explanation of every VM (the sequence, each
variant's prediction, the grace-period attribution, the kernel check) at this host's HZ and platform.

Usage: scripts/bench_trace_explain.py [--smp 16] [--runs 3] [--samples 400]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smp", type=int, default=16)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--samples", type=int, default=400)
    args = ap.parse_args()
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        print("qemu-system-x86_64 is needed", file=sys.stderr)
        return 2
    from minivmm.host import read_host_info
    from minivmm.trace.explain import explain_all
    from minivmm.trace.tracer import Tracer
    info = read_host_info()
    if info.hz is None or info.platform is None:
        print("this host's HZ or KVM platform cannot be read", file=sys.stderr)
        return 2
    argv = [qemu, "-enable-kvm", "-machine", "q35", "-m", "128", "-smp", str(args.smp), "-nodefaults", "-nographic",
            "-display", "none"]
    took = []
    for _ in range(args.runs):
        result = Tracer(qemu, argv, until_first_run=True, timeout_s=120, discard_output=True).run()
        t0 = time.perf_counter()
        exs = explain_all(result, info.hz, info.platform, samples=args.samples)
        took.append(time.perf_counter() - t0)
        steps = sum(len(ex.sequence.steps) for ex in exs)
        print(f"{len(result.events)} ioctls, {len(exs)} VM(s), {steps} steps: explained in {took[-1]:.2f} s")
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    print(f"QEMU q35 -smp {args.smp}: explanation median {statistics.median(took):.2f} s over {args.runs} runs "
          f"(HZ={info.hz}, {info.platform}, {args.samples} samples per variant; load average {load}; "
          f"{os.cpu_count()} CPUs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
