"""Durations of the small steps the model does not derive from first principles.

Every number here is a parameter (override any of them with ``Costs(...)`` or ``Costs()._replace(...)``).
The defaults were measured on the project's x86_64 PVM host (kernel 6.18, HZ=250) with
``minivmm timing --sequence registrations-first --jitter --repeat 300``: the un-stalled ioctls give the
ioctl bodies, and the part of the stalled KVM_SET_USER_MEMORY_REGION above the timer rule's
(2 - phase) jiffies gives the sum of the grace-period steps. They are orders of magnitude, not
constants of nature: a slower or busier host moves them.
"""

from __future__ import annotations

from typing import NamedTuple

from kernel_model.tick import TickEnvironment

US = 1_000
MS = 1_000_000


class Costs(NamedTuple):
    """Step durations in nanoseconds."""

    #: From queue_work() to the work function running on a worker (a workqueue hop).
    workqueue_hop: int = 4 * US
    #: From a timer tick to the timer's callback running (softirq, and waking an idle CPU): the fixed
    #: default. With a host profile (``timer_latency_samples``) the timer itself takes none.
    timer_latency: int = 60 * US
    #: Measured timer-to-waiter latencies (ns, sorted; see kernel_model.profile): when not empty, a wait
    #: that a timer ended draws its waiter's extra latency from them (Completion.wait), and timers fire
    #: on their tick. They stand for everything between the tick and the waiter running under the
    #: host's load beyond the fixed steps the model counts; traced under load, their tick-long tail is
    #: the woken caller waiting for its CPU, while the SRCU kworkers ran within 200 us: drawn at the
    #: timer, it would delay the grace periods that follow as well.
    timer_latency_samples: tuple[int, ...] = ()
    #: Measured wake-up latencies (ns, sorted) of a wait that no timer ended (an expedited grace period
    #: on an idle srcu_struct: the SRCU kworker and then the waiter getting a CPU, beyond the fixed
    #: steps). When not empty, such a wait draws its extra latency from them; a wait that a timer ended
    #: draws from ``timer_latency_samples`` instead.
    wakeup_latency_samples: tuple[int, ...] = ()
    #: How long the calibration's caller ran before the waits ``wakeup_latency_samples`` come from (its
    #: KVM_CREATE_VM, mostly): a waiter that ran ``ran`` ns less before its wait is switched in late
    #: (their draws over sim.SWITCHED_IN_LATE_NS) ``ran / wakeup_latency_run_ns`` times as often; one
    #: that ran longer, as often as measured (not more: over four loaded differential sets, the
    #: KVM_CREATE_IRQCHIP right after a longer KVM_CREATE_VM was late as often as the calibration's
    #: idle memslot, not more). 0: as often as measured, whatever the run.
    wakeup_latency_run_ns: int = 0
    #: (run_ns, share): with a host profile, the extra share of timer-ended waits whose woken caller is
    #: switched in only at its CPU's next tick, when it ran ``run_ns`` before it slept; in proportion
    #: to a shorter or longer run. A busy task on the caller's CPU is not preempted by a waker that
    #: used much CPU before its sleep (the scheduler weighs it), and ``timer_latency_samples`` are
    #: measured right after a registration, the short side. (0, 0.0): never.
    waiter_tick_wait: tuple[int, float] = (0, 0.0)
    #: What the host's other tasks do to the CPUs' ticks (which decides when a timer fires a tick
    #: late, see kernel_model.tick): a quiet host by default, measured by a host profile.
    cpus: TickEnvironment = TickEnvironment()
    #: One srcu_readers_active_idx_check() over every CPU (with its smp_mb()s).
    reader_scan: int = 1 * US
    #: srcu_gp_end()'s bookkeeping.
    gp_end: int = 1 * US
    #: From complete() to the waiter running again (a wake-up and a context switch).
    wakeup: int = 8 * US
    #: Invoking one SRCU callback (kfree() of an old bus).
    callback: int = 1 * US
    #: kvm_io_bus_register_dev()'s copy-and-publish. ~1 us for a whole KVM_IOEVENTFD here; Nikita
    #: reports "at most 16 us, but most commonly ~6 us" on his host.
    register_dev: int = 600
    #: kvm_io_bus_unregister_dev()'s copy-and-publish, without its synchronize.
    unregister_dev: int = 600

    # --- The bodies of the ioctls, without any SRCU wait (medians on the PVM host) ------------------
    create_vm: int = 250 * US
    set_user_memory_region: int = 65 * US   # a 128 MiB slot; ~85 us with its uncontended synchronize
    ioeventfd: int = 500
    create_irqchip: int = 8 * US    # ~28 us with its irq_srcu synchronize (kvm_set_irq_routing())
    create_vcpu: int = 50 * US
    #: static_branch_inc() of a key at 0: the jump label's code patching (text_poke with IPIs to every
    #: CPU). KVM_CREATE_VCPU pays it for kvm_has_noapic_vcpu (see arch.x86.X86.kvm_arch_vcpu_create).
    #: The first vCPU without an in-kernel irqchip (median 189 us) less ``create_vcpu`` (50 us, the median of
    #: every other vCPU: 40-57 us), from `minivmm timing -r 300` on `create_vm; vcpu; vcpu` and on
    #: `create_vm; irqchip; vcpu; vcpu`.
    static_key_enable: int = 140 * US
    kvm_run_entry: int = 130 * US
    #: kvm_destroy_vm()'s own work, without its SRCU waits (its mmu-notifier grace period, ~20 us when
    #: idle, and the srcu_barrier()); with them ~200 us here when nothing is pending.
    destroy_vm: int = 180 * US
    # The set-up ioctls a real VMM adds (QEMU, Firecracker); bodies without SRCU waits.
    register_coalesced_mmio: int = 4 * US  # kzalloc and the zone check; plus its bus registration
    create_pit2: int = 40 * US      # kthread worker creation dominates; plus its bus registrations
    irqfd: int = 2 * US
    set_gsi_routing: int = 5 * US   # the table rebuild; plus its kvm->irq_srcu grace period
    enable_cap: int = 1 * US
    set_tss_addr: int = 1 * US
