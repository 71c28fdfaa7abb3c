#!/usr/bin/env python3
"""Soak: run the shadow guests over and over for a while, with the shadow on, and report.

    python3 scripts/soak.py [--minutes 10] [--iterations 20000] [--ftrace]

Alternates guest/regloop.bin (one vCPU) and guest/regmulti.bin (3 vCPUs) in fresh VMs, checks after
each run that it halted with no violation and that the process's file descriptors and resident memory
did not grow, and prints totals. Stops at the first failure (exit 1) or when the time is up (exit 0).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

from minivmm.devices.console import Console
from minivmm.vmm.boot import Mode
from minivmm.vmm.machine import Machine, MachineConfig
from minivmm.vmm.report import RunOutcome

GUEST = pathlib.Path(__file__).resolve().parent.parent / "guest"


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--iterations", type=int, default=20000, help="--guest-iterations per run")
    parser.add_argument("--ftrace", action="store_true", help="cross-check every run with the kvm tracepoints")
    args = parser.parse_args()
    runs = [("regloop", 1), ("regmulti", 3)]
    deadline = time.monotonic() + args.minutes * 60
    totals = {"runs": 0, "exits_checked": 0, "registrations": 0, "in_kernel": 0}
    fds0, rss0 = None, None
    i = 0
    while time.monotonic() < deadline:
        name, vcpus = runs[i % len(runs)]
        i += 1
        cfg = MachineConfig(mode=Mode.PROTECTED, vcpus=vcpus, guest_iterations=args.iterations, timeout=600,
                            ftrace=args.ftrace)
        with Machine(cfg, (GUEST / f"{name}.bin").read_bytes(), Console()) as m:
            report = m.run()
        sh = report.extra["shadow"]
        if report.outcome is not RunOutcome.HALTED:
            print(f"run {i} ({name}): {report.outcome.value}: {sh['first_violations'] or report.vcpus}", file=sys.stderr)
            return 1
        totals["runs"] += 1
        totals["exits_checked"] += sh["exits_checked"]
        totals["registrations"] += sh["registrations_mirrored"]
        totals["in_kernel"] += sh["in_kernel_completions_reconciled"]
        fds, rss = len(os.listdir("/proc/self/fd")), rss_kib()
        if fds0 is None:
            fds0, rss0 = fds, rss
        print(f"run {i:4} {name:9} exits checked {sh['exits_checked']:8}  registrations {sh['registrations_mirrored']:6}"
              f"  fds {fds}  rss {rss // 1024} MiB", flush=True)
        if fds != fds0 or rss - rss0 > 64 * 1024:
            print(f"resources grew: fds {fds0} -> {fds}, rss {rss0 // 1024} -> {rss // 1024} MiB", file=sys.stderr)
            return 1
    print(f"soak done: {totals['runs']} runs, {totals['exits_checked']} exits checked, "
          f"{totals['registrations']} registrations mirrored, {totals['in_kernel']} in-kernel completions "
          "reconciled, no violation, no growth")
    return 0


if __name__ == "__main__":
    sys.exit(main())
