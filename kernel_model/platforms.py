"""What else the kernel does on each platform when a VMM creates an irqchip or a vCPU.

Facts from ../shared/FACTS.md and arch/x86/kvm (vmx.c, lapic.c, i8259.c, ioapic.c), arch/arm64/kvm.
"""

from __future__ import annotations

from dataclasses import dataclass

from kernel_model.kvm_io_bus import KvmBus

#: x86 KVM_CREATE_IRQCHIP: kvm_pic_init() registers the master and slave PICs and the ELCR on the PIO
#: bus; kvm_ioapic_init() registers the IOAPIC on the MMIO bus.
X86_IRQCHIP_DEVICES = (
    (KvmBus.KVM_PIO_BUS, 0x20, 2, "pic-master"),
    (KvmBus.KVM_PIO_BUS, 0xA0, 2, "pic-slave"),
    (KvmBus.KVM_PIO_BUS, 0x4D0, 2, "pic-elcr"),
    (KvmBus.KVM_MMIO_BUS, 0xFEC00000, 0x100, "ioapic"),
)
#: arm64: the vGIC distributor's MMIO frame. Simplified: the real registration happens through
#: KVM_CREATE_DEVICE and vgic init (first KVM_RUN), with a redistributor frame per vCPU.
ARM64_IRQCHIP_DEVICES = ((KvmBus.KVM_MMIO_BUS, 0x08000000, 0x10000, "vgic-dist"),)


@dataclass(frozen=True)
class Platform:
    """A platform profile."""

    name: str
    description: str
    #: The first vCPU of a VM with an in-kernel local APIC allocates the APIC-access page through a
    #: private memslot (kvm_alloc_apic_access_page() -> kvm_swap_active_memslots() ->
    #: synchronize_srcu_expedited()): this is where x86 VMX pays the transferred grace period.
    apic_access_memslot_on_first_vcpu: bool
    irqchip_devices: tuple[tuple[KvmBus, int, int, str], ...]
    #: x86 kvm_arch_vm_ioctl(KVM_CREATE_IRQCHIP): "if (kvm->created_vcpus) goto ... -EINVAL".
    irqchip_before_vcpus: bool = True


PLATFORMS: dict[str, Platform] = {
    "vmx": Platform("vmx", "Intel VMX with an in-kernel LAPIC (APIC-access page memslot on vCPU 0)",
                    True, X86_IRQCHIP_DEVICES),
    "svm": Platform("svm", "AMD SVM, AVIC off (the default): no APIC-access page memslot",
                    False, X86_IRQCHIP_DEVICES),
    "pvm": Platform("pvm", "PVM (kvm_pvm): no APIC-access page memslot; the stall lands in the next memslot update",
                    False, X86_IRQCHIP_DEVICES),
    "arm64": Platform("arm64", "arm64 with a vGIC: no private memslot; vCPUs exist before devices register",
                      False, ARM64_IRQCHIP_DEVICES, irqchip_before_vcpus=False),
}


def get_platform(name: str) -> Platform:
    """The profile called ``name``; ValueError names the known ones."""
    try:
        return PLATFORMS[name]
    except KeyError:
        raise ValueError(f"unknown platform {name!r} (known: {', '.join(PLATFORMS)})") from None
