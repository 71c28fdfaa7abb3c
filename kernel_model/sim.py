"""Discrete-event time for the kernel model: jiffies, the timer wheel, workqueues and completions.

Time is an integer number of nanoseconds from the start of a run. Jiffies tick every ``1e9 / HZ`` ns;
``phase`` says how far into a jiffy the run starts (0 <= phase < 1), which is what a latency
distribution samples over.

Simplifications, said where they are made:
- One worker runs work items one at a time, in the order they became runnable. While a context (the
  ioctl caller or a work item) ``spend()`` s time, everything else that is due meanwhile runs as if on
  another CPU (vCPU readers leaving their sections, timers firing), except other work items, which
  wait for the worker.
- Timers are exact to the tick they expire on (kernel/time/timer.c ``calc_index()``), plus a
  ``timer_latency`` for the timer softirq and the kworker getting the CPU: fixed by default, or drawn
  per firing from a host profile's measured distribution. (``timer_list`` timers have had no slack
  since the 4.8 wheel, and ``process_srcu``'s delayed work is not deferrable: neither is a cause.)
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable

from kernel_model.costs import Costs

NSEC_PER_SEC = 1_000_000_000
#: kernel/time/timer.c: the wheel has 64 buckets per level, each level 8 times coarser.
LVL_CLK_SHIFT = 3
LVL_BITS = 6
LVL_SIZE = 1 << LVL_BITS
LVL_DEPTH = 9


class ModelError(RuntimeError):
    """The model reached a state the kernel cannot (a wait that would never end, a bad call)."""


def calc_index_expiry(expires: int, clk: int) -> int:
    """The jiffy on which a timer armed at jiffy ``clk`` for ``expires`` actually fires.

    Models kernel/time/timer.c ``calc_wheel_index()`` / ``calc_index()`` (v5.10+): the level is chosen
    from ``expires - clk`` and the expiry is rounded *up* to the next bucket of that level's
    granularity, "to prevent [early expiry when the] timer is armed at the edge of a tick". On level 0
    that is ``expires + 1``: a timer armed for 1 jiffy fires on the second tick after it was armed.
    """
    delta = expires - clk
    if delta < 0:
        return clk + 1  # already expired: the next tick runs it
    for lvl in range(LVL_DEPTH):
        # Level lvl covers deltas below LVL_START(lvl + 1) = (LVL_SIZE - 1) << (lvl * LVL_CLK_SHIFT).
        if delta < (LVL_SIZE - 1) << (lvl * LVL_CLK_SHIFT) or lvl == LVL_DEPTH - 1:
            shift = lvl * LVL_CLK_SHIFT
            return ((expires >> shift) + 1) << shift
    raise AssertionError("unreachable")


class _Event:
    """An event on the queue: ``fn`` runs at ``time``; ``seq`` orders events of the same time by when
    they were queued. A heap entry, so only ``<`` is needed."""

    __slots__ = ("time", "seq", "fn", "cancelled")

    def __init__(self, time: int, seq: int, fn: Callable[[], None]) -> None:
        self.time = time
        self.seq = seq
        self.fn = fn
        self.cancelled = False

    def __lt__(self, other: _Event) -> bool:
        return (self.time, self.seq) < (other.time, other.seq)


class Sim:
    """The clock and event queue of one model run: one VM on its host (the tick-slip state below is
    the VM's, and host-wide facts such as a static key's count are taken as this VM's alone)."""

    def __init__(self, hz: int, phase: float = 0.0, costs: Costs | None = None,
                 rng: random.Random | None = None) -> None:
        if hz <= 0:
            raise ModelError(f"HZ must be positive, not {hz}")
        if not 0.0 <= phase < 1.0:
            raise ModelError(f"phase must be in [0, 1), not {phase}")
        self.hz = hz
        self.tick_ns = NSEC_PER_SEC // hz
        self.phase_ns = int(phase * self.tick_ns)
        self.costs = costs or Costs()
        #: Draws the per-firing timer latency when the costs carry a measured distribution.
        self.rng = rng or random.Random(0)
        self.now = 0
        self._queue: list[_Event] = []
        self._seq = itertools.count()
        self._worker_busy = False
        self._deferred_work: list[Callable[[], None]] = []
        #: Timer firings so far (a wait that saw one had its wake-up latency drawn at the timer).
        self.timers_fired = 0
        #: Firings of timers that may slip (``Timer.may_slip``: kvm->srcu's grace-period timer).
        self.slippable_fired = 0
        #: The state of the one arming that may fire a tick late (see ``Timer._slips``): "before" the
        #: VM's first wait that such a timer ended, "open" from then until its next arming or the next
        #: wait, whichever comes first, "spent" after.
        self.slip_window = "before"

    # --- time --------------------------------------------------------------------------------
    @property
    def jiffies(self) -> int:
        """The jiffies counter now."""
        return (self.now + self.phase_ns) // self.tick_ns

    def tick_time(self, jiffy: int) -> int:
        """The time (ns) at which ``jiffies`` becomes ``jiffy``."""
        return jiffy * self.tick_ns - self.phase_ns

    def spend(self, ns: int) -> None:
        """The running context (caller or work item) takes ``ns`` of CPU time; events due meanwhile
        run concurrently (other CPUs), work items excepted (see ``Work``)."""
        self.run_until(self.now + ns)

    def timer_latency(self) -> int:
        """The latency of one timer firing: the fixed cost, or a draw from the measured distribution."""
        if not self.costs.timer_latency_samples:
            return self.costs.timer_latency
        return self.draw(self.costs.timer_latency_samples)

    def draw(self, samples: tuple[int, ...]) -> int:
        """One draw from a measured distribution: one of its points, each equally likely (a profile's
        points are its calibration samples, or equal-mass quantiles of them).

        Not interpolated between neighbours: the latencies are bimodal (tens of µs, or a scheduler tick
        more), and interpolation would turn the gap between the modes into mass that the host never
        showed."""
        return samples[int(self.rng.random() * len(samples))]

    # --- events ------------------------------------------------------------------------------
    def at(self, time: int, fn: Callable[[], None]) -> _Event:
        """Run ``fn`` at ``time`` (or now, if that has passed)."""
        ev = _Event(max(time, self.now), next(self._seq), fn)
        heapq.heappush(self._queue, ev)
        return ev

    def _step(self) -> bool:
        while self._queue:
            ev = heapq.heappop(self._queue)
            if ev.cancelled:
                continue
            if ev.time > self.now:
                self.now = ev.time
            ev.fn()
            return True
        return False

    def run_until(self, time: int) -> None:
        """Run every event due up to ``time``; the clock then reads at least ``time``."""
        while self._queue and self._queue[0].time <= time:
            self._step()
        if self.now < time:
            self.now = time

    def wait_for(self, done: Callable[[], bool], what: str) -> None:
        """Block the caller until ``done()``: run events until it holds (``wait_for_completion``)."""
        while not done():
            if not self._step():
                raise ModelError(f"waiting for {what} would never end: nothing left to happen")


class Completion:
    """``struct completion``: ``complete()`` wakes the waiter after the wake-up cost."""

    def __init__(self, sim: Sim) -> None:
        self.sim = sim
        self.done = False
        self.completed_at: int | None = None

    def complete(self) -> None:
        """Models ``complete()``: the waiter can run ``costs.wakeup`` later."""
        self.done = True
        self.completed_at = self.sim.now

    def wait(self, what: str) -> None:
        """Models ``wait_for_completion()``: returns at completion time plus the wake-up, plus (with a
        host profile) a measured wake-up latency when no timer fired during the wait. The VM's first
        wait that a timer ended opens the one arming that may slip a tick (``Timer._slips``); any other
        wait before that arming closes it."""
        sim = self.sim
        fired, slippable = sim.timers_fired, sim.slippable_fired
        sim.wait_for(lambda: self.done, what)
        assert self.completed_at is not None
        extra = 0
        if sim.timers_fired == fired and sim.costs.wakeup_latency_samples:
            extra = sim.draw(sim.costs.wakeup_latency_samples)
        if sim.slippable_fired != slippable:
            if sim.slip_window == "before":
                sim.slip_window = "open"
        elif sim.slip_window == "open":
            sim.slip_window = "spent"  # another wait came between: the host no longer slips
        sim.now = max(sim.now, self.completed_at + sim.costs.wakeup + extra)


class Work:
    """A ``work_struct`` on a workqueue: queued at most once at a time; runs after a workqueue hop."""

    def __init__(self, sim: Sim, fn: Callable[[], None], name: str) -> None:
        self.sim = sim
        self.fn = fn
        self.name = name
        self.pending = False
        self.runs = 0

    def queue_work(self) -> bool:
        """Models ``queue_work()``: False (and nothing happens) if the work is already pending."""
        if self.pending:
            return False
        self.pending = True
        self.sim.at(self.sim.now + self.sim.costs.workqueue_hop, self._run)
        return True

    def _run(self) -> None:
        # One worker: a work item that becomes runnable while another runs waits for it to finish.
        sim = self.sim
        if sim._worker_busy:
            sim._deferred_work.append(self._run)
            return
        self.pending = False
        self.runs += 1
        sim._worker_busy = True
        try:
            self.fn()
        finally:
            sim._worker_busy = False
        deferred, sim._deferred_work = sim._deferred_work, []
        for run in deferred:
            sim.at(sim.now, run)


class Timer:
    """A ``timer_list`` whose expiry follows the wheel's rounding (see :func:`calc_index_expiry`)."""

    def __init__(self, sim: Sim, fn: Callable[[], object]) -> None:
        self.sim = sim
        self.fn = fn
        self.expires: int | None = None  # the jiffy it fires on, while pending
        self._event: _Event | None = None
        #: Whether this timer can fire a tick late (``_slips``): set on kvm->srcu's grace-period timer,
        #: the one traced slipping on the host; the model's other timers never do.
        self.may_slip = False

    @property
    def pending(self) -> bool:
        """Whether the timer is armed."""
        return self.expires is not None

    def _arm(self, expires: int) -> None:
        sim = self.sim
        fire = calc_index_expiry(expires, sim.jiffies)
        if self._event is not None:
            self._event.cancelled = True
        self.expires = fire
        late = 1 if self._slips() else 0
        self._event = sim.at(sim.tick_time(fire + late) + sim.timer_latency(), self._fire)

    def _slips(self) -> bool:
        """Whether this arming fires one tick after its bucket: only kvm->srcu's grace-period timer
        (``may_slip``), only its first arming after the VM's first wait that it ended, only if no
        other wait came between, and then with the host's measured share (``Costs.tick_slip``).

        Why a tick late: only the CPU holding the do_timer duty advances ``jiffies``
        (kernel/time/tick-sched.c tick_sched_do_timer()), and the timer's CPU raises the timer softirq
        from its own tick only if ``jiffies`` has reached the bucket (kernel/time/timer.c
        run_local_timers()). When its tick handler runs a few microseconds before the duty CPU's,
        it sees the old jiffy and the bucket waits a whole tick. Traced on this project's 2-CPU PVM
        host (timer_start / timer_expire_entry): the late SRCU timers expired with ``now`` one past
        their ``bucket_expiry``. Which CPU holds the duty is not modelled; which timers the host lets
        slip was measured instead, over 300 repetitions each of five sequences: the VM's first timer
        0-2% of the time; the timer armed right after the caller's first timer-ended grace-period wait
        6-10%; the one after the second such wait 0-1.3%. A wait that no timer ended (a deassign or a
        memslot on an idle srcu_struct) between the first wait and the registration took the share
        from 7-8% to 0-0.3% (300 repetitions each). ``minivmm timing --calibrate`` measures the
        share of the timer armed right after the first wait on the host and the profile records it."""
        sim = self.sim
        if not self.may_slip or sim.slip_window != "open":
            return False
        sim.slip_window = "spent"
        p = sim.costs.tick_slip
        return bool(p) and sim.rng.random() < p

    def add_timer(self, expires: int) -> None:
        """Models ``add_timer()`` / ``mod_timer()`` with an absolute expiry in jiffies."""
        self._arm(expires)

    def timer_reduce(self, expires: int) -> None:
        """Models ``timer_reduce()``: arm, or move an armed timer earlier (never later)."""
        if self.expires is not None and calc_index_expiry(expires, self.sim.jiffies) >= self.expires:
            return
        self._arm(expires)

    def delete(self) -> None:
        """Models ``timer_delete_sync()``."""
        if self._event is not None:
            self._event.cancelled = True
        self._event = None
        self.expires = None

    def _fire(self) -> None:
        self._event = None
        self.expires = None
        self.sim.timers_fired += 1
        if self.may_slip:
            self.sim.slippable_fired += 1
        self.fn()


class DelayedWork:
    """A ``delayed_work``: a timer that queues the work when it fires."""

    def __init__(self, sim: Sim, fn: Callable[[], None], name: str) -> None:
        self.work = Work(sim, fn, name)
        self.timer = Timer(sim, self.work.queue_work)
        self.sim = sim

    @property
    def pending(self) -> bool:
        """Pending: the timer is armed or the work is queued (``delayed_work_pending()``)."""
        return self.timer.pending or self.work.pending

    def queue_delayed_work(self, delay: int) -> bool:
        """Models ``queue_delayed_work()``: False if already pending (the earlier delay stands).

        This is the rule behind the stall: a later caller that wants the work *now* cannot pull in a
        delayed work that is already armed.
        """
        if self.pending:
            return False
        if delay == 0:
            return self.work.queue_work()
        self.timer.add_timer(self.sim.jiffies + delay)
        # Pending from now on: queue_work() when the timer fires must not be refused, so mark the
        # work pending only then (the timer's pending flag covers the wait).
        return True

    def flush(self) -> None:
        """Models ``flush_delayed_work()``: an armed timer is cancelled, the work run at once and waited for."""
        if self.timer.pending:
            self.timer.delete()
            self.work.queue_work()
        if self.work.pending:
            runs = self.work.runs
            self.sim.wait_for(lambda: self.work.runs > runs, f"flush of {self.work.name}")
