"""The platforms the model runs on: an architecture and what else its KVM does when a VMM creates an
irqchip or a vCPU.

Modelled on Linux 6.18: arch/x86/kvm (vmx/vmx.c, svm/avic.c, lapic.c, x86.c __x86_set_memory_region())
and arch/arm64/kvm/vgic. What each architecture's KVM does is in :mod:`kernel_model.arch`; a platform
picks one with ``arch`` and adds what differs between hosts of the same architecture.
"""

from __future__ import annotations

import enum
from typing import NamedTuple


class Arch(enum.Enum):
    """The architecture of a platform: which ``arch/*/kvm`` the model runs (:mod:`kernel_model.arch`)."""

    X86 = "x86"
    ARM64 = "arm64"


class Platform(NamedTuple):
    """A platform profile."""

    name: str
    description: str
    arch: Arch
    #: The first vCPU of a VM with an in-kernel local APIC allocates the APIC-access page through a
    #: private memslot (kvm_alloc_apic_access_page() -> __x86_set_memory_region() ->
    #: kvm_swap_active_memslots() -> synchronize_srcu_expedited()): where x86 pays the transferred
    #: grace period. VMX whenever APIC accesses are virtualized; SVM when AVIC is enabled.
    apic_access_memslot_on_first_vcpu: bool = False
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
                    Arch.X86, apic_access_memslot_on_first_vcpu=True, memslot_address_spaces=2),
    # 6.18 enables AVIC by default on Zen4 and later when x2AVIC is supported (commit ca2967de5a5b,
    # "KVM: SVM: Enable AVIC by default for Zen4+ if x2AVIC is support", Sean Christopherson and
    # Naveen N Rao, Sep 2025): module parameter avic=auto.
    "svm": Platform("svm", "AMD SVM with AVIC (the 6.18 default on Zen4+ with x2AVIC): APIC-access page "
                    "memslot on vCPU 0 unless APICv is inhibited (e.g. an in-kernel PIT in reinject mode)",
                    Arch.X86, apic_access_memslot_on_first_vcpu=True, memslot_address_spaces=2,
                    apicv_inhibits_apic_access_page=frozenset({"pit-reinject"})),
    "svm-noavic": Platform("svm-noavic", "AMD SVM without AVIC (before Zen4, no x2AVIC, or avic=0): "
                           "no APIC-access page memslot", Arch.X86, memslot_address_spaces=2),
    "pvm": Platform("pvm", "PVM (kvm_pvm): no APIC-access page memslot; the stall lands in the next memslot update",
                    # The PVM host refuses address space 1 (KVM_CAP_MULTI_ADDRESS_SPACE reads 0 there).
                    Arch.X86, memslot_address_spaces=1),
    "arm64": Platform("arm64", "arm64 with a vGICv3: no private memslot; the redistributors register when "
                      "their region is set (or their vCPU created), the distributor at the first KVM_RUN",
                      Arch.ARM64),
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
