"""What else the kernel does on each platform when a VMM creates an irqchip or a vCPU.

Modelled on Linux 6.18: arch/x86/kvm (vmx/vmx.c, svm/avic.c, lapic.c, x86.c __x86_set_memory_region(),
i8259.c, ioapic.c) and arch/arm64/kvm/vgic (vgic-kvm-device.c, vgic-init.c).
"""

from __future__ import annotations

from typing import NamedTuple

from kernel_model.kvm_io_bus import KvmBus

#: x86 KVM_CREATE_IRQCHIP: kvm_pic_init() registers the master and slave PICs and the ELCR on the PIO
#: bus; kvm_ioapic_init() registers the IOAPIC on the MMIO bus.
X86_IRQCHIP_DEVICES = (
    (KvmBus.KVM_PIO_BUS, 0x20, 2, "pic-master"),
    (KvmBus.KVM_PIO_BUS, 0xA0, 2, "pic-slave"),
    (KvmBus.KVM_PIO_BUS, 0x4D0, 2, "pic-elcr"),
    (KvmBus.KVM_MMIO_BUS, 0xFEC00000, 0x100, "ioapic"),
)
#: arm64: creating the vGIC (KVM_CREATE_DEVICE, or the legacy KVM_CREATE_IRQCHIP) registers nothing.
#: A redistributor registers once both its vCPU and the redistributor region exist (KVM_CREATE_VCPU or
#: KVM_VGIC_V3_ADDR_TYPE_REDIST, whichever comes last), the distributor at the first KVM_RUN; see
#: ``KvmModel.kvm_vgic_addr`` and ``KvmModel.kvm_vgic_map_resources``.
ARM64_IRQCHIP_DEVICES: tuple[tuple[KvmBus, int, int, str], ...] = ()


class Platform(NamedTuple):
    """A platform profile."""

    name: str
    description: str
    #: The first vCPU of a VM with an in-kernel local APIC allocates the APIC-access page through a
    #: private memslot (kvm_alloc_apic_access_page() -> __x86_set_memory_region() ->
    #: kvm_swap_active_memslots() -> synchronize_srcu_expedited()): where x86 pays the transferred
    #: grace period. VMX whenever APIC accesses are virtualized; SVM when AVIC is enabled.
    apic_access_memslot_on_first_vcpu: bool
    irqchip_devices: tuple[tuple[KvmBus, int, int, str], ...]
    #: x86 kvm_arch_vm_ioctl(KVM_CREATE_IRQCHIP): "if (kvm->created_vcpus) goto ... -EINVAL".
    irqchip_before_vcpus: bool = True
    #: kvm_arch_nr_memslot_as_ids(): 2 on x86 for VMs that support SMM (the default VM type), so a
    #: private memslot is created twice, one memslot swap per address space.
    memslot_address_spaces: int = 1
    #: APICv inhibits that, present when the first vCPU is created, mean no APIC-access page: SVM's
    #: avic_init_backing_page() allocates it only while APICv is activated, and an in-kernel PIT in
    #: reinject mode inhibits AVIC (APICV_INHIBIT_REASON_PIT_REINJ); VMX allocates it regardless.
    apicv_inhibits_apic_access_page: frozenset[str] = frozenset()


PLATFORMS: dict[str, Platform] = {
    "vmx": Platform("vmx", "Intel VMX with an in-kernel LAPIC (APIC-access page memslot on vCPU 0, "
                    "in both SMM and non-SMM address spaces)",
                    True, X86_IRQCHIP_DEVICES, memslot_address_spaces=2),
    # 6.18 enables AVIC by default on Zen4 and later when x2AVIC is supported (commit ca2967de5a5b,
    # "KVM: SVM: Enable AVIC by default for Zen4+ if x2AVIC is support", Sean Christopherson and
    # Naveen N Rao, Sep 2025): module parameter avic=auto.
    "svm": Platform("svm", "AMD SVM with AVIC (the 6.18 default on Zen4+ with x2AVIC): APIC-access page "
                    "memslot on vCPU 0 unless APICv is inhibited (e.g. an in-kernel PIT in reinject mode)",
                    True, X86_IRQCHIP_DEVICES, memslot_address_spaces=2,
                    apicv_inhibits_apic_access_page=frozenset({"pit-reinject"})),
    "svm-noavic": Platform("svm-noavic", "AMD SVM without AVIC (before Zen4, no x2AVIC, or avic=0): "
                           "no APIC-access page memslot", False, X86_IRQCHIP_DEVICES,
                           memslot_address_spaces=2),
    "pvm": Platform("pvm", "PVM (kvm_pvm): no APIC-access page memslot; the stall lands in the next memslot update",
                    # The PVM host refuses address space 1 (KVM_CAP_MULTI_ADDRESS_SPACE reads 0 there).
                    False, X86_IRQCHIP_DEVICES, memslot_address_spaces=1),
    "arm64": Platform("arm64", "arm64 with a vGICv3: no private memslot; the redistributors register when "
                      "their region is set (or their vCPU created), the distributor at the first KVM_RUN",
                      False, ARM64_IRQCHIP_DEVICES, irqchip_before_vcpus=False),
}


def default_sequence(platform: str) -> str:
    """The named sequence that shows where the transferred grace period lands on ``platform``, for
    ``minivmm timing --sequence auto``.

    ``firecracker`` where the first vCPU allocates the APIC-access page through a private memslot (the
    stall lands in ``KVM_CREATE_VCPU 0``, as in the published report); ``registrations-first``
    elsewhere, where it lands in the first memslot update after the registrations."""
    return "firecracker" if get_platform(platform).apic_access_memslot_on_first_vcpu else "registrations-first"


def get_platform(name: str) -> Platform:
    """The profile called ``name``; ValueError names the known ones."""
    try:
        return PLATFORMS[name]
    except KeyError:
        raise ValueError(f"unknown platform {name!r} (known: {', '.join(PLATFORMS)})") from None
