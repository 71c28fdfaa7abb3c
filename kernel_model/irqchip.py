"""GSI routing: virt/kvm/irqchip.c, v6.18.

Simplified: the table itself (its entries, the irqchip pins and MSI routes) is only counted.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from kernel_model import srcutree
from kernel_model.kvm_host import KVM_MAX_IRQ_ROUTES, KvmIoctlError

if TYPE_CHECKING:
    from kernel_model.kvm_main import KvmModel


def kvm_set_irq_routing(kvm: KvmModel, nr: int) -> None:
    """Models kvm_set_irq_routing() (virt/kvm/irqchip.c, v6.18): build the new table, publish it
    under kvm->irq_lock, then ``synchronize_srcu_expedited(&kvm->irq_srcu)`` before freeing the old
    one. kvm->irq_srcu is not kvm->srcu: a grace period pending on kvm->srcu does not delay it."""
    if nr > KVM_MAX_IRQ_ROUTES:
        raise KvmIoctlError(errno.EINVAL, f"KVM_SET_GSI_ROUTING: more than {KVM_MAX_IRQ_ROUTES} routes")
    kvm.sim.spend(kvm.costs.set_gsi_routing)
    kvm.irq_routes = nr
    srcutree.synchronize_srcu_expedited(kvm.irq_srcu)
