"""ioeventfds and irqfds: virt/kvm/eventfd.c, v6.18.

An ioeventfd is a device on the MMIO or PIO bus (:class:`kernel_model.kvm_io_bus.Ioeventfd`): its
assign is one of the ``kvm_io_bus_register_dev()`` calls whose old bus 7d9a0273c459 frees with
``call_srcu()``, its deassign a ``kvm_io_bus_unregister_dev()``, which synchronizes in every variant.
An irqfd registers nothing on a bus.

Simplified: the eventfds themselves, resamplefd (KVM_IRQFD_FLAG_RESAMPLE) and irq bypass are left out;
an ioctl's own work is one fixed cost (``Costs``).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from kernel_model.kvm_host import KvmIoctlError
from kernel_model.kvm_io_bus import Ioeventfd, KvmBus

if TYPE_CHECKING:
    from kernel_model.kvm_main import KvmModel


def kvm_assign_ioeventfd(kvm: KvmModel, addr: int, length: int, datamatch: int | None,
                         pio: bool) -> Ioeventfd:
    """Models kvm_assign_ioeventfd() / kvm_assign_ioeventfd_idx(): EINVAL for a bad length or zero
    length with DATAMATCH; EEXIST on a collision (ioeventfd_check_collision()); a zero-length MMIO
    ioeventfd is also put on KVM_FAST_MMIO_BUS (a zero-length PIO one is not)."""
    if length not in (0, 1, 2, 4, 8):
        raise KvmIoctlError(errno.EINVAL, f"KVM_IOEVENTFD: bad length {length}")
    if not length and datamatch is not None:
        # kvm_assign_ioeventfd(): "ioeventfd with no length can't be combined with DATAMATCH".
        # A zero-length PIO ioeventfd is accepted (6.18): it goes on the PIO bus only.
        raise KvmIoctlError(errno.EINVAL, "KVM_IOEVENTFD: zero length with DATAMATCH")
    kvm.sim.spend(kvm.costs.ioeventfd)
    p = Ioeventfd(addr, length, datamatch, pio, name=f"ioeventfd@{addr:#x}")
    same_place = kvm.ioeventfds.setdefault((pio, addr), [])
    if any(p.collides_with(q) for q in same_place):
        raise KvmIoctlError(errno.EEXIST, f"KVM_IOEVENTFD: collides at {addr:#x}")
    bus_idx = KvmBus.KVM_PIO_BUS if pio else KvmBus.KVM_MMIO_BUS
    kvm.kvm_io_bus_register_dev(bus_idx, addr, length, p)
    if not pio and not length:
        kvm.kvm_io_bus_register_dev(KvmBus.KVM_FAST_MMIO_BUS, addr, 0, p)
    same_place.append(p)
    return p


def kvm_deassign_ioeventfd(kvm: KvmModel, addr: int, length: int, datamatch: int | None, pio: bool) -> None:
    """Models kvm_deassign_ioeventfd() / kvm_deassign_ioeventfd_idx(): ENOENT if nothing matches; else
    kvm_io_bus_unregister_dev() from its bus (and from KVM_FAST_MMIO_BUS for a zero-length MMIO one)."""
    kvm.sim.spend(kvm.costs.ioeventfd)
    same_place = kvm.ioeventfds.get((pio, addr), [])
    for p in same_place:
        if (p.length, p.datamatch) == (length, datamatch):
            break
    else:
        raise KvmIoctlError(errno.ENOENT, f"KVM_IOEVENTFD deassign: nothing at {addr:#x}")
    kvm.kvm_io_bus_unregister_dev(KvmBus.KVM_PIO_BUS if pio else KvmBus.KVM_MMIO_BUS, p)
    if not pio and not length:
        kvm.kvm_io_bus_unregister_dev(KvmBus.KVM_FAST_MMIO_BUS, p)
    same_place.remove(p)


def kvm_irqfd_assign(kvm: KvmModel, gsi: int) -> None:
    """Models kvm_irqfd_assign(): EINVAL without an in-kernel irqchip (kvm_arch_irqfd_allowed()); it
    reads the routing under srcu_read_lock(&kvm->irq_srcu) and waits for no grace period."""
    if not kvm.arch.irqchip_in_kernel():
        raise KvmIoctlError(errno.EINVAL, "KVM_IRQFD: needs an in-kernel irqchip")
    kvm.sim.spend(kvm.costs.irqfd)
    kvm.irqfds.append(gsi)


def kvm_irqfd_deassign(kvm: KvmModel, gsi: int) -> None:
    """Models kvm_irqfd_deassign(): a live irqfd's shutdown is queued on irqfd_cleanup_wq, which is
    flushed (one workqueue hop); a deassign that matches nothing returns 0, as the kernel's does."""
    kvm.sim.spend(kvm.costs.irqfd)
    if gsi in kvm.irqfds:
        kvm.irqfds.remove(gsi)
        kvm.sim.spend(kvm.costs.workqueue_hop)  # flush_workqueue(irqfd_cleanup_wq)
