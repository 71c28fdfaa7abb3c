#!/usr/bin/env python3
"""Speed of the kernel model: a prediction against the number of steps and against idle simulated
time, and the bus-state query the shadow makes per exit.

    python3 scripts/bench_model.py [--quick]

Goals: a 2,000-step sequence at the default sample count (``minivmm model``'s 1,000) predicted in at
most 2 s, the cost linear in steps, and independent of simulated time in which nothing is due
(a long ``sleep``, or running vCPUs whose read sections nobody looks at). The figures depend on the
machine and its load: the load average is printed with them.
"""

from __future__ import annotations

import argparse
import os
import random
import time
import timeit

from kernel_model.costs import Costs
from kernel_model.kvm_io_bus import KvmBus
from kernel_model.kvm_main import KvmModel
from kernel_model.platforms import get_platform
from kernel_model.predict import predict
from kernel_model.sequences import DEFAULT_SECTION_NS, Sequence, Step
from kernel_model.sim import Sim
from kernel_model.tick import TickEnvironment
from kernel_model.variants import get_variant

#: The default sample count of ``minivmm model``.
SAMPLES = 1000


def registrations(n: int, sleep_ns: int = 0, run: bool = False) -> Sequence:
    """``create_vm``, a memslot and an irqchip, ``n`` - 4 ioeventfds (a registration storm, each
    10 µs after the last), then a memslot that waits for the last grace period. ``run``: a vCPU runs
    a guest from the start; ``sleep_ns``: a pause before the last memslot."""
    head = [Step("create_vm"), Step("memslot", {"slot": 0, "base": 0, "size": 2 << 20})]
    if run:
        head += [Step("vcpu", {"id": 0}), Step("run", {"vcpu": 0, "section": DEFAULT_SECTION_NS,
                                                       "period": 10 * DEFAULT_SECTION_NS})]
    regs = [Step("ioeventfd", {"addr": 0xD0000000 + 16 * i, "len": 4}) for i in range(n - len(head) - 1)]
    last = Step("memslot", {"slot": 1, "base": 1 << 32, "size": 2 << 20}, 10_000 + sleep_ns)
    return Sequence(f"bench{n}", "registration storm", tuple(head + regs + [last]))


def timed(seq: Sequence, costs: Costs | None = None, samples: int = SAMPLES) -> float:
    """Seconds for one call_srcu prediction at HZ=250 on pvm."""
    t0 = time.perf_counter()
    predict(seq, "call_srcu", 250, "pvm", samples=samples, costs=costs)
    return time.perf_counter() - t0


def main() -> None:
    """Print the tables."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer sizes (a smoke run)")
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs")
    sizes = (250, 500, 1000) if args.quick else (250, 500, 1000, 2000, 4000)
    print(f"\nsteps vs seconds: `ioeventfd` storm, call_srcu, HZ=250, {SAMPLES} samples (no host profile)")
    print(f"{'steps':>7} {'seconds':>9} {'us/step':>9}")
    for n in sizes:
        s = timed(registrations(n))
        print(f"{n:7d} {s:9.2f} {s / n * 1e6:9.0f}")

    print("\nidle simulated time: 500 steps with a pause before the last memslot")
    print(f"{'pause':>8} {'no vCPU (s)':>12} {'a vCPU running, 100 samples (s)':>32}")
    for pause_s in (0, 1, 60):
        plain = timed(registrations(500, pause_s * 1_000_000_000))
        running = timed(registrations(500, pause_s * 1_000_000_000, run=True), samples=100)
        print(f"{pause_s:7d}s {plain:12.2f} {running:32.2f}")

    # With a host profile every sample is its own run: linear in samples as well as in steps.
    busy = Costs(timer_latency_samples=(40_000, 60_000, 4_060_000),
                 cpus=TickEnvironment(caller_keeps_tick=0.5, other_tick_share=0.5, other_tick_persist=0.8))
    print("\nwith a host profile (latencies and ticks drawn per sample), 100 samples")
    print(f"{'steps':>7} {'seconds':>9} {'us/step/sample':>15}")
    for n in sizes[:3]:
        s = timed(registrations(n), busy, samples=100)
        print(f"{n:7d} {s:9.2f} {s / n / 100 * 1e6:15.1f}")

    kvm = KvmModel(Sim(250, 0.5, rng=random.Random(0)), get_variant("call_srcu"), get_platform("vmx"))
    kvm.create_irqchip()
    for i in range(32):
        kvm.ioeventfd(0xD0000000 + i * 0x1000 + 0x50, 4, datamatch=i % 2)
    n = 200_000
    hit = timeit.timeit(lambda: kvm.claimant(KvmBus.KVM_MMIO_BUS, 0xD0010050, 4, 0), number=n) / n
    miss = timeit.timeit(lambda: kvm.claimant(KvmBus.KVM_MMIO_BUS, 0xD0000000, 4, 0), number=n) / n
    print(f"\nbus-state query, 36 ranges: hit {hit * 1e6:.2f} us, miss {miss * 1e6:.2f} us")


if __name__ == "__main__":
    main()
