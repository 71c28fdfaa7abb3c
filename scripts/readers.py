#!/usr/bin/env python3
"""Readers, measured: the expedited grace period with active SRCU readers, on this host and in the model.

1. Times ``deregistrations-running`` on the host (vCPU 0 runs a guest that exits on every loop; each
   KVM_IOEVENTFD deassign pays kvm_io_bus_unregister_dev()'s synchronize_srcu_expedited() against its
   readers) and the same sequence with the vCPU never started.
2. Fits the model's reader parameters (read-section length and period of a running vCPU) to the
   deassign durations: the grid point whose predicted p50 and p90 are closest (mean |ln ratio|), with
   a host profile taken between the repetitions (same load), so late wake-ups are not read as readers.
3. With the fitted readers, and with heavier reader loads, states what a VMM that registers N devices
   while vCPUs run pays per registration under ``sync`` (before 7d9a0273c459) against ``call_srcu`` and
   the fixes, and what per-registration cost Keir Fraser's "around 25% of a VM's startup time" needs.

Usage: python scripts/readers.py [--repeat 100] [--hz HZ] [--platform P] [--json OUT.json]
Timing figures depend on the host's load: the load average is printed with them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
from typing import Any

from kernel_model.costs import Costs
from kernel_model.predict import simulate_once
from kernel_model.sequences import SEQUENCES, Sequence, Step, with_gaps
from kernel_model.stats import percentile
from minivmm.timing.differential import measure_interleaved

US = 1000
SECTIONS_US = (2, 5, 10, 20, 40, 60, 100, 150)
PERIODS_US = (20, 40, 80, 120, 200, 400)


def with_readers(seq: Sequence, section_ns: int, period_ns: int) -> Sequence:
    """``seq`` with every ``run`` step's read section and period replaced."""
    return Sequence(seq.name, seq.description, tuple(
        Step(s.op, {**s.args, "section": section_ns, "period": period_ns}, s.gap_ns) if s.op == "run" else s
        for s in seq.steps))


def without_run(seq: Sequence) -> Sequence:
    """``seq`` with its vCPU never started (no readers)."""
    return Sequence(seq.name + "-idle", seq.description, tuple(s for s in seq.steps if s.op != "run"))


def model_steps(seq: Sequence, variant: str, hz: int, platform: str, samples: int, seed: int,
                steps: list[int], costs: Costs | None = None) -> list[int]:
    """Pooled model durations of ``steps`` over ``samples`` Monte Carlo runs."""
    rng = random.Random(seed)
    out: list[int] = []
    for _ in range(samples):
        d = simulate_once(seq, variant, hz, platform, rng.random(), rng, costs)[0]
        out += [d[i] for i in steps]
    return out


def q(values: list[int]) -> dict[str, float]:
    """p10/p50/p90 in microseconds."""
    s = sorted(values)
    return {f"p{p}": percentile(s, p) / US for p in (10, 50, 90)}


def fit(host: dict[str, float], seq: Sequence, hz: int, platform: str, steps: list[int],
        costs: Costs | None = None) -> list[Any]:
    """Grid search: (error, section_us, period_us, model quantiles), best first. ``costs`` carries the
    host profile taken under the same load, so the readers are not blamed for late wake-ups."""
    rows = []
    for sec in SECTIONS_US:
        for per in PERIODS_US:
            if sec >= per:
                continue
            m = q(model_steps(with_readers(seq, sec * US, per * US), "call_srcu", hz, platform, 40, 1, steps,
                              costs))
            err = statistics.fmean(abs(math.log(max(m[k], 0.1) / max(host[k], 0.1))) for k in ("p50", "p90"))
            rows.append((err, sec, per, m))
    return sorted(rows, key=lambda r: r[0])


def boot_registrations(n: int, section_us: int, period_us: int, vcpus: int) -> Sequence:
    """A VMM that registers ``n`` devices 200 us apart while ``vcpus`` vCPUs run a booting guest, then
    changes a memslot (where a transferred normal grace period would land)."""
    steps = [Step("create_vm"), Step("memslot", {"slot": 0, "base": 0, "size": 128 << 20}), Step("irqchip")]
    steps += [Step("vcpu", {"id": i}) for i in range(vcpus)]
    steps += [Step("run", {"vcpu": i, "section": section_us * US, "period": period_us * US}) for i in range(vcpus)]
    steps += [Step("ioeventfd", {"addr": 0xD0000050 + 0x1000 * i, "len": 4, "datamatch": None, "pio": False},
                   200 * US) for i in range(n)]
    steps.append(Step("memslot", {"slot": 1, "base": 0x100000000, "size": 2 << 20}, 200 * US))
    return Sequence(f"boot-{n}", "N registrations while vCPUs run", tuple(steps))


def keir(hz: int, platform: str, loads: list[tuple[str, int, int, int, Costs | None]],
         n: int = 32) -> list[dict[str, Any]]:
    """Per variant and reader load: total time in the N registration ioctls and the final memslot."""
    out = []
    for name, sec, per, vcpus, costs in loads:
        seq = boot_registrations(n, sec, per, vcpus)
        regs = [i for i, s in enumerate(seq.steps) if s.op == "ioeventfd"]
        mem = len(seq.steps) - 1
        row: dict[str, Any] = {"load": name, "section_us": sec, "period_us": per, "vcpus": vcpus}
        for variant in ("sync", "call_srcu", "created_vcpus", "call_srcu_expedited"):
            rng = random.Random(2)
            tot, last = [], []
            for _ in range(30):
                d = simulate_once(seq, variant, hz, platform, rng.random(), rng, costs)[0]
                tot.append(sum(d[i] for i in regs))
                last.append(d[mem])
            row[variant] = {"registrations_ms": statistics.median(tot) / 1e6,
                            "per_registration_us": statistics.median(tot) / n / US,
                            "next_memslot_ms": statistics.median(last) / 1e6}
        out.append(row)
    return out


def main() -> int:
    """Measure, fit, state."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=100)
    ap.add_argument("--hz", type=int, default=250)
    ap.add_argument("--platform", default="pvm")
    ap.add_argument("--json", default=None)
    ap.add_argument("--model-only", action="store_true", help="skip the host measurement")
    args = ap.parse_args()
    seq = SEQUENCES["deregistrations-running"]
    dereg = [i for i, s in enumerate(seq.steps) if s.op == "ioeventfd_deassign"]
    result: dict[str, Any] = {"hz": args.hz, "platform": args.platform}
    best: Any = (None, 3, 10, None)
    host_costs: Costs | None = None
    if not args.model_only:
        load0 = os.getloadavg()[0]
        reps, profile, _ = measure_interleaved(seq, args.repeat, args.hz, args.platform, 1)
        idle_seq = without_run(seq)
        idle_dereg = [i for i, s in enumerate(idle_seq.steps) if s.op == "ioeventfd_deassign"]
        idle_reps, _, _ = measure_interleaved(idle_seq, args.repeat, args.hz, args.platform, 2)
        host = q([r.durations_ns[i] for r in reps for i in dereg])
        host_idle = q([r.durations_ns[i] for r in idle_reps for i in idle_dereg])
        gaps = [int(statistics.median(r.gaps_ns[i] for r in reps)) for i in range(len(seq.steps))]
        seq_h = with_gaps(seq, gaps)
        idle_model = q(model_steps(with_gaps(idle_seq, [int(statistics.median(r.gaps_ns[i] for r in idle_reps))
                                                       for i in range(len(idle_seq.steps))]),
                                   "call_srcu", args.hz, args.platform, 60, 3, idle_dereg, profile.costs()))
        host_costs = profile.costs()
        rows = fit(host, seq_h, args.hz, args.platform, dereg, host_costs)
        best = rows[0]
        print(f"load average {load0:.2f} -> {os.getloadavg()[0]:.2f}; {args.repeat} repetitions x 6 deassigns")
        print(f"host deassign, vCPU running:   p10 {host['p10']:.0f}  p50 {host['p50']:.0f}  p90 {host['p90']:.0f} us")
        print(f"host deassign, no vCPU:        p10 {host_idle['p10']:.0f}  p50 {host_idle['p50']:.0f}  "
              f"p90 {host_idle['p90']:.0f} us (model with the profile taken between the repetitions: "
              f"p10 {idle_model['p10']:.0f}  p50 {idle_model['p50']:.0f}  p90 {idle_model['p90']:.0f} us)")
        print(f"fitted readers: a {best[1]} us read section every {best[2]} us (fit {best[0]:.2f}); model "
              f"p10 {best[3]['p10']:.0f}  p50 {best[3]['p50']:.0f}  p90 {best[3]['p90']:.0f} us")
        result.update(load=load0, host_running=host, host_idle=host_idle, model_idle=idle_model,
                      fit_section_us=best[1],
                      fit_period_us=best[2], fit_error=best[0], fit_model=best[3])
    loads: list[tuple[str, int, int, int, Costs | None]] = [
        ("fitted (this host's loop guest)", best[1], best[2], 1, None)]
    if host_costs is not None:
        loads.append(("fitted, with this host's wake-ups (profile)", best[1], best[2], 1, host_costs))
    loads += [("4 vCPUs, 20 us sections every 100 us", 20, 100, 4, None),
              ("4 vCPUs, 200 us sections every 400 us", 200, 400, 4, None),
              ("4 vCPUs, 2 ms sections every 4 ms", 2000, 4000, 4, None)]
    table = keir(args.hz, args.platform, loads)
    print(f"\n32 registrations 200 us apart while vCPUs run (HZ={args.hz}, {args.platform}); medians of 30 runs")
    print(f"{'reader load':46}{'sync':>16}{'call_srcu':>16}{'created_vcpus':>16}{'call_srcu_exp':>16}")
    for row in table:
        cells = [f"{row[v]['per_registration_us']:7.0f}us/{row[v]['next_memslot_ms']:5.2f}ms"
                 for v in ("sync", "call_srcu", "created_vcpus", "call_srcu_expedited")]
        print(f"{row['load']:46}" + "".join(c.rjust(16) for c in cells))
    print("(cell: cost per registration / the next memslot's wait)")
    result["keir"] = table
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
