"""From a trace to an explanation: the VMM's set-up as a :mod:`kernel_model` sequence (gaps as measured),
what each kernel variant predicts for each of its ioctls at this host's HZ and platform, the whole
set-up measured and predicted, and the verdict as ``minivmm timing`` gives it
(:func:`minivmm.timing.compare.compare`, reused as is).

Which ioctls become steps: those of the first VM (and its system fd's ``KVM_CREATE_VM``), from
``KVM_CREATE_VM`` on, in the order they entered the kernel, each vCPU's first ``KVM_RUN`` included.
An ioctl that an op takes becomes that op (each op's own inverse, ``OpSpec.from_traced``); any other
is carried as a fixed cost, its measured duration (``ioctl name=... cost=...``).
:attr:`Explanation.unmodelled` lists which, and the report says so.
"""

from __future__ import annotations

import math
import re
import shlex
import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from kernel_model import explain as kexplain
from kernel_model import ops
from kernel_model import sequences as seqmod
from kernel_model.ops import TracedIoctl
from kernel_model.sequences import Sequence, Step
from kernel_model.stats import is_stall, quantiles
from minivmm.trace import decode
from minivmm.trace.tracer import IoctlEvent, TraceResult

_OTHER_VM = re.compile(r"^vm(\d+|\?)")


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
    :func:`kernel_model.ops.from_traced`), or None if no op takes it."""
    return ops.from_traced(TracedIoctl(ev.name, ev.arg, ev.decoded.fields, ev.role, ev.first_run))


def build_sequence(result: TraceResult, name: str = "trace") -> Explanation:
    """The set-up as a sequence: steps, measured durations and gaps (see the module docstring)."""
    events = [e for e in result.events if e.duration_ns is not None and e.ret is not None]
    creates = [e for e in events if e.request == decode.KVM_CREATE_VM and e.ret is not None and e.ret >= 0]
    skipped: list[str] = []
    if not creates:
        raise ValueError("the trace has no successful KVM_CREATE_VM: there is no VM set-up to explain")
    first = creates[0]
    if len(creates) > 1:
        skipped.append(f"{len(creates) - 1} further VM(s) created (only the first VM's set-up is modelled)")
    # The first VM's process, from its KVM_CREATE_VM on; a further VM's fds (vm1, vm1.vcpu0) are not ours.
    chosen = sorted((e for e in events if e.pid == first.pid and e.enter_ns >= first.enter_ns
                     and not _OTHER_VM.match(e.role)), key=lambda e: e.enter_ns)
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
    command = shlex.join(result.argv).replace("\r", "\\r").replace("\n", "\\n")
    lines = [f"# the KVM set-up of: {command}",
             "# recorded by minivmm trace; gaps as measured (clock: " + result.clock.value + ")"]
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
        lines.append(f"{text}    # {ev.role} #{ev.index}")
        step_events.append(ev.index)
        measured.append(dur)
        gaps.append(gap)
        last_end = max(last_end, ev.enter_ns + dur)
        steps.append(Step(op, args, gap))
    for n, c in failed.items():
        skipped.append(f"{c} x {n} failed (not a step)")
    text = "\n".join(lines) + "\n"
    seq = seqmod.parse_sequence(text, name)
    return Explanation(seq, text, step_events, measured, gaps, unmodelled, skipped)


def explain(result: TraceResult, hz: int, platform: str, samples: int = 400, seed: int = 0) -> Explanation:
    """Build the sequence and predict it under every main variant; the verdict as ``minivmm timing``."""
    from minivmm.timing.compare import compare
    from minivmm.timing.runner import Repetition

    ex = build_sequence(result)
    ex.hz, ex.platform = hz, platform
    rep = Repetition(list(ex.measured_ns), list(ex.gaps_ns), [None] * len(ex.measured_ns))
    ex.comparison = compare(ex.sequence, [rep], hz, platform, samples, seed)
    _attribute(ex, result, min(samples, 200), seed)
    return ex


def _attribute(ex: Explanation, result: TraceResult, samples: int, seed: int) -> None:
    """For each stalled step: which kernel variant's prediction comes closest to what was measured, and,
    under that variant, which grace period the step waited for and which earlier ioctl started it. The
    attribution is the kernel model's own (``kernel_model.explain``: every grace-period request and
    wait is tagged with the step that issued it); the time between the two ioctls is the measured one.
    A stall that no variant predicts is said to be unexplained, rather than pinned on anything."""
    c = ex.comparison
    stalls = stalled_steps(ex)
    if not stalls:
        return
    per_variant: dict[str, Any] = {}
    try:
        for v in c.predictions:
            per_variant[v] = kexplain.explain(ex.sequence, v, ex.hz, ex.platform, samples=samples, seed=seed)
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
        p50 = {v: max(p.steps[i].stats()["p50"], 0.01) for v, p in c.predictions.items()}
        measured_us = max(ex.measured_ns[i] / 1000, 0.01)
        best = min(p50, key=lambda v: abs(math.log(measured_us / p50[v])))
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
            sentence = (f"model ({best}): waited {waited} in {st.call} for the {st.gp_kind} grace period "
                        f"started by {starter.name} #{starter.index} ({st.started_by_call}) {earlier:.2f} ms "
                        f"earlier{share}")
        else:
            sentence = f"model ({best}): waited {waited} for its own {st.gp_kind} grace period ({st.call}){share}"
        ex.attributions[i] = [sentence]
        ex.attribution_detail[i] = {
            "variant": best, "call": st.call, "gp_kind": st.gp_kind, "srcu": st.srcu,
            "waited_us": None if st.waited_ns is None else st.waited_ns / 1000, "transferred": st.transferred,
            "started_by_ioctl": (ex.step_events[st.started_by_step] if st.started_by_step is not None else None),
            "started_by_call": st.started_by_call, "share": st.share}


def stalled_steps(ex: Explanation) -> list[int]:
    """Steps whose measured duration is a stall (:func:`kernel_model.stats.is_stall`)."""
    return [i for i, d in enumerate(ex.measured_ns) if is_stall(d)]


def median_or_none(values: list[int]) -> float | None:
    """The median, or None for no values."""
    return statistics.median(values) if values else None
