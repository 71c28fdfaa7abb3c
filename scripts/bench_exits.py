#!/usr/bin/env python3
"""Cost of one VM exit in minivmm against a C reference VMM: same guest, same host, alternating runs.

    python3 scripts/bench_exits.py [--rounds 5] [--no-check-side] [--guest pioloop|mmioloop|both]
                                   [--inline-reference]

The guests are guest/pioloop.bin (100000 `out` to port 0x3ff, then HLT; real mode) and
guest/mmioloop.bin (50000 MMIO writes to the scratch device, each read back, then HLT; 32-bit
protected mode). The C reference is built here with gcc from the source below: the same VM set-up (one
memslot, the guest's mode), and the tightest possible exit loop (KVM_RUN, check the reason, take the
data or answer the read, repeat). Each round runs, one after the other: C; the tightest Python loop over
minivmm's own cffi KVM_RUN wrapper (no decode, no dispatch: the floor for any Python VMM); minivmm with
the shadow check off; and with it on (the default of `minivmm boot`). The report gives the per-exit
cost of each side (median over rounds) and the ratio to C, twice: by the wall clock, and by the CPU time
of the thread that ran the exit loop (CLOCK_THREAD_CPUTIME_ID; on a loaded machine the wall clock
mostly measures the wait for a CPU, the CPU time much less so). The load average is printed. The
kernel's emulation of each access is most of the cost on every side, so the ratio shows what Python adds.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
#: Each guest: its image, the mode it runs in, and its exits before the final HLT.
GUESTS = {"pioloop": (ROOT / "guest" / "pioloop.bin", "real", 100000),
          "mmioloop": (ROOT / "guest" / "mmioloop.bin", "protected", 100000)}

C_SOURCE = r"""
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define MEM (16 << 20)
static void die(const char *what) { perror(what); exit(1); }

int main(int argc, char **argv)
{
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0) die("/dev/kvm");
    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0) die("KVM_CREATE_VM");
    uint8_t *mem = mmap(NULL, MEM, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    FILE *f = fopen(argv[1], "rb");
    if (!f) die(argv[1]);
    fread(mem + 0x1000, 1, MEM - 0x1000, f);
    fclose(f);
    struct kvm_userspace_memory_region region = {
        .slot = 0, .guest_phys_addr = 0, .memory_size = MEM, .userspace_addr = (uintptr_t)mem };
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) die("KVM_SET_USER_MEMORY_REGION");
    int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    if (vcpu < 0) die("KVM_CREATE_VCPU");
    int size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    struct kvm_run *run = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    struct kvm_sregs sregs;
    ioctl(vcpu, KVM_GET_SREGS, &sregs);
    sregs.cs.base = 0; sregs.cs.selector = 0;
    if (argc > 2 && strcmp(argv[2], "protected") == 0) {  /* flat 32-bit segments, as minivmm's */
        struct kvm_segment flat = { .base = 0, .limit = 0xffffffff, .selector = 0x10, .type = 3,
                                    .present = 1, .dpl = 0, .db = 1, .s = 1, .l = 0, .g = 1 };
        sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = flat;
        flat.selector = 0x18; flat.type = 0xb;
        sregs.cs = flat;
        sregs.cr0 |= 1;
    }
    ioctl(vcpu, KVM_SET_SREGS, &sregs);
    struct kvm_regs regs = { .rip = 0x1000, .rsp = 0x1000, .rflags = 2 };
    ioctl(vcpu, KVM_SET_REGS, &regs);

    long exits = 0, outs = 0;
    volatile uint8_t sink = 0;
    struct timespec t0, t1, c0, c1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c0);
    for (;;) {
        if (ioctl(vcpu, KVM_RUN, 0) < 0) die("KVM_RUN");
        exits++;
        if (run->exit_reason == KVM_EXIT_IO) {
            if (run->io.direction == KVM_EXIT_IO_OUT && run->io.port == 0x3ff) {
                sink = *((uint8_t *)run + run->io.data_offset);
                outs++;
            }
            continue;
        }
        if (run->exit_reason == KVM_EXIT_MMIO) {
            if (run->mmio.is_write) sink = run->mmio.data[0];
            else memset(run->mmio.data, 0x5a, run->mmio.len);
            continue;
        }
        if (run->exit_reason == KVM_EXIT_HLT) break;
        fprintf(stderr, "unexpected exit %u\n", run->exit_reason);
        return 1;
    }
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c1);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long ns = (t1.tv_sec - t0.tv_sec) * 1000000000L + (t1.tv_nsec - t0.tv_nsec);
    long cpu = (c1.tv_sec - c0.tv_sec) * 1000000000L + (c1.tv_nsec - c0.tv_nsec);
    printf("%ld %ld %ld\n", exits, ns, cpu);
    (void)sink; (void)outs;
    return 0;
}
"""


def build_c(tmp: pathlib.Path) -> pathlib.Path:
    """Compile the C reference VMM; return the binary's path."""
    src = tmp / "cref.c"
    src.write_text(C_SOURCE)
    exe = tmp / "cref"
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(src)], check=True)
    return exe


#: Per exit, in ns: (wall clock, CPU time of the thread that ran the exit loop).
Sample = tuple[float, float]


def run_c(exe: pathlib.Path, guest: str) -> Sample:
    """One C run: ns per exit, wall and thread CPU time."""
    image, mode, expected = GUESTS[guest]
    out = subprocess.run([str(exe), str(image), mode], check=True, capture_output=True, text=True).stdout.split()
    exits, ns, cpu = int(out[0]), int(out[1]), int(out[2])
    assert exits == expected + 1, exits
    return ns / exits, cpu / exits


def _python_vm(guest: str) -> Any:
    """A context manager: the guest's VM set up with minivmm's own KVM layer, yielding its vCPU."""
    from contextlib import contextmanager

    from minivmm.kvm.memory import GuestMemory
    from minivmm.kvm.system import Kvm
    from minivmm.vmm import boot
    from minivmm.vmm.boot import Mode
    from minivmm.vmm.layout import DEFAULT_LOAD_ADDR, DEFAULT_MEM_SIZE

    @contextmanager
    def vm_of() -> Any:
        image, mode, _ = GUESTS[guest]
        with Kvm() as kvm, kvm.create_vm() as vm, GuestMemory(0, DEFAULT_MEM_SIZE) as mem:
            vm.set_tss_addr(0xFFFBD000)
            vm.set_user_memory_region(0, 0, DEFAULT_MEM_SIZE, mem.host_addr)
            mem.write(DEFAULT_LOAD_ADDR, image.read_bytes())
            boot.write_system_tables(mem, DEFAULT_MEM_SIZE, Mode(mode))
            vcpu = vm.create_vcpu(0)
            boot.setup_vcpu(vcpu, DEFAULT_MEM_SIZE, Mode(mode), DEFAULT_LOAD_ADDR, 0, kvm.get_supported_cpuid())
            yield vcpu, kvm.get_vcpu_mmap_size()
    return vm_of()


def run_python_inline(guest: str) -> Sample:
    """A reference, not a VMM: port I/O only (pioloop), everything minivmm's loop does for an exit of
    that guest written out in one function with no call but KVM_RUN's. It reads ``kvm_run`` as words
    and memoizes exit values as minivmm's decoder does (layout from the decoder's cffi-derived
    constants), counts the exit by type, looks the port up in a route table of minivmm's dispatcher
    (same version check), counts the unclaimed access and checks for a stop request. It measures how
    close a Python VMM with minivmm's features can get when it pays for no Python frame at all."""
    from minivmm.devices.bus import Bus
    from minivmm.kvm import exits as X
    from minivmm.kvm.uapi import ffi, lib
    from minivmm.vmm.dispatch import DispatchStats, ExitDispatcher
    from minivmm.vmm.vcpu_loop import RunControl

    _, _, expected = GUESTS[guest]
    with _python_vm(guest) as (vcpu, mmap_size):
        fd, ioctl, kvm_run, exit_io = vcpu.fd, lib.minivmm_ioctl_val, lib.KVM_RUN, lib.KVM_EXIT_IO
        buf = ffi.buffer(vcpu.run_struct, mmap_size)
        u32, u64, items = memoryview(buf).cast("I"), memoryview(buf).cast("Q"), memoryview(buf).cast("B")
        memo: dict[int, Any] = {}
        counts: dict[type, int] = {}
        stats, control = DispatchStats(), RunControl()
        dispatcher = ExitDispatcher(Bus("pio", 1 << 16), Bus("mmio", 1 << 64))
        routes, bus = dispatcher.pio_routes, dispatcher.pio_bus
        exits = 0
        t0, c0 = time.monotonic_ns(), time.thread_time_ns()
        while True:
            if ioctl(fd, kvm_run, 0) < 0:
                raise OSError("KVM_RUN failed")
            exits += 1
            if u32[X._REASON_U32] != exit_io:
                break
            io = u64[X._IO_WORD]
            values = memo.get(io)
            if values is None:
                values = memo[io] = {}
            datum = items[u64[X._DATA_OFFSET_WORD]]
            exit_ = values.get(datum)
            if exit_ is None:
                exit_ = values[datum] = X.IoOut(io >> X._PORT_SHIFT & 0xFFFF, 1, 1, bytes([datum]))
            cls = type(exit_)
            try:
                counts[cls] += 1
            except KeyError:
                counts[cls] = 1
            if routes.table is not bus.table:
                routes.renew()
            if routes.writes[exit_[1]][exit_[0]] is None:
                stats.unclaimed += 1
            if control.stopping:
                break
        cpu, ns = time.thread_time_ns() - c0, time.monotonic_ns() - t0
    assert exits == expected + 1 and stats.unclaimed == expected, (exits, stats.unclaimed)
    return ns / exits, cpu / exits


def run_python_floor(guest: str) -> Sample:
    """The tightest Python loop over minivmm's cffi KVM_RUN wrapper: ns per exit, no decode, no dispatch.

    The VM is set up with minivmm's own KVM layer; the loop only calls the C wrapper the exit path calls
    (``minivmm_ioctl_val``) and looks at ``exit_reason`` for the HLT. MMIO reads go unanswered (the
    guest reads whatever is there).
    """
    from minivmm.kvm.uapi import lib

    _, _, expected = GUESTS[guest]
    with _python_vm(guest) as (vcpu, _):
        fd, run, ioctl, kvm_run, hlt = vcpu.fd, vcpu.run_struct, lib.minivmm_ioctl_val, lib.KVM_RUN, lib.KVM_EXIT_HLT
        exits = 0
        t0, c0 = time.monotonic_ns(), time.thread_time_ns()
        while True:
            if ioctl(fd, kvm_run, 0) < 0:
                raise OSError("KVM_RUN failed")
            exits += 1
            if run.exit_reason == hlt:
                break
        cpu, ns = time.thread_time_ns() - c0, time.monotonic_ns() - t0
    assert exits == expected + 1, exits
    return ns / exits, cpu / exits


def run_minivmm(guest: str, check: bool) -> Sample:
    """One minivmm run in this process: ns per exit, wall from the report (first KVM_RUN to the last
    exit, thread start and join included) and the vCPU thread's CPU time over its run_vcpu loop."""
    from minivmm.devices.console import Console
    from minivmm.vmm import machine as machine_mod
    from minivmm.vmm.boot import Mode
    from minivmm.vmm.machine import Machine, MachineConfig

    cpu: list[int] = []
    run_vcpu = getattr(machine_mod, "run_vcpu")  # noqa: B009  # the loop Machine calls

    def timed_run_vcpu(*args: Any, **kwargs: Any) -> None:
        # The benchmark's own wrapper around the real loop: two clock reads per run, none per exit.
        c0 = time.thread_time_ns()
        try:
            run_vcpu(*args, **kwargs)
        finally:
            cpu.append(time.thread_time_ns() - c0)

    image, mode, expected = GUESTS[guest]
    setattr(machine_mod, "run_vcpu", timed_run_vcpu)  # noqa: B010
    try:
        with Machine(MachineConfig(timeout=120, check=check, mode=Mode(mode)), image.read_bytes(),
                     Console()) as machine:
            report = machine.run()
    finally:
        setattr(machine_mod, "run_vcpu", run_vcpu)  # noqa: B010
    exits = sum(report.exits.values())
    assert exits == expected + 1 and report.outcome.value == "halted", (exits, report.outcome)
    return report.run_ms * 1e6 / exits, cpu[0] / exits


def table(title: str, sides: dict[str, list[float]]) -> None:
    """Print one table: median, min and max per side, and the median's ratio to C."""
    c = statistics.median(sides["C reference"])
    print(f"\n{title}")
    print(f"{'side':<22} {'median us/exit':>15} {'min':>8} {'max':>8} {'ratio to C':>11}")
    for name, values in sides.items():
        med = statistics.median(values)
        print(f"{name:<22} {med / 1000:>15.2f} {min(values) / 1000:>8.2f} {max(values) / 1000:>8.2f} "
              f"{med / c:>11.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    parser.add_argument("--no-check-side", dest="check", action="store_false",
                        help="skip the run with the shadow check on")
    parser.add_argument("--guest", choices=(*GUESTS, "both"), default="both", help="which guest (default both)")
    parser.add_argument("--inline-reference", action="store_true",
                        help="pioloop: add the one-function reference (run_python_inline: minivmm's per-exit "
                             "work with no Python call), the bound on what removing frames could gain")
    args = parser.parse_args(argv)
    guests = list(GUESTS) if args.guest == "both" else [args.guest]
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        exe = build_c(pathlib.Path(tmp))
        for guest in guests:
            runs: dict[str, Callable[[], Sample]] = {
                "C reference": partial(run_c, exe, guest),
                "tightest Python loop": partial(run_python_floor, guest),
                "minivmm --no-check": partial(run_minivmm, guest, check=False)}
            if args.inline_reference and guest == "pioloop":
                runs = {**dict(list(runs.items())[:2]), "one-function reference": partial(run_python_inline, guest),
                        **dict(list(runs.items())[2:])}
            if args.check:
                runs["minivmm (checked)"] = partial(run_minivmm, guest, check=True)
            wall: dict[str, list[float]] = {name: [] for name in runs}
            cpu: dict[str, list[float]] = {name: [] for name in runs}
            for r in range(args.rounds):
                for name, run in runs.items():  # the sides alternate within each round
                    w, c = run()
                    wall[name].append(w)
                    cpu[name].append(c)
                print(f"{guest} round {r + 1}: " + "  ".join(f"{k} {wall[k][-1] / 1000:.2f}/{cpu[k][-1] / 1000:.2f} us"
                                                             for k in runs), file=sys.stderr)
            table(f"{guest}: wall clock per exit", wall)
            table(f"{guest}: CPU time per exit (the exit loop's thread; what a loaded machine distorts least)", cpu)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
