"""A KVM vCPU file descriptor with its mapped ``struct kvm_run``: KVM_RUN, registers, CPUID."""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from struct import Struct
from typing import Any

from minivmm.kvm.exits import ExitDecoder, VcpuExit
from minivmm.kvm.uapi import MAP_FAILED, IoctlTracer, ffi, ioctl_ptr, lib


def _closed(*args: object) -> Any:
    raise RuntimeError("the vCPU is closed: its kvm_run is unmapped")


class Vcpu:
    """One vCPU. Created by :meth:`Vm.create_vcpu`; unmaps ``kvm_run`` and closes its fd on ``close()``."""

    def __init__(self, fd: int, vcpu_id: int, mmap_size: int, tracer: IoctlTracer | None = None) -> None:
        # Safety: kvm_run is shared with the kernel, which writes it during KVM_RUN only; we read and
        # write it only between KVM_RUN calls of this vCPU's own thread (and immediate_exit, a single
        # byte the kernel reads on entry, from the supervisor). The mapping lives until close().
        ptr = lib.mmap(ffi.NULL, mmap_size, lib.PROT_READ | lib.PROT_WRITE, lib.MAP_SHARED, fd, 0)
        if ptr == MAP_FAILED:
            raise OSError(ffi.errno, "mmap of kvm_run failed")
        self.fd = fd
        self.id = vcpu_id
        self.tracer = tracer
        self._mmap_size = mmap_size
        self._map = ptr
        #: The shared ``struct kvm_run``; valid until close().
        self.run_struct: Any = ffi.cast("struct kvm_run *", ptr)
        # A byte view, made once: port-read answers are stored by slice assignment (one C call, no cdata built).
        self._run_bytes: Any = ffi.buffer(ptr, mmap_size)
        #: Answers a KVM_EXIT_MMIO read: ``complete_mmio_read(data)`` stores ``data`` (``len`` bytes) in
        #: ``mmio.data``, what the guest's load receives. A longer answer is cut to mmio.data's size, as
        #: memmove(..., min(n, size)) would; a shorter one is padded with zeros, which no guest sees (KVM
        #: copies only ``len`` bytes into the guest's register). struct's ``pack_into`` of one "<size>s"
        #: field, bound once: one C call and no Python frame on every MMIO read exit.
        mmio_data = Struct(f"{ffi.sizeof(self.run_struct.mmio.data)}s")
        self.complete_mmio_read: Callable[[bytes], None] = partial(
            mmio_data.pack_into, self._run_bytes, ffi.offsetof("struct kvm_run", "mmio", "data"))
        #: Wrapper over KVM_RUN: ``run()`` enters the guest until the next exit to userspace and returns
        #: that exit decoded; EINTR (a signal, or ``immediate_exit`` set) is not an error, it returns
        #: ``Interrupted``. It is the decoder's own ``run`` (a bound method, no frame of its own): entry
        #: and decode are one Python frame on the exit path.
        self.run: Callable[[], VcpuExit] = ExitDecoder(self.run_struct, mmap_size, fd).run

    @property
    def immediate_exit(self) -> bool:
        """``kvm_run.immediate_exit``: when set, the next KVM_RUN returns EINTR at once."""
        return bool(self.run_struct.immediate_exit)

    @immediate_exit.setter
    def immediate_exit(self, value: bool) -> None:
        self.run_struct.immediate_exit = 1 if value else 0

    def complete_io_in(self, data: bytes) -> None:
        """Answer a KVM_EXIT_IO read: ``data`` (``size * count`` bytes) is what the guest's IN receives."""
        offset = self.run_struct.io.data_offset
        end = offset + len(data)
        if end > self._mmap_size:
            raise ValueError("IO data would run past the kvm_run mapping")
        self._run_bytes[offset:end] = data

    def get_regs(self) -> Any:
        """Wrapper over KVM_GET_REGS: a cffi-owned ``struct kvm_regs``."""
        regs = ffi.new("struct kvm_regs *")
        ioctl_ptr(self.fd, lib.KVM_GET_REGS, regs)
        return regs

    def set_regs(self, regs: Any) -> None:
        """Wrapper over KVM_SET_REGS."""
        ioctl_ptr(self.fd, lib.KVM_SET_REGS, regs)

    def get_sregs(self) -> Any:
        """Wrapper over KVM_GET_SREGS: a cffi-owned ``struct kvm_sregs``."""
        sregs = ffi.new("struct kvm_sregs *")
        ioctl_ptr(self.fd, lib.KVM_GET_SREGS, sregs)
        return sregs

    def set_sregs(self, sregs: Any) -> None:
        """Wrapper over KVM_SET_SREGS."""
        ioctl_ptr(self.fd, lib.KVM_SET_SREGS, sregs)

    def set_cpuid2(self, cpuid: Any) -> None:
        """Wrapper over KVM_SET_CPUID2 (usually with what KVM_GET_SUPPORTED_CPUID returned)."""
        ioctl_ptr(self.fd, lib.KVM_SET_CPUID2, cpuid)

    def make_runnable(self) -> None:
        """Wrapper over KVM_SET_MP_STATE(KVM_MP_STATE_RUNNABLE). With an in-kernel local APIC every vCPU
        but the boot processor starts waiting for INIT and SIPI, and its KVM_RUN blocks until they come;
        this lets it run at once, as if they had."""
        state = ffi.new("struct kvm_mp_state *", {"mp_state": lib.KVM_MP_STATE_RUNNABLE})
        ioctl_ptr(self.fd, lib.KVM_SET_MP_STATE, state)

    def close(self) -> None:
        """Unmap ``kvm_run`` and close the vCPU fd."""
        if self._map is not None:
            lib.munmap(self._map, self._mmap_size)
            self._map = None
            self.run_struct = None
            self._run_bytes = None
            self.complete_mmio_read = _closed
            self.run = _closed
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
