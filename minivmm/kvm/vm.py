"""A KVM VM file descriptor: memslots, ioeventfds, the in-kernel irqchip, and the parent of its vCPUs."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, NamedTuple, Protocol

from minivmm.kvm.uapi import IoctlTracer, ffi, ioctl_ptr, ioctl_val, lib, timed_close
from minivmm.kvm.vcpu import Vcpu


class IoEvent(NamedTuple):
    """What identifies an ioeventfd to KVM: the same values must be given again to deassign it."""

    addr: int
    length: int
    fd: int
    datamatch: int | None = None
    pio: bool = False


class VmObserver(Protocol):
    """Told about every bus- or memslot-changing ioctl (the kernel-model shadow implements it).

    An ioeventfd change is reported on both sides of its ioctl: ``ioeventfd_assigning`` before the
    assign is issued and ``ioeventfd_assigned`` after it returned (``ok`` False: it failed);
    ``ioeventfd_deassigning`` before the deassign is issued and ``ioeventfd_deassigned`` after it
    returned. So an observer can keep both "what the kernel surely has" (from assigned to
    deassigning) and "what the kernel may have" (from assigning to deassigned).
    """

    def ioeventfd_assigning(self, event: IoEvent) -> None: ...
    def ioeventfd_assigned(self, event: IoEvent, ok: bool = True) -> None: ...
    def ioeventfd_deassigning(self, event: IoEvent) -> None: ...
    def ioeventfd_deassigned(self, event: IoEvent, ok: bool = True) -> None: ...
    def irqchip_created(self) -> None: ...
    def memory_region_set(self, slot: int, guest_phys_addr: int, memory_size: int) -> None: ...
    def vcpu_created(self, vcpu_id: int) -> None: ...


class Vm:
    """A VM. Created by :meth:`Kvm.create_vm`; closes its vCPUs and itself on ``close()``.

    ``vcpu_mmap_size`` is what KVM_GET_VCPU_MMAP_SIZE answered on the system fd (as kvm-ioctls passes
    it in, rather than keeping a reference to the system fd just to ask).
    """

    def __init__(self, fd: int, vcpu_mmap_size: int, tracer: IoctlTracer | None = None,
                 observer: VmObserver | None = None) -> None:
        self.fd = fd
        self.tracer = tracer
        #: Told about bus- and memslot-changing ioctls (see VmObserver); None: nobody is.
        self.observer = observer
        self.vcpus: list[Vcpu] = []
        self._vcpu_mmap_size = vcpu_mmap_size

    def _shown(self, request: str, values: Mapping[str, Any]) -> str:
        """How a traced record shows ``request``'s argument struct: as strace prints it, with the
        formatter the model and the tracer use (kernel_model.kvm_uapi); nothing when nobody records."""
        if self.tracer is None:
            return ""
        # Imported here: only minivmm timing records its ioctls, and boot's start-up does not pay for it.
        from kernel_model.kvm_uapi import REQUEST_STRUCTS
        return REQUEST_STRUCTS[request].format(values)

    def check_extension(self, cap: int) -> int:
        """Wrapper over KVM_CHECK_EXTENSION on the VM fd (some capabilities are per VM)."""
        return ioctl_val(self.fd, lib.KVM_CHECK_EXTENSION, cap)

    def set_user_memory_region(self, slot: int, guest_phys_addr: int, memory_size: int,
                               userspace_addr: int, flags: int = 0) -> None:
        """Wrapper over KVM_SET_USER_MEMORY_REGION: add, move or (with ``memory_size`` 0) delete a memslot.

        Safety: KVM keeps ``userspace_addr`` and accesses ``memory_size`` bytes there for as long as the
        slot exists; the caller keeps that mapping alive until the slot is deleted or the VM closed.
        """
        values = {"slot": slot, "flags": flags, "guest_phys_addr": guest_phys_addr, "memory_size": memory_size,
                  "userspace_addr": userspace_addr}
        region = ffi.new("struct kvm_userspace_memory_region *", values)
        ioctl_ptr(self.fd, lib.KVM_SET_USER_MEMORY_REGION, region, self.tracer,
                  self._shown("KVM_SET_USER_MEMORY_REGION", values))
        if self.observer is not None:
            self.observer.memory_region_set(slot, guest_phys_addr, memory_size)

    def _ioeventfd(self, event: IoEvent, deassign: bool) -> None:
        flags = 0
        if event.datamatch is not None:
            flags |= lib.KVM_IOEVENTFD_FLAG_DATAMATCH
        if event.pio:
            flags |= lib.KVM_IOEVENTFD_FLAG_PIO
        if deassign:
            flags |= lib.KVM_IOEVENTFD_FLAG_DEASSIGN
        values = {"datamatch": event.datamatch or 0, "addr": event.addr, "len": event.length, "fd": event.fd,
                  "flags": flags}
        arg = ffi.new("struct kvm_ioeventfd *", values)
        ioctl_ptr(self.fd, lib.KVM_IOEVENTFD, arg, self.tracer, self._shown("KVM_IOEVENTFD", values))

    def register_ioevent(self, event: IoEvent) -> None:
        """Wrapper over KVM_IOEVENTFD (assign): guest writes matching ``event`` signal its eventfd in the kernel.

        ``length`` 0 matches writes of any length (KVM_CAP_IOEVENTFD_ANY_LENGTH); ``datamatch`` None
        matches any value. The kernel registers a device on the MMIO (or PIO) bus: this is one of the
        ``kvm_io_bus_register_dev`` calls that kernel commit 7d9a0273c459 made defer the old bus's free.
        The observer hears of it before the ioctl is issued and after it returned (see VmObserver).

        Safety: the kernel takes its own reference on the eventfd (``eventfd_ctx_fdget``), so closing
        ``event.fd`` later does not leave KVM with a dangling file; the argument struct is only read
        during the call.
        """
        observer = self.observer
        if observer is None:
            self._ioeventfd(event, deassign=False)
            return
        observer.ioeventfd_assigning(event)
        try:
            self._ioeventfd(event, deassign=False)
        except BaseException:
            observer.ioeventfd_assigned(event, ok=False)
            raise
        observer.ioeventfd_assigned(event)

    def unregister_ioevent(self, event: IoEvent) -> None:
        """Wrapper over KVM_IOEVENTFD with KVM_IOEVENTFD_FLAG_DEASSIGN (``kvm_io_bus_unregister_dev``)."""
        observer = self.observer
        if observer is None:
            self._ioeventfd(event, deassign=True)
            return
        observer.ioeventfd_deassigning(event)
        try:
            self._ioeventfd(event, deassign=True)
        except BaseException:
            observer.ioeventfd_deassigned(event, ok=False)
            raise
        observer.ioeventfd_deassigned(event)

    def create_irqchip(self) -> None:
        """Wrapper over KVM_CREATE_IRQCHIP: on x86 this registers the PIC, IOAPIC (and PIT) bus devices."""
        ioctl_val(self.fd, lib.KVM_CREATE_IRQCHIP, 0, self.tracer)
        if self.observer is not None:
            self.observer.irqchip_created()

    def create_pit2(self, flags: int = 0) -> None:
        """Wrapper over KVM_CREATE_PIT2: the in-kernel i8254 PIT (needs the in-kernel PIC: KVM_CREATE_IRQCHIP
        first). Its ports 0x40-0x43 (and, with KVM_PIT_SPEAKER_DUMMY in ``flags``, the speaker port 0x61)
        become devices on the PIO bus."""
        values = {"flags": flags}
        config = ffi.new("struct kvm_pit_config *", values)
        ioctl_ptr(self.fd, lib.KVM_CREATE_PIT2, config, self.tracer, self._shown("KVM_CREATE_PIT2", values))

    def register_coalesced_mmio(self, addr: int, size: int, pio: bool = False) -> None:
        """Wrapper over KVM_REGISTER_COALESCED_MMIO: guest writes to [addr, addr+size) (port I/O with
        ``pio``) are queued in the coalesced-MMIO ring instead of exiting. The zone becomes a device on
        the MMIO (or PIO) bus: a kvm_io_bus_register_dev()."""
        values = {"addr": addr, "size": size, "pio": int(pio)}
        zone = ffi.new("struct kvm_coalesced_mmio_zone *", values)
        ioctl_ptr(self.fd, lib.KVM_REGISTER_COALESCED_MMIO, zone, self.tracer,
                  self._shown("KVM_REGISTER_COALESCED_MMIO", values))

    def irqfd(self, fd: int, gsi: int, deassign: bool = False) -> None:
        """Wrapper over KVM_IRQFD: signalling eventfd ``fd`` injects ``gsi`` (or, with ``deassign``, stops).

        Safety: the kernel takes its own reference on the eventfd; the argument is only read during the call.
        """
        flags = lib.KVM_IRQFD_FLAG_DEASSIGN if deassign else 0
        values = {"fd": fd, "gsi": gsi, "flags": flags, "resamplefd": 0}
        arg = ffi.new("struct kvm_irqfd *", values)
        ioctl_ptr(self.fd, lib.KVM_IRQFD, arg, self.tracer, self._shown("KVM_IRQFD", values))

    def set_gsi_routing_msi(self, gsis: list[int]) -> None:
        """Wrapper over KVM_SET_GSI_ROUTING with one MSI route per GSI in ``gsis`` (to the local APIC's
        default address, vector 0): replaces the whole routing table. The kernel swaps its table and waits
        for an expedited grace period of ``kvm->irq_srcu`` before freeing the old one."""
        routing = ffi.new("struct kvm_irq_routing *", {"nr": len(gsis), "entries": max(len(gsis), 1)})
        routing.nr = len(gsis)
        for i, gsi in enumerate(gsis):
            entry = routing.entries[i]
            entry.gsi = gsi
            entry.type = lib.KVM_IRQ_ROUTING_MSI
            entry.u.msi.address_lo = 0xFEE00000
        ioctl_ptr(self.fd, lib.KVM_SET_GSI_ROUTING, routing, self.tracer,
                  self._shown("KVM_SET_GSI_ROUTING", {"nr": len(gsis), "flags": 0}))

    def enable_cap(self, cap: int, args: tuple[int, ...] = ()) -> None:
        """Wrapper over KVM_ENABLE_CAP on the VM fd: enable capability ``cap`` with up to four ``args``."""
        if len(args) > 4:
            raise ValueError("KVM_ENABLE_CAP takes at most four arguments")
        values = {"cap": cap, "flags": 0, "args": list(args) + [0] * (4 - len(args))}
        arg = ffi.new("struct kvm_enable_cap *", values)
        ioctl_ptr(self.fd, lib.KVM_ENABLE_CAP, arg, self.tracer, self._shown("KVM_ENABLE_CAP", values))

    def set_tss_addr(self, addr: int) -> None:
        """Wrapper over KVM_SET_TSS_ADDR (Intel VMX needs three pages for real-mode emulation)."""
        ioctl_val(self.fd, lib.KVM_SET_TSS_ADDR, addr, self.tracer)

    def create_vcpu(self, vcpu_id: int) -> Vcpu:
        """Wrapper over KVM_CREATE_VCPU; also maps the vCPU's ``kvm_run`` (closed with the VM)."""
        fd = ioctl_val(self.fd, lib.KVM_CREATE_VCPU, vcpu_id, self.tracer)
        try:
            vcpu = Vcpu(fd, vcpu_id, self._vcpu_mmap_size, self.tracer)
        except BaseException:
            os.close(fd)
            raise
        self.vcpus.append(vcpu)
        if self.observer is not None:
            self.observer.vcpu_created(vcpu_id)
        return vcpu

    def close(self) -> None:
        """Close every vCPU, then the VM fd: the kernel destroys the VM when the last reference goes."""
        for vcpu in self.vcpus:
            vcpu.close()
        self.vcpus.clear()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def close_timed(self) -> int:
        """Close every vCPU, then the VM fd, timing that close() beside the system call
        (:func:`minivmm.kvm.uapi.timed_close`): with no other reference left, the kernel destroys the
        VM inside it (kvm_destroy_vm()). Returns its duration (ns)."""
        for vcpu in self.vcpus:
            vcpu.close()
        self.vcpus.clear()
        fd, self.fd = self.fd, -1
        return timed_close(fd)

    def __enter__(self) -> Vm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
