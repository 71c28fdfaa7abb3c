"""A traced VM's teardown: which recorded call destroyed it, how long that took, and what the kernel
model says it waited for.

The kernel destroys a VM (``kvm_destroy_vm()``) when its last reference goes: the last ``close()`` of its
fds (the VM fd and its vCPU fds; a vCPU's ``kvm_run`` mapping also holds one, and is usually gone by
then), or, for fds still open when the process exits, the ``exit_group`` that closes them.
:func:`vm_teardown` finds that call among what the tracer recorded (``TraceResult.teardown``).

What the teardown waited for depends on what the VM did in the few jiffies before it: a registration's
``call_srcu()`` whose grace period or callback delay is not over makes ``srcu_barrier()`` wait. The
model's sequence for it (:func:`teardown_sequence`) is the VM's ops from the whole trace, not only the
set-up: the ones more than :data:`WINDOW_JIFFIES` before the teardown are issued first, back to back,
and given that long to settle (whatever they started is over by the close, as it was on the host);
the ones in the window keep their measured gaps; then ``destroy_vm`` at its measured time. vCPUs'
runs are left out: their read sections lengthen a grace period's scans by microseconds while they
run, and they have stopped when the VM is destroyed. Then each main variant predicts the teardown, and
the variant closest to what was measured says, from the model's own state, what it waited for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from kernel_model import explain as kexplain
from kernel_model import ops
from kernel_model import sequences as seqmod
from kernel_model.ops import TEARDOWN_OP
from kernel_model.predict import predict
from kernel_model.sequences import Sequence, Step
from kernel_model.stats import quantiles
from kernel_model.variants import MAIN_VARIANTS
from minivmm.durations import fmt_us
from minivmm.trace import decode
from minivmm.trace.fds import vm_of_role
from minivmm.trace.tracer import IoctlEvent, TeardownCall, TraceResult

#: How far before the teardown the VM's ops keep their measured timing: a registration's grace period
#: (at most 2 jiffies without readers) and its callback delay (at most 2 more) are over well before.
WINDOW_JIFFIES = 10


def vm_teardown(result: TraceResult, vm: Any) -> tuple[TeardownCall, str] | None:
    """The call that destroyed ``vm`` (a :class:`minivmm.trace.explain.VmTrace`) and how: ``close``
    (the last of its fds closed) or ``exit`` (the process's exit_group closed what was left open).
    None when neither was recorded (the VM outlived the trace, or closes were not recorded)."""
    if not result.teardown_recorded:
        return None
    closes = [c for c in result.teardown if c.kind == "close" and c.pid == vm.pid and c.role is not None
              and vm_of_role(c.role) == vm.role and c.enter_ns >= result.events[vm.created].enter_ns]
    closed = {c.role for c in closes}
    if vm.role in closed and all(v in closed for v in vm.vcpus):
        return max(closes, key=lambda c: c.enter_ns), "close"
    exits = [c for c in result.teardown if c.kind == "exit_group" and c.pid == vm.pid]
    return (exits[-1], "exit") if exits else None


def _end(ev: IoctlEvent) -> int:
    return ev.enter_ns + (ev.duration_ns or 0)


def teardown_sequence(result: TraceResult, vm: Any, call: TeardownCall, hz: int) -> tuple[Sequence, list[int | None]]:
    """The model's sequence for the teardown (see the module docstring) and, per step, the traced ioctl
    it is (None for the teardown itself)."""
    cutoff = call.enter_ns - WINDOW_JIFFIES * 1_000_000_000 // hz
    settle = WINDOW_JIFFIES * 1_000_000_000 // hz
    events = sorted((result.events[i] for i in vm.rows), key=lambda e: e.enter_ns)
    steps: list[Step] = []
    rows: list[int | None] = []
    last_end: int | None = None
    compressed = False
    for ev in events:
        if ev.ret is None or ev.ret < 0 or ev.duration_ns is None or ev.enter_ns > call.enter_ns:
            continue
        role = ev.role.rsplit(".", 1)[-1]
        conv = ops.from_traced(ops.TracedIoctl(ev.name, ev.arg, ev.decoded.fields, role, ev.first_run))
        if ev.request == decode.KVM_CREATE_VM and ev.index == vm.created:
            conv = ("create_vm", {})
        if conv is None or conv[0] == "run":
            continue  # not modelled (no SRCU effect), a later KVM_RUN, or a vCPU's run (readers left out)
        op, args = conv
        if not steps:
            gap = 0
        elif ev.enter_ns < cutoff:
            gap, compressed = seqmod.DEFAULT_GAP_NS, True
        elif compressed:
            gap, compressed = settle + max(0, ev.enter_ns - cutoff), False
        else:
            gap = max(0, ev.enter_ns - (last_end or ev.enter_ns))
        steps.append(Step(op, args, gap))
        rows.append(ev.index)
        last_end = _end(ev)
    if not steps:
        raise ValueError(f"{vm.label}: no KVM_CREATE_VM among its ioctls")
    gap = settle + max(0, call.enter_ns - cutoff) if compressed else max(0, call.enter_ns - (last_end or 0))
    steps.append(Step(TEARDOWN_OP, {}, gap))
    rows.append(None)
    return Sequence(f"teardown of {vm.label}", "the VM's ops before its teardown", tuple(steps)), rows


@dataclass
class TeardownExplanation:
    """One VM's teardown: the call, how it destroyed the VM, its measured time, each variant's predicted
    quantiles (us), the closest variant and, under it, what the model says the teardown waited for."""

    call: TeardownCall
    how: str
    measured_ns: int | None
    predicted: dict[str, dict[str, float]]
    closest: str | None
    sentence: str
    started_by_ioctl: int | None = None

    def headline(self) -> str:
        """``close(vm) 14.20 ms``: which call, how long."""
        what = f"close({self.call.role})" if self.how == "close" else f"exit_group({self.call.ret})"
        took = "?" if self.measured_ns is None else _fmt_ns(self.measured_ns)
        return f"{what} {took}"

    def to_json(self) -> dict[str, Any]:
        """The JSON form (``trace`` document, each VM's explanation's ``teardown``)."""
        return {"how": self.how, "call": self.call.kind, "role": self.call.role, "start_ns": self.call.enter_ns,
                "measured_us": None if self.measured_ns is None else self.measured_ns / 1000,
                "predicted": self.predicted, "closest": self.closest, "text": self.sentence,
                "started_by_ioctl": self.started_by_ioctl}


def _fmt_ns(ns: float) -> str:
    return fmt_us(ns / 1000)


def explain_teardown(result: TraceResult, vm: Any, hz: int, platform: str, samples: int = 200, seed: int = 0,
                     name_ioctl: Any = None) -> TeardownExplanation | None:
    """What ``vm``'s teardown took and waited for (None: it was not recorded). ``name_ioctl(index)``
    names a traced ioctl in the report's terms (default: ``ioctl #N NAME``)."""
    found = vm_teardown(result, vm)
    if found is None:
        return None
    call, how = found
    seq, rows = teardown_sequence(result, vm, call, hz)
    seqmod.validate(seq, platform)
    predicted = {v: quantiles(predict(seq, v, hz, platform, samples=samples, seed=seed).steps[-1].durations)
                 for v in MAIN_VARIANTS}
    measured = call.duration_ns
    if measured is None:
        return TeardownExplanation(call, how, None, predicted, None, "its duration was not recorded")
    p50s = [q["p50"] for q in predicted.values()]
    alike = max(p50s) <= 1.05 * min(p50s)
    # The variant whose prediction comes closest; when they all predict the same, none is closer.
    closest = None if alike else min(
        predicted, key=lambda v: abs(math.log(max(measured, 1) / max(predicted[v]["p50"] * 1000, 1))))
    st = kexplain.explain(seq, closest or MAIN_VARIANTS[0], hz, platform, samples=20, seed=seed)[-1]
    name = name_ioctl or (lambda k: f"ioctl #{k} {result.events[k].name}")
    where = ("in the close of its last fd" if how == "close" else
             "in the process's exit (exit_group closed its fds; the time is until the process was gone)")
    who = (f"model ({closest}, predicts {_fmt_ns(predicted[closest]['p50'] * 1000)})" if closest is not None else
           f"model (every variant predicts {_fmt_ns(p50s[0] * 1000)})")
    if not st.waited_for_gp or st.started_by_step is None:
        sentence = f"{who}: kvm_destroy_vm() {where}; srcu_barrier() had no callbacks to wait for"
        return TeardownExplanation(call, how, measured, predicted, closest, sentence)
    row = rows[st.started_by_step]
    assert row is not None and st.waited_ns is not None
    before = (call.enter_ns - result.events[row].enter_ns) / 1e6
    share = f" (in {st.share:.0%} of tick phases)" if st.share < 0.995 else ""
    sentence = (f"{who}: kvm_destroy_vm() {where}; srcu_barrier waited {_fmt_ns(st.waited_ns)} for the callbacks "
                f"of the {st.gp_kind} grace period started by {name(row)}, with {st.started_by_call}, {before:.2f} ms "
                f"before the teardown{share}")
    return TeardownExplanation(call, how, measured, predicted, closest, sentence, row)
