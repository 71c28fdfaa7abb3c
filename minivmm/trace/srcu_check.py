"""The explanation checked against the kernel: what the SRCU grace-period machinery itself did during a
trace, from its own events, set beside what the model says each stall waited for.

What is recorded (in a second private instance of the same tracefs session and clock: ``set_event_pid``
applies to every event of an instance, and these events fire in softirq and kworker context, not in
the traced threads):

* ``timer:timer_start`` / ``timer:timer_expire_entry`` of delayed-work timers
  (``function == delayed_work_timer_fn``): SRCU's grace-period work is a delayed work, armed by
  ``srcu_funnel_gp_start()`` (``queue_delayed_work(rcu_gp_wq, &sup->work, !!srcu_get_delay(ssp))``,
  kernel/rcu/srcutree.c) in the context of the task that asked for the grace period;
* ``workqueue:workqueue_queue_work`` of ``process_srcu``: queued by the timer's function on the CPU
  where it expired, which ties the timer to SRCU's work (the timer event does not name the work);
* ``workqueue:workqueue_execute_start`` of ``process_srcu`` and ``srcu_invoke_callbacks``.

Filtered as far as the events allow: by function in the kernel; to this VM here, by keeping only timers
armed by the traced threads (a VM's SRCU structures, ``kvm->srcu`` and ``kvm->irq_srcu``, are asked for
grace periods from its ioctls). The filters name functions with the ``.function`` modifier, else with
their addresses from /proc/kallsyms; where neither works, there is no check (and the report says so).

For a stall the kernel's answer is: the SRCU timer that fired during the call (the earliest armed, as
the model ranks a grace period an earlier step asked for first), which ioctl armed it, when it fired
and when ``process_srcu`` then ran.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

from minivmm.tracefs import Instance, Record, TracefsUnavailable, function_filter, kernel_addresses

TIMER_START, TIMER_EXPIRE = "timer/timer_start", "timer/timer_expire_entry"
QUEUE, EXECUTE = "workqueue/workqueue_queue_work", "workqueue/workqueue_execute_start"
#: A timer's function queues the work right away, on the CPU where it expired.
_QUEUED_WITHIN_NS = 1_000_000
#: A call that waited for a grace period returns soon after process_srcu ends it (the waiter is woken).
WOKEN_WITHIN_NS = 1_000_000
BUFFER_KB_PER_CPU = 1024


def arm(inst: Instance) -> None:
    """Enable the SRCU machinery's events in ``inst`` (an instance without a pid filter); raises
    TracefsUnavailable when this kernel's tracefs cannot record them."""
    spec = {TIMER_START: (("timer",), ["delayed_work_timer_fn"]),
            TIMER_EXPIRE: (("timer",), ["delayed_work_timer_fn"]),
            QUEUE: (("work",), ["process_srcu"]),
            EXECUTE: (("work", "function"), ["process_srcu", "srcu_invoke_callbacks"])}
    for event in spec:
        if not inst.has_event(event):
            raise TracefsUnavailable(f"the kernel has no {event.replace('/', ':')} tracepoint")
    try:
        for event, (fields, functions) in spec.items():
            inst.enable(event, fields, filter=function_filter(functions, None))
    except TracefsUnavailable:
        # Older kernels have no .function modifier: the same filters with the functions' addresses.
        symbols = kernel_addresses({f for _, functions in spec.values() for f in functions})
        if symbols is None:
            raise TracefsUnavailable("the filters cannot name kernel functions here (no .function modifier, "
                                     "and /proc/kallsyms hides addresses)") from None
        for event, (fields, functions) in spec.items():
            inst.enable(event, fields, filter=function_filter(functions, symbols))
    inst.start(clock="mono", buffer_kb=BUFFER_KB_PER_CPU, overwrite=False)


@dataclass
class SrcuTimeline:
    """The SRCU grace-period machinery as the kernel recorded it, kept for the traced threads' timers.

    Fed records of the SRCU instance in time order (:meth:`feed`); ``threads`` says which tasks are
    traced (consulted as the records come, so a thread started late counts)."""

    threads: Any = field(default_factory=set)
    #: timer -> [(armed at, by thread)] for timers the traced threads armed (and their re-arms).
    arms: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    #: (fired at, timer, cpu) for those timers, in time order.
    expiries: list[tuple[int, int, int]] = field(default_factory=list)
    #: timer -> SRCU work (learnt from process_srcu being queued right after the timer fired there).
    work_of: dict[int, int] = field(default_factory=dict)
    #: Every work process_srcu was queued on (any SRCU structure's).
    srcu_works: set[int] = field(default_factory=set)
    #: work -> times process_srcu started running on it.
    runs: dict[int, list[int]] = field(default_factory=dict)
    #: when srcu_invoke_callbacks ran (any SRCU structure: the callbacks' work is per CPU, not per VM).
    callbacks: list[int] = field(default_factory=list)
    _last_expiry: dict[int, tuple[int, int]] = field(default_factory=dict)  # cpu -> (fired at, timer)

    def feed(self, records: list[Record]) -> None:
        """Take a batch of the SRCU instance's records (in time order)."""
        for rec in records:
            event = rec.event
            if event == TIMER_START:
                if rec.pid in self.threads or rec.fields[0] in self.arms:
                    self.arms.setdefault(rec.fields[0], []).append((rec.ts, rec.pid))
            elif event == TIMER_EXPIRE:
                timer = rec.fields[0]
                if timer in self.arms:
                    self.expiries.append((rec.ts, timer, rec.cpu))
                    self._last_expiry[rec.cpu] = (rec.ts, timer)
            elif event == QUEUE:
                work = rec.fields[0]
                self.srcu_works.add(work)
                last = self._last_expiry.pop(rec.cpu, None)
                if last is not None and rec.ts - last[0] <= _QUEUED_WITHIN_NS:
                    self.work_of[last[1]] = work
            elif event == EXECUTE:
                if rec.fields[0] in self.srcu_works:
                    self.runs.setdefault(rec.fields[0], []).append(rec.ts)
                else:
                    self.callbacks.append(rec.ts)

    def srcu_timers(self) -> set[int]:
        """The traced threads' timers that were SRCU's (the work they queued was process_srcu)."""
        return set(self.work_of)


@dataclass(frozen=True)
class KernelGp:
    """What the kernel recorded of the grace period a stalled call waited for."""

    timer: int
    armed_ns: int
    armed_by_tid: int
    armed_in_ioctl: int | None   # the traced ioctl during which the timer was armed (None: outside one)
    fired_ns: int
    processed_ns: int | None     # process_srcu's start after it fired


def kernel_gp(timeline: SrcuTimeline, enter_ns: int, exit_ns: int, spans: list[tuple[int, int, int, int]]) -> \
        KernelGp | None:
    """The SRCU timer that fired during ``[enter_ns, exit_ns]`` and was armed earliest, with the ioctl that
    armed it. ``spans``: (enter, exit, tid, ioctl index) of the traced ioctls, sorted by enter."""
    srcu = timeline.srcu_timers()
    best: KernelGp | None = None
    for fired, timer, _cpu in timeline.expiries:
        if not enter_ns <= fired <= exit_ns or timer not in srcu:
            continue
        arms = [a for a in timeline.arms.get(timer, []) if a[0] <= fired]
        if not arms:
            continue
        armed, tid = arms[-1]
        if best is not None and armed >= best.armed_ns:
            continue
        runs = timeline.runs.get(timeline.work_of.get(timer, -1), [])
        k = bisect.bisect_left(runs, fired)
        best = KernelGp(timer, armed, tid, _ioctl_at(spans, armed, tid), fired, runs[k] if k < len(runs) else None)
    return best


def _ioctl_at(spans: list[tuple[int, int, int, int]], ts: int, tid: int) -> int | None:
    """The index of the traced ioctl that thread ``tid`` was in at ``ts``."""
    k = bisect.bisect_right(spans, (ts, 1 << 62, 1 << 62, 1 << 62))
    for enter, exit_, t, index in reversed(spans[max(0, k - 64):k]):
        if t == tid and enter <= ts <= exit_:
            return index
    return None


@dataclass(frozen=True)
class StallCheck:
    """One stall, the kernel's record of the grace period beside the model's attribution."""

    kernel: KernelGp | None
    enter_ns: int
    model_started_by: int | None    # the ioctl the model says started the grace period waited for
    model_wait_ns: int | None       # how long the model has the call wait (its figure, not a measurement)
    agrees: bool
    #: The numbers of the steps those two ioctls became (``kernel_model.sequences.step_number``); None for
    #: an ioctl that became no step of this VM's sequence.
    armed_in_step: int | None = None
    model_started_by_step: int | None = None

    def describe(self, ref: Any) -> str:
        """One line: the kernel's timer and the model's beside it, and whether they agree.
        ``ref(index)`` names a traced ioctl as reports do (:func:`minivmm.trace.explain.ioctl_ref`:
        ``step #51 KVM_CREATE_IRQCHIP (ioctl #56)``)."""
        if self.kernel is None:
            kernel = "no SRCU grace-period timer the program armed fired during this call"
        else:
            k = self.kernel
            by = (f"armed during {ref(k.armed_in_ioctl)}" if k.armed_in_ioctl is not None
                  else f"armed by task {k.armed_by_tid} outside the traced ioctls")
            ran = ("" if k.processed_ns is None else
                   f", process_srcu ran at +{(k.processed_ns - self.enter_ns) / 1e6:.2f} ms")
            kernel = (f"SRCU grace-period timer {by} {(self.enter_ns - k.armed_ns) / 1e6:.2f} ms before this call "
                      f"fired at +{(k.fired_ns - self.enter_ns) / 1e6:.2f} ms{ran}")
        if self.model_started_by is not None:
            step = "" if self.model_started_by_step is None else f"step #{self.model_started_by_step} "
            model = (f"model: grace period started by {step}(ioctl #{self.model_started_by}), wait ends at "
                     f"+{(self.model_wait_ns or 0) / 1e6:.2f} ms")
        else:
            model = "model: no grace period started earlier"
        return f"kernel: {kernel}; {model} -> {'agree' if self.agrees else 'DISAGREE'}"

    def to_json(self) -> dict[str, Any]:
        """JSON-ready: times in µs from the call's start."""
        k = self.kernel

        def rel(ns: int | None) -> float | None:
            return None if ns is None else (ns - self.enter_ns) / 1000
        return {"timer_armed_by_ioctl": None if k is None else k.armed_in_ioctl,
                "timer_armed_by_step": self.armed_in_step,
                "timer_armed_us": None if k is None else rel(k.armed_ns),
                "timer_fired_us": None if k is None else rel(k.fired_ns),
                "process_srcu_us": None if k is None else rel(k.processed_ns),
                "model_started_by_ioctl": self.model_started_by,
                "model_started_by_step": self.model_started_by_step,
                "model_wait_us": None if self.model_wait_ns is None else self.model_wait_ns / 1000,
                "agrees": self.agrees}


def check_stalls(ex: Any, result: Any, stalls: list[int]) -> dict[int, StallCheck]:
    """For each stalled step of explanation ``ex`` (of ``result``): the kernel's record beside the model's
    attribution (``ex.attribution_detail``). They agree when the timer that fired during the call was
    armed in the ioctl the model names; or, with no earlier grace period in the model, unless the call
    returned right after the process_srcu of a timer armed before it (it waited for that one)."""
    timeline: SrcuTimeline = result.srcu
    rows = ex.vm.rows if ex.vm is not None else range(len(result.events))
    events = [result.events[i] for i in rows]
    spans = sorted((e.enter_ns, e.enter_ns + (e.duration_ns or 0), e.tid, e.index) for e in events)
    out = {}
    for i in stalls:
        ev = result.events[ex.step_events[i]]
        detail = ex.attribution_detail.get(i) or {}
        started = detail.get("started_by_ioctl") if detail.get("transferred") else None
        started_step = detail.get("started_by_step") if detail.get("transferred") else None
        waited = detail.get("waited_us")
        exit_ns = ev.enter_ns + (ev.duration_ns or 0)
        gp = kernel_gp(timeline, ev.enter_ns, exit_ns, spans)
        earlier = gp is not None and gp.armed_ns < ev.enter_ns
        if started is not None:
            agrees = gp is not None and earlier and gp.armed_in_ioctl == started
        else:
            # The model has no earlier grace period here. A timer that fired while the call was slow for
            # another reason (the host busy) says nothing; one whose process_srcu the call returned right
            # after says the call waited for it.
            ended_by = gp is not None and gp.processed_ns is not None and exit_ns - gp.processed_ns <= WOKEN_WITHIN_NS
            agrees = not (earlier and ended_by)
        out[i] = StallCheck(gp, ev.enter_ns, started, None if waited is None else int(waited * 1000), agrees,
                            ex.step_number_of(gp.armed_in_ioctl) if gp is not None else None,
                            started_step)
    return out
