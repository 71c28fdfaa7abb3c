"""Why a step took as long as it did: the grace period each step waited for, and which step started it.

The model tags every grace-period request and every blocking wait with the step that issued it
(``KvmModel.issuing``; ``srcutree.GpRequest`` / ``srcutree.SrcuWait``). A step that blocked in
``synchronize_srcu_expedited()`` (a memslot swap, a deregistration, ``sync``'s registration, the GSI
routing) waited for every grace period that ended while it was blocked; if one of them was requested
by an *earlier* step (a registration's ``call_srcu()``, typically), that grace period was transferred
to this step, and it is the answer to "why did this ioctl stall". This is read from the model's own
state, never from the names of the ioctls.

The attribution is taken at ``ATTRIBUTION_PHASES`` tick phases spread over one jiffy (at random
phases and reader offsets when vCPUs run before the last step), and the most frequent answer is
reported with the share of phases that gave it; the durations are ``predict()``'s.
"""

from __future__ import annotations

import random
import statistics
from collections import Counter
from dataclasses import dataclass, replace

from kernel_model.costs import Costs
from kernel_model.kvm_main import KvmModel
from kernel_model.predict import Prediction, phase_deterministic, predict, simulate_once
from kernel_model.sequences import Sequence, step_name, step_number, validate
from kernel_model.srcutree import RCU_SEQ_STATE_MASK, GracePeriod, SrcuStruct, SrcuWait

#: Tick phases at which the attribution is taken.
ATTRIBUTION_PHASES = 32


@dataclass(frozen=True)
class GpWait:
    """The grace period one step waited for, in one simulated run."""

    srcu: str               # "kvm->srcu" or "kvm->irq_srcu"
    call: str               # how the step waited: synchronize_srcu_expedited, srcu_barrier, ...
    waited_ns: int          # how long that blocking call lasted
    gp_kind: str            # "normal" or "expedited": what the requester asked for
    started_by: int         # 0-based index of the step that requested the grace period
    started_by_call: str    # the SRCU call it requested it with: call_srcu, synchronize_srcu_expedited, ...
    started_ns_before: int  # from that request to the start of this step's wait
    transferred: bool       # requested by an earlier step, not by this one


def _ended_during(ssp: SrcuStruct, w: SrcuWait) -> list[GracePeriod]:
    return [g for g in ssp.grace_periods if g.end is not None and w.start < g.end <= w.end]


def _gp_wait(ssp: SrcuStruct, w: SrcuWait, gp_seq: int) -> GpWait | None:
    """Wait ``w`` as a wait for the grace period that ends at sequence ``gp_seq`` (None: nobody that
    is a step asked for it)."""
    req = ssp.gp_requests.get(gp_seq)
    if req is None or not isinstance(req.caller, int):
        return None
    return GpWait(ssp.name, w.call, w.end - w.start, "expedited" if req.expedited else "normal", req.caller,
                  req.call, w.start - req.time, req.caller != w.caller)


def _waited_for(ssp: SrcuStruct, w: SrcuWait) -> list[GpWait]:
    """The grace periods one blocking wait waited for: every one that ended during a synchronize;
    for an ``srcu_barrier()`` (the teardown), the grace period of the last queued callback, whose
    callbacks it waited for, whether that grace period ended during the wait or before it (then only
    the callback delay was left)."""
    if w.call == "srcu_barrier":
        gp_seqs = [w.seq]
    else:
        gp_seqs = [(g.seq | RCU_SEQ_STATE_MASK) + 1 for g in _ended_during(ssp, w)]
    return [found for s in gp_seqs if (found := _gp_wait(ssp, w, s)) is not None]


def attribute(kvm: KvmModel, step: int) -> GpWait | None:
    """The grace period step ``step`` waited for in this run (None: it blocked on none). A grace period
    requested by an earlier step and still running when the step began waiting comes first (the
    oldest such one: the step could not be done before it ended); else the step's own longest wait.
    A teardown's ``srcu_barrier()`` waited for the callbacks of the last queued callback's grace period."""
    best: tuple[tuple[int, int], GpWait] | None = None
    for ssp in (kvm.srcu, kvm.irq_srcu):
        for w in ssp.waits:
            if w.caller != step:
                continue
            for found in _waited_for(ssp, w):
                # Rank: transferred first, then the oldest request (its time); own waits by their length.
                rank = (0, w.start - found.started_ns_before) if found.transferred else (1, -found.waited_ns)
                if best is None or rank < best[0]:
                    best = (rank, found)
    return best[1] if best else None


@dataclass(frozen=True)
class StepExplanation:
    """One step of a sequence under one variant: its predicted durations and what it waited for.

    ``index`` and ``started_by_step`` are 0-based positions in ``sequence.steps``; reports and JSON
    give the step's number (:func:`kernel_model.sequences.step_number`). The gp fields are None when
    the step blocked on no grace period (``waited_for_gp`` False). ``share`` is the fraction of
    sampled tick phases that gave this attribution.
    """

    index: int
    op: str
    label: str
    modelled: bool
    p10_us: float
    p50_us: float
    p90_us: float
    waited_for_gp: bool
    gp_kind: str | None = None
    srcu: str | None = None
    call: str | None = None
    waited_ns: int | None = None
    started_by_step: int | None = None
    started_by_label: str | None = None
    started_by_call: str | None = None
    started_ns_before: int | None = None
    transferred: bool = False
    share: float = 0.0

    def describe(self) -> str:
        """One line, e.g. ``waited 7.9 ms for the normal grace period started by step #8 KVM_IOEVENTFD,
        mmio 0xd0002050 (call_srcu) 0.4 ms earlier``."""
        if not self.modelled:
            return f"not modelled: carried as a fixed cost of {_fmt_ns(self.p50_us * 1000)}"
        if not self.waited_for_gp:
            return "no grace-period wait"
        assert self.waited_ns is not None and self.started_ns_before is not None
        where = "" if self.srcu == "kvm->srcu" else f" of {self.srcu}"
        if self.call == "srcu_barrier":
            starter = step_name(self.started_by_step or 0, self.started_by_label or "")
            text = (f"srcu_barrier waited {_fmt_ns(self.waited_ns)} for the callbacks of the {self.gp_kind} grace "
                    f"period{where} started by step {starter} ({self.started_by_call}) "
                    f"{_fmt_ns(self.started_ns_before)} earlier")
        elif self.transferred:
            starter = step_name(self.started_by_step or 0, self.started_by_label or "")
            text = (f"waited {_fmt_ns(self.waited_ns)} for the {self.gp_kind} grace period{where} started by "
                    f"step {starter} ({self.started_by_call}) {_fmt_ns(self.started_ns_before)} earlier")
        else:
            text = f"waited {_fmt_ns(self.waited_ns)} for its own {self.gp_kind} grace period{where} ({self.call})"
        if self.share < 0.995:
            text += f" (in {self.share:.0%} of tick phases)"
        return text

    def to_json(self) -> dict[str, object]:
        """Every field, JSON-ready, with step numbers (``step``, ``started_by_step``) in place of the
        0-based positions, plus the sentence."""
        fields = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "index"}
        started = self.started_by_step
        return {"step": step_number(self.index), **fields,
                "started_by_step": None if started is None else step_number(started), "text": self.describe()}


@dataclass(frozen=True)
class VariantExplanation:
    """A sequence explained under one variant: per step, and the whole set-up (µs quantiles)."""

    variant: str
    steps: list[StepExplanation]
    setup: dict[str, float]
    prediction: Prediction


def _fmt_ns(ns: float) -> str:
    return f"{ns / 1e6:.1f} ms" if ns >= 1e6 else f"{ns / 1e3:.0f} us"


def _attributions(sequence: Sequence, variant: str, hz: int, platform: str, seed: int,
                  costs: Costs | None) -> list[list[GpWait | None]]:
    """Per step, its attribution at each sampled phase."""
    rng = random.Random(seed)
    deterministic = phase_deterministic(sequence)
    per_step: list[list[GpWait | None]] = [[] for _ in sequence.steps]
    for k in range(ATTRIBUTION_PHASES):
        phase = (k + 0.5) / ATTRIBUTION_PHASES if deterministic else rng.random()
        _, kvm = simulate_once(sequence, variant, hz, platform, phase, rng, costs)
        for i in range(len(sequence.steps)):
            per_step[i].append(attribute(kvm, i))
    return per_step


def _key(g: GpWait) -> tuple[str, str, str, int, str, bool]:
    """What makes two runs' attributions the same answer (durations aside)."""
    return g.srcu, g.call, g.gp_kind, g.started_by, g.started_by_call, g.transferred


def explain_variant(sequence: Sequence, variant: str, hz: int, platform: str, samples: int = 1000,
                    seed: int = 0, costs: Costs | None = None) -> VariantExplanation:
    """:func:`explain` plus the whole set-up time's quantiles and the prediction it used. A sequence the
    model kernel refuses raises SequenceError naming the step (``sequences.validate``)."""
    validate(sequence, platform)
    pred = predict(sequence, variant, hz, platform, samples=samples, seed=seed, costs=costs)
    out = []
    for i, (sp, found) in enumerate(zip(pred.steps, _attributions(sequence, variant, hz, platform, seed, costs))):
        st = sp.stats()
        plain = StepExplanation(i, sp.step.op, sp.step.label, sp.step.modelled, st["p10"], st["p50"], st["p90"],
                                waited_for_gp=False)
        keys = Counter(_key(g) for g in found if g is not None)
        if not keys or sum(keys.values()) * 2 < len(found):
            out.append(plain)  # no grace-period wait in most sampled phases
            continue
        key, count = keys.most_common(1)[0]
        same = [g for g in found if g is not None and _key(g) == key]
        g = same[0]
        out.append(replace(
            plain, waited_for_gp=True, gp_kind=g.gp_kind, srcu=g.srcu, call=g.call,
            waited_ns=int(statistics.median(x.waited_ns for x in same)), started_by_step=g.started_by,
            started_by_label=sequence.steps[g.started_by].label, started_by_call=g.started_by_call,
            started_ns_before=int(statistics.median(x.started_ns_before for x in same)),
            transferred=g.transferred, share=count / len(found)))
    return VariantExplanation(variant, out, pred.setup_stats(), pred)


def explain(sequence: Sequence, variant: str, hz: int, platform: str, samples: int = 1000,
            costs: Costs | None = None, seed: int = 0) -> list[StepExplanation]:
    """Per step of ``sequence`` under ``variant`` at ``hz`` on ``platform``: predicted p10/p50/p90,
    whether it waited for a grace period, which kind, and which earlier step started it."""
    return explain_variant(sequence, variant, hz, platform, samples, seed, costs).steps
