"""Discrete-event time for the kernel model: jiffies, the CPUs, the timer wheel, workqueues and
completions.

Time is an integer number of nanoseconds from the start of a run. Jiffies tick every ``1e9 / HZ`` ns;
``phase`` says how far into a jiffy the run starts (0 <= phase < 1), which is what a latency
distribution samples over.

Contexts and CPUs. The caller (the VMM thread issuing the ioctls) runs on its CPU; its ``spend()``
lets everything due meanwhile happen, and it blocks in ``Completion.wait()`` until woken. Everything
else (a timer's softirq, a work item, a vCPU's read section) is an event: it runs at its time on its
CPU, and time it ``spend()``s moves only its own clock, so work on another CPU never lengthens the
caller's step. Work items run one at a time per CPU (a CPU's kworker), in the order they became
runnable there: ``process_srcu`` where its timer fired, ``srcu_invoke_callbacks`` on the boot CPU. The
caller's CPU is busy while the caller runs and idle while it blocks or sleeps, which is what decides
whether its tick keeps running (:mod:`kernel_model.tick`).

Timers expire on the tick of their wheel bucket (kernel/time/timer.c ``calc_index()``) if their CPU's
tick raises the timer softirq then, else one tick later (:mod:`kernel_model.tick` says when), plus a
``timer_latency`` for the softirq and the kworker getting the CPU: fixed by default, or drawn per
firing from a host profile's measured distribution. (``timer_list`` timers have had no slack since the
4.8 wheel, and ``process_srcu``'s delayed work is not deferrable: neither is a cause.)

Nothing happens while nothing is due: a run costs its events, not its simulated time.

Phase slack. Every time in a run either stays put when the run starts later into its jiffy (a larger
``phase``): the caller's own times, and everything it causes; or moves with the tick grid: a tick,
and everything a tick causes (a timer's softirq, the work it queues, a caller it wakes). The run
notes, for every ``jiffies`` read at a time that stays put and for every order it relies on between
the two kinds of time where the order matters (two touches of one srcu_struct, which of two times a
``max()`` takes, a kworker still busy or not), how much later it could have started before that read
or order changed (``phase_slack``). The prediction uses it to find the phases at which the model's
behaviour can change (:mod:`kernel_model.predict`).
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import random
from collections.abc import Callable

from kernel_model.costs import Costs
from kernel_model.tick import BOOT_CPU, TickSched, TracedTicks

NSEC_PER_SEC = 1_000_000_000
#: kernel/time/timer.c: the wheel has 64 buckets per level, each level 8 times coarser.
LVL_CLK_SHIFT = 3
LVL_BITS = 6
LVL_SIZE = 1 << LVL_BITS
LVL_DEPTH = 9
#: How the caller pauses between steps, the one rule for the model, ``minivmm timing``'s runner and
#: ``minivmm repro``'s C harness: a pause longer than SLEEP_ABOVE_NS sleeps all but its last
#: SPIN_LAST_NS and spins those (a sleep wakes up tens of µs late); a shorter one spins throughout.
#: Sleeping, the caller's CPU is idle; spinning, it is busy.
SLEEP_ABOVE_NS = 300_000
SPIN_LAST_NS = 200_000
#: A wake-up latency longer than this is the woken caller waiting behind another task for its CPU
#: (until a scheduler tick, or a busy task's slice end): the fast wake-ups, the SRCU kworker and the
#: switch back, take tens of µs (88% of a loaded calibration's under 25 µs). Not half a tick: the
#: part from 300 µs to 2 ms (HZ=250) grows with the waiter's run before its wait as the tick-late part
#: does; in six loaded differential sets, timer-less waits whose caller ran < 20 µs and 200-500 µs
#: were over 300 µs late 0.9% and 8.6% of the time, over 2 ms 0.7% and 6.1%.
SWITCHED_IN_LATE_NS = 250_000


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
    """An event on the queue: ``fn`` runs at ``time`` on ``cpu``; ``seq`` orders events of the same time
    by when they were queued. A heap entry, so only ``<`` is needed."""

    __slots__ = ("time", "seq", "fn", "cpu", "on_grid", "cancelled")

    def __init__(self, time: int, seq: int, fn: Callable[[], None], cpu: int, on_grid: bool) -> None:
        self.time = time
        self.seq = seq
        self.fn = fn
        self.cpu = cpu
        #: Whether ``time`` moves with the tick grid (see "Phase slack" above).
        self.on_grid = on_grid
        self.cancelled = False

    def __lt__(self, other: _Event) -> bool:
        return (self.time, self.seq) < (other.time, other.seq)


class Sim:
    """The clock, CPUs and event queue of one model run: one VM on its host (host-wide facts such as a
    static key's count are taken as this VM's alone).

    Owned by one thread. ``now`` is the clock of the context running: the caller's between events,
    an event's own while it runs."""

    def __init__(self, hz: int, phase: float = 0.0, costs: Costs | None = None,
                 rng: random.Random | None = None, caller_cpu: int | None = None,
                 traced: TracedTicks | None = None) -> None:
        if hz <= 0:
            raise ModelError(f"HZ must be positive, not {hz}")
        if not 0.0 <= phase < 1.0:
            raise ModelError(f"phase must be in [0, 1), not {phase}")
        self.hz = hz
        self.tick_ns = NSEC_PER_SEC // hz
        self.phase_ns = int(phase * self.tick_ns)
        self.costs = costs or Costs()
        #: Draws the measured latencies and the host's tick behaviour (``Costs.cpus``).
        self.rng = rng or random.Random(0)
        env = self.costs.cpus
        env.check()
        if caller_cpu is not None and not 0 <= caller_cpu < env.nr_cpus:
            raise ModelError(f"the caller's CPU must be 0..{env.nr_cpus - 1}, not {caller_cpu}")
        if caller_cpu is None:
            share = env.caller_on_boot_cpu
            on_boot = env.nr_cpus == 1 or share >= 1.0 or (share > 0.0 and self.rng.random() < share)
            caller_cpu = BOOT_CPU if on_boot else 1
        #: The CPU the caller runs on (CPU 0 is the boot CPU): given (a replayed host run's), or drawn
        #: from the profile's share.
        self.caller_cpu = caller_cpu
        #: The CPU of the context running now.
        self.cpu = self.caller_cpu
        self.now = 0
        #: Whether ``now`` moves with the tick grid (the caller's does once a tick-driven wake-up woke it).
        self.on_grid = False
        self._caller_on_grid = False
        self._in_event = False
        self._queue: list[_Event] = []
        self._seq = itertools.count()
        #: Per CPU: until when its kworker is busy with a work item (and whether that time is on the grid).
        self.kworker_busy_until = [0] * env.nr_cpus
        self.kworker_busy_on_grid = [False] * env.nr_cpus
        self._timers: list[set[Timer]] = [set() for _ in range(env.nr_cpus)]
        #: The CPUs' ticks and the do_timer duty.
        self.ticks = TickSched(self, env, self.caller_cpu, traced)
        self.ticks.caller_busy(0, True)
        #: Timer firings so far (a wait that saw one draws its waiter's latency from the timer-ended ones).
        self.timers_fired = 0
        #: How much the phase (in ns) could grow before any ``jiffies`` read so far changes value.
        self.phase_slack = self.tick_ns
        #: Replaying a host run: when the host's caller issued its next step (None: not replaying).
        #: A waiter's own latency (Completion.wait) that runs past it is counted in the step's
        #: duration (``unserved_ns``) but does not hold the caller up: see Completion.wait.
        self.resume_by: int | None = None
        #: The current step's waiter latency counted but not served (ns).
        self.unserved_ns = 0
        #: The caller's lag (EEVDF, kernel/sched/fair.c): how much CPU time the scheduler owes it, as
        #: far as the model knows (0: none known). Earned while it waited for its CPU behind a busy
        #: task after a late wake-up, spent while it runs; while it is positive the caller is eligible
        #: and its wake-ups are not late (Completion.wait).
        self.caller_lag_ns = 0
        #: Replaying a host run whose caller's wake-ups were traced: how long each of the host caller's
        #: wake-ups in the current step waited for its CPU (sched_wakeup to sched_switch), in order, for
        #: the step's waits to take instead of drawing (None: drawn; see Completion.wait).
        self.replayed_wakeups: list[int] | None = None

    # --- time --------------------------------------------------------------------------------
    @property
    def jiffies(self) -> int:
        """The jiffies counter now."""
        return self.jiffy_at(self.now, self.on_grid)

    def jiffy_at(self, t: int, on_grid: bool = False) -> int:
        """The jiffies counter at time ``t`` (recording, for ``phase_slack``, how close a time that
        stays put is to the next tick)."""
        x = t + self.phase_ns
        j = x // self.tick_ns
        if not on_grid:
            self.note_slack((j + 1) * self.tick_ns - x)
        return j

    def note_slack(self, ns: int) -> None:
        """The run's behaviour would change if it started ``ns`` later into its jiffy."""
        if 0 < ns < self.phase_slack:
            self.phase_slack = ns

    def note_order(self, early: int, early_on_grid: bool, late: int, late_on_grid: bool) -> None:
        """The run relied on ``early`` coming no later than ``late``: a later start moves a time on the
        grid earlier against one that stays put, so the order holds for ``late - early`` more ns."""
        if late_on_grid and not early_on_grid:
            self.note_slack(late - early + 1)

    def latest(self, a: int, a_on_grid: bool, b: int, b_on_grid: bool) -> tuple[int, bool]:
        """``max(a, b)`` and whether it is on the grid, noting the order it relied on."""
        if a >= b:
            self.note_order(b, b_on_grid, a, a_on_grid)
            return a, a_on_grid
        self.note_order(a, a_on_grid, b, b_on_grid)
        return b, b_on_grid

    def tick_time(self, jiffy: int) -> int:
        """The time (ns) at which ``jiffies`` becomes ``jiffy``."""
        return jiffy * self.tick_ns - self.phase_ns

    def spend(self, ns: int) -> None:
        """The running context takes ``ns`` of CPU time. For the caller, everything due meanwhile
        happens (other CPUs, its own CPU's interrupts); an event's context only moves its own clock."""
        if self._in_event:
            self.now += ns
        else:
            self.run_until(self.now + ns)

    def pause(self, ns: int) -> None:
        """The caller's pause before a step: it sleeps (its CPU idle) and spins the last stretch, as
        ``minivmm timing``'s runner does (see SLEEP_ABOVE_NS). The pause itself is exact."""
        if ns <= 0:
            return
        if ns > SLEEP_ABOVE_NS:
            self.ticks.caller_busy(self.now, False)
            self.ticks.caller_busy(self.now + ns - SPIN_LAST_NS, True)
        self.run_until(self.now + ns)

    def timer_latency(self) -> int:
        """From a timer's tick to its callback: the fixed cost; 0 with a host profile, whose measured
        latencies are the waiter's (:meth:`Completion.wait` draws them) and were measured against a
        chain with none."""
        return 0 if self.costs.timer_latency_samples else self.costs.timer_latency

    def wakeup_latency(self, ran: int, eligible: bool = False) -> int:
        """The extra latency of a wait no timer ended, whose caller ran ``ran`` ns before it: a draw from
        the measured ones, whose late part (over SWITCHED_IN_LATE_NS: switched in behind another task)
        is taken ``ran / Costs.wakeup_latency_run_ns`` times as often as measured for a shorter run, as
        often as measured for a longer one (see there); never for an ``eligible`` caller (one the
        scheduler owes CPU time: see Completion.wait)."""
        samples, run_ns = self.costs.wakeup_latency_samples, self.costs.wakeup_latency_run_ns
        if eligible:
            return self.draw_on_time(samples)
        if run_ns <= 0:
            return self.draw(samples)
        n = len(samples)
        cut = bisect.bisect_right(samples, SWITCHED_IN_LATE_NS)  # samples[cut:] are the late ones
        if cut in (0, n):
            return self.draw(samples)
        # A draw from samples[cut:] or samples[:cut] as Sim.draw makes it, by index: every wait no timer
        # ended comes here, and slicing would copy the profile's up to 2,001 points each time.
        lo, hi = (cut, n) if self.rng.random() < (n - cut) / n * min(1.0, ran / run_ns) else (0, cut)
        return samples[lo + int(self.rng.random() * (hi - lo))]

    def draw(self, samples: tuple[int, ...]) -> int:
        """One draw from a measured distribution: one of its points, each equally likely (a profile's
        points are its calibration samples, or equal-mass quantiles of them).

        Not interpolated between neighbours: the latencies are bimodal (tens of µs, or a scheduler tick
        more), and interpolation would turn the gap between the modes into mass that the host never
        showed."""
        return samples[int(self.rng.random() * len(samples))]

    def draw_on_time(self, samples: tuple[int, ...]) -> int:
        """One draw, as :meth:`draw` makes it, from the sorted ``samples`` that are not late (up to
        SWITCHED_IN_LATE_NS); all of them if none is."""
        cut = bisect.bisect_right(samples, SWITCHED_IN_LATE_NS) or len(samples)
        return samples[int(self.rng.random() * cut)]

    # --- timers per CPU ------------------------------------------------------------------------
    def timers_on(self, cpu: int) -> set[Timer]:
        """The timers pending on ``cpu``'s wheel."""
        return self._timers[cpu]

    def next_timer_bucket(self, cpu: int) -> int | None:
        """The earliest bucket (jiffy) of a timer pending on ``cpu`` (get_next_timer_interrupt())."""
        buckets = [t.expires for t in self._timers[cpu] if t.expires is not None]
        return min(buckets) if buckets else None

    # --- events ------------------------------------------------------------------------------
    def at(self, time: int, fn: Callable[[], None], cpu: int | None = None,
           on_grid: bool | None = None) -> _Event:
        """Run ``fn`` at ``time`` (or now, if that has passed) on ``cpu`` (default: the running
        context's). ``on_grid``: whether ``time`` moves with the tick grid (default: as the running
        context's clock does)."""
        grid = self.on_grid if on_grid is None else on_grid
        if time < self.now:
            time, grid = self.now, self.on_grid
        ev = _Event(time, next(self._seq), fn, self.cpu if cpu is None else cpu, grid)
        heapq.heappush(self._queue, ev)
        return ev

    def _step(self) -> bool:
        while self._queue:
            ev = heapq.heappop(self._queue)
            if ev.cancelled:
                continue
            self.now, self.cpu, self.on_grid, self._in_event = ev.time, ev.cpu, ev.on_grid, True
            try:
                ev.fn()
            finally:
                self.now, self.cpu, self._in_event = ev.time, self.caller_cpu, False
                self.on_grid = self._caller_on_grid
            return True
        return False

    def _caller_only(self, what: str) -> None:
        if self._in_event:
            raise ModelError(f"{what} from an event: only the caller blocks")

    def run_until(self, time: int) -> None:
        """Run every event due up to ``time``; the caller's clock then reads at least ``time``."""
        self._caller_only("run_until()")
        start, grid = self.now, self.on_grid
        while self._queue and self._queue[0].time <= time:
            self._step()
        self.now = max(start, time)
        self.on_grid = self._caller_on_grid = grid

    def wait_for(self, done: Callable[[], bool], what: str) -> None:
        """Block the caller until ``done()``: run events until it holds (``wait_for_completion``)."""
        self._caller_only("wait_for()")
        while not done():
            if not self._step():
                raise ModelError(f"waiting for {what} would never end: nothing left to happen")


class Completion:
    """``struct completion``: ``complete()`` wakes the waiter after the wake-up cost."""

    def __init__(self, sim: Sim) -> None:
        self.sim = sim
        self.done = False
        self.completed_at: int | None = None
        self.completed_on_grid = False

    def complete(self) -> None:
        """Models ``complete()``: the waiter can run ``costs.wakeup`` later."""
        self.done = True
        self.completed_at = self.sim.now
        self.completed_on_grid = self.sim.on_grid

    def wait(self, what: str) -> None:
        """Models ``wait_for_completion()``: the caller's CPU is idle until the completion, and the
        caller runs again at completion time plus the wake-up, plus (with a host profile) a measured
        latency: a timer-ended wait's when a timer fired during the wait, else a wake-up latency; an
        on-time one while the scheduler owes the caller CPU time (``Sim.caller_lag_ns``). Replaying a
        host run, a latency that runs past the host's next step counts in this step's duration but
        does not hold the caller up (``Sim.resume_by``); with the host caller's wake-ups traced
        (``Sim.replayed_wakeups``), the latency is the host's, not a draw."""
        sim = self.sim
        fired = sim.timers_fired
        start = sim.now
        if not self.done:
            sim.ticks.caller_busy(start, False)
        sim.wait_for(lambda: self.done, what)
        assert self.completed_at is not None
        # The measured latencies land on the waiter, not on the grace-period machinery: traced under
        # two busy loops, the timer-queued process_srcu ran at most 185 us after its queueing
        # (workqueue_queue_work -> workqueue_execute_start) while the woken caller waited a tick to be
        # switched in after 4% of its wake-ups (sched_wakeup -> sched_switch). Drawn at the timer, a
        # tick-long draw delayed every later grace period of the run with it.
        # How often the waiter waits for that tick grows with how long it ran before its wait (a busy
        # task is not preempted by a waker that used much CPU): in four loaded differential sets, the
        # timer-less waits whose caller ran < 20 us, 20-100, 100-200, 200-300, 300-500 and 500-1000 us
        # before them ended a tick late 1.0, 2.2, 3.6, 5.9, 9.3 and 14.7% of the time.
        ran = start - sim.ticks.caller_busy_since
        timed = sim.timers_fired > fired
        # A caller that waited for its CPU behind a busy task is owed the time: EEVDF's lag grows while
        # it waits runnable and shrinks while it runs, by half the time each with one task beside it
        # (the queue's average vruntime moves at half the rate of the one running), and is kept over a
        # sleep. While the lag is positive the caller is eligible, and its wake-up goes first. In six
        # loaded differential sets, a wait after a late one was itself late 0.8% (none timer-ended)
        # and 3.9% (timer-ended) of the time, against 7.5% and 10.0% after one on time (callers that
        # ran 200 us or more before it).
        lag = sim.caller_lag_ns - ran // 2
        eligible = lag > 0
        extra = 0
        replayed = sim.replayed_wakeups
        if replayed is not None:
            # The scheduler's part as the host's caller met it in the same step (its k-th wake-up for
            # the model's k-th wait; none for a wait it did not sleep through), on top of an on-time
            # draw: what the profile measured within SWITCHED_IN_LATE_NS stands for the chain's costs
            # that the model's fixed ones miss (replaying without it, a quiet set lost 2 of 58 steps).
            extra = max(0, (replayed.pop(0) if replayed else 0) - sim.costs.wakeup)
            samples = sim.costs.timer_latency_samples if timed else sim.costs.wakeup_latency_samples
            if samples:
                extra += sim.draw_on_time(samples)
        elif timed and sim.costs.timer_latency_samples:
            samples = sim.costs.timer_latency_samples
            extra = sim.draw_on_time(samples) if eligible else sim.draw(samples)
        elif not timed and sim.costs.wakeup_latency_samples:
            extra = sim.wakeup_latency(ran, eligible)
        ready = self.completed_at + sim.costs.wakeup  # the waiter can run from here, late or not
        woken = max(start, ready)
        wake, on_grid = sim.latest(start, sim.on_grid, ready + extra, self.completed_on_grid)
        run_ns, share = sim.costs.waiter_tick_wait
        if (replayed is None and timed and not eligible and share > 0.0 and run_ns > 0
                and sim.rng.random() < share * ran / run_ns):
            wake, on_grid = sim.tick_time(sim.jiffy_at(wake) + 1), True  # behind a busy task: the tick
        # Late, it earns half its wait (a lag the model knows); on time, it keeps what is left. A
        # negative lag is not kept: what the draws above give for the run is all the model says of it.
        sim.caller_lag_ns = (wake - woken) // 2 if wake - woken > SWITCHED_IN_LATE_NS else max(0, lag)
        if sim.resume_by is not None and wake > sim.resume_by:
            # Replaying a host run whose caller issued its next step before this waiter would wake: the
            # drawn latency is the waiter's alone (the grace period is over), and the host's waiter
            # was not that late. Counted in this step's duration, but the caller resumes at the host's
            # next step, so that the steps after it meet the host's situation, not this draw's.
            served, served_on_grid = sim.latest(start, sim.on_grid, ready, self.completed_on_grid)
            if served < sim.resume_by:
                served, served_on_grid = sim.resume_by, False
            sim.unserved_ns += wake - served
            wake, on_grid = served, served_on_grid
        sim.ticks.caller_busy(wake, True)
        sim.on_grid = sim._caller_on_grid = on_grid
        sim.run_until(wake)


class Work:
    """A ``work_struct`` on a per-CPU workqueue: queued at most once at a time; runs after a workqueue
    hop on its CPU, once that CPU's kworker is free. ``cpu`` binds it (``queue_work_on()``); None
    queues it on the CPU that queues it (``queue_work()`` on a per-CPU workqueue such as rcu_gp)."""

    def __init__(self, sim: Sim, fn: Callable[[], None], name: str, cpu: int | None = None) -> None:
        self.sim = sim
        self.fn = fn
        self.name = name
        self.cpu = cpu
        self.pending = False
        self.runs = 0

    def queue_work(self) -> bool:
        """Models ``queue_work()`` / ``queue_work_on()``: False (and nothing happens) if the work is
        already pending."""
        if self.pending:
            return False
        self.pending = True
        sim = self.sim
        sim.at(sim.now + sim.costs.workqueue_hop, self._run, sim.cpu if self.cpu is None else self.cpu)
        return True

    def _run(self) -> None:
        sim = self.sim
        cpu = sim.cpu
        busy, busy_on_grid = sim.kworker_busy_until[cpu], sim.kworker_busy_on_grid[cpu]
        if busy > sim.now:
            sim.note_order(sim.now, sim.on_grid, busy, busy_on_grid)
            sim.at(busy, self._run, cpu, busy_on_grid)  # the CPU's kworker is still busy
            return
        sim.note_order(busy, busy_on_grid, sim.now, sim.on_grid)
        self.pending = False
        self.runs += 1
        start = sim.now
        self.fn()
        sim.kworker_busy_until[cpu], sim.kworker_busy_on_grid[cpu] = sim.now, sim.on_grid
        sim.ticks.work_ran(cpu, start, sim.now)


class Timer:
    """A ``timer_list`` on the wheel of the CPU that armed it: it expires on its bucket's tick
    (:func:`calc_index_expiry`) if that CPU's tick raises the timer softirq then, else on the CPU's
    next tick (:meth:`kernel_model.tick.TickSched.timer_softirq_raised`), plus the timer latency."""

    def __init__(self, sim: Sim, fn: Callable[[], object]) -> None:
        self.sim = sim
        self.fn = fn
        self.expires: int | None = None  # the bucket's jiffy, while pending
        self.cpu = sim.caller_cpu
        self._event: _Event | None = None

    @property
    def pending(self) -> bool:
        """Whether the timer is armed."""
        return self.expires is not None

    def _arm(self, expires: int) -> None:
        sim = self.sim
        bucket = calc_index_expiry(expires, sim.jiffies)
        self.delete()
        self.expires = bucket
        self.cpu = sim.cpu
        sim.timers_on(self.cpu).add(self)
        self._at_tick(bucket)

    def _at_tick(self, tick: int) -> None:
        self._event = self.sim.at(self.sim.tick_time(tick), lambda: self._tick(tick), self.cpu, on_grid=True)

    def _tick(self, tick: int) -> None:
        """The timer CPU's tick at ``tick``: expire now, or wait for the next tick."""
        sim = self.sim
        if tick == self.expires and not sim.ticks.timer_softirq_raised(self.cpu, tick):
            self._at_tick(tick + 1)  # by then jiffies has reached the bucket: that tick raises it
            return
        self._event = sim.at(sim.now + sim.timer_latency(), self._fire, self.cpu)

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
        self.sim.timers_on(self.cpu).discard(self)

    def _fire(self) -> None:
        self._event = None
        self.expires = None
        self.sim.timers_on(self.cpu).discard(self)
        self.sim.timers_fired += 1
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
