"""The CPUs' ticks: which CPU advances ``jiffies`` (the do_timer duty), NOHZ idle, and when a CPU's tick
raises its timer softirq. This is where a timer-wheel timer fires on its bucket's tick or one tick late.

Modelled on kernel/time/tick-sched.c and kernel/time/timer.c (Linux 6.18):

- ``tick_sched_do_timer()``: at each tick handler, a CPU takes the do_timer duty if nobody holds it
  (``tick_do_timer_cpu == TICK_DO_TIMER_NONE``), and only the holder advances ``jiffies``
  (``tick_do_update_jiffies64()``).
- ``tick_nohz_stop_tick()``: a CPU that stops its tick in NOHZ idle gives the duty up (and remembers it
  held it last); the next CPU whose tick handler runs takes it.
- ``tick_nohz_next_event()``: an idle CPU keeps its periodic tick when its next timer is at most a tick
  away (``delta <= TICK_NSEC``), or when RCU, the architecture or irq_work need it
  (``rcu_needs_cpu()`` ...); otherwise it stops the tick and programs the clock event for that timer.
- ``tick_nohz_irq_enter()``: a CPU whose tick was stopped updates ``jiffies`` itself when an interrupt
  (its programmed timer event included) wakes it (``tick_nohz_update_jiffies()``).
- ``run_local_timers()`` (timer.c): a tick raises TIMER_SOFTIRQ only if ``jiffies`` has reached the
  base's ``next_expiry``.

So a timer's bucket waits a whole jiffy when, at that tick, the timer's CPU runs its tick handler
periodically (it kept its tick), another CPU holds the duty and ticks too, and the timer CPU's handler
runs first: it sees the old ``jiffies`` and raises nothing; at its next tick ``jiffies`` has moved on.
Traced on this project's 2-CPU host (tracefs ``timer:timer_start``/``timer:timer_expire_entry``,
``irq_vectors:local_timer_entry``, ``timer:tick_stop``): of the VM's first ``process_srcu`` timers, 777
of 862 fired a tick late when the timer CPU's tick ran first, 104 of 2,136 otherwise.

What the model cannot derive is what the host's other tasks do with the CPUs; a
:class:`TickEnvironment` says it (measured by ``minivmm timing --calibrate``, see
``minivmm.timing.ticktrace``): how often each other CPU's tick runs at a given tick and how long such
runs last (a two-state Markov chain per CPU and tick), how often the caller's CPU keeps its tick
through a wait (RCU callbacks, other tasks), and which CPU's handler runs first when both tick. The
caller's own CPU is driven by the model: busy while the caller (the VMM thread) or a model kworker runs
on it, idle while the caller blocks or sleeps.

Simplified, and said here once: the timer-migration hierarchy (kernel/time/timer_migration.c) is left
out (traced, every SRCU timer expired on the CPU that armed it); ``jiffies`` is updated on the tick
grid only (an idle exit between a tick and a handler a few µs later is not modelled); the
stalled-jiffies fallback (``MAX_STALLED_JIFFIES``) never comes into play for one-tick slips; with more
than two CPUs, the timer CPU's handler runs either before all others or after all of them.

The order of the handlers at a tick is a two-state chain too: traced, the CPU whose handler ran first
at one tick ran first at the next 70-80% of the time.

Who holds the duty is followed by the rules above, but for one moment: at a contested tick (the caller
CPU's handler runs first while another CPU ticks) another CPU holds it with the measured share
(``other_holds_duty``: the share of traced timers that slipped where the rule allowed a slip, measured
at exactly such ticks). The duty moves at every moment a CPU stops its tick, which the model's CPU
chains do not reproduce: followed from ``HISTORY_TICKS`` back, it drifted to the caller CPU, which
keeps its tick through a wait: with the ticks three calibrations traced, the model slipped 0.9-1.8% of
their timers where 2.0-4.3% had slipped (drawn at the contested tick: 2.7-3.5%), and in a traced QEMU
set-up another CPU held the duty at 8% of the model's buckets of the stalling memslot's timer where
40% of the host's timers the rule let slip did.

A model run that replays a traced host repetition (:class:`TracedTicks`, the differential harness)
follows the duty instead, as the kernel does: the other CPUs tick, and every CPU stops its tick, where
the host's did (the caller's CPU too, whose other tasks and idle moments are the host's; before the
run its ticks are the host's as well), the handlers run in the host's order where both ran, and who
held the duty when the replay starts comes from the DUTY_HISTORY_TICKS before by the same rule. Traced,
that rule is what decides: of a QEMU set-up's timers whose CPU had stopped its tick, 47 of 50 and 54
of 62 slipped where the other CPU ticked meanwhile and kept ticking, 0 of 22 and 2 of 37 where it
stopped its own tick again. Where those ticks show no tick stop (under load, where no CPU ever stops
its tick), the duty stays on one CPU, and whether a timer of the other slips is a race the traced
handlers settle: the duty holder's ``tick_do_update_jiffies64()`` against the timer CPU's
``run_local_timers()``, each a few µs into its handler. Traced under two busy loops (12 cases, 10,000
timers), no timer of the CPU holding the duty slipped; the other's slipped 5% of the time when its
handler entered after the holder's, 30% when it entered 0-2 µs before, 98% when further ahead. The
replay takes the share measured for the timer CPU and its handler's lead at the bucket's tick
(``TickEnvironment.slips_by_lead``, from the calibration's own timers); where that was not measured,
the duty is drawn at each contested tick.

Evaluation is lazy: the tick state is advanced only to the ticks a pending timer's bucket falls on, and
a stretch of more than ``HISTORY_TICKS`` ticks with nothing due is skipped (the chains and the kept
tick are replayed from the last ``HISTORY_TICKS`` ticks), so a long idle stretch costs nothing.
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from kernel_model.sim import Sim

#: include/linux/tick.h ... kernel/time/tick-common.c: nobody holds the do_timer duty.
TICK_DO_TIMER_NONE = -1
#: include/linux/cpumask.h get_boot_cpu_id() on x86 and arm64: CPU 0.
BOOT_CPU = 0
#: Ticks replayed before a tick the model needs, when nothing was evaluated in between.
HISTORY_TICKS = 16
#: The idle entry of a CPU that has been idle since before the run began.
NEVER = -(1 << 62)


def two_state_next(share: float, persist: float, was: bool) -> float:
    """P(on at the next step | on (``was``) or off at this one) in the two-state chain that stays on with
    ``persist`` and is on ``share`` of the time."""
    if was:
        return persist
    if share >= 1.0:
        return 1.0
    return min(1.0, share * (1.0 - persist) / (1.0 - share))


class TickEnvironment(NamedTuple):
    """What the host's other tasks do to the CPUs' ticks, per tick (a host profile measures it).

    The defaults are a quiet host: the other CPUs' ticks stopped (NOHZ idle) whenever the model puts
    nothing on them, and the caller's CPU stopping its tick whenever its next timer is more than a tick
    away: no timer ever slips."""

    #: CPUs of the host (``nr_cpu_ids``).
    nr_cpus: int = 2
    #: The share of runs whose caller (the VMM thread) runs on the boot CPU, where a SMALL srcu_struct
    #: queues every callback (``srcu_invoke_callbacks`` is bound there).
    caller_on_boot_cpu: float = 0.0
    #: The share of the caller's waits through which its CPU keeps its periodic tick although its next
    #: timer is more than a tick away (``rcu_needs_cpu()``, other tasks on that CPU, ...).
    caller_keeps_tick: float = 0.0
    #: Per other CPU and tick, the share of ticks its tick handler runs (it is busy or kept its tick).
    other_tick_share: float = 0.0
    #: The chance that another CPU that ticked at one tick ticks at the next (how long busy runs last).
    other_tick_persist: float = 0.0
    #: When the caller's CPU and another CPU both tick, the share of ticks whose handler runs first on
    #: the caller's CPU.
    caller_tick_first: float = 0.5
    #: The chance that the caller CPU's handler, having run first at one such tick, runs first at the
    #: next (the CPUs' handlers keep their order for a while: their timers' interrupts come with
    #: per-CPU latencies). 0.5 with caller_tick_first 0.5: no memory.
    caller_first_persist: float = 0.5
    #: The chance that another CPU whose handler ran at two ticks in a row stopped its tick in between
    #: (it went idle for a moment), giving up the duty if it held it.
    other_stops_between: float = 0.0
    #: At a contested tick (the caller CPU's handler first, another CPU ticking), the chance that
    #: another CPU holds the duty (measured: the share of traced timers that slipped where the rule
    #: allowed it); also where the model starts to look, HISTORY_TICKS before a bucket.
    other_holds_duty: float = 0.0
    #: At a tick where another CPU's handler runs first (the caller CPU keeping its tick), the chance
    #: that a timer on the caller's CPU still waits a tick: traced, the handlers' entries are mostly
    #: less than a µs apart, and whether the duty holder's jiffies update or the timer CPU's
    #: run_local_timers() comes first is a race their order of entry does not settle (measured: the
    #: share of such traced timers that slipped; 5% of all timers under two busy loops).
    other_first_slips: float = 0.0
    #: caller_tick_first and other_holds_duty again, per CPU the caller runs on (index; None: not
    #: measured there, the shares above stand). On a busy host the duty stays on one CPU and the
    #: handlers keep an order of their own, so both depend on which CPU the caller is on: traced with
    #: two CPUs busy, no timer armed on the CPU holding the duty slipped and 34-63% of those armed on
    #: the other did (which CPU held it changed from one minute to the next).
    caller_tick_first_by_cpu: tuple[float | None, ...] = ()
    other_holds_duty_by_cpu: tuple[float | None, ...] = ()
    #: Per CPU a timer is on (index), per bin of LEAD_BINS_NS: the share of traced timers that slipped
    #: when that CPU's handler ran by so much before the other CPUs' at their bucket's tick (a negative
    #: lead: after them), where no tick stop said who held the duty (None: no such timer). A busy host's
    #: duty stays with one CPU, and whether the other's timer slips is the race between the holder's
    #: jiffies update and the timer CPU's run_local_timers(), which the handlers' entries, a few µs
    #: apart, settle: traced under two busy loops, the timers of the CPU without the duty slipped 5%
    #: of the time after the holder's handler, 30% within 2 µs before it and 98% further ahead; the
    #: holder's never. A replay (TracedTicks) that knows the lead takes this share; () : not measured.
    slips_by_lead: tuple[tuple[float | None, ...], ...] = ()

    @property
    def quiet(self) -> bool:
        """True when nothing here is random: no other CPU ever ticks, the caller's CPU is fixed and
        never keeps its tick for an outside reason (so no timer slips and the model is a function of
        the tick phase alone)."""
        return (self.other_tick_share == 0.0 and self.caller_keeps_tick in (0.0, 1.0)
                and self.caller_on_boot_cpu in (0.0, 1.0))

    def other_tick_after(self, ticked: bool) -> float:
        """P(another CPU ticks at the next tick | it ticked (or not) at this one)."""
        return two_state_next(self.other_tick_share, self.other_tick_persist, ticked)

    def caller_first_after(self, was_first: bool, cpu: int = BOOT_CPU) -> float:
        """P(the handler of the caller's CPU ``cpu`` runs first | it ran first (or not) at the last tick
        both ran)."""
        return two_state_next(self.tick_first_on(cpu), self.caller_first_persist, was_first)

    def tick_first_on(self, cpu: int) -> float:
        """The share of ticks at which the caller's CPU ``cpu`` runs its handler first when another CPU
        ticks too: measured for that CPU where the profile has it, else for every CPU."""
        by = self.caller_tick_first_by_cpu
        v = by[cpu] if cpu < len(by) else None
        return self.caller_tick_first if v is None else v

    def holds_duty_against(self, cpu: int) -> float:
        """other_holds_duty for a caller on ``cpu``: measured for that CPU where the profile has it."""
        by = self.other_holds_duty_by_cpu
        v = by[cpu] if cpu < len(by) else None
        return self.other_holds_duty if v is None else v

    def slip_share(self, cpu: int, lead_ns: int) -> float | None:
        """slips_by_lead for a timer on ``cpu`` whose handler led the others' by ``lead_ns`` (None: not
        measured)."""
        by = self.slips_by_lead
        return by[cpu][lead_bin(lead_ns)] if cpu < len(by) else None

    def check(self) -> None:
        """ValueError naming the first field out of range."""
        if not 1 <= self.nr_cpus <= 4096:
            raise ValueError("nr_cpus must be 1..4096")
        for name in ("caller_on_boot_cpu", "caller_keeps_tick", "other_tick_share", "other_tick_persist",
                     "caller_tick_first", "caller_first_persist", "other_stops_between",
                     "other_holds_duty", "other_first_slips"):
            if not _share(getattr(self, name)):
                raise ValueError(f"{name} must be a share from 0 to 1")
        for name in ("caller_tick_first_by_cpu", "other_holds_duty_by_cpu"):
            by = getattr(self, name)
            if not isinstance(by, tuple) or len(by) > self.nr_cpus or \
                    not all(v is None or _share(v) for v in by):
                raise ValueError(f"{name} must hold, per CPU, a share from 0 to 1 or null")
        by_lead = self.slips_by_lead
        if not isinstance(by_lead, tuple) or len(by_lead) > self.nr_cpus or not all(
                isinstance(row, tuple) and len(row) == len(LEAD_BINS_NS) + 1
                and all(v is None or _share(v) for v in row) for row in by_lead):
            raise ValueError(f"slips_by_lead must hold, per CPU, {len(LEAD_BINS_NS) + 1} shares from 0 to 1 or "
                             "null (one per lead bin)")


#: How far back the replay follows the traced ticks and tick stops to find who holds the duty.
DUTY_HISTORY_TICKS = 64
#: The bins of a timer CPU's handler lead over the other CPUs' (ns) that TickEnvironment.slips_by_lead
#: is measured in: before 0 (the others' ran first), 0-0.5 µs, ..., 2-5 µs, from 5 µs on.
LEAD_BINS_NS = (0, 500, 1_000, 1_500, 2_000, 5_000)


def lead_bin(lead_ns: int) -> int:
    """The LEAD_BINS_NS bin of a handler lead (0: negative, the others' handlers ran first)."""
    return bisect.bisect_right(LEAD_BINS_NS, lead_ns)


def handler_at(handlers: list[int], tick_ns: int, offset: int, tick: int) -> int | None:
    """When a CPU whose tick handlers ran at ``handlers`` (sorted, ns) ran it for ``tick`` of the grid at
    ``offset`` (None: it did not; a handler runs within half a tick of its tick)."""
    lo = offset + tick * tick_ns
    i = bisect.bisect_left(handlers, lo)
    return handlers[i] if i < len(handlers) and handlers[i] < lo + tick_ns // 2 else None


def stopped_between(stops: list[int], start: int, end: int) -> bool:
    """Whether a CPU that stopped its tick at ``stops`` (sorted, ns) did so in ``[start, end)``."""
    i = bisect.bisect_left(stops, start)
    return i < len(stops) and stops[i] < end


class TracedTicks(NamedTuple):
    """A host's traced ticks, for a model run that replays one of its repetitions: per CPU when its tick
    handler ran and when it stopped its tick (CLOCK_MONOTONIC ns, sorted), the tick grid, and which
    grid tick is the model's tick 0 (the repetition's first jiffy)."""

    handlers: dict[int, list[int]]
    stops: dict[int, list[int]]
    tick_ns: int
    offset: int
    tick0: int

    def handler(self, cpu: int, tick: int) -> int | None:
        """When ``cpu``'s handler ran at the model's ``tick`` (None: it did not)."""
        return handler_at(self.handlers.get(cpu, []), self.tick_ns, self.offset, self.tick0 + tick)

    def stopped(self, cpu: int, start: int, end: int) -> bool:
        """Whether ``cpu`` stopped its tick between host times ``start`` and ``end``."""
        return stopped_between(self.stops.get(cpu, []), start, end)

    def tick_start(self, tick: int) -> int:
        """Where the model's ``tick`` falls in host time."""
        return self.offset + (self.tick0 + tick) * self.tick_ns

    def duty_before(self, tick: int, nr_cpus: int) -> int | None:
        """Who held the duty at the model's ``tick``, by the kernel's rule (a CPU that stops its tick
        gives it up, the next CPU whose handler runs takes it) over the DUTY_HISTORY_TICKS before:
        TICK_DO_TIMER_NONE if nobody did, None if no tick stop in that stretch says (the first stop
        is taken as the holder's: the trace does not say who held the duty before it)."""
        lo, hi = self.tick_start(tick - DUTY_HISTORY_TICKS), self.tick_start(tick)
        events: list[tuple[int, bool, int]] = []
        for cpu in range(nr_cpus):
            for times, is_stop in ((self.handlers.get(cpu, []), False), (self.stops.get(cpu, []), True)):
                i = bisect.bisect_left(times, lo)
                while i < len(times) and times[i] < hi:
                    events.append((times[i], is_stop, cpu))
                    i += 1
        events.sort()
        holder: int | None = None  # unknown until a stop says who gave it up
        for _, is_stop, cpu in events:
            if is_stop:
                if holder is None or holder == cpu:
                    holder = TICK_DO_TIMER_NONE
            elif holder == TICK_DO_TIMER_NONE:
                holder = cpu
        return holder


def _share(v: object) -> bool:
    """Whether ``v`` is a number from 0 to 1 (not a bool)."""
    return not isinstance(v, bool) and isinstance(v, (int, float)) and 0.0 <= v <= 1.0


class CpuActivity:
    """When model contexts run on one CPU: the caller's busy/idle transitions and the kworkers'
    intervals, kept only as far back as the tick state still needs them.

    Owned by the simulation's one thread: the caller appends in its own time order; work items append
    intervals as they run (in event order)."""

    __slots__ = ("caller", "work")

    def __init__(self) -> None:
        #: (time, busy) transitions of the caller on this CPU, in time order; before the first, idle.
        self.caller: list[tuple[int, bool]] = []
        #: (start, end) of model kworkers that ran on this CPU.
        self.work: list[tuple[int, int]] = []

    def busy_at(self, t: int) -> bool:
        """Whether a model context runs on the CPU at ``t``."""
        state = False
        for when, busy in self.caller:
            if when > t:
                break
            state = busy
        return state or any(s <= t <= e for s, e in self.work)

    def idle_since(self, t: int) -> int:
        """When the CPU last went idle at or before ``t`` (the caller's last transition to idle, or
        the end of the last kworker); NEVER if it has not run since the run began."""
        since = NEVER
        for when, busy in self.caller:
            if when > t:
                break
            if not busy:
                since = when
        for _, end in self.work:
            if end <= t:
                since = max(since, end)
        return since

    def forget_before(self, t: int) -> None:
        """Drop what no later tick can need (everything that ended before ``t``, but the caller's last
        transition before it, which says its state at ``t``)."""
        i = 0
        while i + 1 < len(self.caller) and self.caller[i + 1][0] <= t:
            i += 1
        if i:
            del self.caller[:i]
        self.work = [(s, e) for s, e in self.work if e >= t]


class TickSched:
    """The machine's tick state: ``tick_do_timer_cpu``, each CPU's tick (periodic or stopped), and per
    tick whether each CPU's timer softirq was raised. One per simulated run."""

    def __init__(self, sim: Sim, env: TickEnvironment, caller_cpu: int, traced: TracedTicks | None = None) -> None:
        self.sim = sim
        self.env = env
        self.caller_cpu = caller_cpu
        #: A replayed host repetition's traced ticks: the other CPUs tick, and every CPU stops its tick
        #: (giving the duty up), where the host's did; the handlers run in the host's order; the duty
        #: follows the kernel's rule from there. None: the environment's chains and shares.
        self.traced = traced
        #: Whether the duty is drawn at each contested tick (no trace, or no tick stop in its history).
        self.duty_drawn = traced is None
        self.nr_cpus = env.nr_cpus
        self.tick_do_timer_cpu = TICK_DO_TIMER_NONE
        #: The last tick processed (None: none yet).
        self.last: int | None = None
        #: Per CPU: whether its tick handler ran at the last processed tick.
        self.ticked = [False] * env.nr_cpus
        #: Whether the caller CPU's handler ran first the last time it and another CPU's both ran.
        self.caller_was_first = False
        #: Per (cpu, tick): did that CPU's tick raise TIMER_SOFTIRQ for a timer due then.
        self.raised: dict[tuple[int, int], bool] = {}
        #: Per CPU: the idle period (by its start time) and whether the tick was kept through it.
        self._kept: dict[tuple[int, int], bool] = {}
        self.activity = [CpuActivity() for _ in range(env.nr_cpus)]
        #: Ticks at which a timer slipped (for reports and tests).
        self.slips = 0
        #: When the caller last started running (its run time before a wait is now minus this).
        self.caller_busy_since = 0

    # --- the model's contexts report what runs where ---------------------------------------------
    def caller_busy(self, t: int, busy: bool) -> None:
        """The caller starts (``busy``) or stops running on its CPU at ``t``."""
        log = self.activity[self.caller_cpu].caller
        if log and log[-1][1] == busy:
            return
        log.append((t, busy))
        if busy:
            self.caller_busy_since = t

    def work_ran(self, cpu: int, start: int, end: int) -> None:
        """A model kworker ran on ``cpu`` from ``start`` to ``end``."""
        self.activity[cpu].work.append((start, end))

    # --- the kernel's rules ------------------------------------------------------------------------
    def timer_softirq_raised(self, cpu: int, tick: int) -> bool:
        """Whether ``cpu``'s tick at ``tick`` raises TIMER_SOFTIRQ for a timer whose bucket is ``tick``
        (``run_local_timers()``: ``jiffies`` has reached ``next_expiry``). False means the timer waits
        for that CPU's next tick, which always raises it (``jiffies`` has moved on by then)."""
        env = self.env
        if self.traced is None and (env.other_tick_share == 0.0 or env.holds_duty_against(self.caller_cpu) == 0.0
                                    and env.other_stops_between == 0.0 and env.caller_keeps_tick == 1.0
                                    and env.other_first_slips == 0.0):
            return True  # no other CPU can come to hold the duty: the timer's CPU advances jiffies itself
        self.advance_to(tick)
        raised = self.raised.get((cpu, tick), True)
        if not raised:
            self.slips += 1
        return raised

    def advance_to(self, tick: int) -> None:
        """Process every tick up to ``tick`` not processed yet (at most HISTORY_TICKS of them)."""
        first = tick - HISTORY_TICKS + 1
        if self.last is None or self.last < first - 1:
            self._restart(first)
        assert self.last is not None
        for k in range(self.last + 1, tick + 1):
            self._tick(k)
            self.last = k
        for act in self.activity:
            act.forget_before(self.sim.tick_time(tick - 1))

    def _restart(self, first: int) -> None:
        """Start the replay at ``first``: the other CPUs in their chain's stationary state, one of them
        that ticks holding the duty with the measured share (``other_holds_duty``), else the caller's
        CPU (which gives it up if it is idle with its tick stopped at the first tick replayed)."""
        rng = self.sim.rng
        self.ticked = [cpu != self.caller_cpu and rng.random() < self.env.other_tick_share
                       for cpu in range(self.nr_cpus)]
        holders = [cpu for cpu in range(self.nr_cpus) if self.ticked[cpu]]
        self.ticked[self.caller_cpu] = True  # so that a stopped tick at the first tick gives the duty up
        self.tick_do_timer_cpu = self.caller_cpu
        if holders and rng.random() < self.env.holds_duty_against(self.caller_cpu):
            self.tick_do_timer_cpu = holders[int(rng.random() * len(holders))]
        self.caller_was_first = rng.random() < self.env.tick_first_on(self.caller_cpu)
        if self.traced is not None:
            for cpu in range(self.nr_cpus):
                if cpu != self.caller_cpu:
                    self.ticked[cpu] = self.traced.handler(cpu, first - 1) is not None
            holder = self.traced.duty_before(first, self.nr_cpus)
            self.duty_drawn = holder is None
            if holder is not None:
                self.tick_do_timer_cpu = holder
        self.last = first - 1

    def _caller_cpu_ticks(self, cpu: int, tick: int) -> tuple[bool, bool]:
        """(does the model-driven ``cpu`` run its tick handler at ``tick``, did it wake from a stopped
        tick for it): busy CPUs tick; an idle one ticks if it kept its tick (tick_nohz_next_event()),
        or wakes from its stopped tick when its programmed event (its next timer) is due then."""
        sim = self.sim
        t = sim.tick_time(tick)
        act = self.activity[cpu]
        if act.busy_at(t):
            return True, False
        since = act.idle_since(t)
        if self.tick_nohz_idle_keeps_tick(cpu, since):
            return True, False
        nxt = sim.next_timer_bucket(cpu)
        if nxt is not None and nxt <= tick:
            return True, True
        return False, False

    def tick_nohz_idle_keeps_tick(self, cpu: int, since: int) -> bool:
        """Models tick_nohz_idle_stop_tick() -> tick_nohz_next_event() at the idle entry ``since``:
        the tick is kept when the next timer is at most a tick away (``delta <= TICK_NSEC`` from the
        last jiffies update), or, with the environment's share, when something else needs the CPU
        (``rcu_needs_cpu()``, another task). Decided once per idle period."""
        key = (cpu, since)
        kept = self._kept.get(key)
        if kept is None:
            sim = self.sim
            nxt = sim.next_timer_bucket(cpu)
            if since != NEVER and nxt is not None and nxt - sim.jiffy_at(since) <= 1:
                kept = True
            else:
                share = self.env.caller_keeps_tick
                kept = share >= 1.0 or (share > 0.0 and sim.rng.random() < share)
            self._kept[key] = kept
        return kept

    def _tick(self, k: int) -> None:
        """One tick, every CPU: stops since the last tick first (tick_nohz_stop_tick() gives the duty
        up), then the tick handlers in their order (tick_sched_do_timer(), run_local_timers())."""
        env, rng = self.env, self.sim.rng
        ticks, woke = self._ticking(k)
        caller = self.caller_cpu
        if caller in ticks and len(ticks) > 1:
            ticks.remove(caller)
            first = caller not in woke and self._caller_first(k, ticks)
            if caller not in woke:
                self.caller_was_first = first
            ticks.insert(0 if first else len(ticks), caller)
        raced = self._race_by_lead(k, ticks, woke)
        if raced is None and self.duty_drawn and len(ticks) > 1 and ticks[0] == caller and caller not in woke:
            # A contested tick: who holds the duty decides whether the caller CPU's timers fire now. It is
            # drawn here, where it was measured (the module docstring says why it is not followed).
            self.tick_do_timer_cpu = ticks[1] if rng.random() < env.holds_duty_against(caller) else caller
        jiffies_updated = False
        for cpu in ticks:
            if cpu in woke:
                jiffies_updated = True  # tick_nohz_irq_enter() -> tick_nohz_update_jiffies()
            if self.tick_sched_do_timer(cpu):
                jiffies_updated = True
            self.raised[(cpu, k)] = jiffies_updated  # run_local_timers(): jiffies >= next_expiry?
        if raced is not None:
            self.raised[(caller, k)] = rng.random() >= raced
        elif len(ticks) > 1 and ticks[0] != caller and caller in ticks and caller not in woke and \
                env.other_first_slips and rng.random() < env.other_first_slips:
            self.raised[(caller, k)] = False  # the other CPU's jiffies update came after all

    def _race_by_lead(self, k: int, ticks: list[int], woke: set[int]) -> float | None:
        """Where a replay knows by how much the caller CPU's handler led the others' at ``k`` and no
        tick stop said who holds the duty: the measured chance that a timer on the caller's CPU slips
        (TickEnvironment.slips_by_lead); None elsewhere (the duty's rules and shares decide)."""
        traced, caller = self.traced, self.caller_cpu
        if traced is None or not self.duty_drawn or caller not in ticks or caller in woke or len(ticks) < 2:
            return None
        mine = traced.handler(caller, k)
        theirs = [traced.handler(c, k) for c in ticks if c != caller]
        if mine is None or any(t is None for t in theirs):
            return None
        return self.env.slip_share(caller, min(t for t in theirs if t is not None) - mine)

    def _ticking(self, k: int) -> tuple[list[int], set[int]]:
        """The CPUs whose tick handler runs at ``k`` (by CPU number) and those of them woken from a
        stopped tick; the tick stops since the last tick taken (tick_nohz_stop_tick())."""
        env, rng, traced = self.env, self.sim.rng, self.traced
        ticks: list[int] = []
        woke: set[int] = set()
        for cpu in range(self.nr_cpus):
            if traced is not None and (cpu != self.caller_cpu or self.sim.tick_time(k) < 0):
                now_ticks = traced.handler(cpu, k) is not None  # the caller's CPU too, before the run
            elif cpu == self.caller_cpu:
                now_ticks, from_stop = self._caller_cpu_ticks(cpu, k)
                if from_stop:
                    woke.add(cpu)
            else:
                now_ticks = rng.random() < env.other_tick_after(self.ticked[cpu])
                if self.ticked[cpu] and now_ticks and env.other_stops_between and \
                        rng.random() < env.other_stops_between:
                    self.tick_nohz_stop_tick(cpu)  # idle for a moment between two ticks
            if traced is not None:
                # The duty moves where the host's CPUs stopped their ticks (the caller's CPU too: its
                # other tasks and idle moments are the host's, not the model's).
                stopped = traced.stopped(cpu, traced.tick_start(k - 1), traced.tick_start(k))
            else:
                stopped = self.ticked[cpu] and (not now_ticks or cpu in woke)
            if stopped:
                self.tick_nohz_stop_tick(cpu)  # it went idle and stopped its tick since the last one
            self.ticked[cpu] = now_ticks
            if now_ticks:
                ticks.append(cpu)
        return ticks, woke

    def _caller_first(self, k: int, others: list[int]) -> bool:
        """Whether the caller CPU's handler runs before the ``others``' at ``k``: as the trace shows where
        the host's ran too, else from the environment's chain."""
        traced = self.traced
        mine = traced.handler(self.caller_cpu, k) if traced is not None else None
        if traced is not None and mine is not None:
            return all(t is None or mine < t for t in (traced.handler(c, k) for c in others))
        return self.sim.rng.random() < self.env.caller_first_after(self.caller_was_first, self.caller_cpu)

    def tick_sched_do_timer(self, cpu: int) -> bool:
        """Models tick_sched_do_timer(): take the duty if nobody holds it; True if this CPU advances
        ``jiffies`` (it holds the duty)."""
        if self.tick_do_timer_cpu == TICK_DO_TIMER_NONE:
            self.tick_do_timer_cpu = cpu
        return self.tick_do_timer_cpu == cpu

    def tick_nohz_stop_tick(self, cpu: int) -> None:
        """Models the duty hand-over in tick_nohz_stop_tick(): a CPU that stops its tick while it
        holds the duty gives it up."""
        if self.tick_do_timer_cpu == cpu:
            self.tick_do_timer_cpu = TICK_DO_TIMER_NONE
