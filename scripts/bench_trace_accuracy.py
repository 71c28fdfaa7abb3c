#!/usr/bin/env python3
"""How exact ``minivmm trace`` is, and what it costs: a benchmark (not a test; figures vary by host).

Builds tests/trace_prog.c statically (a known KVM set-up: a VM, N ioeventfds, then a memslot that
stalls on kernels whose io_bus registration defers the grace period), then, RUNS times each:

* untraced, recording the program's own clock_gettime timing of every ioctl;
* under ``minivmm trace --json`` (the kernel clock where tracefs is available), recording what the
  tracer reports and what the program measured of itself in the same run;
* under ``strace -f -T -e trace=ioctl``, likewise.

Reported:

* accuracy: for the stalled step (KVM_SET_USER_MEMORY_REGION), the per-run relative difference
  between the reported duration and the program's own, its p50 and p90, and the two p50s side by side
  (the goal: within 3% at p50);
* overhead per traced ioctl: the program's own median time of a cheap ioctl (KVM_IOEVENTFD) under the
  tracer minus untraced, for minivmm trace and for strace; and the whole program's wall time.

Usage: scripts/bench_trace_accuracy.py [--runs 100] [--ioeventfds 6] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
SRC = ROOT / "tests" / "trace_prog.c"
STALLED = "KVM_SET_USER_MEMORY_REGION"
CHEAP = "KVM_IOEVENTFD"


def self_timings(err: str) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for line in err.splitlines():
        p = line.split()
        if len(p) == 3 and p[0] == "self":
            out.setdefault(p[1], []).append(int(p[2]))
    return out


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    k = (len(s) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--ioeventfds", type=int, default=6)
    ap.add_argument("--json", metavar="FILE", help="also write the raw figures here")
    args = ap.parse_args()
    if shutil.which("gcc") is None:
        print("gcc is needed", file=sys.stderr)
        return 2
    tmp = tempfile.mkdtemp(prefix="bench-trace-")
    prog = os.path.join(tmp, "trace_prog")
    subprocess.run(["gcc", "-static", "-O2", "-o", prog, str(SRC)], check=True)
    n = str(args.ioeventfds)
    have_strace = shutil.which("strace") is not None

    plain_own: dict[str, list[int]] = {}
    ours_reported: list[float] = []
    ours_own_stall: list[float] = []
    ours_own: dict[str, list[int]] = {}
    strace_reported: list[float] = []
    strace_own_stall: list[float] = []
    strace_own: dict[str, list[int]] = {}
    wall: dict[str, list[float]] = {"untraced": [], "minivmm trace": [], "strace": []}
    clock = "?"
    for i in range(args.runs):
        t0 = time.monotonic()
        p = subprocess.run([prog, n, "0"], capture_output=True, text=True)
        wall["untraced"].append(time.monotonic() - t0)
        for k, v in self_timings(p.stderr).items():
            plain_own.setdefault(k, []).extend(v)

        out = os.path.join(tmp, "t.json")
        t0 = time.monotonic()
        p = subprocess.run([sys.executable, "-m", "minivmm", "trace", "--json", "--no-explain", "-o", out, "--",
                            prog, n, "0"], capture_output=True, text=True, cwd=ROOT)
        wall["minivmm trace"].append(time.monotonic() - t0)
        if p.returncode != 0:
            print(p.stderr, file=sys.stderr)
            return 1
        doc = json.load(open(out))
        clock = doc["clock"]["source"]
        own = self_timings(p.stderr)
        for k, v in own.items():
            ours_own.setdefault(k, []).extend(v)
        ours_reported.append(next(x["duration_us"] for x in doc["ioctls"] if x["request"] == STALLED))
        ours_own_stall.append(own[STALLED][0] / 1000)

        if have_strace:
            t0 = time.monotonic()
            p = subprocess.run(["strace", "-f", "-T", "-e", "trace=ioctl", prog, n, "0"], capture_output=True,
                               text=True)
            wall["strace"].append(time.monotonic() - t0)
            own = self_timings(p.stderr)
            for k, v in own.items():
                strace_own.setdefault(k, []).extend(v)
            m = re.search(STALLED + r".*<(\d+\.\d+)>", p.stderr)
            if m:
                strace_reported.append(float(m.group(1)) * 1e6)
                strace_own_stall.append(own[STALLED][0] / 1000)
        print(f"\r{i + 1}/{args.runs}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)

    def agreement(reported: list[float], own: list[float]) -> dict[str, float]:
        rel = [abs(r - o) / o for r, o in zip(reported, own)]
        return {"p50_reported_us": pct(reported, 50), "p50_own_us": pct(own, 50),
                "p50s_differ_pct": 100 * abs(pct(reported, 50) - pct(own, 50)) / pct(own, 50),
                "per_run_rel_diff_p50_pct": 100 * pct(rel, 50), "per_run_rel_diff_p90_pct": 100 * pct(rel, 90)}

    result: dict[str, object] = {"runs": args.runs, "ioeventfds": args.ioeventfds, "clock": clock,
                                 "load_1min": os.getloadavg()[0]}
    result["minivmm_trace"] = agreement(ours_reported, ours_own_stall)
    if strace_reported:
        result["strace"] = agreement(strace_reported, strace_own_stall)
    base = statistics.median(plain_own[CHEAP]) / 1000
    result["overhead_per_ioctl_us"] = {
        "untraced_median_us": base,
        "minivmm_trace": statistics.median(ours_own[CHEAP]) / 1000 - base,
        **({"strace": statistics.median(strace_own[CHEAP]) / 1000 - base} if strace_own else {})}
    result["wall_ms_p50"] = {k: 1000 * pct(v, 50) for k, v in wall.items() if v}

    a = result["minivmm_trace"]
    assert isinstance(a, dict)
    print(f"stalled step {STALLED}, {args.runs} runs, clock: {clock}, load {result['load_1min']:.2f}")
    print(f"  minivmm trace: p50 reported {a['p50_reported_us']:.0f} us vs the program's own {a['p50_own_us']:.0f} us "
          f"({a['p50s_differ_pct']:.2f}% apart); per run |diff| p50 {a['per_run_rel_diff_p50_pct']:.2f}%, "
          f"p90 {a['per_run_rel_diff_p90_pct']:.2f}%")
    if "strace" in result:
        s = result["strace"]
        assert isinstance(s, dict)
        print(f"  strace -T:     p50 reported {s['p50_reported_us']:.0f} us vs the program's own "
              f"{s['p50_own_us']:.0f} us ({s['p50s_differ_pct']:.2f}% apart); per run |diff| p50 "
              f"{s['per_run_rel_diff_p50_pct']:.2f}%, p90 {s['per_run_rel_diff_p90_pct']:.2f}%")
    o = result["overhead_per_ioctl_us"]
    assert isinstance(o, dict)
    strace_part = f", strace +{o['strace']:.1f} us" if "strace" in o else ""
    print(f"overhead per traced ioctl ({CHEAP} as the program times it; untraced median "
          f"{o['untraced_median_us']:.1f} us): minivmm trace +{o['minivmm_trace']:.1f} us{strace_part}")
    w = result["wall_ms_p50"]
    assert isinstance(w, dict)
    print("whole program, wall p50: " + ", ".join(f"{k} {v:.1f} ms" for k, v in w.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
