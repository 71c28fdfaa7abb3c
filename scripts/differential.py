#!/usr/bin/env python3
"""Differential harness: random VM set-up sequences, run on this host and in the kernel model.

Each case is a random sequence of set-up steps (registrations, deregistrations, pauses, memslot
creations and deletions, vCPUs, in any order; ``--seed`` makes them reproducible). It is run
``--repeat`` times on the host with ``minivmm timing``'s runner (jitter on: each repetition starts at a
random point in a jiffy), and in the model at the host's HZ and platform under the ``call_srcu``
variant (the host's kernel, 6.18). The model is paired with the host: for every host repetition it
draws ``--per-rep`` samples with that repetition's own measured gaps (the pauses the host really
made) and a random tick phase, optionally with a host profile (``--profile``) for the timer wake-up
latency.

Every step that waits for a grace period (a memslot change: kvm_swap_active_memslots(); a
deregistration: kvm_io_bus_unregister_dev(); on VMX/SVM the first vCPU: the APIC-access page; on x86
KVM_CREATE_IRQCHIP: kvm_set_irq_routing() on kvm->irq_srcu) is
compared at p10, p50 and p90. A quantile agrees when host and model are within 10% of the host's
value or 0.3 ms, whichever is larger. The goal: at least 95% of such steps agree on all three.

Usage: python scripts/differential.py [--cases 20] [--repeat 100] [--seed 1] [--profile FILE.json]
       [--calibrate-first] [--json OUT.json]
Timing figures depend on the host's load: the load average is printed with the results.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import sys
from dataclasses import dataclass, field
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kernel_model.costs import Costs  # noqa: E402
from kernel_model.platforms import Arch, get_platform  # noqa: E402
from kernel_model.predict import simulate_once  # noqa: E402
from kernel_model.stats import percentile  # noqa: E402
from kernel_model.profile import HostProfile  # noqa: E402
from kernel_model.sequences import Sequence, parse_sequence, with_gaps  # noqa: E402

REL_TOL = 0.10
ABS_TOL_NS = 300_000
QUANTILES = (10, 50, 90)
MMIO_BASE = 0xD0000000


def generate(rng: random.Random, name: str, irqchip: bool | None = None) -> str:
    """A random set-up sequence in the sequence-file format (see kernel_model/sequences.py)."""
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
    """Indexes of the steps that wait for a grace period on this platform (see the module docstring)."""
    plat = get_platform(platform)
    out, slots, irqchip, vcpus = [], set(), False, 0
    for i, s in enumerate(seq.steps):
        a = s.args
        if s.op == "irqchip":
            irqchip = True
            if plat.arch is Arch.X86:  # x86: kvm_set_irq_routing() synchronizes kvm->irq_srcu
                out.append(i)
        elif s.op == "memslot":
            if a["size"] == 0:
                slots.discard(a["slot"])
            else:
                slots.add(a["slot"])
            out.append(i)
        elif s.op == "ioeventfd_deassign":
            out.append(i)
        elif s.op == "vcpu":
            if vcpus == 0 and irqchip and plat.apic_access_memslot_on_first_vcpu:
                out.append(i)
            vcpus += 1
    return out


@dataclass
class StepResult:
    """One compared step."""

    case: str
    step: int
    label: str
    host: dict[str, float]
    model: dict[str, float]
    agree: dict[str, bool] = field(default_factory=dict)
    #: The host against itself: its odd repetitions' quantiles against its even ones' (the noise floor).
    self_agree: bool = True
    #: The model with its fixed wake-up cost (no profile), same rule.
    fixed_agree: bool = True
    #: The share of the host's and of the model's samples more than half a tick above the host's median:
    #: a step whose p90 sits between two modes a tick apart misses by which side of 10% this falls.
    late_share: tuple[float, float] = (0.0, 0.0)
    #: The profile's tick_slip the model used (0 without a profile).
    tick_slip: float = 0.0

    @property
    def ok(self) -> bool:
        """All three quantiles agree."""
        return all(self.agree.values())


def late_share(values: list[int], median_ns: float, tick_ns: int) -> float:
    """The share of ``values`` more than half a tick above ``median_ns``."""
    return sum(v > median_ns + tick_ns / 2 for v in values) / len(values) if values else 0.0


def quantiles_ns(values: list[int]) -> dict[str, float]:
    """p10, p50, p90 (ns)."""
    s = sorted(values)
    return {f"p{q}": percentile(s, q) for q in QUANTILES}


def agree(host: float, model: float) -> bool:
    """Within 10% of the host's value or 0.3 ms, whichever is larger."""
    return abs(host - model) <= max(REL_TOL * host, ABS_TOL_NS)


def model_paired(seq: Sequence, gaps: list[list[int]], hz: int, platform: str, costs: Costs | None,
                 per_rep: int, seed: int) -> list[list[int]]:
    """Per step, the model's durations: ``per_rep`` samples per host repetition, with its gaps."""
    rng = random.Random(seed)
    out: list[list[int]] = [[] for _ in seq.steps]
    for g in gaps:
        s = with_gaps(seq, g)
        for _ in range(per_rep):
            for i, d in enumerate(simulate_once(s, "call_srcu", hz, platform, rng.random(), rng, costs)[0]):
                out[i].append(d)
    return out


def measure_interleaved(seq: Sequence, repeat: int, hz: int, platform: str, seed: int,
                        kvm_path: str = "/dev/kvm") -> tuple[list[Any], HostProfile]:
    """``repeat`` repetitions of ``seq`` (jitter on), each followed by one calibration run, so the host
    profile is taken under the same load as the repetitions; returns them and the profile."""
    import signal
    import time

    from minivmm.timing.calibrate import make_profile, run_calibration
    from minivmm.timing.runner import SequenceRunner
    from minivmm.vmm.vcpu_loop import KICK_SIGNAL
    rng = random.Random(seed)
    runner = SequenceRunner(seq, kvm_path)
    old = signal.signal(KICK_SIGNAL, lambda signum, frame: None)
    reps, cal = [], []
    try:
        for i in range(repeat):
            time.sleep(rng.random() / hz)
            reps.append(runner.run_once())
            cal += run_calibration(1, hz, kvm_path, seed=seed * 100_003 + i)
    finally:
        signal.signal(KICK_SIGNAL, old)
        runner.close()
    return reps, make_profile(cal, hz, platform, os.uname().release)


def run_case(name: str, text: str, repeat: int, hz: int, platform: str, costs: Costs | None, per_rep: int,
             seed: int, kvm_path: str = "/dev/kvm", interleave: bool = False) -> list[StepResult]:
    """Run one case on the host and in the model; compare its grace-period steps. With ``interleave``
    the host profile is calibrated between the repetitions (see :func:`measure_interleaved`)."""
    from minivmm.timing.runner import measure
    seq = parse_sequence(text, name)
    if interleave:
        reps, profile = measure_interleaved(seq, repeat, hz, platform, seed, kvm_path)
        costs = profile.costs()
    else:
        reps, _ = measure(seq, repeat, True, hz, kvm_path, seed=seed)
    model = model_paired(seq, [r.gaps_ns for r in reps], hz, platform, costs, per_rep, seed)
    fixed = model if costs is None else model_paired(seq, [r.gaps_ns for r in reps], hz, platform, None,
                                                     per_rep, seed)
    results = []
    for i in waits_for_gp(seq, platform):
        h = quantiles_ns([r.durations_ns[i] for r in reps])
        m = quantiles_ns(model[i])
        odd = quantiles_ns([r.durations_ns[i] for r in reps[1::2]])
        even = quantiles_ns([r.durations_ns[i] for r in reps[0::2]])
        f = quantiles_ns(fixed[i])
        tick = 1_000_000_000 // hz
        late = (late_share([r.durations_ns[i] for r in reps], h["p50"], tick), late_share(model[i], h["p50"], tick))
        results.append(StepResult(name, i, seq.steps[i].label, h, m, {k: agree(h[k], m[k]) for k in h},
                                  all(agree(even[k], odd[k]) for k in h), all(agree(h[k], f[k]) for k in h),
                                  late, costs.tick_slip if costs else 0.0))
    return results


def summarize(results: list[StepResult]) -> dict[str, Any]:
    """Steps compared, the share that agrees, and the misses."""
    n = len(results)
    ok = sum(r.ok for r in results)
    selfok = sum(r.self_agree for r in results)
    fixedok = sum(r.fixed_agree for r in results)
    return {"steps": n, "within": ok, "share": ok / n if n else 0.0, "fixed_cost_within": fixedok,
            "host_self_within": selfok, "host_self_share": selfok / n if n else 0.0,
            "misses": [{"case": r.case, "step": r.step, "label": r.label,
                        "host_ms": {k: round(v / 1e6, 3) for k, v in r.host.items()},
                        "model_ms": {k: round(v / 1e6, 3) for k, v in r.model.items()},
                        "off": [k for k, v in r.agree.items() if not v],
                        "late_share": {"host": round(r.late_share[0], 4), "model": round(r.late_share[1], 4)},
                        "tick_slip": r.tick_slip} for r in results if not r.ok]}


def main() -> int:
    """Generate, run, compare, report."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=100)
    ap.add_argument("--per-rep", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--hz", type=int, default=None, help="default: the host's CONFIG_HZ")
    ap.add_argument("--platform", default=None, help="default: the host's")
    ap.add_argument("--profile", default=None, help="a host profile (minivmm timing --calibrate)")
    ap.add_argument("--calibrate-first", type=int, default=0, metavar="RUNS",
                    help="calibrate this host with RUNS runs first and use that profile")
    ap.add_argument("--interleave", action="store_true",
                    help="calibrate between the repetitions of each case (one calibration run after each "
                         "repetition): the profile is taken under the same load as the case")
    ap.add_argument("--calibrate-each", type=int, default=0, metavar="RUNS",
                    help="calibrate with RUNS runs right before each case (the load of a shared host "
                         "changes within minutes) and use that case's profile")
    ap.add_argument("--json", default=None, metavar="OUT.json")
    ap.add_argument("--show", action="store_true", help="print each case's sequence")
    args = ap.parse_args()
    from minivmm.host import read_host_info
    host = read_host_info()
    hz = args.hz or host.hz or 250
    platform = args.platform or host.platform or "pvm"
    costs = None
    if args.calibrate_first:
        from minivmm.timing.calibrate import make_profile, run_calibration
        costs = make_profile(run_calibration(args.calibrate_first, hz, seed=args.seed), hz, platform,
                             host.kernel or "").costs()
    elif args.profile:
        from kernel_model.profile import load_profile
        costs = load_profile(args.profile).costs(hz=hz)
    load0 = os.getloadavg()[0]
    rng = random.Random(args.seed)
    results: list[StepResult] = []
    for c in range(args.cases):
        name = f"case{c:02d}"
        text = generate(rng, name)
        if args.show:
            print(text)
        if args.calibrate_each:
            from minivmm.timing.calibrate import make_profile, run_calibration
            costs = make_profile(run_calibration(args.calibrate_each, hz, seed=args.seed + c), hz, platform,
                                 host.kernel or "").costs()
        from minivmm.timing.calibrate import CalibrationError
        try:
            res = run_case(name, text, args.repeat, hz, platform, costs, args.per_rep, args.seed + c,
                           interleave=args.interleave)
        except CalibrationError as e:
            print(f"{name}: skipped, its calibration failed: {e}", flush=True)
            continue
        results += res
        ok = sum(r.ok for r in res)
        print(f"{name}: {ok}/{len(res)} grace-period steps agree", flush=True)
    s = summarize(results)
    how = ("calibrated between the repetitions" if args.interleave
           else "calibrated before each case" if args.calibrate_each else "calibrated" if args.calibrate_first
           else args.profile or "none (fixed wake-up cost)")
    print(f"\nHZ={hz} {platform}, {args.cases} cases x {args.repeat} repetitions, profile: {how}; "
          f"load average {load0:.2f} -> {os.getloadavg()[0]:.2f}")
    print(f"{s['within']}/{s['steps']} steps within 10% or 0.3 ms at p10, p50 and p90: {s['share']:.1%}")
    print(f"the model without a profile (fixed wake-up cost), same rule: {s['fixed_cost_within']}/{s['steps']}")
    print(f"noise floor: the host's odd repetitions against its even ones, same rule: "
          f"{s['host_self_within']}/{s['steps']} ({s['host_self_share']:.1%})")
    for m in s["misses"]:
        print(f"  miss {m['case']} step {m['step']} {m['label']}: host {m['host_ms']} model {m['model_ms']} "
              f"(off at {', '.join(m['off'])}; over half a tick above the host's median: host "
              f"{m['late_share']['host']:.1%}, model {m['late_share']['model']:.1%}; tick_slip "
              f"{m['tick_slip']:.1%})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**s, "hz": hz, "platform": platform, "load": load0, "cases": args.cases,
                       "repeat": args.repeat}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
