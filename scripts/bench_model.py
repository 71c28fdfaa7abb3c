#!/usr/bin/env python3
"""Speed of the kernel model: the bus-state query the shadow makes per exit, and a prediction.

    python3 scripts/bench_model.py

Targets (issue: kernel_model): a bus-state query in a few microseconds; a 10,000-sample prediction of a
20-ioctl sequence in under a second.
"""

from __future__ import annotations

import time
import timeit

from kernel_model.kvm_io_bus import KvmBus
from kernel_model.kvm_main import KvmModel
from kernel_model.platforms import get_platform
from kernel_model.predict import predict
from kernel_model.sequences import SEQUENCES, Sequence, Step
from kernel_model.sim import Sim
from kernel_model.variants import get_variant


def main() -> None:
    kvm = KvmModel(Sim(250, 0.5), get_variant("call_srcu"), get_platform("vmx"))
    kvm.create_irqchip()
    for i in range(32):
        kvm.ioeventfd(0xD0000000 + i * 0x1000 + 0x50, 4, datamatch=i % 2)
    n = 200_000
    hit = timeit.timeit(lambda: kvm.claimant(KvmBus.KVM_MMIO_BUS, 0xD0010050, 4, 0), number=n) / n
    miss = timeit.timeit(lambda: kvm.claimant(KvmBus.KVM_MMIO_BUS, 0xD0000000, 4, 0), number=n) / n
    print(f"bus-state query, 36 ranges: hit {hit * 1e6:.2f} us, miss {miss * 1e6:.2f} us")

    base = SEQUENCES["registrations-first"].steps
    extra = tuple(Step("ioeventfd", {"addr": 0xD0100000 + i * 16, "len": 4}) for i in range(20 - len(base)))
    seq20 = Sequence("bench20", "20 ioctls", base + extra)
    for variant in ("sync", "call_srcu", "call_srcu_expedited"):
        t0 = time.perf_counter()
        predict(seq20, variant, 250, "pvm", samples=10_000)
        print(f"10,000-sample prediction, {len(seq20.steps)} ioctls, {variant}: {time.perf_counter() - t0:.3f} s")
    t0 = time.perf_counter()
    predict(SEQUENCES["late-registration"], "call_srcu", 250, "vmx", samples=100)
    print(f"late-registration (running vCPUs, Monte Carlo), 100 samples: {time.perf_counter() - t0:.3f} s")


if __name__ == "__main__":
    main()
