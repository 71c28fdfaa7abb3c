"""ioeventfd-backed doorbells: guest writes completed in the kernel and counted through an eventfd.

The VMM registers a doorbell's address with KVM_IOEVENTFD, so a matching guest write never exits to
userspace: KVM's ioeventfd device on the MMIO bus claims it and increments the eventfd counter. Only
reads (which ioeventfds never claim) and writes the kernel did not match reach these objects through
the userspace bus.

:class:`EventCounter` owns one eventfd and the running total of what the kernel counted on it; every
reader (the guest-visible doorbell, the shadow's reconciliation) asks it, so no count is drained twice.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from minivmm.kvm.uapi import ffi, lib

DOORBELL_SIZE = 8
#: The ioeventfd covers a 4-byte write at the doorbell's base (no datamatch: any value rings it).
DOORBELL_WRITE_LEN = 4


class EventCounter:
    """An eventfd (non-blocking) and the total of every count read from it so far."""

    def __init__(self) -> None:
        fd: int = lib.eventfd(0, lib.EFD_CLOEXEC | lib.EFD_NONBLOCK)
        if fd < 0:
            raise OSError(ffi.errno, "eventfd() failed")
        self.fd = fd
        self._total = 0
        self._lock = threading.Lock()

    def total(self) -> int:
        """Everything the kernel has counted on this eventfd since it was made."""
        with self._lock:
            if self.fd >= 0:
                try:
                    self._total += int.from_bytes(os.read(self.fd, 8), "little")
                except BlockingIOError:
                    pass  # zero since the last read
            return self._total

    def close(self) -> None:
        """Close the eventfd (after the VM, so the kernel no longer signals it)."""
        with self._lock:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1


#: Called when a write to a doorbell's address reached userspace: (the doorbell's eventfd).
UserspaceWriteHook = Callable[[int], None]


class Doorbell:
    """The guest-visible side of one doorbell: reads return the kernel's count of writes so far."""

    name = "doorbell"

    def __init__(self, on_userspace_write: UserspaceWriteHook | None = None) -> None:
        self.counter = EventCounter()
        self.on_userspace_write = on_userspace_write
        #: Writes that reached userspace (the kernel did not match them): none is expected at the base.
        self.userspace_writes = 0

    @property
    def fd(self) -> int:
        """The eventfd KVM signals."""
        return self.counter.fd

    def kernel_count(self) -> int:
        """Total doorbell writes the kernel has counted."""
        return self.counter.total()

    def read(self, offset: int, size: int) -> bytes:
        """Return the kernel's count of doorbell writes, little-endian, truncated to ``size``."""
        return self.kernel_count().to_bytes(8, "little")[:size]

    def write(self, offset: int, data: bytes) -> None:
        """A write the kernel did not take (wrong length or offset, or not registered yet)."""
        self.userspace_writes += 1
        if self.on_userspace_write is not None and offset == 0:
            self.on_userspace_write(self.counter.fd)

    def close(self) -> None:
        """Close the eventfd."""
        self.counter.close()
