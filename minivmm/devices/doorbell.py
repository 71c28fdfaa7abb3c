"""An ioeventfd-backed doorbell: guest writes are completed in the kernel and counted through an eventfd.

The VMM registers the doorbell's address with KVM_IOEVENTFD, so a matching guest write never exits to
userspace: KVM's ioeventfd device on the MMIO bus claims it and increments the eventfd counter. Only
reads (which ioeventfds never claim) and writes the kernel did not match reach this object through the
userspace bus. A read returns the number of doorbell writes the kernel has counted so far, so a guest
can check that its writes were handled.
"""

from __future__ import annotations

import os
import threading

from minivmm.kvm.uapi import ffi, lib

DOORBELL_SIZE = 8
#: The ioeventfd covers a 4-byte write at the doorbell's base (no datamatch: any value rings it).
DOORBELL_WRITE_LEN = 4


class Doorbell:
    """The eventfd and userspace fallback of one doorbell. ``close()`` closes the eventfd."""

    name = "doorbell"

    def __init__(self) -> None:
        fd = lib.eventfd(0, lib.EFD_CLOEXEC | lib.EFD_NONBLOCK)
        if fd < 0:
            raise OSError(ffi.errno, "eventfd() failed")
        self.fd = fd
        self._lock = threading.Lock()
        self._counted = 0
        #: Writes that reached userspace (the kernel did not match them): none is expected at the base.
        self.userspace_writes = 0

    def kernel_count(self) -> int:
        """Total doorbell writes the kernel has counted (drains the eventfd into a running total)."""
        with self._lock:
            try:
                self._counted += int.from_bytes(os.read(self.fd, 8), "little")
            except BlockingIOError:
                pass  # counter is zero: nothing new since the last drain
            return self._counted

    def read(self, offset: int, size: int) -> bytes:
        """Return the kernel's count of doorbell writes, little-endian, truncated to ``size``."""
        return self.kernel_count().to_bytes(8, "little")[:size]

    def write(self, offset: int, data: bytes) -> None:
        """A write the kernel did not take (wrong length or offset): counted, otherwise ignored."""
        with self._lock:
            self.userspace_writes += 1

    def close(self) -> None:
        """Close the eventfd (after the VM, so the kernel no longer signals it)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
