"""An executable model of KVM's io_bus and Tree SRCU, with the kernel variants of the 7d9a0273c459 story.

Modelled on Linux 6.18 / 7.0-rc (kernel/rcu/srcutree.c, kernel/time/timer.c, virt/kvm/kvm_main.c,
virt/kvm/eventfd.c). Each function that models a kernel function keeps the kernel's name and says in its
docstring what it models and what it leaves out. Nothing here touches /dev/kvm.

- :mod:`kernel_model.sim`: discrete-event time: HZ and jiffies, the timer wheel's expiry rule,
  workqueues (immediate and delayed work), completions a blocking caller waits on.
- :mod:`kernel_model.costs`: the durations of the small steps (scans, workqueue hops, wake-ups, ioctl
  bodies), as parameters.
- :mod:`kernel_model.srcutree`: Tree SRCU's grace-period machinery.
- :mod:`kernel_model.kvm_io_bus`: the io buses, in-kernel devices and ioeventfds.
- :mod:`kernel_model.variants`: how ``kvm_io_bus_register_dev`` frees the old bus, and VM teardown.
- :mod:`kernel_model.invariants`: the named violations the model checks on every step.
- :mod:`kernel_model.platforms`: the platforms (an architecture, and what differs between its hosts).
- :mod:`kernel_model.kvm_main`: a VM (virt/kvm/kvm_main.c): buses, memslots, vCPUs, teardown, and the
  VM ioctls, each handing over to the file that does the work in the kernel:
  :mod:`kernel_model.eventfd` (ioeventfds, irqfds), :mod:`kernel_model.coalesced_mmio`,
  :mod:`kernel_model.irqchip` (GSI routing), :mod:`kernel_model.arch.x86` (irqchip, PIT, APIC-access
  page, static key) and :mod:`kernel_model.arch.arm64` (vGIC). :mod:`kernel_model.kvm_host` holds what
  they share.
- :mod:`kernel_model.ops`: one spec per sequence op (arguments, checks, label, the ioctl it issues and
  its inverse from a trace, model step; the teardown issues a close() instead);
  :mod:`kernel_model.kvm_uapi`: the ioctls' argument structs and the one printer of each.
- :mod:`kernel_model.sequences`: named ioctl sequences (shared with ``minivmm timing``), sequence files,
  and their one validation.
- :mod:`kernel_model.predict`: latency distributions of a sequence under a variant, HZ and platform.
- :mod:`kernel_model.explain`: which grace period each step waited for, and which earlier step started it.
- :mod:`kernel_model.churn`: VMs created and destroyed back to back, on one thread or several.
"""
