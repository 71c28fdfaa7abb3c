"""How the host issues each sequence op: the real ioctl, through the ``minivmm.kvm`` wrappers.

Everything else about an op (its arguments, label, the ioctl it issues, its inverse from a trace, what
the model does) is its :class:`kernel_model.ops.OpSpec`. Here each op only registers its *host step*
(``HOST_OPS``): a function that gets everything its ioctl needs ready (a guest memory mapping, an
eventfd, a vCPU's registers) and returns the call to time, which issues exactly one ioctl. The runner
times that call; the call returns None (the traced ioctl's own duration is the step's) or a duration
it measured itself (``run``: the first KVM_RUN until the first exit). A test checks that every op has a
host step, and another that what each one issues is traced back to the same arguments.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from kernel_model.ops import LOOP_ADDR, Args
from minivmm.kvm.exits import Interrupted, IoOut
from minivmm.kvm.memory import GuestMemory
from minivmm.kvm.system import Kvm
from minivmm.kvm.uapi import ffi, lib
from minivmm.kvm.vcpu import Vcpu
from minivmm.kvm.vm import IoEvent, Vm
from minivmm.vmm.boot import Mode, setup_vcpu
from minivmm.vmm.vcpu_loop import block_process_signals, stop_vcpu_threads

#: mov dx, 0x80; out dx, al; jmp $-3: a guest that exits forever (real mode, at LOOP_ADDR).
LOOP_GUEST = bytes.fromhex("ba8000" "ee" "ebfd")


class SequenceUnrunnable(ValueError):
    """The sequence cannot be issued on real KVM as written (e.g. a vCPU's first KVM_RUN failed)."""


class RunningVcpu:
    """A vCPU thread looping over KVM_RUN until stopped; measures its first KVM_RUN."""

    def __init__(self, vcpu: Vcpu) -> None:
        self.vcpu = vcpu
        self.stop = False
        self.first_run_ns: int | None = None
        self.first_exit: object = None
        self.exits = 0
        self.error: str | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, name=f"timing-vcpu{vcpu.id}", daemon=True)

    def _loop(self) -> None:
        block_process_signals()
        try:
            t0 = time.monotonic_ns()
            first = self.vcpu.run()
            self.first_run_ns = time.monotonic_ns() - t0
            self.first_exit = first
            while not self.stop:
                self.vcpu.run()
                self.exits += 1
        except OSError as e:
            self.error = str(e)
            self.first_run_ns = self.first_run_ns or 0
        finally:
            self.done.set()

    def start_and_wait_first_exit(self) -> int:
        """Start the thread; return the duration of its first KVM_RUN (to the first exit)."""
        self.thread.start()
        while self.first_run_ns is None and not self.done.is_set():
            time.sleep(0.0001)
        if self.error:
            raise SequenceUnrunnable(f"KVM_RUN failed: {self.error}")
        first = self.first_exit
        if not (isinstance(first, (IoOut, Interrupted)) and (not isinstance(first, IoOut) or first.port == 0x80)):
            # Not the loop guest's `out` to port 0x80: the step would time something else.
            what = first.describe() if hasattr(first, "describe") else repr(first)
            raise SequenceUnrunnable(f"vCPU {self.vcpu.id} did not run the loop guest at {LOOP_ADDR:#x} "
                                     f"(first exit: {what})")
        return self.first_run_ns or 0

    def halt(self) -> None:
        """Stop the thread (kicking it out of KVM_RUN)."""
        self.stop = True
        stop_vcpu_threads([self.vcpu], [self.thread], [self.done])


@dataclass
class HostState:
    """One repetition's VM and what its steps made; :meth:`close` frees all of it."""

    kvm: Kvm
    vm: Vm | None = None
    #: Guest memory by memslot number (as KVM numbers it: address space in the high 16 bits), so that a
    #: move keeps its userspace address as KVM requires.
    slots: dict[int, GuestMemory] = field(default_factory=dict)
    memories: list[GuestMemory] = field(default_factory=list)
    efds: list[int] = field(default_factory=list)
    events: dict[tuple[int, int, int | None, bool], IoEvent] = field(default_factory=dict)
    vcpus: dict[int, Vcpu] = field(default_factory=dict)
    running: list[RunningVcpu] = field(default_factory=list)
    #: The eventfds of the irqfds in place, per GSI (a deassign detaches the latest).
    irqfds: dict[int, list[int]] = field(default_factory=dict)

    def the_vm(self) -> Vm:
        """The VM (every step after create_vm has one)."""
        assert self.vm is not None, "a step before create_vm"
        return self.vm

    def eventfd(self) -> int:
        """A fresh eventfd, closed with the repetition."""
        fd = int(lib.eventfd(0, lib.EFD_CLOEXEC | lib.EFD_NONBLOCK))
        if fd < 0:
            raise OSError(ffi.errno, "eventfd() failed")
        self.efds.append(fd)
        return fd

    def close(self) -> None:
        """Stop the vCPU threads, close the VM, unmap guest memory, close eventfds."""
        for r in self.running:
            r.halt()
        if self.vm is not None:
            self.vm.close()
        for m in self.memories:
            m.close()
        for fd in self.efds:
            os.close(fd)


#: Get one step ready; return the call to time (None: the traced ioctl's duration is the step's).
HostStep = Callable[[HostState, Args], Callable[[], int | None]]

def host_step(op: str) -> HostStep:
    """The host step of ``op``; LookupError names an op that has none."""
    try:
        return HOST_OPS[op]
    except KeyError:
        raise LookupError(f"the op {op!r} has no host step in minivmm.timing.host_ops") from None


def _create_vm(st: HostState, a: Args) -> Callable[[], int | None]:
    def issue() -> None:
        st.vm = st.kvm.create_vm()
    return issue


def _memslot(st: HostState, a: Args) -> Callable[[], int | None]:
    slot, base, size = a["slot"], a["base"], a["size"]
    if size == 0:
        def delete() -> None:
            st.the_vm().set_user_memory_region(slot, base, 0, 0)
            st.slots.pop(slot, None)
        return delete
    mem = st.slots.get(slot)
    if mem is None or mem.size != size:
        mem = GuestMemory(base, size)
        st.memories.append(mem)
    if base <= LOOP_ADDR and LOOP_ADDR + len(LOOP_GUEST) <= base + size:
        # The run op's guest loop, at LOOP_ADDR wherever this slot (new or moved) puts it.
        mem.write(mem.guest_phys_addr + LOOP_ADDR - base, LOOP_GUEST)
    host_addr = mem.host_addr
    flags = (lib.KVM_MEM_READONLY if a["readonly"] else 0) | (lib.KVM_MEM_LOG_DIRTY_PAGES if a["log_dirty"] else 0)

    def issue() -> None:
        st.the_vm().set_user_memory_region(slot, base, size, host_addr, flags)
        st.slots[slot] = mem
    return issue


def _irqchip(st: HostState, a: Args) -> Callable[[], int | None]:
    def issue() -> None:
        st.the_vm().create_irqchip()
    return issue


def _ioeventfd_key(a: Args) -> tuple[int, int, int | None, bool]:
    return a["addr"], a["len"], a["datamatch"], bool(a["pio"])


def _ioeventfd(st: HostState, a: Args) -> Callable[[], int | None]:
    ev = IoEvent(a["addr"], a["len"], st.eventfd(), a["datamatch"], bool(a["pio"]))

    def issue() -> None:
        st.the_vm().register_ioevent(ev)
        st.events[_ioeventfd_key(a)] = ev
    return issue


def _ioeventfd_deassign(st: HostState, a: Args) -> Callable[[], int | None]:
    # Validation (the model kernel's ENOENT) guarantees a matching assign came first.
    ev = st.events.pop(_ioeventfd_key(a))

    def issue() -> None:
        st.the_vm().unregister_ioevent(ev)
    return issue


def _vcpu(st: HostState, a: Args) -> Callable[[], int | None]:
    def issue() -> None:
        st.vcpus[a["id"]] = st.the_vm().create_vcpu(a["id"])
    return issue


def _run(st: HostState, a: Args) -> Callable[[], int | None]:
    vcpu = st.vcpus[a["vcpu"]]
    setup_vcpu(vcpu, 0, Mode.REAL, LOOP_ADDR, a["vcpu"])
    # Any vCPU of a sequence runs: one that is not the boot processor would otherwise wait in KVM_RUN
    # for an INIT and a SIPI that no step sends (with an in-kernel LAPIC), and the step would hang.
    vcpu.make_runnable()
    r = RunningVcpu(vcpu)

    def issue() -> int:
        st.running.append(r)
        return r.start_and_wait_first_exit()
    return issue


def _pit2(st: HostState, a: Args) -> Callable[[], int | None]:
    flags = lib.KVM_PIT_SPEAKER_DUMMY if a["speaker_dummy"] else 0

    def issue() -> None:
        st.the_vm().create_pit2(flags)
    return issue


def _coalesced_mmio(st: HostState, a: Args) -> Callable[[], int | None]:
    def issue() -> None:
        st.the_vm().register_coalesced_mmio(a["addr"], a["size"], a["pio"])
    return issue


def _irqfd(st: HostState, a: Args) -> Callable[[], int | None]:
    gsi, attached = a["gsi"], st.irqfds.setdefault(a["gsi"], [])
    if not a["deassign"]:
        fd = st.eventfd()

        def assign() -> None:
            st.the_vm().irqfd(fd, gsi)
            attached.append(fd)
        return assign
    # A deassign that matches nothing is legal (the kernel returns 0): it gets a fresh eventfd.
    fd = attached[-1] if attached else st.eventfd()

    def deassign() -> None:
        st.the_vm().irqfd(fd, gsi, deassign=True)
        if fd in attached:
            attached.remove(fd)
    return deassign


def _gsi_routing(st: HostState, a: Args) -> Callable[[], int | None]:
    gsis = list(range(a["entries"]))

    def issue() -> None:
        st.the_vm().set_gsi_routing_msi(gsis)
    return issue


def _enable_cap(st: HostState, a: Args) -> Callable[[], int | None]:
    def issue() -> None:
        st.the_vm().enable_cap(a["cap"], (a["arg0"],))
    return issue


def _tss_addr(st: HostState, a: Args) -> Callable[[], int | None]:
    def issue() -> None:
        st.the_vm().set_tss_addr(a["addr"])
    return issue


def _ioctl(st: HostState, a: Args) -> Callable[[], int | None]:
    # Not issued: an arbitrary ioctl's argument is unknown. The host pauses for its traced cost so the
    # steps after it keep their timing; the duration reported is that pause, as measured.
    cost = a["cost"]

    def pause() -> int:
        t0 = time.monotonic_ns()
        end = t0 + cost
        while time.monotonic_ns() < end:
            pass
        return time.monotonic_ns() - t0
    return pause


def _destroy_vm(st: HostState, a: Args) -> Callable[[], int | None]:
    # Every vCPU thread leaves KVM_RUN first (outside the timed step); the vCPU fds are closed just
    # before the VM fd, so that its close() drops the last reference and runs kvm_destroy_vm().
    for r in st.running:
        r.halt()
    st.running.clear()
    vm = st.the_vm()

    def issue() -> int:
        st.vm = None
        return vm.close_timed()
    return issue


#: Every op's host step, by op name (the names of kernel_model.ops.OPS; a test checks that none is missing).
HOST_OPS: dict[str, HostStep] = {
    "create_vm": _create_vm,
    "memslot": _memslot,
    "irqchip": _irqchip,
    "ioeventfd": _ioeventfd,
    "ioeventfd_deassign": _ioeventfd_deassign,
    "vcpu": _vcpu,
    "run": _run,
    "pit2": _pit2,
    "coalesced_mmio": _coalesced_mmio,
    "irqfd": _irqfd,
    "gsi_routing": _gsi_routing,
    "enable_cap": _enable_cap,
    "tss_addr": _tss_addr,
    "ioctl": _ioctl,
    "destroy_vm": _destroy_vm,
}
