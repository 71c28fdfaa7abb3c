"""From a trace to an explanation: the VMM's set-up as a :mod:`kernel_model` sequence (gaps as measured),
what each kernel variant predicts for each of its ioctls at this host's HZ and platform, the whole
set-up measured and predicted, and the verdict as ``minivmm timing`` gives it
(:func:`minivmm.timing.compare.compare`, reused as is).

Which ioctls become a VM's steps (:class:`VmTrace`): its own, from its ``KVM_CREATE_VM`` on, in the order
they entered the kernel, each vCPU's first ``KVM_RUN`` included. An ioctl that an op takes becomes
that op (each op's own inverse, ``OpSpec.from_traced``); any other is carried as a fixed cost, its
measured duration (``ioctl name=... cost=...``). :attr:`Explanation.unmodelled` lists which, and the
report says so.
"""

from __future__ import annotations

import math
import shlex
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from kernel_model import explain as kexplain
from kernel_model import ops
from kernel_model import sequences as seqmod
from kernel_model.ops import TracedIoctl
from kernel_model.sequences import Sequence, Step, step_name, step_number
from kernel_model.stats import is_stall, quantiles
from minivmm.trace import decode, srcu_check
from minivmm.trace.fds import vm_of_role
from minivmm.trace.tracer import IoctlEvent, TraceResult


@dataclass
class Explanation:
    """The model's view of one trace."""

    sequence: Sequence
    sequence_text: str
    step_events: list[int]                   # step i -> index of its IoctlEvent
    measured_ns: list[int]                   # per step
    gaps_ns: list[int]                       # per step (measured)
    unmodelled: Counter[str] = field(default_factory=Counter)   # name -> count, folded or fixed-cost
    skipped: list[str] = field(default_factory=list)            # why some ioctls are not steps
    comparison: Any = None                   # minivmm.timing.compare.Comparison
    hz: int = 0
    platform: str = ""
    attributions: dict[int, list[str]] = field(default_factory=dict)   # step -> sentences
    attribution_note: str = ""
    attribution_detail: dict[int, dict[str, Any]] = field(default_factory=dict)
    vm: VmTrace | None = None
    #: Per stalled step, the SRCU machinery's own record beside the model's attribution; or why not.
    kernel_checks: dict[int, srcu_check.StallCheck] = field(default_factory=dict)
    kernel_note: str = ""
    #: The VM's teardown, recorded and explained (:mod:`minivmm.trace.teardown`); None: not recorded
    #: (``teardown_note`` says why when it was recorded but could not be modelled).
    teardown: Any = None
    teardown_note: str = ""
    _step_of: dict[int, int] | None = field(default=None, init=False, repr=False, compare=False)

    def step_of(self, ioctl: int | None) -> int | None:
        """The position in ``sequence.steps`` of the step that traced ioctl ``ioctl`` (its index in the
        trace) became, or None if it became none."""
        if self._step_of is None:
            self._step_of = {e: i for i, e in enumerate(self.step_events)}
        return None if ioctl is None else self._step_of.get(ioctl)

    def step_number_of(self, ioctl: int | None) -> int | None:
        """The number of the step that traced ioctl ``ioctl`` became
        (:func:`kernel_model.sequences.step_number`), or None if it became none."""
        i = self.step_of(ioctl)
        return None if i is None else step_number(i)

    def setup_measured_ns(self) -> int:
        """From the start of KVM_CREATE_VM to the end of the last step, as measured."""
        return sum(self.gaps_ns[1:]) + sum(self.measured_ns)

    def setup_predicted(self) -> dict[str, dict[str, float]]:
        """Per variant: quantiles (us) of the whole set-up's predicted duration, sample by sample."""
        out: dict[str, dict[str, float]] = {}
        if self.comparison is None:
            return out
        gaps = sum(self.comparison.gaps_ns[1:])
        for variant, pred in self.comparison.predictions.items():
            totals = [gaps + sum(d) for d in zip(*(sp.durations for sp in pred.steps))]
            out[variant] = quantiles(totals)
        return out


def event_to_step(ev: IoctlEvent) -> tuple[str, dict[str, Any]] | None:
    """The sequence op and its arguments for one traced ioctl (the op's own inverse,
    :func:`kernel_model.ops.from_traced`), or None if no op takes it. A further VM's vCPU (``vm1.vcpu0``)
    is its sequence's ``vcpu0``: each VM is a sequence of its own."""
    role = ev.role.rsplit(".", 1)[-1]
    return ops.from_traced(TracedIoctl(ev.name, ev.arg, ev.decoded.fields, role, ev.first_run))


@dataclass
class VmTrace:
    """One VM of the traced program: its ioctls (indices into the trace, from its KVM_CREATE_VM on),
    the vCPUs it created and the ones whose first KVM_RUN returned an exit.

    Which ioctls are a VM's own: those on its VM fd and its vCPUs' fds, and the process's system-fd
    ioctls while it is the process's newest VM (QEMU's KVM_GET_SUPPORTED_CPUID between the VM and its
    vCPUs, say)."""

    pid: int
    role: str
    created: int
    rows: list[int] = field(default_factory=list)
    vcpus: list[str] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)

    @property
    def key(self) -> tuple[int, int]:
        """What identifies it across readings of the same trace: its process and its KVM_CREATE_VM."""
        return self.pid, self.created

    @property
    def label(self) -> str:
        """``vm (pid 123)``."""
        return f"{self.role} (pid {self.pid})"

    def describe(self) -> str:
        """Its vCPUs, and which ran: ``2 vCPUs (vcpu0 and vcpu1 ran)``, ``no vCPU``."""
        if not self.vcpus:
            return "no vCPU"
        ran = ", ".join(self.ran) if self.ran else "none"
        return f"{len(self.vcpus)} vCPU{'s' if len(self.vcpus) != 1 else ''} (ran: {ran})"


def vms_of(result: TraceResult) -> list[VmTrace]:
    """Every VM the program created (a successful KVM_CREATE_VM), in order, with its ioctls."""
    created = dict(getattr(result, "vms_created", {}) or {})
    counts: Counter[int] = Counter()
    vms: dict[tuple[int, str], VmTrace] = {}
    newest: dict[int, VmTrace] = {}
    out: list[VmTrace] = []
    for ev in result.events:
        if ev.request == decode.KVM_CREATE_VM and ev.ret is not None and ev.ret >= 0:
            role = created.get(ev.index) or ("vm" if counts[ev.pid] == 0 else f"vm{counts[ev.pid]}")
            counts[ev.pid] += 1
            vm = VmTrace(ev.pid, role, ev.index, [ev.index])
            vms[(ev.pid, role)] = newest[ev.pid] = vm
            out.append(vm)
            continue
        owner = vm_of_role(ev.role)
        vm_or_none = vms.get((ev.pid, owner)) if owner else newest.get(ev.pid) if ev.role == "system" else None
        if vm_or_none is None:
            continue
        vm_or_none.rows.append(ev.index)
        if ev.request == decode.KVM_CREATE_VCPU and ev.ret is not None and ev.ret >= 0:
            vcpu = f"vcpu{ev.arg}" if vm_or_none.role == "vm" else f"{vm_or_none.role}.vcpu{ev.arg}"
            vm_or_none.vcpus.append(vcpu)
        if ev.first_run and ev.ret is not None and ev.ret >= 0 and ev.role not in vm_or_none.ran:
            vm_or_none.ran.append(ev.role)
    return out


def main_vm(vms: list[VmTrace]) -> VmTrace | None:
    """The VM a report leads with: the first whose vCPUs ran, else the one with the most ioctls."""
    ran = [v for v in vms if v.ran]
    if ran:
        return ran[0]
    return max(vms, key=lambda v: len(v.rows), default=None)


_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_header(text: str) -> str:
    """Text for one comment line of a sequence file: backslashes and anything unprintable (a newline
    in a program argument, say) escaped, so that nothing can start a line of its own."""
    return "".join(_ESCAPES.get(c) or (c if c.isprintable() else
                                       f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
                   for c in text)


def build_sequence(result: TraceResult, name: str = "trace", vm: VmTrace | None = None,
                   host: tuple[int, str] | None = None) -> Explanation:
    """One VM's set-up (``vm``; default :func:`main_vm`) as a sequence: steps, measured durations and gaps
    (see the module docstring). ``host``: the HZ and platform to record in the file for its replay."""
    vms = vms_of(result)
    if vm is None:
        vm = main_vm(vms)
    if vm is None:
        raise ValueError("the trace has no successful KVM_CREATE_VM: there is no VM set-up to explain")
    skipped: list[str] = []
    first = result.events[vm.created]
    events = [result.events[i] for i in vm.rows]
    chosen = sorted((e for e in events if e.duration_ns is not None and e.ret is not None),
                    key=lambda e: e.enter_ns)
    # The set-up ends with the last vCPU's first KVM_RUN that returned: what follows is the guest running
    # (firmware toggling memslots, say), not the VMM setting up, and is left out.
    runs = [e for e in chosen if e.first_run and e.ret is not None and e.ret >= 0]
    if runs:
        end = max(e.enter_ns for e in runs)
        later = [e for e in chosen if e.enter_ns > end]
        if later:
            skipped.append(f"{len(later)} ioctls after the last vCPU's first KVM_RUN (the guest running, not the "
                           "set-up)")
        chosen = [e for e in chosen if e.enter_ns <= end]
    unmodelled: Counter[str] = Counter()
    steps: list[Step] = []
    # One comment line whatever the command holds (an argument may span lines: python -c '...').
    lines = [f"# the KVM set-up of: {escape_header(shlex.join(result.argv))}",
             f"# recorded by minivmm trace: {escape_header(vm.label)}, {vm.describe()}; gaps as measured "
             f"(clock: {result.clock.value})"]
    if host is not None:
        lines.append(f"host hz={host[0]} platform={host[1]}")
    # The VM's close() is not among the traced calls: the sequence ends where the set-up did.
    lines.append(seqmod.KEEP_VM)
    step_events: list[int] = []
    measured: list[int] = []
    gaps: list[int] = []
    last_end = first.enter_ns
    current_gap: int | None = None
    failed = Counter(e.name for e in chosen if e.ret is not None and e.ret < 0)
    for ev in chosen:
        if ev.ret is not None and ev.ret < 0:
            continue  # a refused ioctl changed nothing in the kernel's state
        conv = event_to_step(ev)
        dur = ev.duration_ns or 0
        if conv is None:
            if ev.request == decode.KVM_RUN:
                continue  # a later KVM_RUN: not part of the set-up
            unmodelled[ev.name] += 1
            conv = ("ioctl", {"name": ev.name, "cost": dur})
        op, args = conv
        gap = max(0, ev.enter_ns - last_end) if steps else 0
        text = seqmod.format_step(Step(op, args, gap))  # the one sequence formatter
        if gap != current_gap:
            lines.append(f"gap {seqmod.format_time(gap)}")
            current_gap = gap
        lines.append(f"{text}    # {escape_header(ioctl_name(ev))}")
        step_events.append(ev.index)
        measured.append(dur)
        gaps.append(gap)
        last_end = max(last_end, ev.enter_ns + dur)
        steps.append(Step(op, args, gap))
    for n, c in failed.items():
        skipped.append(f"{c} x {n} failed (not a step)")
    text = "\n".join(lines) + "\n"
    seq = seqmod.parse_sequence(text, name)
    return Explanation(seq, text, step_events, measured, gaps, unmodelled, skipped, vm=vm)


def explain(result: TraceResult, hz: int, platform: str, samples: int = 400, seed: int = 0,
            vm: VmTrace | None = None, host: tuple[int, str] | None = None) -> Explanation:
    """Build one VM's sequence (default :func:`main_vm`) and predict it under every main variant; the
    verdict as ``minivmm timing``."""
    from minivmm.timing.compare import compare
    from minivmm.timing.runner import Repetition

    ex = build_sequence(result, vm=vm, host=host)
    ex.hz, ex.platform = hz, platform
    rep = Repetition(list(ex.measured_ns), list(ex.gaps_ns), [None] * len(ex.measured_ns))
    labels = [step_ref(ex, i) for i in range(len(ex.sequence.steps))]  # the verdict names steps as the report does
    ex.comparison = compare(ex.sequence, [rep], hz, platform, samples, seed, labels=labels)
    _attribute(ex, result, seed)
    if getattr(result, "srcu", None) is not None:
        ex.kernel_checks = srcu_check.check_stalls(ex, result, stalled_steps(ex))
    else:
        ex.kernel_note = getattr(result, "srcu_note", "") or "the kernel clock was not used"
    from minivmm.trace.teardown import explain_teardown
    try:
        ex.teardown = explain_teardown(result, ex.vm, hz, platform, seed=seed,
                                       name_ioctl=lambda k: ioctl_ref(ex, result.events, k))
    except ValueError as e:  # the model kernel refused the ops before the teardown (SequenceError)
        ex.teardown_note = f"the teardown could not be modelled: {e}"
    return ex


def explain_all(result: TraceResult, hz: int, platform: str, samples: int = 400, seed: int = 0,
                host: tuple[int, str] | None = None) -> list[Explanation]:
    """Every VM's explanation, in the order the VMs were created."""
    return [explain(result, hz, platform, samples, seed, vm, host) for vm in vms_of(result)]


#: Samples of the prediction the model's attribution makes beside it (the attribution is taken at its
#: own tick phases; its prediction's quantiles are not shown).
ATTRIBUTION_SAMPLES = 20


def _attribute(ex: Explanation, result: TraceResult, seed: int) -> None:
    """For each stalled step: the variant the verdict names, where it predicts a stall there, else the
    kernel variant whose prediction comes closest to what was measured; and, under that variant, which
    grace period the step waited for and which earlier ioctl started it. The attribution is the kernel
    model's own (``kernel_model.explain``: every grace-period request and wait is tagged with the step
    that issued it); the time between the two ioctls is the measured one. A stall that no variant
    predicts is said to be unexplained, rather than pinned on anything."""
    c = ex.comparison
    stalls = stalled_steps(ex)
    if not stalls:
        return
    # The variant whose prediction comes closest, per stall; the model's attribution is taken only under
    # those (it simulates the whole sequence at every sampled phase, so this is most of the cost), and
    # with few samples: its own prediction's quantiles are not used (the comparison's are).
    closest: dict[int, tuple[str, dict[str, float]]] = {}
    for i in stalls:
        p50 = {v: max(p.steps[i].stats()["p50"], 0.01) for v, p in c.predictions.items()}
        measured_us = max(ex.measured_ns[i] / 1000, 0.01)
        best = min(p50, key=lambda v: abs(math.log(measured_us / p50[v])))
        judged = c.verdict.best
        if judged in p50 and is_stall(p50[judged] * 1000):
            best = judged  # the variant the verdict names explains the stall, if it predicts one here
        closest[i] = best, p50
    wanted = {best for i, (best, p50) in closest.items()
              if ex.sequence.steps[i].op != "ioctl" and is_stall(p50[best] * 1000)}
    per_variant: dict[str, Any] = {}
    try:
        for v in sorted(wanted):
            per_variant[v] = kexplain.explain(ex.sequence, v, ex.hz, ex.platform, samples=ATTRIBUTION_SAMPLES,
                                              seed=seed)
    except ValueError as e:
        ex.attribution_note = f"grace-period attribution failed: {e}"
        return
    events = result.events
    for i in stalls:
        ev = events[ex.step_events[i]]
        if ex.sequence.steps[i].op == "ioctl":
            ex.attributions[i] = ["not modelled: carried at its measured cost, so the model cannot say what "
                                  "it waited for"]
            continue
        best, p50 = closest[i]
        if not is_stall(p50[best] * 1000):
            ex.attributions[i] = [f"no kernel variant of the model predicts a stall here (the closest, {best}, "
                                  f"predicts {p50[best]:.0f} us): not explained by the model"]
            continue
        st = per_variant[best][i]
        if not st.waited_for_gp:
            ex.attributions[i] = [f"model ({best}, predicts {p50[best] / 1000:.2f} ms): no grace-period wait"]
            continue
        waited = f"{st.waited_ns / 1e6:.2f} ms" if st.waited_ns is not None else "?"
        share = f" (in {st.share:.0%} of tick phases)" if st.share < 0.995 else ""
        if st.transferred and st.started_by_step is not None:
            starter = events[ex.step_events[st.started_by_step]]
            earlier = (ev.enter_ns - starter.enter_ns) / 1e6
            sentence = (f"model ({best}, its own figures): waited {waited} in {st.call} for the {st.gp_kind} "
                        f"grace period started by step {step_name(st.started_by_step, st.started_by_label or '')} "
                        f"(ioctl #{starter.index}, {st.started_by_call}) {earlier:.2f} ms earlier{share}")
        else:
            sentence = (f"model ({best}, its own figures): waited {waited} for its own {st.gp_kind} grace period "
                        f"({st.call}){share}")
        ex.attributions[i] = [sentence]
        ex.attribution_detail[i] = {
            "variant": best, "call": st.call, "gp_kind": st.gp_kind, "srcu": st.srcu,
            "waited_us": None if st.waited_ns is None else st.waited_ns / 1000, "transferred": st.transferred,
            "started_by_ioctl": (ex.step_events[st.started_by_step] if st.started_by_step is not None else None),
            "started_by_step": None if st.started_by_step is None else step_number(st.started_by_step),
            "started_by_call": st.started_by_call, "share": st.share}


def ioctl_name(ev: IoctlEvent) -> str:
    """A traced ioctl's own index, labelled so that it is not read as a step number: ``ioctl #65 on vm``."""
    return f"ioctl #{ev.index} on {ev.role}"


def step_ref(ex: Explanation, i: int) -> str:
    """Step ``i`` of the trace's sequence as reports name it: its number and label, then the traced
    ioctl it is: ``#60 KVM_IOEVENTFD deassign, pio 0x0 (ioctl #65)``."""
    return f"{step_name(i, ex.sequence.steps[i].label)} (ioctl #{ex.step_events[i]})"


def ioctl_ref(ex: Explanation, events: Any, index: int) -> str:
    """Traced ioctl ``index`` as reports name it: the step it became, its own index beside
    (``step #51 KVM_CREATE_IRQCHIP (ioctl #56)``); one that became no step of ``ex``'s sequence by its index
    and name (``ioctl #70 KVM_GET_CLOCK``). ``events``: the trace's ioctls."""
    i = ex.step_of(index)
    return f"ioctl #{index} {events[index].name}" if i is None else f"step {step_ref(ex, i)}"


def stalled_steps(ex: Explanation) -> list[int]:
    """Steps whose measured duration is a stall (:func:`kernel_model.stats.is_stall`)."""
    return [i for i, d in enumerate(ex.measured_ns) if is_stall(d)]

