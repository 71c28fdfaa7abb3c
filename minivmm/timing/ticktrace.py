"""How the host's CPUs ticked while ``minivmm timing --calibrate`` ran, from tracefs: what
:class:`kernel_model.tick.TickEnvironment` needs, measured, and every grace-period timer's fate.

Recorded in a private trace instance (``minivmm.tracefs``), clock ``mono`` (CLOCK_MONOTONIC, the clock
the calibration reads):

* ``timer:hrtimer_expire_entry`` of ``tick_nohz_handler``: each CPU's tick handler (the periodic tick
  in high-resolution mode, and the wake-up of a CPU whose tick was stopped, both an hrtimer there);
* ``timer:tick_stop``: a CPU stopping its tick in NOHZ idle (tick_nohz_stop_tick());
* ``timer:timer_start`` / ``timer:timer_expire_entry`` of ``delayed_work_timer_fn``: the calibration's
  ``process_srcu`` timers, armed by the calibrating thread, with their bucket (``bucket_expiry``) and
  the jiffies value when armed (``now``);
* given the calling threads, ``sched:sched_wakeup`` of them and ``sched:sched_switch`` to them: when
  each wake-up of a waiting caller made it runnable and when it ran (:func:`wake_latencies`), the
  scheduler's part of a wait, which the differential harness replays.

From these, per timer: its CPU, the tick its bucket falls on, whether each other CPU's tick handler ran
at that tick and in which order, whether the timer's CPU kept its tick through the wait (its handler
ran at the tick before the bucket and did not stop its tick since), and
whether it expired at its bucket's tick or later (:class:`TimerFate`). The environment is their
shares (:func:`tick_environment`).

The tick grid (where in CLOCK_MONOTONIC each tick falls) is taken from the tick handlers themselves:
they run a few µs after their tick, all on the same grid.
"""

from __future__ import annotations

import bisect
from collections.abc import Collection
from dataclasses import dataclass, field

from kernel_model.tick import LEAD_BINS_NS, TickEnvironment, TracedTicks, handler_at, lead_bin, stopped_between
from minivmm.tracefs import Instance, Record, Session, TracefsUnavailable, function_filter, kernel_addresses

HRTIMER, TICK_STOP = "timer/hrtimer_expire_entry", "timer/tick_stop"
TIMER_START, TIMER_EXPIRE = "timer/timer_start", "timer/timer_expire_entry"
TICK_FN, DWORK_FN = "tick_nohz_handler", "delayed_work_timer_fn"
WAKEUP, SWITCH = "sched/sched_wakeup", "sched/sched_switch"
BUFFER_KB_PER_CPU = 4096
#: TickRecord.grid_offset: the window the handlers' phases cluster in, and the largest gap between two
#: phases of one cluster (ns).
GRID_CLUSTER_NS = 50_000
GRID_GAP_NS = 20_000


def arm_callers(inst: Instance, tids: Collection[int]) -> str:
    """Enable the wake-ups of threads ``tids`` and the switches to them in ``inst`` (before it starts);
    "" when done, else why not (the ticks are traced either way)."""
    for event in (WAKEUP, SWITCH):
        if not inst.has_event(event):
            return f"the kernel has no {event.replace('/', ':')} tracepoint"
    try:
        inst.enable(WAKEUP, ("pid",), " || ".join(f"pid == {t}" for t in sorted(tids)))
        inst.enable(SWITCH, ("next_pid",), " || ".join(f"next_pid == {t}" for t in sorted(tids)))
    except TracefsUnavailable as e:
        return str(e)
    return ""


def arm(inst: Instance) -> None:
    """Enable the events in ``inst`` and start it; TracefsUnavailable when this kernel cannot record them
    as needed (no such tracepoint, no way to filter by function)."""
    spec = {HRTIMER: ((), [TICK_FN]), TICK_STOP: (("success",), None),
            TIMER_START: (("timer", "bucket_expiry", "now"), [DWORK_FN]),
            TIMER_EXPIRE: (("timer",), [DWORK_FN])}
    for event in spec:
        if not inst.has_event(event):
            raise TracefsUnavailable(f"the kernel has no {event.replace('/', ':')} tracepoint")
    addresses: dict[str, int] | None = None
    for attempt in range(2):
        try:
            for event, (fields, functions) in spec.items():
                if event in inst.enabled:
                    continue
                inst.enable(event, fields, None if functions is None else function_filter(functions, addresses))
            break
        except TracefsUnavailable:
            if attempt:
                raise
            addresses = kernel_addresses({TICK_FN, DWORK_FN})
            if addresses is None:
                raise TracefsUnavailable("the filters cannot name kernel functions here (no .function modifier, "
                                         "and /proc/kallsyms hides addresses)") from None
    inst.start(clock="mono", buffer_kb=BUFFER_KB_PER_CPU, overwrite=False)


@dataclass
class TickRecord:
    """What one traced stretch recorded, by CPU, in time order."""

    tick_ns: int
    #: cpu -> times its tick handler ran.
    ticks: dict[int, list[int]] = field(default_factory=dict)
    #: cpu -> times it stopped its tick.
    stops: dict[int, list[int]] = field(default_factory=dict)
    #: timer -> (armed at, cpu, armed by task, bucket jiffy, jiffies when armed)
    armed: dict[int, list[tuple[int, int, int, int, int]]] = field(default_factory=dict)
    #: timer -> times it expired.
    expired: dict[int, list[int]] = field(default_factory=dict)
    #: traced caller thread -> times a wake-up made it runnable (sched_wakeup).
    woken: dict[int, list[int]] = field(default_factory=dict)
    #: traced caller thread -> times a CPU switched to it (sched_switch).
    switched_in: dict[int, list[int]] = field(default_factory=dict)
    #: grid_offset(), once worked out (every reader of the record asks for it; feed() forgets it).
    _grid: int | None = field(default=None, init=False, repr=False, compare=False)

    def feed(self, records: list[Record]) -> None:
        """Take the instance's records (in time order)."""
        self._grid = None
        for rec in records:
            if rec.event == HRTIMER:
                self.ticks.setdefault(rec.cpu, []).append(rec.ts)
            elif rec.event == TICK_STOP:
                if rec.fields[0]:
                    self.stops.setdefault(rec.cpu, []).append(rec.ts)
            elif rec.event == TIMER_START:
                timer, bucket, now = rec.fields
                self.armed.setdefault(timer, []).append((rec.ts, rec.cpu, rec.pid, bucket, now))
            elif rec.event == TIMER_EXPIRE:
                self.expired.setdefault(rec.fields[0], []).append(rec.ts)
            elif rec.event == WAKEUP:
                self.woken.setdefault(rec.fields[0], []).append(rec.ts)
            elif rec.event == SWITCH:
                self.switched_in.setdefault(rec.fields[0], []).append(rec.ts)

    def grid_offset(self) -> int:
        """Where the ticks fall in CLOCK_MONOTONIC (0 <= offset < tick): the earliest phase of the
        cluster the handlers' phases make (they run a few µs after their tick, on a loaded PVM host
        up to a few hundred µs, all together). The cluster is found where GRID_CLUSTER_NS holds the
        most handlers and reaches back from there through phases at most GRID_GAP_NS apart: a lone
        handler earlier than the cluster does not move the grid (with a quarter tick's window, one
        such handler had put the grid 150-400 µs before every other, and the model's jiffies
        updates as early)."""
        if self._grid is None:
            self._grid = self._cluster_start()
        return self._grid

    def _cluster_start(self) -> int:
        phases = sorted(t % self.tick_ns for ts in self.ticks.values() for t in ts)
        if not phases:
            raise TracefsUnavailable("no tick handler was traced")
        n, tick = len(phases), self.tick_ns
        around = [p - tick for p in phases] + phases + [p + tick for p in phases]  # the phases wrap
        best, start = -1, n
        for i in range(n, 2 * n):
            held = bisect.bisect_right(around, around[i] + GRID_CLUSTER_NS) - i
            if held > best:
                best, start = held, i
        first = start - n + 1  # back at most once round the tick
        while start > first and around[start] - around[start - 1] <= GRID_GAP_NS:
            start -= 1
        return around[start] % tick

    def tick_of(self, t: int, offset: int) -> int:
        """The tick (counted on the grid from CLOCK_MONOTONIC 0) a handler running at ``t`` belongs to."""
        return (t - offset) // self.tick_ns

    def handler_at(self, cpu: int, tick: int, offset: int) -> int | None:
        """When ``cpu``'s tick handler ran for ``tick`` (None: it did not)."""
        return handler_at(self.ticks.get(cpu, []), self.tick_ns, offset, tick)

    def stopped_between(self, cpu: int, start: int, end: int) -> bool:
        """Whether ``cpu`` stopped its tick in ``[start, end)``."""
        return stopped_between(self.stops.get(cpu, []), start, end)

    def wake_latencies(self, tid: int, start: int, end: int) -> tuple[int, ...] | None:
        """How long each wake-up of thread ``tid`` in ``[start, end)`` waited to run (sched_wakeup to
        the next sched_switch to it), in order; None when its wake-ups were not traced."""
        if tid not in self.woken and tid not in self.switched_in:
            return None
        woken, ran = self.woken.get(tid, []), self.switched_in.get(tid, [])
        out = []
        for w in woken[bisect.bisect_left(woken, start):]:
            if w >= end:
                break
            i = bisect.bisect_left(ran, w)
            if i < len(ran):
                out.append(ran[i] - w)
        return tuple(out)


@dataclass(frozen=True)
class TimerFate:
    """One traced grace-period timer, at the tick of its bucket."""

    cpu: int
    armed_ns: int
    bucket_tick: int
    #: Whether its CPU's tick was periodic at the bucket: its handler ran at the tick before, and it did
    #: not stop its tick after that (tick_nohz_next_event() kept it).
    kept_tick: bool
    #: Per other CPU: did its handler run at the bucket's tick, and before the timer CPU's.
    others_ticked: tuple[bool, ...]
    others_first: tuple[bool, ...]
    #: Whether the timer CPU's handler ran at the bucket's tick at all.
    cpu_ticked: bool
    #: Ticks after the bucket's at which it expired (0: on time; None: not seen expiring).
    late_ticks: int | None

    @property
    def ran_first(self) -> bool:
        """Whether its CPU's handler ran at the bucket's tick before every other CPU's that ran."""
        return not any(f for t, f in zip(self.others_ticked, self.others_first) if t)

    @property
    def other_ran_first(self) -> bool:
        """Whether its CPU kept its tick and ran its handler at the bucket's tick after another CPU's."""
        return self.kept_tick and self.cpu_ticked and any(t and f for t, f in
                                                          zip(self.others_ticked, self.others_first))

    @property
    def rule_allows_slip(self) -> bool:
        """Whether kernel_model.tick's rule lets this timer slip: its CPU kept its tick and ran its
        handler at the bucket's tick before another CPU's (which may hold the do_timer duty)."""
        return self.kept_tick and self.cpu_ticked and any(t and not f for t, f in
                                                          zip(self.others_ticked, self.others_first))


def timer_fates(rec: TickRecord, tid: int, nr_cpus: int) -> list[TimerFate]:
    """The fate of every delayed-work timer thread ``tid`` armed (the calibration's process_srcu
    timers: its registrations' call_srcu() arms them), in the order they were armed."""
    offset = rec.grid_offset()
    out = []
    for timer, arms in rec.armed.items():
        expiries = rec.expired.get(timer, [])
        for armed, cpu, pid, bucket, now in arms:
            if pid != tid:
                continue
            k_arm = rec.tick_of(armed, offset)
            k_bucket = k_arm + (bucket - now)
            others = [c for c in range(nr_cpus) if c != cpu]
            mine = rec.handler_at(cpu, k_bucket, offset)
            theirs = [rec.handler_at(c, k_bucket, offset) for c in others]
            before = rec.handler_at(cpu, k_bucket - 1, offset)
            kept = before is not None and not rec.stopped_between(cpu, before, offset + k_bucket * rec.tick_ns)
            i = bisect.bisect_left(expiries, armed)
            late = None if i >= len(expiries) else max(0, rec.tick_of(expiries[i], offset) - k_bucket)
            out.append(TimerFate(cpu, armed, k_bucket, kept, tuple(t is not None for t in theirs),
                                 tuple(t is not None and mine is not None and t < mine for t in theirs),
                                 mine is not None, late))
    out.sort(key=lambda f: f.armed_ns)
    return out


#: How far ahead (ticks) a grace-period timer is armed at most: SRCU's delay is a jiffy or two.
GP_TIMER_TICKS = 3


def grace_period_fates(rec: TickRecord, tids: Collection[int], nr_cpus: int) -> list[TimerFate]:
    """:func:`timer_fates` of the threads ``tids`` (a VMM's set-up may arm them from several), of the
    timers armed at most GP_TIMER_TICKS ahead, the grace periods' (the threads' other delayed work,
    minutes ahead, armed as a VM is made, says nothing about them), in the order they were armed."""
    offset = rec.grid_offset()
    fates = [f for tid in set(tids) for f in timer_fates(rec, tid, nr_cpus)
             if f.bucket_tick - rec.tick_of(f.armed_ns, offset) <= GP_TIMER_TICKS]
    fates.sort(key=lambda f: f.armed_ns)
    return fates


def tick_environment(rec: TickRecord, fates: list[TimerFate], nr_cpus: int,
                     waits: list[tuple[int, int]]) -> TickEnvironment:
    """The shares the model needs, measured over the calibration: ``fates`` of the timers armed right
    before a wait, and ``waits`` (start, end) of the waits themselves (CLOCK_MONOTONIC)."""
    if not fates:
        raise TracefsUnavailable("no grace-period timer of the calibration was traced")
    offset = rec.grid_offset()
    cpus = [f.cpu for f in fates]
    boot = sum(c == 0 for c in cpus) / len(cpus)
    keeps = sum(f.kept_tick for f in fates) / len(fates)
    both = [f for f in fates if f.cpu_ticked and any(f.others_ticked)]
    first = sum(f.ran_first for f in both) / len(both) if both else 0.5
    ticked = pairs = stayed = stops = 0
    seen = 0
    orders: list[tuple[bool, bool]] = []
    for f, (start, end) in zip(fates, waits):
        ks = range(rec.tick_of(start, offset) + 1, rec.tick_of(end, offset) + 1)
        others = [c for c in range(nr_cpus) if c != f.cpu]
        last_first: bool | None = None
        for c in others:
            prev: int | None = None
            for k in ks:
                now = rec.handler_at(c, k, offset)
                seen += 1
                ticked += now is not None
                if prev is not None:
                    pairs += 1
                    stayed += now is not None
                    if now is not None and rec.stopped_between(c, prev, now):
                        stops += 1
                prev = now
        for k in ks:
            mine = rec.handler_at(f.cpu, k, offset)
            theirs = [t for c in others if (t := rec.handler_at(c, k, offset)) is not None]
            if mine is None or not theirs:
                continue
            first_now = mine < min(theirs)
            if last_first is not None:
                orders.append((last_first, first_now))
            last_first = first_now
    share = ticked / seen if seen else 0.0
    persist = stayed / pairs if pairs else share
    allowed = [f for f in fates if f.rule_allows_slip and f.late_ticks is not None]
    holds = sum(bool(f.late_ticks) for f in allowed) / len(allowed) if allowed else 0.0
    raced = [bool(f.late_ticks) for f in fates if f.other_ran_first and f.late_ticks is not None]
    other_first_slips = sum(raced) / len(raced) if raced else 0.0
    after_first = [cur for prev, cur in orders if prev]
    first_persist = sum(after_first) / len(after_first) if after_first else 0.5
    first_by = tuple(per_cpu([f.ran_first for f in both if f.cpu == c], first) for c in range(nr_cpus))
    holds_by = tuple(per_cpu([bool(f.late_ticks) for f in allowed if f.cpu == c], holds) for c in range(nr_cpus))
    return TickEnvironment(nr_cpus=nr_cpus, caller_on_boot_cpu=round(boot, 4), caller_keeps_tick=round(keeps, 4),
                           slips_by_lead=slips_by_lead(rec, fates, nr_cpus),
                           other_tick_share=round(share, 4), other_tick_persist=round(persist, 4),
                           caller_tick_first=round(first, 4), caller_first_persist=round(first_persist, 4),
                           other_stops_between=round(stops / stayed, 4) if stayed else 0.0,
                           other_holds_duty=round(holds, 4), other_first_slips=round(other_first_slips, 4),
                           caller_tick_first_by_cpu=first_by, other_holds_duty_by_cpu=holds_by)


def slips_by_lead(rec: TickRecord, fates: list[TimerFate], nr_cpus: int) -> tuple[tuple[float | None, ...], ...]:
    """TickEnvironment.slips_by_lead: per CPU and bin of its handler's lead over the other CPUs' at the
    bucket's tick (kernel_model.tick.LEAD_BINS_NS), the share of ``fates`` that slipped, of the timers
    whose CPU kept its tick, with every CPU's handler traced at the bucket and no tick stop in the
    DUTY_HISTORY_TICKS before (nothing said who held the duty). Each CPU's share is pulled towards the
    bin's all-CPU share (:func:`per_cpu`); () when no timer qualifies."""
    offset = rec.grid_offset()
    traced = TracedTicks(rec.ticks, rec.stops, rec.tick_ns, offset, 0)
    bins = len(LEAD_BINS_NS) + 1
    seen: list[list[list[bool]]] = [[[] for _ in range(bins)] for _ in range(nr_cpus)]
    for f in fates:
        if f.late_ticks is None or not f.kept_tick or not f.cpu_ticked or f.cpu >= nr_cpus:
            continue
        mine = rec.handler_at(f.cpu, f.bucket_tick, offset)
        theirs = [rec.handler_at(c, f.bucket_tick, offset) for c in range(nr_cpus) if c != f.cpu]
        if mine is None or not theirs or any(t is None for t in theirs):
            continue
        if traced.duty_before(f.bucket_tick, nr_cpus) is not None:
            continue  # a tick stop says who held the duty: the rule decides there, not the race
        lead = min(t for t in theirs if t is not None) - mine
        seen[f.cpu][lead_bin(lead)].append(bool(f.late_ticks))
    if not any(any(row) for row in seen):
        return ()

    def share(cpu: int, b: int) -> float | None:
        pooled = [x for row in seen for x in row[b]]
        if not pooled:
            return None
        overall = sum(pooled) / len(pooled)
        mine = per_cpu(seen[cpu][b], overall)
        return round(overall, 4) if mine is None else mine
    return tuple(tuple(share(cpu, b) for b in range(bins)) for cpu in range(nr_cpus))


#: Pseudo-observations of the all-CPU share that a per-CPU share is pulled towards (a CPU the caller
#: was on for a few timers only gets a share near the all-CPU one, not 0% or 100% from three samples).
PER_CPU_PRIOR = 5


def per_cpu(outcomes: list[bool], overall: float) -> float | None:
    """The share of true ``outcomes`` of one CPU, pulled towards ``overall`` by PER_CPU_PRIOR
    pseudo-observations; None when the CPU has none."""
    if not outcomes:
        return None
    return round((sum(outcomes) + PER_CPU_PRIOR * overall) / (len(outcomes) + PER_CPU_PRIOR), 4)


class TickTracer:
    """Trace the ticks of what runs inside ``with``: ``record`` is then the :class:`TickRecord`, or None
    with ``why_not`` saying why (tracefs not usable here: not root, no such tracepoints, ...). Call
    :meth:`poll` now and then (between calibration runs): it moves what the kernel recorded out of its
    buffers, so they never fill. Owned by the thread that entered it.

    With ``callers`` (thread ids) it also records their wake-ups and switches to them (``TickRecord.woken``,
    ``switched_in``), where the kernel can; ``callers_why_not`` says why not."""

    def __init__(self, tick_ns: int, callers: Collection[int] = ()) -> None:
        self.tick_ns = tick_ns
        self.callers = tuple(callers)
        self.record: TickRecord | None = None
        self.why_not = ""
        self.callers_why_not = "" if self.callers else "no caller named"
        self.lost = 0
        self._session: Session | None = None
        self._inst: Instance | None = None

    def __enter__(self) -> TickTracer:
        try:
            self._session = Session.open()
            self._inst = self._session.instance("ticks")
            if self.callers:
                self.callers_why_not = arm_callers(self._inst, self.callers)
            arm(self._inst)
        except (TracefsUnavailable, OSError) as e:
            self.why_not = str(e) if isinstance(e, TracefsUnavailable) else f"tracefs: {e.strerror or e}"
            self._close()
        return self

    def poll(self) -> None:
        """Take what the kernel has recorded so far out of its buffers."""
        if self._inst is not None:
            self._inst.read()

    def __exit__(self, *exc: object) -> None:
        try:
            if self._inst is not None and not any(exc):
                self._inst.stop()
                record = TickRecord(self.tick_ns)
                record.feed(self._inst.drain(final=True))
                self.lost = self._inst.overruns()
                if self.lost:
                    self.why_not = f"the trace lost {self.lost} events"
                elif not record.ticks:
                    self.why_not = "no tick handler was traced"
                else:
                    self.record = record
        finally:
            self._close()

    def _close(self) -> None:
        if self._session is not None:
            self._session.close()
        self._session = self._inst = None
