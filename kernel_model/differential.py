"""The differential harness's model side: random set-up sequences, the steps that wait for a grace
period, the model paired with measured repetitions, and the comparison of a step's durations by tick
mode. The host side (running the cases on KVM) is ``minivmm.timing.differential``; the front end is
``scripts/differential.py``.

A stalled step's duration is a mixture of jiffy-wide tick modes (``kernel_model.stats``): when the
grace-period timer fires on its bucket's tick, or a tick later, or when an earlier grace period is over
in some runs and not in others. Its median can jump by a jiffy when a few percent of the runs change
mode, so a step is compared mode by mode: the share of runs in each mode (up to sampling noise) and,
in each mode both sides hold ten runs of, the share of host runs below the model's p10/p50/p90
(``kernel_model.stats.compare_modes``) — the model against the host, and, as the yardstick, the host's
odd repetitions against its even ones.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, NamedTuple

from kernel_model.costs import Costs
from kernel_model.platforms import Arch, get_platform
from kernel_model.predict import simulate_once
from kernel_model.sequences import Sequence, step_number, with_gaps
from kernel_model.stats import ModeComparison, compare_modes, quantiles
from kernel_model.tick import TickEnvironment, TracedTicks

MMIO_BASE = 0xD0000000
#: The variant the host runs (its kernel, 6.18, frees an old bus with call_srcu()).
HOST_VARIANT = "call_srcu"


def generate(rng: random.Random, name: str, irqchip: bool | None = None) -> str:
    """A random set-up sequence in the sequence-file format (see kernel_model/sequences.py):
    registrations, deregistrations, pauses of 0.3-6 ms, memslot creations and deletions, vCPUs, in
    any order."""
    lines = ["create_vm"]
    if irqchip if irqchip is not None else rng.random() < 0.5:
        lines.append("irqchip")  # x86 refuses it once vCPUs exist: first or never
    slots: list[int] = []
    ioevs: list[int] = []
    vcpus = 0
    next_addr = 0
    next_slot = 0
    for _ in range(rng.randint(5, 12)):
        r = rng.random()
        if r < 0.25:
            lines.append(f"sleep {rng.choice([300, 800, 1500, 2500, 3000, 4500, 6000])}us")
            continue
        if r < 0.55 or not (slots or ioevs):
            addr = MMIO_BASE + next_addr * 0x1000 + 0x50
            next_addr += 1
            ioevs.append(addr)
            lines.append(f"ioeventfd addr={addr:#x} len=4")
        elif r < 0.65 and ioevs:
            addr = ioevs.pop(rng.randrange(len(ioevs)))
            lines.append(f"ioeventfd_deassign addr={addr:#x} len=4")
        elif r < 0.82:
            slot = next_slot
            next_slot += 1
            base = 0 if slot == 0 else 0x100000000 + slot * 0x10000000
            slots.append(slot)
            lines.append(f"memslot slot={slot} base={base:#x} size={rng.choice([2, 4, 128])}M")
        elif r < 0.9 and len(slots) > 1:
            slot = slots.pop()
            lines.append(f"memslot slot={slot} base={0x100000000 + slot * 0x10000000:#x} size=0")
        elif vcpus < 4:
            lines.append(f"vcpu id={vcpus}")
            vcpus += 1
    if not any(w.startswith("memslot") for w in lines):
        lines.append("memslot slot=0 base=0 size=2M")
    return f"# differential case {name}\n" + "\n".join(lines) + "\n"


def waits_for_gp(seq: Sequence, platform: str) -> list[int]:
    """Indexes of the steps that wait for a grace period on this platform: memslot changes
    (kvm_swap_active_memslots()), deregistrations (kvm_io_bus_unregister_dev()), on VMX/SVM the first
    vCPU with an in-kernel irqchip (the APIC-access page), on x86 KVM_CREATE_IRQCHIP
    (kvm_set_irq_routing() on kvm->irq_srcu)."""
    plat = get_platform(platform)
    out, irqchip, vcpus = [], False, 0
    for i, s in enumerate(seq.steps):
        if s.op == "irqchip":
            irqchip = True
            if plat.arch is Arch.X86:
                out.append(i)
        elif s.op in ("memslot", "ioeventfd_deassign"):
            out.append(i)
        elif s.op == "vcpu":
            if vcpus == 0 and irqchip and plat.apic_access_memslot_on_first_vcpu:
                out.append(i)
            vcpus += 1
    return out


class HostTimeline(NamedTuple):
    """One host repetition as the model replays it: its tick phase (where its first gap began, as a
    share of a jiffy on the host's tick grid), each step's start, in ns from there, the CPU its
    caller armed its first grace-period timer on (None: it armed none, or that was not traced),
    the CPUs' traced ticks and tick stops from its first jiffy on (None: not traced), and per step how
    long each of its caller's wake-ups waited for a CPU (None: not traced)."""

    phase: float
    starts_ns: list[int]
    caller_cpu: int | None = None
    traced: TracedTicks | None = None
    wakeups_ns: list[tuple[int, ...]] | None = None


def model_paired(seq: Sequence, gaps: list[list[int]], hz: int, platform: str, costs: Costs | None,
                 per_rep: int, seed: int, durations: list[list[int]] | None = None,
                 timelines: list[HostTimeline] | None = None, replay_wakeups: bool = True) -> list[list[int]]:
    """Per step, the model's durations: ``per_rep`` runs per host repetition, each with that
    repetition's measured gaps (the pauses the host really made) and a random tick phase.

    With ``durations`` (per repetition, the host's step durations), every step that waits for no grace
    period is held to the host's duration too (``simulate_once``'s ``held_ns``): what the harness tests
    is when the waiting steps end, and that depends on how long after a registration they began, which
    the model's fixed costs for the other ioctls (one figure each, where the host's vary from run to run
    and host to host) would otherwise shift.

    With ``timelines`` (per repetition, from a host whose tick grid is known), each model run replays
    the repetition instead: its tick phase and every step's start are the host's (``starts_ns``), so a
    registration arms its timer for the tick the host's did, on the CPU the host's caller armed it on,
    with the other CPUs ticking and every CPU stopping its tick where the host's did (the do_timer duty
    then follows the kernel's rule: kernel_model.tick.TracedTicks), and a waiting step is compared with
    the host's in the very same situation: only what the model says about the grace period, the ticks
    and the wake-ups is left to differ. A wake-up the model draws later than the host's caller went on
    counts in its step but does not shift the steps after it: the host's own late wake-ups are in its
    timeline already, and the model's draws of them would otherwise be counted twice.

    With a profile and the host caller's wake-ups traced (``HostTimeline.wakeups_ns``), the model's
    waiters do not draw their latency: each takes the host caller's in the same step (``replay_wakeups``;
    False draws them as a prediction does). How long a woken task waits for its CPU behind a busy one
    is the scheduler's doing, not the grace period's or the ticks'."""
    rng = random.Random(seed)
    out: list[list[int]] = [[] for _ in seq.steps]
    waiting = set(waits_for_gp(seq, platform))
    nr_cpus = (costs or Costs()).cpus.nr_cpus  # a host CPU the model's host does not have: drawn instead
    # The traced ticks are the host's measured environment, as a profile's are: replayed with one only
    # (the model without a profile stays a quiet host's).
    replay_ticks = costs is not None and costs.cpus != TickEnvironment()
    for r, g in enumerate(gaps):
        s = with_gaps(seq, g)
        held: list[int | None] | None = None
        if durations is not None:
            held = [None if i in waiting else d for i, d in enumerate(durations[r])]
        line = timelines[r] if timelines is not None else None
        starts = line.starts_ns if line is not None else None
        cpu = line.caller_cpu if line is not None else None
        if cpu is not None and cpu >= nr_cpus:
            cpu = None
        traced = line.traced if replay_ticks and line is not None and cpu is not None else None
        wakeups = line.wakeups_ns if replay_wakeups and costs is not None and line is not None else None
        for _ in range(per_rep):
            phase = rng.random()
            if line is not None:
                phase = line.phase
            run = simulate_once(s, HOST_VARIANT, hz, platform, phase, rng, costs, held_ns=held, starts_ns=starts,
                                caller_cpu=cpu, traced=traced, wakeups_ns=wakeups)[0]
            for i, d in enumerate(run):
                out[i].append(d)
    return out


@dataclass
class StepComparison:
    """One grace-period step of one case: the model against the host, the host against itself (odd
    repetitions against even ones), the model without a profile against the host, and, where the model
    replayed the host caller's wake-ups, the model drawing them from the profile instead."""

    case: str
    #: The step's index in the case's sequence (reports show its number, kernel_model.sequences.step_number).
    step: int
    label: str
    host: list[int]
    model: list[int]
    model_vs_host: ModeComparison
    host_vs_host: ModeComparison
    fixed_vs_host: ModeComparison | None = None
    drawn_vs_host: ModeComparison | None = None

    @property
    def ok(self) -> bool:
        """The model agrees with the host mode by mode."""
        return self.model_vs_host.ok

    def to_json(self) -> dict[str, Any]:
        """Quantiles (ms), and each comparison's per-mode shares and verdicts."""
        def side(c: ModeComparison) -> dict[str, Any]:
            return {"ok": c.ok, "shares": [list(map(lambda x: round(x, 4), (c.a.share(k), c.b.share(k))))
                                           for k in range(len(c.shares_ok))],
                    "shares_ok": list(c.shares_ok), "within_ok": list(c.within_ok)}
        out = {"case": self.case, "step": step_number(self.step), "label": self.label,
               "host_ms": {k: round(v / 1000, 3) for k, v in quantiles(self.host).items()},
               "model_ms": {k: round(v / 1000, 3) for k, v in quantiles(self.model).items()},
               "model_vs_host": side(self.model_vs_host), "host_odd_vs_even": side(self.host_vs_host)}
        if self.fixed_vs_host is not None:
            out["fixed_cost_vs_host"] = side(self.fixed_vs_host)
        if self.drawn_vs_host is not None:
            out["drawn_wakeups_vs_host"] = side(self.drawn_vs_host)
        return out


def compare_step(case: str, step: int, label: str, host: list[int], model: list[int], tick: int,
                 fixed: list[int] | None = None, drawn: list[int] | None = None) -> StepComparison:
    """Compare one step (durations in ns, host in repetition order): the model's modes are counted from
    its own shortest run (its on-time timers all fall in mode 0); the host's halves from the lower of
    their minima."""
    origin = min(model)
    odd, even = host[1::2], host[0::2]
    return StepComparison(case, step, label, host, model, compare_modes(host, model, tick, origin),
                          compare_modes(odd, even, tick, min(min(odd), min(even))) if odd and even else
                          compare_modes(host, host, tick, min(host)),
                          compare_modes(host, fixed, tick, min(fixed)) if fixed else None,
                          compare_modes(host, drawn, tick, min(drawn)) if drawn else None)


def summarize(results: list[StepComparison]) -> dict[str, Any]:
    """Steps compared; how many agree mode by mode: the model, the model without a profile, and the
    host with itself; the misses."""
    n = len(results)
    ok = sum(r.ok for r in results)
    self_ok = sum(r.host_vs_host.ok for r in results)
    fixed = [r for r in results if r.fixed_vs_host is not None]
    drawn = [r.drawn_vs_host for r in results if r.drawn_vs_host is not None]
    return {"steps": n, "within": ok, "share": ok / n if n else 0.0,
            "fixed_cost_within": sum(r.fixed_vs_host.ok for r in fixed if r.fixed_vs_host) if fixed else None,
            # the steps whose model runs replayed the host caller's wake-ups, and how many of them agree
            # with the wake-ups drawn from the profile instead
            "wakeups_replayed_steps": len(drawn), "drawn_wakeups_within": sum(c.ok for c in drawn),
            "host_self_within": self_ok, "host_self_share": self_ok / n if n else 0.0,
            "misses": [r.to_json() for r in results if not r.ok]}
