"""Run a :class:`kernel_model.sequences.Sequence` on real KVM and time each step's ioctl.

Each step is exactly one ioctl, timed by the C wrapper around the system call (see
``minivmm.kvm.uapi.IoctlTracer``); everything a step needs (a guest memory mapping, an eventfd) is
made before its ioctl, outside the timed region. The ``run`` step starts a vCPU thread on a tiny
real-mode loop guest (an ``out`` to port 0x80 and a jump), so the vCPU keeps taking exits, each handled
inside KVM's SRCU read section; its time is from the first KVM_RUN to the first exit.
"""

from __future__ import annotations

import os
import random
import signal
import statistics
import threading
import time
from dataclasses import dataclass
from collections.abc import Callable

from kernel_model.sequences import Sequence, Step
from minivmm.kvm.memory import GuestMemory
from minivmm.kvm.system import Kvm
from minivmm.kvm.paths import DEFAULT_DEVICE_PATH
from minivmm.kvm.uapi import IoctlRecord, IoctlTracer, ioctl_val, lib
from minivmm.kvm.vcpu import Vcpu
from minivmm.kvm.vm import IoEvent, Vm
from minivmm.vmm.boot import Mode, setup_vcpu
from minivmm.vmm.vcpu_loop import KICK_SIGNAL, block_process_signals, stop_vcpu_threads

#: mov dx, 0x80; out dx, al; jmp $-3: a guest that exits forever (real mode, at LOOP_ADDR).
LOOP_GUEST = bytes.fromhex("ba8000" "ee" "ebfd")
LOOP_ADDR = 0x1000


class SequenceUnrunnable(ValueError):
    """The sequence cannot be issued on real KVM as written (e.g. ``run`` with no memslot at 0)."""


@dataclass
class Repetition:
    """One run of the sequence in a fresh VM."""

    durations_ns: list[int]
    gaps_ns: list[int]
    records: list[IoctlRecord | None]


class _RunningVcpu:
    """A vCPU thread looping over KVM_RUN until stopped; measures its first KVM_RUN."""

    def __init__(self, vcpu: Vcpu) -> None:
        self.vcpu = vcpu
        self.stop = False
        self.first_run_ns: int | None = None
        self.exits = 0
        self.error: str | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, name=f"timing-vcpu{vcpu.id}", daemon=True)

    def _loop(self) -> None:
        block_process_signals()
        try:
            t0 = time.monotonic_ns()
            self.vcpu.run()
            self.first_run_ns = time.monotonic_ns() - t0
            while not self.stop:
                self.vcpu.run()
                self.exits += 1
        except OSError as e:
            self.error = str(e)
            self.first_run_ns = self.first_run_ns or 0
        finally:
            self.done.set()

    def start_and_wait_first_exit(self) -> int:
        self.thread.start()
        while self.first_run_ns is None and not self.done.is_set():
            time.sleep(0.0001)
        if self.error:
            raise SequenceUnrunnable(f"KVM_RUN failed: {self.error}")
        return self.first_run_ns or 0

    def halt(self) -> None:
        self.stop = True
        stop_vcpu_threads([self.vcpu], [self.thread], [self.done])


def _wait_until(t_ns: int) -> None:
    """Honour a step's gap: sleep most of it, spin the last stretch (sleep is too coarse alone)."""
    remaining = t_ns - time.monotonic_ns()
    if remaining > 300_000:
        time.sleep((remaining - 200_000) / 1e9)
    while time.monotonic_ns() < t_ns:
        pass


def check_runnable(seq: Sequence) -> None:
    """Refuse, before any VM exists, a sequence that real KVM could not run as written."""
    memslots: dict[int, tuple[int, int]] = {}
    vcpus: set[int] = set()
    for i, step in enumerate(seq.steps):
        a = step.args
        if step.op == "memslot":
            if a["size"]:
                if a["size"] % 4096 or a["base"] % 4096:
                    raise SequenceUnrunnable(f"step {i + 1}: memslot base and size must be 4 KiB aligned")
                memslots[a["slot"]] = (a["base"], a["size"])
            else:
                memslots.pop(a["slot"], None)
        elif step.op == "vcpu":
            vcpus.add(a["id"])
        elif step.op == "run":
            if a["vcpu"] not in vcpus:
                raise SequenceUnrunnable(f"step {i + 1}: run vcpu={a['vcpu']} before that vCPU is created")
            if not any(b <= LOOP_ADDR and LOOP_ADDR + len(LOOP_GUEST) <= b + s for b, s in memslots.values()):
                raise SequenceUnrunnable(f"step {i + 1}: run needs a memslot covering {LOOP_ADDR:#x} "
                                         "for the loop guest")


class SequenceRunner:
    """Issues a sequence on one ``/dev/kvm``; each :meth:`run_once` uses a fresh VM and frees it."""

    def __init__(self, seq: Sequence, kvm_path: str = DEFAULT_DEVICE_PATH) -> None:
        check_runnable(seq)
        self.seq = seq
        self.tracer = IoctlTracer()
        self.kvm = Kvm(kvm_path, self.tracer)
        self._cpuid = None

    def close(self) -> None:
        """Close /dev/kvm."""
        self.kvm.close()

    def timer_overhead_ns(self, n: int = 2000) -> dict[str, float]:
        """The timed wrapper around a trivial ioctl (KVM_CHECK_EXTENSION): what any timing includes."""
        tracer = IoctlTracer()
        fd, req = self.kvm.fd, lib.KVM_CHECK_EXTENSION
        for _ in range(n):
            ioctl_val(fd, req, lib.KVM_CAP_USER_MEMORY, tracer)
        samples = sorted(rec.elapsed_ns for rec in tracer.records)
        return {"min_ns": samples[0], "p50_ns": statistics.median(samples), "p90_ns": samples[int(n * 0.9)]}

    def run_once(self) -> Repetition:
        """Run every step in a fresh VM; return the per-step durations and the gaps before them."""
        tracer = self.tracer
        tracer.records.clear()
        durations: list[int] = []
        gaps: list[int] = []
        records: list[IoctlRecord | None] = []
        vm: Vm | None = None
        memories: list[GuestMemory] = []
        efds: list[int] = []
        events: dict[tuple, IoEvent] = {}
        vcpus: dict[int, Vcpu] = {}
        running: list[_RunningVcpu] = []
        last_end = time.monotonic_ns()
        try:
            for step in self.seq.steps:
                prepared = self._prepare(step, vm, memories, efds, events, vcpus)
                _wait_until(last_end + step.gap_ns)
                start = time.monotonic_ns()
                gaps.append(start - last_end)
                before = len(tracer.records)
                if step.op == "create_vm":
                    vm = self.kvm.create_vm()
                elif step.op == "run":
                    r = _RunningVcpu(vcpus[step.args["vcpu"]])
                    running.append(r)
                    durations.append(r.start_and_wait_first_exit())
                    records.append(None)
                    last_end = time.monotonic_ns()
                    continue
                else:
                    assert vm is not None
                    result = prepared(vm)
                    if step.op == "vcpu":
                        vcpus[step.args["id"]] = result
                rec = tracer.records[before] if len(tracer.records) > before else None
                records.append(rec)
                durations.append(rec.elapsed_ns if rec else time.monotonic_ns() - start)
                last_end = time.monotonic_ns()
        finally:
            for r in running:
                r.halt()
            if vm is not None:
                vm.close()
            for m in memories:
                m.close()
            for fd in efds:
                os.close(fd)
        return Repetition(durations, gaps, records)

    def _prepare(self, step: Step, vm: Vm | None, memories: list[GuestMemory], efds: list[int],
                 events: dict[tuple, IoEvent], vcpus: dict[int, Vcpu]) -> Callable[[Vm], object]:
        """Everything a step needs before its ioctl; returns the ioctl to time."""
        a = step.args
        if step.op == "memslot":
            if a["size"] == 0:
                return lambda vm: vm.set_user_memory_region(a["slot"], a["base"], 0, 0)
            mem = GuestMemory(a["base"], a["size"])
            memories.append(mem)
            if mem.contains(LOOP_ADDR, len(LOOP_GUEST)):
                mem.write(LOOP_ADDR, LOOP_GUEST)
            return lambda vm: vm.set_user_memory_region(a["slot"], a["base"], a["size"], mem.host_addr)
        if step.op == "irqchip":
            return lambda vm: vm.create_irqchip()
        if step.op in ("ioeventfd", "ioeventfd_deassign"):
            key = (a["addr"], a["len"], a.get("datamatch"), bool(a.get("pio")))
            if step.op == "ioeventfd":
                fd = lib.eventfd(0, lib.EFD_CLOEXEC | lib.EFD_NONBLOCK)
                efds.append(fd)
                ev = events[key] = IoEvent(a["addr"], a["len"], fd, a.get("datamatch"), bool(a.get("pio")))
                return lambda vm: vm.register_ioevent(ev)
            ev = events.pop(key)
            return lambda vm: vm.unregister_ioevent(ev)
        if step.op == "vcpu":
            return lambda vm: vm.create_vcpu(a["id"])
        if step.op == "run":
            setup_vcpu(vcpus[a["vcpu"]], 0, Mode.REAL, LOOP_ADDR, a["vcpu"])
            return lambda vm: None
        return lambda vm: None


def measure(seq: Sequence, repeat: int, jitter: bool, hz: int, kvm_path: str = DEFAULT_DEVICE_PATH,
            on_progress: Callable[[int], None] | None = None, seed: int | None = None) -> tuple[list[Repetition], dict[str, float]]:
    """Run ``seq`` ``repeat`` times; with ``jitter`` each repetition starts at a random point within a
    jiffy (a random sleep of up to 1/HZ first), so the tick phase is sampled rather than locked."""
    rng = random.Random(seed)
    runner = SequenceRunner(seq, kvm_path)
    old = signal.signal(KICK_SIGNAL, lambda signum, frame: None)
    try:
        overhead = runner.timer_overhead_ns()
        reps = []
        for i in range(repeat):
            if jitter:
                time.sleep(rng.random() / hz)
            reps.append(runner.run_once())
            if on_progress:
                on_progress(i + 1)
        return reps, overhead
    finally:
        signal.signal(KICK_SIGNAL, old)
        runner.close()
