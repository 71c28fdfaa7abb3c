"""How ``minivmm trace`` shows a trace: ``strace -T`` style lines with decoded arguments, then the
explanation; or one JSON document (``schema_version`` 1, unit-suffixed field names)."""

from __future__ import annotations

import errno as _errno
import os
import signal
from typing import Any, TextIO

from minivmm.trace.explain import Explanation, stalled_steps
from minivmm.trace.tracer import IoctlEvent, StopReason, TraceResult

def _sig(n: int | None) -> str:
    if n is None:
        return "?"
    try:
        return signal.Signals(n).name
    except ValueError:
        return f"signal {n}"


def _fmt_us(us: float) -> str:
    """12 us, 4.56 ms: the unit a person reads at a glance."""
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.1f} us"


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


def render_text(r: TraceResult, ex: Explanation | None, note: str, out: TextIO) -> None:
    """The trace lines, then the explanation."""
    w = out.write
    w(f"minivmm trace: {' '.join(r.argv)}\n")
    w(f"clock: {r.clock_note}\n")
    t0 = r.events[0].enter_ns if r.events else 0
    for ev in r.events:
        w(ioctl_line(ev, t0) + "\n")
    if r.later_kvm_runs:
        w(f"(+{r.later_kvm_runs} further KVM_RUN calls after each vCPU's first, not shown)\n")
    for parent, child in r.forks:
        w(f"(pid {parent} forked pid {child}; followed)\n")
    for pid, exe in r.execs:
        w(f"(pid {pid} executed {exe}; followed)\n")
    w(status_line(r) + "\n")
    if r.overruns:
        w(f"warning: the kernel trace buffer overran ({r.overruns} events lost): some durations are from the "
          "ptrace stops\n")
    if ex is None:
        if note:
            w(f"\nno explanation: {note}\n")
        return
    render_explanation(r, ex, out)


def render_explanation(r: TraceResult, ex: Explanation, out: TextIO) -> None:
    """Per modelled step: measured and each variant's p50; the stalls and what they waited for; the whole
    set-up measured and predicted; the verdict."""
    w = out.write
    c = ex.comparison
    variants = list(c.predictions)
    events = r.events
    w(f"\n--- explanation: the set-up as a kernel-model sequence of {len(ex.sequence.steps)} steps (gaps as "
      f"measured), predicted at HZ={ex.hz} on {ex.platform} ---\n")
    labels = [f"#{ex.step_events[i]} {s.label}" for i, s in enumerate(ex.sequence.steps)]
    shown = [i for i, s in enumerate(ex.sequence.steps) if s.op != "ioctl"]
    width = max([len(labels[i]) for i in shown] + [10])
    col = max(len(v) for v in variants + ["measured"]) + 2
    w("ioctl".ljust(width) + "measured".rjust(col) + "".join(v.rjust(col) for v in variants)
      + "   (predicted p50)\n")
    for i in shown:
        row = labels[i].ljust(width) + _fmt_us(ex.measured_ns[i] / 1000).rjust(col)
        row += "".join(_fmt_us(c.predictions[v].steps[i].stats()["p50"]).rjust(col) for v in variants)
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
        ev = events[ex.step_events[i]]
        w(f"  #{ev.index} {ex.sequence.steps[i].label}: {_fmt_us(ex.measured_ns[i] / 1000)}\n")
        for sentence in ex.attributions.get(i, []):
            w(f"      {sentence}\n")
    if stalls and ex.attribution_note:
        w(f"  ({ex.attribution_note})\n")
    w(f"\nwhole set-up (KVM_CREATE_VM to the end of the last step): measured "
      f"{_fmt_us(ex.setup_measured_ns() / 1000)}; predicted p50 [p10 - p90]:\n")
    for v, q in ex.setup_predicted().items():
        w(f"  {v:<22} {_fmt_us(q['p50'])} [{_fmt_us(q['p10'])} - {_fmt_us(q['p90'])}]\n")
    w(f"\nverdict: {c.verdict.text}\n")
    w("(one trace is one sample: a stall's length depends on where in a jiffy it began; `minivmm timing "
      "--sequence FILE` with a file from --save-sequence measures the distribution)\n")


def to_json(r: TraceResult, ex: Explanation | None, note: str, outcome: str, exit_code: int,
            host: dict[str, Any]) -> dict[str, Any]:
    """Everything, as one JSON document (times in ns or us, as the field names say)."""
    step_of = {e: i for i, e in enumerate(ex.step_events)} if ex else {}
    t0 = r.events[0].enter_ns if r.events else 0
    ioctls = []
    for ev in r.events:
        ioctls.append({
            "index": ev.index, "pid": ev.pid, "tid": ev.tid, "fd": ev.fd, "role": ev.role,
            "request": ev.name, "request_hex": f"{ev.request:#x}", "arg": ev.decoded.fields,
            "arg_text": ev.decoded.text, "ret": ev.ret,
            "errno": _errno.errorcode.get(ev.errno) if ev.errno else None,
            "start_ns": ev.enter_ns, "offset_us": (ev.enter_ns - t0) / 1000,
            "duration_us": None if ev.duration_ns is None else ev.duration_ns / 1000,
            "clock": ev.clock.value, "first_run": ev.first_run, "step": step_of.get(ev.index)})
    payload: dict[str, Any] = {
        "command": r.argv,
        "outcome": outcome,
        "exit_code": exit_code,
        "tracee": {"pid": r.pid, "exit_code": r.exit_code,
                   "exit_signal": _sig(r.exit_signal) if r.exit_signal is not None else None,
                   "ended_by_tracer": r.ended_by_tracer, "detached": r.detached,
                   "forks": [{"parent": p, "child": c} for p, c in r.forks],
                   "execs": [{"pid": p, "exe": e} for p, e in r.execs],
                   "signals": [{"tid": t, "signal": _sig(s)} for t, s in r.signals]},
        "clock": {"source": r.clock.value, "description": r.clock_note},
        "tracer": {"stops": r.stops, "later_kvm_runs": r.later_kvm_runs, "trace_buffer_overruns": r.overruns,
                   "unfinished_first_runs": r.unfinished_first_runs},
        "host": host,
        "ioctls": ioctls,
        "explanation": None if ex is None else explanation_json(r, ex),
    }
    if ex is None and note:
        payload["explanation_unavailable"] = note
    from minivmm.schemas import stamp
    return stamp("trace", payload)


def explanation_json(r: TraceResult, ex: Explanation) -> dict[str, Any]:
    """The explanation part of the JSON document."""
    c = ex.comparison
    steps = []
    stalls = set(stalled_steps(ex))
    for i, s in enumerate(ex.sequence.steps):
        steps.append({"step": i, "ioctl": ex.step_events[i], "op": s.op, "label": s.label,
                      "gap_us": ex.gaps_ns[i] / 1000, "measured_us": ex.measured_ns[i] / 1000,
                      "predicted_us": {v: _us_keys(p.steps[i].stats()) for v, p in c.predictions.items()},
                      "stalled": i in stalls, "attribution": ex.attributions.get(i, []),
                      "grace_period": ex.attribution_detail.get(i)})
    v = c.verdict
    return {"hz": ex.hz, "platform": ex.platform, "sequence_text": ex.sequence_text, "steps": steps,
            "setup": {"measured_us": ex.setup_measured_ns() / 1000,
                      "predicted_us": {k: _us_keys(q) for k, q in ex.setup_predicted().items()}},
            "unmodelled": dict(ex.unmodelled), "not_in_sequence": ex.skipped,
            "attribution_note": ex.attribution_note or None,
            "verdict": {"variant": v.variant, "matches_well": v.matches_well, "ties": v.ties, "fit": v.fits,
                        "text": v.text}}


def _us_keys(q: dict[str, float]) -> dict[str, float]:
    return {f"{k}_us": val for k, val in q.items()}
