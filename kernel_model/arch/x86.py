"""x86 KVM (arch/x86/kvm, v6.18): the in-kernel irqchip (i8259.c, ioapic.c), the PIT (i8254.c), the
APIC-access page (vmx/vmx.c, svm/avic.c, x86.c __x86_set_memory_region()), the ``kvm_has_noapic_vcpu``
static key (lapic.c), the split irqchip and the TSS address (x86.c).

Simplified: the devices' own state (PIC and IOAPIC registers, the PIT's kthread worker, irq source ids,
ack and mask notifiers) is in their fixed costs; an ioctl's own work is one fixed cost (``Costs``).
"""

from __future__ import annotations

import enum
import errno
from typing import TYPE_CHECKING

from kernel_model import irqchip
from kernel_model.kvm_host import KVM_CAP_SPLIT_IRQCHIP, PAGE_SIZE, KvmArch, KvmIoctlError, Memslot
from kernel_model.kvm_io_bus import InKernelDevice, KvmBus

if TYPE_CHECKING:
    from kernel_model.kvm_main import KvmModel

#: KVM_CREATE_IRQCHIP: kvm_pic_init() registers the master and slave PICs and the ELCR on the PIO bus;
#: kvm_ioapic_init() registers the IOAPIC on the MMIO bus.
X86_IRQCHIP_DEVICES = (
    (KvmBus.KVM_PIO_BUS, 0x20, 2, "pic-master"),
    (KvmBus.KVM_PIO_BUS, 0xA0, 2, "pic-slave"),
    (KvmBus.KVM_PIO_BUS, 0x4D0, 2, "pic-elcr"),
    (KvmBus.KVM_MMIO_BUS, 0xFEC00000, 0x100, "ioapic"),
)
#: irq_comm.c default_routing[]: GSIs 0-15 on the PIC and the IOAPIC, 16-23 on the IOAPIC.
X86_DEFAULT_IRQ_ROUTES = 40
#: arch/x86/include/asm/kvm_host.h: the private memslot of the APIC-access page, and its address.
APIC_ACCESS_PAGE_PRIVATE_MEMSLOT = 0x10000 + 1
APIC_DEFAULT_PHYS_BASE = 0xFEE00000
#: ioapic.h: KVM_CAP_SPLIT_IRQCHIP's args[0] (reserved IOAPIC pins) may not exceed this.
MAX_NR_RESERVED_IOAPIC_PINS = 48
#: i8254.h: the PIT's ports, and the speaker port KVM_PIT_SPEAKER_DUMMY adds.
KVM_PIT_BASE_ADDRESS = 0x40
KVM_PIT_MEM_LENGTH = 4
KVM_SPEAKER_BASE_ADDRESS = 0x61


class IrqchipMode(enum.Enum):
    """``enum kvm_irqchip_mode`` (arch/x86/include/asm/kvm_host.h)."""

    KVM_IRQCHIP_NONE = 0
    #: KVM_CREATE_IRQCHIP: PIC, IOAPIC and local APICs in the kernel.
    KVM_IRQCHIP_KERNEL = 1
    #: KVM_CAP_SPLIT_IRQCHIP: only the local APICs in the kernel.
    KVM_IRQCHIP_SPLIT = 2


class X86(KvmArch):
    """``struct kvm_arch`` on x86 (the parts modelled) and its ``kvm_arch_*()`` hooks."""

    #: arch/x86/include/asm/kvm_host.h: the TSS, identity-map and APIC-access pages' private memslots.
    internal_mem_slots = 3

    def __init__(self, kvm: KvmModel) -> None:
        super().__init__(kvm)
        self.irqchip_mode = IrqchipMode.KVM_IRQCHIP_NONE
        #: kvm->arch.vpit: an in-kernel PIT exists.
        self.vpit = False
        #: kvm->arch.apicv_inhibit_reasons, by name (e.g. "pit-reinject").
        self.apicv_inhibit_reasons: set[str] = set()
        #: kvm->arch.apic_access_memslot_enabled: the APIC-access page's private memslot is installed.
        self.apic_access_memslot_enabled = False

    def irqchip_in_kernel(self) -> bool:
        """irqchip_in_kernel(): KVM_CREATE_IRQCHIP or KVM_CAP_SPLIT_IRQCHIP (the local APICs are in the
        kernel either way)."""
        return self.irqchip_mode is not IrqchipMode.KVM_IRQCHIP_NONE

    def create_irqchip(self) -> None:
        """KVM_CREATE_IRQCHIP, models kvm_arch_vm_ioctl()'s case (x86.c, v6.18): EEXIST when an irqchip
        (or a split one) exists, EINVAL once vCPUs exist ("if (kvm->created_vcpus) goto ..."); then
        kvm_pic_init() and kvm_ioapic_init() register their devices (``X86_IRQCHIP_DEVICES``: one
        kvm_io_bus_register_dev() each, the old bus freed by the variant's rule), and
        kvm_setup_default_irq_routing() installs the default table: an expedited grace period of
        kvm->irq_srcu, milliseconds on a busy host."""
        kvm = self.kvm
        if self.irqchip_in_kernel():
            raise KvmIoctlError(errno.EEXIST, "KVM_CREATE_IRQCHIP: irqchip already exists")
        if kvm.created_vcpus:
            raise KvmIoctlError(errno.EINVAL, "KVM_CREATE_IRQCHIP: vCPUs already exist")
        kvm.sim.spend(kvm.costs.create_irqchip)
        for bus_idx, addr, length, name in X86_IRQCHIP_DEVICES:
            kvm.kvm_io_bus_register_dev(bus_idx, addr, length, InKernelDevice(name))
        irqchip.kvm_set_irq_routing(kvm, X86_DEFAULT_IRQ_ROUTES)
        self.irqchip_mode = IrqchipMode.KVM_IRQCHIP_KERNEL

    def kvm_arch_vcpu_create(self, first: bool) -> None:
        """kvm_arch_vcpu_create() (x86.c, v6.18), the parts that wait or patch code:

        - Without an in-kernel LAPIC, kvm_create_lapic() (lapic.c) does
          static_branch_inc(&kvm_has_noapic_vcpu): the first such vCPU on the host takes the key from 0
          to 1, which patches the kernel's code (``Costs.static_key_enable``); later ones only count.
          The key is global: the model assumes no other VM on the host holds an LAPIC-less vCPU, as in
          the runs of minivmm timing (each VM is closed, and the key dropped, before the next).
        - On VMX (and SVM with AVIC) with an in-kernel LAPIC, the first vCPU installs the APIC-access
          page (:meth:`kvm_alloc_apic_access_page`), unless (SVM) an APICv inhibit present now skips it.
        """
        kvm, platform = self.kvm, self.kvm.platform
        if first and not self.irqchip_in_kernel():
            kvm.sim.spend(kvm.costs.static_key_enable)
        if (platform.apic_access_memslot_on_first_vcpu and self.irqchip_in_kernel()
                and not self.apic_access_memslot_enabled
                and not self.apicv_inhibit_reasons & platform.apicv_inhibits_apic_access_page):
            self.kvm_alloc_apic_access_page()

    def kvm_arch_vcpu_run_pid_change(self) -> None:
        """A vCPU's first KVM_RUN: nothing on x86 that the model keeps."""

    def kvm_alloc_apic_access_page(self) -> None:
        """Models kvm_alloc_apic_access_page() (lapic.c) -> __x86_set_memory_region() (x86.c, v6.18):
        the private slot is created in every memslot address space (two when the VM supports SMM), one
        memslot swap (``synchronize_srcu_expedited(&kvm->srcu)``) each: where x86 pays a transferred
        grace period."""
        kvm = self.kvm
        for as_id in range(kvm.platform.memslot_address_spaces):
            kvm.memslots[(as_id, APIC_ACCESS_PAGE_PRIVATE_MEMSLOT)] = Memslot(APIC_DEFAULT_PHYS_BASE, PAGE_SIZE)
            kvm.kvm_swap_active_memslots()
        self.apic_access_memslot_enabled = True

    def kvm_set_apicv_inhibit(self, reason: str) -> None:
        """Models kvm_set_apicv_inhibit() (x86.c): e.g. ``"pit-reinject"`` when an in-kernel PIT is
        created in reinject mode (kvm_pit_set_reinject())."""
        self.apicv_inhibit_reasons.add(reason)

    def kvm_create_pit(self, speaker_dummy: bool) -> None:
        """KVM_CREATE_PIT2, models kvm_arch_vm_ioctl()'s create_pit and kvm_create_pit() (i8254.c,
        v6.18): EEXIST for a second PIT, ENOENT without the in-kernel PIC; then the PIT's ports
        0x40-0x43 are registered on KVM_PIO_BUS, and with KVM_PIT_SPEAKER_DUMMY the speaker port 0x61
        too: each a kvm_io_bus_register_dev(), freed by the variant's rule. The PIT starts in reinject
        mode: kvm_pit_set_reinject() sets the APICV_INHIBIT_REASON_PIT_REINJ inhibit (which on SVM with
        AVIC keeps the first vCPU from installing the APIC-access page)."""
        kvm = self.kvm
        if self.vpit:
            raise KvmIoctlError(errno.EEXIST, "KVM_CREATE_PIT2: the PIT already exists")
        if self.irqchip_mode is not IrqchipMode.KVM_IRQCHIP_KERNEL:
            raise KvmIoctlError(errno.ENOENT, "KVM_CREATE_PIT2: needs the in-kernel PIC (KVM_CREATE_IRQCHIP)")
        kvm.sim.spend(kvm.costs.create_pit2)
        self.kvm_set_apicv_inhibit("pit-reinject")
        kvm.kvm_io_bus_register_dev(KvmBus.KVM_PIO_BUS, KVM_PIT_BASE_ADDRESS, KVM_PIT_MEM_LENGTH,
                                    InKernelDevice("pit"))
        if speaker_dummy:
            kvm.kvm_io_bus_register_dev(KvmBus.KVM_PIO_BUS, KVM_SPEAKER_BASE_ADDRESS, 4,
                                        InKernelDevice("pit-speaker"))
        self.vpit = True

    def kvm_vm_ioctl_enable_cap(self, cap: int, arg0: int) -> None:
        """Models kvm_vm_ioctl_enable_cap() (x86.c, v6.18) for KVM_CAP_SPLIT_IRQCHIP: EINVAL for more
        than MAX_NR_RESERVED_IOAPIC_PINS pins, EEXIST once an irqchip or a vCPU exists, then
        kvm_setup_empty_irq_routing() (an empty kvm_set_irq_routing(): one expedited grace period of
        kvm->irq_srcu) and the local APICs are in the kernel (so on VMX the first vCPU installs the
        APIC-access page). Any other capability is not modelled."""
        if cap != KVM_CAP_SPLIT_IRQCHIP:
            return
        if arg0 > MAX_NR_RESERVED_IOAPIC_PINS:
            raise KvmIoctlError(errno.EINVAL, f"KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP): more than "
                                f"{MAX_NR_RESERVED_IOAPIC_PINS} reserved IOAPIC pins")
        if self.irqchip_in_kernel() or self.kvm.created_vcpus:
            raise KvmIoctlError(errno.EEXIST, "KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP): an irqchip or a vCPU "
                                "already exists")
        irqchip.kvm_set_irq_routing(self.kvm, 0)
        self.irqchip_mode = IrqchipMode.KVM_IRQCHIP_SPLIT

    def kvm_vm_ioctl_set_tss_addr(self, addr: int) -> None:
        """KVM_SET_TSS_ADDR, models kvm_vm_ioctl_set_tss_addr() -> vmx_set_tss_addr() (v6.18), which
        returns 0 at once when unrestricted guest is enabled (as on SVM and PVM). Simplified: VMX without
        unrestricted guest, where it installs a private TSS memslot (one memslot swap), is not modelled."""
        self.kvm.sim.spend(self.kvm.costs.set_tss_addr)
