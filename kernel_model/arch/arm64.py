"""arm64 KVM's vGICv3 (arch/arm64/kvm/vgic: vgic-kvm-device.c, vgic-init.c, vgic-mmio-v3.c, v6.x): when
its frames become devices on the MMIO bus.

- Creating the vGIC (KVM_CREATE_DEVICE, or the legacy KVM_CREATE_IRQCHIP) registers nothing.
- A vCPU's redistributor is registered once both the vCPU and the redistributor region exist: at
  KVM_CREATE_VCPU if the region is set, otherwise when userspace sets it
  (:meth:`Arm64.kvm_vgic_addr`).
- The distributor is registered at the VM's first KVM_RUN (:meth:`Arm64.kvm_vgic_map_resources`).

Simplified: a vGICv3 with one legacy redistributor region (no KVM_VGIC_V3_ADDR_TYPE_REDIST_REGION); no
alignment or overlap checks; the device attributes are called directly (there is no device fd).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from kernel_model import irqchip
from kernel_model.kvm_host import KVM_CAP_SPLIT_IRQCHIP, KvmArch, KvmIoctlError, x86_only
from kernel_model.kvm_io_bus import InKernelDevice, KvmBus

if TYPE_CHECKING:
    from kernel_model.kvm_main import KvmModel

#: vGICv3 frames (QEMU virt's bases; sizes from arch/arm64/include/uapi/asm/kvm.h:
#: KVM_VGIC_V3_DIST_SIZE, KVM_VGIC_V3_REDIST_SIZE = RD_base + SGI_base frames).
ARM64_VGIC_DIST_BASE = 0x08000000
ARM64_VGIC_DIST_SIZE = 0x10000
ARM64_VGIC_REDIST_BASE = 0x080A0000
ARM64_VGIC_REDIST_SIZE = 0x20000
#: vgic_init()'s default SPI count when userspace set none (VGIC_NR_IRQS_LEGACY - VGIC_NR_PRIVATE_IRQS).
ARM64_VGIC_DEFAULT_SPIS = 224


class Arm64(KvmArch):
    """``struct kvm_arch`` on arm64 (its ``struct vgic_dist``, the parts modelled) and its
    ``kvm_arch_*()`` hooks."""

    def __init__(self, kvm: KvmModel) -> None:
        super().__init__(kvm)
        #: The vGIC device exists (KVM_CREATE_DEVICE / KVM_CREATE_IRQCHIP).
        self.vgic_created = False
        #: Its bases, None until KVM_DEV_ARM_VGIC_GRP_ADDR sets them.
        self.vgic_dist_base: int | None = None
        self.vgic_redist_base: int | None = None
        #: How many redistributors are registered.
        self.vgic_redists = 0
        #: vgic_initialized(): KVM_DEV_ARM_VGIC_CTRL_INIT done.
        self.vgic_initialized = False
        #: vgic_ready(): the distributor is registered.
        self.vgic_ready = False

    def irqchip_in_kernel(self) -> bool:
        """irqchip_in_kernel(): the vGIC exists."""
        return self.vgic_created

    def create_irqchip(self) -> None:
        """KVM_CREATE_IRQCHIP, models kvm_vgic_create() (vgic-init.c): EEXIST for a second vGIC; vCPUs
        may exist already. It registers nothing on a bus."""
        if self.vgic_created:
            raise KvmIoctlError(errno.EEXIST, "KVM_CREATE_IRQCHIP: irqchip already exists")
        self.kvm.sim.spend(self.kvm.costs.create_irqchip)
        self.vgic_created = True

    def kvm_arch_vcpu_create(self, first: bool) -> None:
        """kvm_arch_vcpu_create() -> kvm_vgic_vcpu_init(): with a vGIC, the vCPU's redistributor is
        registered if the region is set (:meth:`vgic_register_redist_iodev`)."""
        if self.vgic_created:
            self.vgic_register_redist_iodev()

    def kvm_arch_vcpu_run_pid_change(self) -> None:
        """kvm_arch_vcpu_run_pid_change(), at a vCPU's first KVM_RUN: :meth:`kvm_vgic_map_resources`."""
        self.kvm_vgic_map_resources()

    def kvm_vm_ioctl_enable_cap(self, cap: int, arg0: int) -> None:
        """KVM_ENABLE_CAP: the split irqchip is x86's; any other capability is not modelled."""
        if cap == KVM_CAP_SPLIT_IRQCHIP:
            raise x86_only("KVM_CAP_SPLIT_IRQCHIP")

    def _vgic_device(self, what: str) -> None:
        """A vGIC device attribute: ENODEV unless the VM's vGIC exists (EBADF once it is destroyed)."""
        self.kvm.alive()
        if not self.vgic_created:
            raise KvmIoctlError(errno.ENODEV, f"{what}: no vGIC on this VM")

    def kvm_vgic_addr(self, addr_type: str, addr: int) -> None:
        """KVM_SET_DEVICE_ATTR(KVM_DEV_ARM_VGIC_GRP_ADDR) on a vGICv3, models kvm_vgic_addr()
        (vgic-kvm-device.c) and vgic_v3_set_redist_base() (vgic-mmio-v3.c, v6.x). ``"dist"``
        (KVM_VGIC_V3_ADDR_TYPE_DIST) only records the distributor's base: the distributor is registered
        at the first KVM_RUN (:meth:`kvm_vgic_map_resources`). ``"redist"``
        (KVM_VGIC_V3_ADDR_TYPE_REDIST) records the redistributor region and then registers the
        redistributor of every vCPU that already exists (vgic_register_all_redist_iodevs()): one
        kvm_io_bus_register_dev() of KVM_VGIC_V3_REDIST_SIZE each, freed by the variant's rule. A vCPU
        created later registers its own (:meth:`kvm_arch_vcpu_create`). EEXIST when a base is set
        twice."""
        self._vgic_device("KVM_DEV_ARM_VGIC_GRP_ADDR")
        if addr_type not in ("dist", "redist"):
            raise ValueError(f"vGIC address type {addr_type!r}: dist or redist")
        current = self.vgic_dist_base if addr_type == "dist" else self.vgic_redist_base
        if current is not None:
            raise KvmIoctlError(errno.EEXIST, f"KVM_VGIC_V3_ADDR_TYPE_{addr_type.upper()}: already set")
        if addr_type == "dist":
            self.vgic_dist_base = addr
            return
        self.vgic_redist_base = addr
        for _ in range(self.kvm.created_vcpus):
            self.vgic_register_redist_iodev()
        self.kvm.registrations_returned()

    def vgic_register_redist_iodev(self) -> None:
        """Models vgic_register_redist_iodev() (vgic-mmio-v3.c): the next free redistributor of the
        region, one range covering its RD_base and SGI_base frames. Nothing before the region is set."""
        if self.vgic_redist_base is None:
            return  # "we will come back to this function for all VCPUs when the base address is set"
        index = self.vgic_redists
        self.kvm.kvm_io_bus_register_dev(KvmBus.KVM_MMIO_BUS, self.vgic_redist_base + index * ARM64_VGIC_REDIST_SIZE,
                                         ARM64_VGIC_REDIST_SIZE, InKernelDevice(f"vgic-redist{index}"))
        self.vgic_redists += 1

    def vgic_init(self) -> None:
        """KVM_SET_DEVICE_ATTR(KVM_DEV_ARM_VGIC_GRP_CTRL, KVM_DEV_ARM_VGIC_CTRL_INIT) on a vGICv3, models
        vgic_init() (vgic-init.c, v6.x): it sizes the distributor's SPIs and installs the default GSI
        routing (kvm_vgic_setup_default_irq_routing()), and registers nothing on a bus: the
        redistributors register when both they and their region exist, the distributor at the first
        KVM_RUN. A second call does nothing."""
        self._vgic_device("KVM_DEV_ARM_VGIC_CTRL_INIT")
        if self.vgic_initialized:
            return
        irqchip.kvm_set_irq_routing(self.kvm, ARM64_VGIC_DEFAULT_SPIS)
        self.vgic_initialized = True

    def kvm_vgic_map_resources(self) -> None:
        """Models kvm_vgic_map_resources() (vgic-init.c, v6.x), which the first KVM_RUN of any vCPU
        calls: for a vGICv3 ENXIO until both bases are set, EBUSY until KVM_DEV_ARM_VGIC_CTRL_INIT, then
        the distributor is registered on the MMIO bus (vgic_register_dist_iodev(),
        KVM_VGIC_V3_DIST_SIZE), freed by the variant's rule. Once ready, later calls do nothing."""
        if self.vgic_ready or not self.vgic_created:
            return
        if self.vgic_dist_base is None or self.vgic_redist_base is None:
            raise KvmIoctlError(errno.ENXIO, "KVM_RUN: the vGIC's distributor and redistributor bases are not set")
        if not self.vgic_initialized:
            raise KvmIoctlError(errno.EBUSY, "KVM_RUN: the vGICv3 was not initialized (KVM_DEV_ARM_VGIC_CTRL_INIT)")
        self.vgic_ready = True
        self.kvm.kvm_io_bus_register_dev(KvmBus.KVM_MMIO_BUS, self.vgic_dist_base, ARM64_VGIC_DIST_SIZE,
                                         InKernelDevice("vgic-dist"))
