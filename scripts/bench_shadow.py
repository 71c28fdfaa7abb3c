#!/usr/bin/env python3
"""What the shadow costs per exit, in CPU time (so that the figure holds on a busy machine).

    python3 scripts/bench_shadow.py [--rounds 5] [--calls 100000]

1. Whole runs of guest/pioloop.bin (100000 port writes), alternating the shadow off (--no-check) and on:
   the process's CPU time (user + system, every thread) per exit, median over rounds, and the
   difference. The kernel's emulation of each `out` is in both; the difference is the shadow's part.
2. ShadowChecker.check_exit alone, on the exits a loop makes (an unclaimed port write, an MMIO write
   outside every range, a read of an ioeventfd's address, a HLT): CPU time per call, best of 7.

Wall-clock figures (scripts/bench_exits.py) need a quiet machine; CPU time is far less sensitive to
other load, though not immune (caches, frequency).
"""

from __future__ import annotations

import argparse
import pathlib
import resource
import statistics
import sys
import time
import timeit

ROOT = pathlib.Path(__file__).resolve().parent.parent
IMAGE = ROOT / "guest" / "pioloop.bin"


def cpu_seconds() -> float:
    """This process's CPU time so far, every thread, user and system."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run_cpu_per_exit(check: bool) -> float:
    """One run of pioloop: CPU ns per exit."""
    from minivmm.devices.console import Console
    from minivmm.vmm.machine import Machine, MachineConfig
    from minivmm.vmm.outcome import RunOutcome

    with Machine(MachineConfig(timeout=120, check=check), IMAGE.read_bytes(), Console()) as machine:
        c0 = cpu_seconds()
        report = machine.run()
        c1 = cpu_seconds()
    if report.outcome is not RunOutcome.HALTED:
        raise SystemExit(f"bench_shadow: pioloop did not halt: {report.outcome.value}")
    return (c1 - c0) * 1e9 / sum(report.exits.values())


def check_exit_costs(calls: int) -> dict[str, float]:
    """CPU ns per ShadowChecker.check_exit call, for a few exits."""
    from minivmm.kvm.exits import HLT, IoOut, MmioRead, MmioWrite
    from minivmm.kvm.vm import IoEvent
    from minivmm.shadow.checker import ShadowChecker

    shadow = ShadowChecker()
    shadow.vcpu_created(0)
    doorbell = IoEvent(0xD000_1000, 4, 99)
    shadow.ioeventfd_assigning(doorbell)
    shadow.ioeventfd_assigned(doorbell)
    v = shadow.version
    exits = {"port write, unclaimed": IoOut(0x3FF, 1, 1, b"x"),
             "MMIO write outside every range": MmioWrite(0xD000_0000, b"\1\2\3\4"),
             "MMIO read of an ioeventfd's address": MmioRead(0xD000_1000, 4),
             "HLT (not a bus exit)": HLT}
    out = {}
    for name, exit_ in exits.items():
        t = min(timeit.repeat("check(0, e, v, v)", globals={"check": shadow.check_exit, "e": exit_, "v": v},
                              number=calls, repeat=7, timer=time.thread_time))
        out[name] = t * 1e9 / calls
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds of whole runs (default 5)")
    parser.add_argument("--calls", type=int, default=100_000, help="check_exit calls per timing (default 100000)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.calls < 1:
        parser.error("--rounds and --calls must be positive")
    off: list[float] = []
    on: list[float] = []
    for r in range(args.rounds):
        off.append(run_cpu_per_exit(check=False))
        on.append(run_cpu_per_exit(check=True))
        print(f"round {r + 1}: --no-check {off[-1]:.0f} ns/exit, shadow on {on[-1]:.0f} ns/exit", file=sys.stderr)
    m_off, m_on = statistics.median(off), statistics.median(on)
    print(f"pioloop, CPU per exit (median of {args.rounds}): --no-check {m_off:.0f} ns, shadow on {m_on:.0f} ns, "
          f"the shadow adds {m_on - m_off:.0f} ns ({m_on / m_off:.3f}x)")
    for name, ns in check_exit_costs(args.calls).items():
        print(f"check_exit, {name:38} {ns:6.0f} ns")
    return 0


if __name__ == "__main__":
    sys.exit(main())
