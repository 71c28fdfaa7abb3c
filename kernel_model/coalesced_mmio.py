"""Coalesced MMIO zones: virt/kvm/coalesced_mmio.c, v6.18.

Simplified: the ring page and the zone's own checks are in the fixed cost.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kernel_model.kvm_io_bus import InKernelDevice, KvmBus

if TYPE_CHECKING:
    from kernel_model.kvm_main import KvmModel


def kvm_vm_ioctl_register_coalesced_mmio(kvm: KvmModel, addr: int, size: int, pio: bool) -> None:
    """Models kvm_vm_ioctl_register_coalesced_mmio(): one device per zone, registered under slots_lock
    with kvm_io_bus_register_dev() on KVM_PIO_BUS (``pio``) or KVM_MMIO_BUS, the old bus freed by the
    variant's rule. So under call_srcu it starts a normal grace period like any other registration:
    QEMU issues it just before its read-only BIOS memslot, which then waits for that grace period."""
    kvm.sim.spend(kvm.costs.register_coalesced_mmio)
    bus = KvmBus.KVM_PIO_BUS if pio else KvmBus.KVM_MMIO_BUS
    kvm.kvm_io_bus_register_dev(bus, addr, size, InKernelDevice("coalesced-mmio"))
