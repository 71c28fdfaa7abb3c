"""The kernel variants of the 7d9a0273c459 story: how kvm_io_bus_register_dev() frees the old bus, and
whether kvm_destroy_vm() waits for queued SRCU callbacks before cleanup_srcu_struct().

Sources: Keir Fraser, "[PATCH v4 4/4] KVM: Avoid synchronize_srcu() in kvm_io_bus_register_dev()"
(Sep 9 2025, commit 7d9a0273c459) and Sean Christopherson's review of its v3 of Aug 19 2025 (Sep 8
2025: srcu_barrier() in kvm_destroy_vm(); :data:`SRCU_BARRIER_REVIEW`); Sean Christopherson, "[PATCH]
KVM: Synchronize SRCU on I/O device registration if vCPUs haven't been created" (Feb 13 2026); Sean
Christopherson, "[RFC PATCH 0/3] srcu: KVM: Add, export and use call_srcu_expedited()" (Mar 9 2026).

A new variant is one more :class:`Variant` in ``VARIANTS`` with its ``free_old_bus`` rule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from kernel_model import srcutree

if TYPE_CHECKING:
    from kernel_model.kvm_io_bus import KvmIoBus
    from kernel_model.kvm_main import KvmModel

FreeRule = Callable[["KvmModel", "KvmIoBus"], None]

#: Where kvm_destroy_vm()'s srcu_barrier() comes from: the review of the call_srcu() patch's v3 (posted
#: Aug 19 2025), answering a syzkaller report: "To address the syzkaller splat, KVM needs to call
#: srcu_barrier() prior to freeing the structure."
SRCU_BARRIER_REVIEW = ('Sean Christopherson, "Re: [PATCH v3 4/4] KVM: Avoid synchronize_srcu() in '
                       'kvm_io_bus_register_dev()", Sep 8 2025, https://lore.kernel.org/all/aL8yMum27Qw_Wkkw@google.com')


def free_sync(kvm: KvmModel, old: KvmIoBus) -> None:
    """Before 7d9a0273c459: ``synchronize_srcu_expedited(&kvm->srcu); kfree(bus);``"""
    srcutree.synchronize_srcu_expedited(kvm.srcu)
    kvm.kfree_bus(old)


def free_call_srcu(kvm: KvmModel, old: KvmIoBus) -> None:
    """7d9a0273c459 (v6.18): ``call_srcu(&kvm->srcu, &bus->rcu, __free_bus);``"""
    srcutree.call_srcu(kvm.srcu, lambda: kvm.kfree_bus(old), f"__free_bus(v{old.version})")


def free_created_vcpus(kvm: KvmModel, old: KvmIoBus) -> None:
    """Sean Christopherson, "[PATCH] KVM: Synchronize SRCU on I/O device registration if vCPUs haven't
    been created" (Feb 13 2026): synchronize and free while no vCPU has been created, else defer."""
    if not kvm.created_vcpus:
        free_sync(kvm, old)
    else:
        free_call_srcu(kvm, old)


def free_call_srcu_expedited(kvm: KvmModel, old: KvmIoBus) -> None:
    """Sean Christopherson, "[RFC PATCH 3/3] KVM: Expedite SRCU callbacks when freeing objects during
    I/O bus registration" (Mar 9 2026): ``call_srcu_expedited(&kvm->srcu, &bus->rcu, __free_bus);``"""
    srcutree.call_srcu_expedited(kvm.srcu, lambda: kvm.kfree_bus(old), f"__free_bus(v{old.version})")


class Variant(NamedTuple):
    """A kernel variant."""

    name: str
    description: str
    source: str
    free_old_bus: FreeRule
    #: kvm_destroy_vm() calls srcu_barrier(&kvm->srcu) before cleanup_srcu_struct()
    #: (:data:`SRCU_BARRIER_REVIEW`: a syzkaller report).
    teardown_barrier: bool = True


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("sync", "synchronize_srcu_expedited() + kfree() on every registration",
            "before 7d9a0273c459", free_sync),
    Variant("call_srcu", "free the old bus with call_srcu() (normal grace period)",
            "7d9a0273c459, v6.18", free_call_srcu),
    Variant("created_vcpus", "synchronize while kvm->created_vcpus == 0, else call_srcu()",
            "Sean Christopherson, Feb 13 2026: [PATCH] KVM: Synchronize SRCU on I/O device "
            "registration if vCPUs haven't been created", free_created_vcpus),
    Variant("call_srcu_expedited", "free the old bus with call_srcu_expedited()",
            "Sean Christopherson, Mar 9 2026: [RFC PATCH 0/3] srcu: KVM: Add, export and use "
            "call_srcu_expedited()", free_call_srcu_expedited),
    Variant("call_srcu_no_barrier", "call_srcu() as first posted: no srcu_barrier() in kvm_destroy_vm()",
            "7d9a0273c459 as first posted: the syzkaller report in " + SRCU_BARRIER_REVIEW, free_call_srcu,
            teardown_barrier=False),
)}

#: The variants a comparison runs by default (the last one differs from call_srcu only at teardown).
MAIN_VARIANTS = ("sync", "call_srcu", "created_vcpus", "call_srcu_expedited")


def get_variant(name: str) -> Variant:
    """The variant called ``name``; ValueError names the known ones."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown variant {name!r} (known: {', '.join(VARIANTS)})") from None
