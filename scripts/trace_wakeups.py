#!/usr/bin/env python3
"""Where a stalled step's time goes after its grace-period timer: traced, repetition by repetition.

Runs set-up sequences with ``minivmm timing``'s runner (jitter on) while tracefs records the CPUs'
ticks (the calibration's tick tracer) and, in a second private instance, the grace period's chain:
``workqueue:workqueue_queue_work`` and ``workqueue_execute_start`` (``process_srcu``,
``srcu_invoke_callbacks``), ``sched:sched_wakeup`` and ``sched_switch`` of the calling thread. For the
first step of each repetition that waits for a grace period it reports whether the repetition's first
grace-period timer fired on its bucket's tick, how long after being queued the kworkers ran, how long
after the timer the caller was woken, and how long after that it ran: a woken caller that does not
preempt the task on its CPU runs only at the next tick.

The default sequences differ only in what the caller does between its registration and its memslot:
nothing, a vCPU's creation, or 300 µs of spinning. Run it beside a load (e.g. two
``python3 -c 'while True: pass'``) to see the waiter's tick-wait; on a quiet host it is 0.

Usage: python scripts/trace_wakeups.py [--repeat 200] [SEQUENCE ...]    (root, tracefs; a SEQUENCE is
       a named sequence or a sequence file)
Exit codes: 0 done, 2 bad arguments, 4 cannot run here (no /dev/kvm, no tracefs), 130 interrupted.
"""

from __future__ import annotations

import argparse
import bisect
import os
import statistics
import sys
import threading

from kernel_model.differential import waits_for_gp
from kernel_model.sequences import Sequence, SequenceError, load_sequence, parse_sequence
from minivmm.host import modelled_kernel, read_host_info, this_host
from minivmm.kvm.errors import KvmUnavailable
from minivmm.timing import ticktrace
from minivmm.timing.differential import measure_traced
from minivmm.timing.runner import Repetition
from minivmm.tracefs import Instance, Record, Session, TracefsUnavailable, kernel_addresses

PROBES = {
    "at once": "create_vm\nioeventfd addr=0xd0000050 len=4\nmemslot slot=0 base=0 size=2M\n",
    "after a vCPU": "create_vm\nioeventfd addr=0xd0000050 len=4\nvcpu id=0\nmemslot slot=0 base=0 size=2M\n",
    "after 300 us spinning": "create_vm\nioeventfd addr=0xd0000050 len=4\ngap 300us\nmemslot slot=0 base=0 size=2M\n",
}
CHAIN = ("process_srcu", "srcu_invoke_callbacks")
QUEUE, EXECUTE = "workqueue/workqueue_queue_work", "workqueue/workqueue_execute_start"
WAKEUP, SWITCH = "sched/sched_wakeup", "sched/sched_switch"


def arm_chain(inst: Instance, tid: int) -> dict[int, str]:
    """Enable the chain's events in ``inst``; the kernel addresses of the chain's functions."""
    addresses = kernel_addresses(set(CHAIN)) or {}
    inst.enable(QUEUE, ("function",))
    inst.enable(EXECUTE, ("function",))
    inst.enable(WAKEUP, ("pid",), f"pid == {tid}")
    inst.enable(SWITCH, ("next_pid",), f"next_pid == {tid}")
    inst.start(clock="mono", buffer_kb=8192)
    return {a: n for n, a in addresses.items()}


def run_traced(seq: Sequence, repeat: int, hz: int) -> tuple[list[Repetition], ticktrace.TickRecord,
                                                              list[Record], dict[int, str]]:
    """Run ``seq`` ``repeat`` times (jitter on; the differential harness's traced runs) with the chain
    traced beside the ticks: the repetitions, the tick record, the chain's events and the chain
    functions' names by address."""
    session = Session.open()
    try:
        inst = session.instance("wakeups")
        names = arm_chain(inst, threading.get_native_id())
        def drain_chain(done: int) -> None:  # between repetitions, so the chain's buffers never fill
            inst.read()
        reps, record, why_not = measure_traced(seq, repeat, hz, seed=1, on_progress=drain_chain)
        inst.stop()
        events: list[Record] = inst.drain(final=True)
    finally:
        session.close()
    if record is None:
        raise TracefsUnavailable(why_not)
    return reps, record, events, names


def chain_of(window: list[Record], names: dict[int, str], queued: dict[str, list[int]]) -> tuple[int, int] | None:
    """In one wait's events: append each chain work item's queue-to-run delay to ``queued``; return when
    the caller was woken and when it ran (None if either was not traced)."""
    pending: dict[str, int] = {}
    wake = run = None
    for e in window:
        name = names.get(e.fields[0], "") if e.event in (QUEUE, EXECUTE) else ""
        if e.event == QUEUE and name in CHAIN:
            pending.setdefault(name, e.ts)
        elif e.event == EXECUTE and name in pending:
            queued[name].append(e.ts - pending.pop(name))
        elif e.event == WAKEUP and wake is None:
            wake = e.ts
        elif e.event == SWITCH and wake is not None and run is None:
            run = e.ts
    return None if wake is None or run is None else (wake, run)


def us(xs: list[int]) -> str:
    """A range of durations, with its median."""
    if not xs:
        return "-"
    return f"{min(xs) / 1000:.0f}-{max(xs) / 1000:.0f} us (median {statistics.median(xs) / 1000:.0f})"


def trace_sequence(seq: Sequence, repeat: int, hz: int, platform: str) -> str:
    """Run ``seq`` ``repeat`` times traced; one paragraph of findings."""
    step = waits_for_gp(seq, platform)
    if not step:
        return f"{seq.name}: no step waits for a grace period"
    tick = 1_000_000_000 // hz
    reps, record, events, names = run_traced(seq, repeat, hz)
    offset = record.grid_offset()
    fates = ticktrace.grace_period_fates(record, [threading.get_native_id()], os.cpu_count() or 1)
    armed = [f.armed_ns for f in fates]
    times = [e.ts for e in events]
    queued: dict[str, list[int]] = {n: [] for n in CHAIN}
    slipped = ticked_late = seen = 0
    woken_after: list[int] = []
    for rep in reps:
        begin = rep.origin_ns + rep.starts_ns[step[0]]
        end = begin + rep.durations_ns[step[0]]
        i = bisect.bisect_left(armed, rep.origin_ns)
        if i >= len(fates) or fates[i].armed_ns > begin:
            continue
        fired = offset + (fates[i].bucket_tick + (fates[i].late_ticks or 0)) * tick
        woke = chain_of(events[bisect.bisect_left(times, fired):bisect.bisect_right(times, end + 100_000)],
                        names, queued)
        if woke is None:
            continue
        seen += 1
        slipped += bool(fates[i].late_ticks)
        woken_after.append(woke[0] - fired)
        ticked_late += woke[1] - woke[0] > tick // 2
    if not seen:
        return f"{seq.name}: no repetition's wait was traced whole"
    kworkers = "; ".join(f"{n} {us(queued[n])} after queued" for n in CHAIN)
    return (f"{seq.name}: {seen} of {repeat} repetitions traced whole; the first timer a tick late in "
            f"{slipped}; {kworkers}; the caller woken {us(woken_after)} after the timer fired, and run only at "
            f"the next tick (over half a tick after its wake-up) in {ticked_late} of {seen}")


def main() -> int:
    """Trace each sequence; print one paragraph each."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=200)
    ap.add_argument("files", nargs="*", metavar="SEQUENCE")
    args = ap.parse_args()
    if not 1 <= args.repeat <= 100_000:
        ap.error("--repeat must be 1..100000")
    kernel = modelled_kernel(None, None, this_host(read_host_info()))
    if kernel.hz is None or kernel.platform is None:
        print("trace_wakeups: cannot read this host's CONFIG_HZ or tell its KVM platform", file=sys.stderr)
        return 4
    try:
        seqs = [load_sequence(f) for f in args.files] or \
            [parse_sequence(text, name) for name, text in PROBES.items()]
    except SequenceError as e:
        ap.error(str(e))
    print(f"HZ={kernel.hz}, {kernel.platform}, load average {os.getloadavg()[0]:.2f}", flush=True)
    for seq in seqs:
        try:
            print(trace_sequence(seq, args.repeat, kernel.hz, kernel.platform), flush=True)
        except KvmUnavailable as e:
            print(f"trace_wakeups: cannot run here: {e.strerror or e}", file=sys.stderr)
            return 4
        except (TracefsUnavailable, OSError) as e:
            print(f"trace_wakeups: cannot trace here: {e}", file=sys.stderr)
            return 4
        except KeyboardInterrupt:  # the tracefs instances are gone by now (their finally clauses ran)
            print("trace_wakeups: interrupted", file=sys.stderr)
            return 130
    print(f"load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
