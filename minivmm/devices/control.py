"""The control device: how a guest asks the VMM to register or unregister a doorbell at run time (as a
guest programs a PCI BAR and the VMM then registers the device's ioeventfds), and reports its writes.

Registers (32-bit, at CONTROL_BASE):

    0x00 CMD (write)    op << 24 | slot << 16 | count
                         op 1: register doorbell ``slot`` (a 4-byte ioeventfd at its address)
                         op 2: unregister it
                         op 3: report that this vCPU wrote ``count`` times to ``slot`` since its last report
    0x04 STATUS (read)  0 when the last command succeeded, else its errno: the acknowledgement. The
                         command has completed (the ioctl returned) before the guest can read it.
    0x08 ITERATIONS (read) how many rounds the guest should run (``--guest-iterations``)

Doorbell ``slot`` lives at DYNAMIC_DOORBELL_BASE + slot * DYNAMIC_DOORBELL_STRIDE; a write there that the
kernel did not take (not registered at that moment) lands in :class:`DynamicDoorbellRegion`.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable
from typing import NamedTuple

from minivmm.devices.doorbell import DOORBELL_WRITE_LEN, EventCounter
from minivmm.kvm.errors import KvmError
from minivmm.kvm.vm import IoEvent, Vm

CONTROL_SIZE = 0x1000
CMD, STATUS, ITERATIONS = 0x00, 0x04, 0x08
OP_REGISTER, OP_UNREGISTER, OP_REPORT = 1, 2, 3
DYNAMIC_SLOTS = 16


class DynamicDoorbellCounts(NamedTuple):
    """What the guest did with the run-time doorbells, for the run report."""

    registrations: int
    unregistrations: int
    #: What the guest says it wrote (its OP_REPORT commands).
    guest_reported_writes: int
    #: What the kernel counted on the doorbells' eventfds.
    kernel_counted: int
    #: Writes that reached userspace instead.
    userspace_writes: int


class DynamicDoorbells:
    """The run-time doorbells: one eventfd per slot for the whole run, registered and unregistered on
    the guest's request. Thread-safe: vCPUs issue commands concurrently."""

    def __init__(self, vm: Vm, base: int, stride: int, slots: int = DYNAMIC_SLOTS,
                 on_report: Callable[[int, int], None] | None = None,
                 on_userspace_write: Callable[[int], None] | None = None) -> None:
        self.vm = vm
        self.base = base
        self.stride = stride
        self.counters = [EventCounter() for _ in range(slots)]
        self.registered = [False] * slots
        self.registrations = 0
        self.unregistrations = 0
        self.reported = [0] * slots
        self.userspace_writes = [0] * slots
        self._lock = threading.Lock()
        #: Called with (eventfd, writes) for each guest report; the shadow reconciles there.
        self.on_report = on_report
        #: Called with the eventfd when a write to a slot's address reached userspace.
        self.on_userspace_write = on_userspace_write

    def addr(self, slot: int) -> int:
        """The guest-physical address of ``slot``."""
        return self.base + slot * self.stride

    def event(self, slot: int) -> IoEvent:
        """The ioeventfd of ``slot``."""
        return IoEvent(self.addr(slot), DOORBELL_WRITE_LEN, self.counters[slot].fd)

    def command(self, op: int, slot: int, count: int) -> int:
        """Run one guest command; return the status (0 or an errno)."""
        if not 0 <= slot < len(self.counters):
            return errno.EINVAL
        if op == OP_REPORT:
            with self._lock:
                self.reported[slot] += count
            if self.on_report is not None:
                self.on_report(self.counters[slot].fd, count)
            return 0
        if op not in (OP_REGISTER, OP_UNREGISTER):
            return errno.EINVAL
        with self._lock:  # one registration change at a time (the kernel serialises on slots_lock too)
            want = op == OP_REGISTER
            if self.registered[slot] == want:
                return errno.EEXIST if want else errno.ENOENT
            try:
                if want:
                    self.vm.register_ioevent(self.event(slot))
                    self.registrations += 1
                else:
                    self.vm.unregister_ioevent(self.event(slot))
                    self.unregistrations += 1
            except KvmError as e:
                return e.errno or errno.EIO
            self.registered[slot] = want
        return 0

    def counts(self) -> DynamicDoorbellCounts | None:
        """The run's counts, or None when the guest never used the control device."""
        if not (self.registrations or any(self.reported)):
            return None
        return DynamicDoorbellCounts(self.registrations, self.unregistrations, sum(self.reported),
                                     sum(c.total() for c in self.counters), sum(self.userspace_writes))

    def userspace_write(self, slot: int) -> None:
        """A write at ``slot``'s address reached userspace."""
        with self._lock:
            self.userspace_writes[slot] += 1
        if self.on_userspace_write is not None:
            self.on_userspace_write(self.counters[slot].fd)

    def close(self) -> None:
        """Close every eventfd (after the VM)."""
        for c in self.counters:
            c.close()


class ControlDevice:
    """The MMIO control registers (see the module docstring)."""

    name = "control"

    def __init__(self, doorbells: DynamicDoorbells, iterations: int) -> None:
        self.doorbells = doorbells
        self.iterations = iterations
        self.status = 0
        self.commands = 0

    def write(self, offset: int, data: bytes) -> None:
        """A write to CMD runs the command before the guest's next instruction."""
        if offset != CMD or len(data) != 4:
            return
        value = int.from_bytes(data, "little")
        self.commands += 1
        self.status = self.doorbells.command(value >> 24, (value >> 16) & 0xFF, value & 0xFFFF)

    def read(self, offset: int, size: int) -> bytes:
        """STATUS (the acknowledgement) or ITERATIONS."""
        value = {STATUS: self.status, ITERATIONS: self.iterations}.get(offset, 0)
        return value.to_bytes(8, "little")[:size]


class DynamicDoorbellRegion:
    """The userspace side of the dynamic doorbells: writes the kernel did not take, by slot."""

    name = "dynamic-doorbells"

    def __init__(self, doorbells: DynamicDoorbells) -> None:
        self.doorbells = doorbells

    def write(self, offset: int, data: bytes) -> None:
        """Count a write at a slot's base that exited."""
        slot, within = divmod(offset, self.doorbells.stride)
        if within == 0 and slot < len(self.doorbells.counters):
            self.doorbells.userspace_write(slot)

    def read(self, offset: int, size: int) -> bytes:
        """Reads of a slot return its kernel count so far."""
        slot = offset // self.doorbells.stride
        total = self.doorbells.counters[slot].total() if slot < len(self.doorbells.counters) else 0
        return total.to_bytes(8, "little")[:size]
