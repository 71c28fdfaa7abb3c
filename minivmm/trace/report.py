"""How ``minivmm trace`` shows a trace: ``strace -T`` style lines with decoded arguments, then the
explanation; or one JSON document (``schema_version`` 2, unit-suffixed field names)."""

from __future__ import annotations

import errno as _errno
import heapq
import os
import signal
from typing import Any, TextIO

from kernel_model.sequences import step_number
from minivmm.durations import fmt_us
from minivmm.timing.pressure import Load
from minivmm.timing.verdict import render_table
from minivmm.trace.eventlog import EventLog
from minivmm.trace.explain import Explanation, VmTrace, ioctl_ref, main_vm, stalled_steps, step_ref, vms_of
from minivmm.trace.tracer import Clock, IoctlEvent, StopReason, TeardownCall, TraceResult


def _sig(n: int | None) -> str:
    if n is None:
        return "?"
    try:
        return signal.Signals(n).name
    except ValueError:
        return f"signal {n}"


def ioctl_line(ev: IoctlEvent, t0_ns: int) -> str:
    """One ioctl as ``strace -T`` prints it, fd shown by role, argument decoded, time since the first ioctl."""
    rel = (ev.enter_ns - t0_ns) / 1e9
    head = f"{rel:10.6f} [pid {ev.tid}] ioctl({ev.role}, {ev.name}, {ev.decoded.text})"
    if ev.ret is None:
        return f"{head} = ? <unfinished>" + (" (first KVM_RUN: no exit before tracing stopped)" if ev.first_run else "")
    if ev.ret < 0:
        err = -ev.ret
        result = f"-1 {_errno.errorcode.get(err, err)} ({os.strerror(err)})"
    else:
        result = str(ev.ret)
    line = f"{head} = {result} <{(ev.duration_ns or 0) / 1e9:.6f}>"
    if ev.first_run:
        line += (f" (first KVM_RUN of {ev.role}: until its first exit)" if ev.ret >= 0 else
                 f" ({ev.role} has not run yet: its first KVM_RUN is the next one)")
    return line


def status_line(r: TraceResult) -> str:
    """How the tracee ended, in one line."""
    who = os.path.basename(r.argv[0])
    if r.attached and r.detached:
        why = {StopReason.TIMEOUT: "timed out", StopReason.INTERRUPTED: "interrupted (Ctrl-C)",
               StopReason.TERMINATED: "minivmm trace was told to stop"}.get(r.stop_reason, "done")
        return f"--- {why}: let go of {who} (pid {r.pid}, attached with -p), which keeps running ---"
    if r.detached:
        return f"--- every vCPU entered KVM_RUN: detached, {who} (pid {r.pid}) keeps running ---"
    if r.exit_signal is not None:
        how = f"killed by {_sig(r.exit_signal)}"
    elif r.exit_code is not None:
        how = f"exited with {r.exit_code}"
    else:
        how = "gone"
    why = {StopReason.FIRST_RUN: "every vCPU entered KVM_RUN; ended with SIGTERM by minivmm trace, ",
           StopReason.TIMEOUT: "timed out; ended by minivmm trace, ",
           StopReason.INTERRUPTED: "interrupted (Ctrl-C); ",
           StopReason.TERMINATED: "minivmm trace was told to stop; "}.get(r.stop_reason, "")
    return f"--- {why}{who} (pid {r.pid}) {how} ---"


def teardown_line(call: TeardownCall, t0_ns: int) -> str:
    """A close() of a KVM fd or an exit_group, in the style of the ioctl lines."""
    rel = (call.enter_ns - t0_ns) / 1e9
    dur = "?" if call.duration_ns is None else f"{call.duration_ns / 1e9:.6f}"
    if call.kind == "close":
        ret = "?" if call.ret is None else str(call.ret) if call.ret >= 0 else \
            f"-1 {_errno.errorcode.get(-call.ret, -call.ret)}"
        return f"{rel:10.6f} [pid {call.tid}] close({call.role}) = {ret} <{dur}>"
    return f"{rel:10.6f} [pid {call.tid}] exit_group({call.ret}) <{dur}> (until the tracer saw pid {call.pid} gone)"


def vm_lines(vms: list[VmTrace], explained: bool) -> list[str]:
    """One line per VM: where it was created, its vCPUs and which ran."""
    lead = main_vm(vms)
    return [f"VM {vm.label}: KVM_CREATE_VM (ioctl #{vm.created}), {len(vm.rows)} ioctls, {vm.describe()}"
            + (" <- the explanations below begin with it" if vm is lead and len(vms) > 1 and explained else "")
            for vm in vms]


def render_text(r: TraceResult, exs: list[Explanation], note: str, out: TextIO, load: Load | None = None) -> None:
    """The trace lines, the VMs, then each VM's explanation (the one whose vCPUs ran first); ``load`` (how
    busy the host was) is stated at the top."""
    w = out.write
    w(f"minivmm trace: {' '.join(r.argv)}\n")
    w(f"clock: {r.clock_note}\n")
    if load is not None:
        w(f"load: {load.describe()}\n")
        busy = load.warning()
        if busy:
            w(f"warning: {busy}\n")
    if r.compat_calls and r.clock is Clock.KERNEL:
        w(f"clock: {r.compat_calls} KVM ioctls made through a 32-bit ABI (i386, x32) are timed by the tracer's "
          "stops: the kernel's syscall tracepoints do not report them\n")
    t0 = r.events[0].enter_ns if r.events else 0
    # The ioctls in the order they stopped, with the kernel's record of close()/exit_group among them
    # by time.
    lines = heapq.merge(((ev.enter_ns, ioctl_line(ev, t0)) for ev in r.events),
                        ((c.enter_ns, teardown_line(c, t0)) for c in r.teardown), key=lambda x: x[0])
    for _, line in lines:
        w(line + "\n")
    if isinstance(r.events, EventLog) and r.events.dropped:
        names = ", ".join(f"{n} x{k}" for n, k in r.events.dropped.most_common())
        w(f"(+{sum(r.events.dropped.values())} further KVM ioctls not kept: the trace keeps the first "
          f"{r.events.limit}; {names})\n")
    if r.later_kvm_runs:
        w(f"(+{r.later_kvm_runs} further KVM_RUN calls after each vCPU's first, not shown)\n")
    for parent, child in r.forks:
        w(f"(pid {parent} forked pid {child}; followed)\n")
    for pid, exe in r.execs:
        w(f"(pid {pid} executed {exe}; followed)\n")
    w(status_line(r) + "\n")
    if r.overruns:
        w(f"warning: the kernel trace buffer overran ({r.overruns} events lost): some durations are from the "
          "ptrace stops, or missing\n")
    vms = vms_of(r)
    for line in vm_lines(vms, bool(exs)):
        w(line + "\n")
    if not exs:
        if note:
            w(f"\nno explanation: {note}\n")
        return
    lead = main_vm(vms)
    for ex in sorted(exs, key=lambda e: lead is None or e.vm is None or e.vm.key != lead.key):
        render_explanation(r, ex, out)
    if note:
        w(f"\n{note}\n")


def render_explanation(r: TraceResult, ex: Explanation, out: TextIO) -> None:
    """Per modelled step: measured and each variant's p50; the stalls and what they waited for; the whole
    set-up measured and predicted; the verdict."""
    w = out.write
    c = ex.comparison
    variants = list(c.predictions)
    events = r.events
    who = f" of {ex.vm.label}, {ex.vm.describe()}" if ex.vm is not None else ""
    w(f"\n--- explanation{who}: the set-up as a kernel-model sequence of {len(ex.sequence.steps)} steps (gaps as "
      f"measured), predicted at HZ={ex.hz} on {ex.platform} ---\n")
    labels = [step_ref(ex, i) for i in range(len(ex.sequence.steps))]
    shown = [i for i, s in enumerate(ex.sequence.steps) if s.op != "ioctl"]
    width = max([len(labels[i]) for i in shown] + [10])
    col = max(len(v) for v in variants + ["measured"]) + 2
    w("step".ljust(width) + "measured".rjust(col) + "".join(v.rjust(col) for v in variants)
      + "   (predicted p50)\n")
    for i in shown:
        row = labels[i].ljust(width) + fmt_us(ex.measured_ns[i] / 1000).rjust(col)
        row += "".join(fmt_us(c.predictions[v].steps[i].stats()["p50"]).rjust(col) for v in variants)
        w(row + "\n")
    fixed = sum(1 for s in ex.sequence.steps if s.op == "ioctl")
    if fixed:
        w(f"(+{fixed} ioctls the model does not model, each carried at its measured cost)\n")
    if ex.unmodelled and not fixed:
        names = ", ".join(f"{n} x{k}" for n, k in ex.unmodelled.most_common())
        w(f"not modelled (their time is folded into the next step's gap): {names}\n")
    for s in ex.skipped:
        w(f"not in the sequence: {s}\n")
    stalls = stalled_steps(ex)
    w("\nstalls (measured >= 1 ms):" + (" none\n" if not stalls else "\n"))
    for i in stalls:
        w(f"  {step_ref(ex, i)}: {fmt_us(ex.measured_ns[i] / 1000)}\n")
        for sentence in ex.attributions.get(i, []):
            w(f"      {sentence}\n")
        check = ex.kernel_checks.get(i)
        if check is not None:
            w(f"      {check.describe(lambda k: ioctl_ref(ex, events, k))}\n")
    if stalls and ex.attribution_note:
        w(f"  ({ex.attribution_note})\n")
    if stalls and ex.kernel_note:
        w(f"  (the kernel's own record of the grace periods is not available: {ex.kernel_note})\n")
    elif stalls:
        w("  (\"waited\" is the model's figure; the kernel line is what its SRCU timer and workqueue events "
          "recorded)\n")
    w(f"\nwhole set-up (KVM_CREATE_VM to the end of the last step): measured "
      f"{fmt_us(ex.setup_measured_ns() / 1000)}; predicted p50 [p10 - p90]:\n")
    for v, q in ex.setup_predicted().items():
        w(f"  {v:<22} {fmt_us(q['p50'])} [{fmt_us(q['p10'])} - {fmt_us(q['p90'])}]\n")
    if ex.teardown is not None:
        td = ex.teardown
        w(f"\nteardown: {td.headline()}; predicted p50 [p10 - p90]:\n")
        for v, q in td.predicted.items():
            w(f"  {v:<22} {fmt_us(q['p50'])} [{fmt_us(q['p10'])} - {fmt_us(q['p90'])}]\n")
        w(f"  {td.sentence}\n")
    elif ex.teardown_note:
        w(f"\nteardown: {ex.teardown_note}\n")
    render_table(c.verdict, out)
    w(f"\nverdict: {c.verdict.text}\n")
    w("(one trace is one sample: a stall's length depends on where in a jiffy it began; `minivmm timing "
      "--sequence FILE` with a file from --save-sequence measures the distribution)\n")


def _ioctl_json(ev: IoctlEvent, t0: int, step: int | None) -> dict[str, Any]:
    return {"index": ev.index, "pid": ev.pid, "tid": ev.tid, "fd": ev.fd, "role": ev.role,
            "request": ev.name, "request_hex": f"{ev.request:#x}", "arg": ev.decoded.fields,
            "arg_text": ev.decoded.text, "ret": ev.ret,
            "errno": _errno.errorcode.get(ev.errno) if ev.errno else None,
            "start_ns": ev.enter_ns, "offset_us": (ev.enter_ns - t0) / 1000,
            "duration_us": None if ev.duration_ns is None else ev.duration_ns / 1000,
            "clock": ev.clock.value, "first_run": ev.first_run, "step": step}


def to_json(r: TraceResult, exs: list[Explanation], note: str, outcome: str, exit_code: int,
            host: dict[str, Any], ioctls: bool = True) -> dict[str, Any]:
    """Everything, as one JSON document (times in ns or us, as the field names say). ``ioctls=False``
    leaves the ioctl list out (its count stays, as ``ioctl_count``): :func:`write_json` streams it."""
    vms = vms_of(r)
    lead = main_vm(vms)
    by_vm = {ex.vm.key: ex for ex in exs if ex.vm is not None}
    main = by_vm.get(lead.key) if lead is not None else None
    t0 = r.events[0].enter_ns if r.events else 0
    dropped = r.events.dropped if isinstance(r.events, EventLog) else {}
    payload: dict[str, Any] = {
        "command": r.argv,
        "outcome": outcome,
        "exit_code": exit_code,
        "tracee": {"pid": r.pid, "exit_code": r.exit_code,
                   "exit_signal": _sig(r.exit_signal) if r.exit_signal is not None else None,
                   "ended_by_tracer": r.ended_by_tracer, "killed_after_grace": r.killed_after_grace,
                   "detached": r.detached,
                   "forks": [{"parent": p, "child": c} for p, c in r.forks],
                   "execs": [{"pid": p, "exe": e} for p, e in r.execs],
                   "signals": [{"tid": t, "signal": _sig(s)} for t, s in r.signals]},
        "clock": {"source": r.clock.value, "description": r.clock_note},
        "tracer": {"stops": r.stops, "later_kvm_runs": r.later_kvm_runs, "trace_buffer_overruns": r.overruns,
                   "unfinished_first_runs": r.unfinished_first_runs,
                   "ioctls_not_kept": dict(dropped)},
        "host": host,
        "ioctl_count": len(r.events),
        "ioctls": [_ioctl_json(ev, t0, main.step_number_of(ev.index) if main else None) for ev in r.events]
        if ioctls else [],
        "teardown": None if not r.teardown_recorded else [
            {"kind": c.kind, "pid": c.pid, "tid": c.tid, "fd": c.fd, "role": c.role, "start_ns": c.enter_ns,
             "offset_us": (c.enter_ns - t0) / 1000, "ret": c.ret,
             "duration_us": None if c.duration_ns is None else c.duration_ns / 1000} for c in r.teardown],
        "vms": [{"pid": vm.pid, "vm": vm.role, "created_ioctl": vm.created, "ioctls": len(vm.rows),
                 "vcpus": vm.vcpus, "vcpus_ran": vm.ran, "leads": vm is lead,
                 "explanation": explanation_json(r, by_vm[vm.key]) if vm.key in by_vm else None} for vm in vms],
        "explanation": None if main is None else explanation_json(r, main),
    }
    if not exs and note:
        payload["explanation_unavailable"] = note
    elif note:
        payload["note"] = note
    from minivmm.schemas import stamp
    return stamp("trace", payload)


def write_json(r: TraceResult, doc: dict[str, Any], out: TextIO) -> None:
    """``doc`` (from ``to_json(..., ioctls=False)``) with its ioctl list written one ioctl at a time, so
    that a long trace is never held as objects all at once."""
    import json
    marker = "\x00ioctls\x00"
    text = json.dumps({**doc, "ioctls": marker}, indent=2)
    head, tail = text.split(json.dumps(marker), 1)
    out.write(head + "[")
    t0 = r.events[0].enter_ns if r.events else 0
    main = doc.get("explanation") or {}
    step_of = {s["ioctl"]: s["step"] for s in main.get("steps", [])}
    for k, ev in enumerate(r.events):
        out.write(("," if k else "") + "\n    " + json.dumps(_ioctl_json(ev, t0, step_of.get(ev.index))))
    out.write(("\n  " if r.events else "") + "]" + tail + "\n")


def explanation_json(r: TraceResult, ex: Explanation) -> dict[str, Any]:
    """The explanation part of the JSON document."""
    c = ex.comparison
    steps = []
    stalls = set(stalled_steps(ex))
    for i, s in enumerate(ex.sequence.steps):
        steps.append({"step": step_number(i), "ioctl": ex.step_events[i], "op": s.op, "label": s.label,
                      "gap_us": ex.gaps_ns[i] / 1000, "measured_us": ex.measured_ns[i] / 1000,
                      "predicted_us": {v: _us_keys(p.steps[i].stats()) for v, p in c.predictions.items()},
                      "stalled": i in stalls, "attribution": ex.attributions.get(i, []),
                      "grace_period": ex.attribution_detail.get(i),
                      "kernel": ex.kernel_checks[i].to_json() if i in ex.kernel_checks else None})
    return {"hz": ex.hz, "platform": ex.platform, "sequence_text": ex.sequence_text, "steps": steps,
            "setup": {"measured_us": ex.setup_measured_ns() / 1000,
                      "predicted_us": {k: _us_keys(q) for k, q in ex.setup_predicted().items()}},
            "unmodelled": dict(ex.unmodelled), "not_in_sequence": ex.skipped,
            "attribution_note": ex.attribution_note or None, "kernel_check_note": ex.kernel_note or None,
            "teardown": None if ex.teardown is None else {
                **ex.teardown.to_json(), "predicted": {k: _us_keys(q) for k, q in ex.teardown.predicted.items()}},
            "verdict": c.verdict.to_json()}


def _us_keys(q: dict[str, float]) -> dict[str, float]:
    return {f"{k}_us": val for k, val in q.items()}
