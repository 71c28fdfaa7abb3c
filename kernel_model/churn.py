"""Churn: VMs created, set up and destroyed back to back, on one thread or on several at once; how many
such cycles a second each kernel variant allows.

Back to back, the tick phase is not random: each cycle starts where the last one ended, so a cycle
whose teardown waits for SRCU callbacks (they run on a timer tick) starts the next one just after a
tick, and the chain locks to the tick (`minivmm timing --no-jitter` shows the same lock). So a cycle is
simulated at the phase the previous one left, one model VM per cycle (:func:`predict.simulate_once`),
with the gaps and the time between cycles that the host measured.

Threads: each thread's VMs are its own (their kvm->srcu, their buses); what the threads share in the
kernel, and what the model couples them through, is mm/mmu_notifier.c's one srcu_struct, which every
teardown synchronizes (:meth:`kernel_model.kvm_main.KvmModel.mmu_notifier_unregister`). Idle, that
grace period is expedited; when another thread's teardown has just used it, it is a normal one that
ends on the timer tick. The host-wide struct runs in a simulation of its own (srcutree's state machine,
its timer and callbacks as for any srcu_struct), fed the teardowns of every thread in time order: each
request is srcutree's __synchronize_srcu() (a callback that completes the waiter, normal or expedited as
srcu_should_expedite() decides), made without blocking so that the threads' requests interleave. A
cycle's own simulation saw that grace period idle; where the shared one takes longer, the rest of the
teardown moves later by the difference, except for what the teardown's srcu_barrier() was waiting for
anyway (its callbacks run on their own timer, whenever the barrier starts).

Left out: the threads' contention for CPUs (the gaps and the time between cycles are the measured ones,
which carry it), and any other host-wide state (kvm_lock, the static keys).
"""

from __future__ import annotations

import random
from collections.abc import Sequence as Sequence_
from typing import NamedTuple

from kernel_model import srcutree
from kernel_model.costs import Costs
from kernel_model.predict import simulate_once
from kernel_model.sequences import Sequence
from kernel_model.sim import Sim


class ChurnPrediction(NamedTuple):
    """One variant's churn: every cycle's duration (ns) of every thread, and the time from the first
    cycle's start to the last one's end."""

    variant: str
    threads: int
    cycle_ns: list[int]
    wall_ns: int

    @property
    def rate(self) -> float:
        """Cycles per second, every thread together."""
        return len(self.cycle_ns) / (self.wall_ns / 1e9) if self.wall_ns > 0 else 0.0


class _Cycle(NamedTuple):
    """One cycle simulated on its own: when it ends, and where its teardown's mmu-notifier grace period
    was (ns from the cycle's start), and how much of what follows it the srcu_barrier() waited."""

    end_ns: int
    mmu_start_ns: int | None
    mmu_end_ns: int
    barrier_wait_ns: int


def _own_cycle(sequence: Sequence, variant: str, hz: int, platform: str, start_ns: int, rng: random.Random,
               costs: Costs | None) -> _Cycle:
    tick = 1_000_000_000 // hz
    _, kvm = simulate_once(sequence, variant, hz, platform, (start_ns % tick) / tick, rng, costs)
    end = kvm.sim.now
    waits = kvm.mmu_notifier_srcu.waits
    if not waits:  # the sequence keeps its VM: nothing shared
        return _Cycle(end, None, end, 0)
    barrier = sum(w.end - w.start for w in kvm.srcu.waits if w.call == "srcu_barrier")
    return _Cycle(end, waits[-1].start, waits[-1].end, barrier)


def predict_churn(sequence: Sequence, variant: str, hz: int, platform: str, threads: int, cycles: int,
                  between_ns: Sequence_[int] = (0,), seed: int = 0, costs: Costs | None = None) -> ChurnPrediction:
    """``threads`` threads each doing ``cycles`` cycles of ``sequence`` back to back; the time from one
    cycle's end to the next one's start on a thread is drawn from ``between_ns`` (the host's own,
    measured), which also keeps the threads from running in lockstep as no host's do. See the module
    docstring."""
    if threads < 1 or cycles < 1:
        raise ValueError("churn needs at least one thread and one cycle")
    if not between_ns:
        raise ValueError("churn needs at least one time between cycles")
    rng = random.Random(seed)
    between = tuple(sorted(between_ns))
    sim = Sim(hz, rng.random(), costs, rng)
    shared = srcutree.SrcuStruct(sim, "mmu_notifier srcu")
    cycle_ns: list[int] = []
    ended = [0] * threads  # per thread: when its last cycle ended, once all are done
    finished = 0

    def begin(thread: int, start: int, done: int) -> None:
        """Thread ``thread`` starts cycle ``done`` at ``start``: simulate it on its own, then meet the
        shared srcu_struct when its teardown gets there."""
        nonlocal finished
        if done == cycles:
            ended[thread] = start
            finished += 1
            return
        own = _own_cycle(sequence, variant, hz, platform, start + sim.phase_ns, rng, costs)
        if own.mmu_start_ns is None:  # the sequence keeps its VM: nothing shared
            sim.at(start + own.end_ns, lambda: ended_at(thread, start, start + own.end_ns, done))
        else:
            sim.at(start + own.mmu_start_ns, lambda: synchronize(thread, start, own, done))

    def synchronize(thread: int, start: int, own: _Cycle, done: int) -> None:
        """srcutree's __synchronize_srcu() on the shared struct, without blocking the simulation: its
        wake-me callback, the waiter woken ``Costs.wakeup`` after it."""
        do_norm = not srcutree.srcu_should_expedite(shared)
        cb = srcutree.SrcuCallback(0, lambda: woken(thread, start, own, done), "wakeme_after_rcu")
        srcutree.srcu_gp_start_if_needed(shared, cb, do_norm, "synchronize_srcu" + ("" if do_norm else "_expedited"))

    def woken(thread: int, start: int, own: _Cycle, done: int) -> None:
        # The rest of the teardown follows the wake-up, but what its srcu_barrier() waited for ends
        # when it ends whatever happened before.
        resumed = sim.now + sim.costs.wakeup
        ended_at(thread, start, max(start + own.end_ns, resumed + own.end_ns - own.mmu_end_ns - own.barrier_wait_ns),
                 done)

    def ended_at(thread: int, start: int, end: int, done: int) -> None:
        """The thread's cycle ``done`` ran from ``start`` to ``end``: the next one starts a measured
        pause later."""
        cycle_ns.append(end - start)
        begin(thread, end if done + 1 == cycles else end + sim.draw(between), done + 1)

    for t in range(threads):
        begin(t, t * 1_000, 0)  # the threads are released together, a microsecond or so apart
    sim.wait_for(lambda: finished == threads, "every thread's last cycle")
    return ChurnPrediction(variant, threads, cycle_ns, max(ended))
