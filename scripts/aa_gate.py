#!/usr/bin/env python3
"""The regression gate's false-alarm rate and power, measured on this host (a benchmark, not a test).

    python3 scripts/aa_gate.py [--runs 200] [--repeat 30] [--sequence registrations-first]
                               [--loads quiet,moderate] [--save DIR | --load-from DIR]

For each load level, times ``--runs`` runs of the sequence (``--repeat`` jittered repetitions each,
as ``minivmm timing -r 30`` does, each with its CPU pressure and load average), then:

- **false alarms**: gates each run against the next one (A/A: the same kernel, minutes apart), with
  ``minivmm.compare.gate.decide`` at its defaults (alpha 1%, threshold 20%, floor a tenth of a jiffy),
  and counts the outcomes. A false alarm is "regressed". Runs over the gate's pressure limit (20%)
  make it answer "unusable", which is no alarm; the rate is also given over the pairs whose two runs
  were both under the limit, and, to show what the test alone does under load, with the pressure
  check left out.
- **power**: the same pairs with a regression planted in the second run: every sample of one step
  gets an extra grace period's wait, as the gate's tests plant it (``tests/test_compare.py``,
  ``planted``). Two plants: the stalled step (the first memslot) waiting one more jiffy, and a
  fixed-cost step (the first KVM_CREATE_VCPU) waiting for a normal grace period it did not wait for,
  (1, 2] jiffies by tick phase. Power is the share called "regressed".

``moderate`` adds, for the duration of its runs, one busy-loop process per CPU, each busy
``--moderate-duty`` of every 10 ms (default 0.3; the CPU pressure it gives depends on what else runs:
the figures printed are the ones measured). ``--save DIR`` keeps every run as a timing document
(``--load-from DIR`` evaluates them again without measuring). Needs /dev/kvm unless ``--load-from``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from kernel_model.sequences import SEQUENCES, step_name, step_number
from kernel_model.stats import median, tick_ns
from minivmm.compare.documents import TimingDocument, parse_timing
from minivmm.compare.gate import GateOutcome, decide
from minivmm.schemas import SCHEMA_VERSIONS
from minivmm.timing.pressure import BUSY_PRESSURE_PCT, LoadWindow

BUSY_LOOP = """
import time
period, busy = 0.010, {duty} * 0.010
while True:
    t = time.monotonic()
    while time.monotonic() - t < busy:
        pass
    time.sleep(period - busy)
"""


@contextmanager
def background_load(level: str, duty: float) -> Iterator[None]:
    """``quiet``: nothing added; ``moderate``: one busy-loop process per CPU, busy ``duty`` of the time."""
    procs: list[subprocess.Popen[bytes]] = []
    if level == "moderate":
        for _ in range(os.cpu_count() or 1):
            procs.append(subprocess.Popen([sys.executable, "-c", BUSY_LOOP.format(duty=duty)]))
    elif level != "quiet":
        raise SystemExit(f"unknown load level {level!r} (quiet, moderate)")
    try:
        yield
    finally:
        for p in procs:  # only the processes started here, by their pid
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait()


def measure_runs(sequence: str, runs: int, repeat: int, hz: int, platform: str, kernel: str,
                 seed: int) -> list[dict[str, Any]]:
    """``runs`` timing documents of ``sequence`` (the parts the gate reads, and the load)."""
    from minivmm.timing.runner import measure

    seq = SEQUENCES[sequence]
    docs = []
    for r in range(runs):
        window = LoadWindow.start()
        reps, _ = measure(seq, repeat, jitter=True, hz=hz, seed=seed + r, platform=platform)
        load = window.end()
        docs.append({
            "schema_version": SCHEMA_VERSIONS["timing"], "kind": "timing", "sequence": sequence,
            "repetitions": repeat,
            "host": {"kernel": kernel, "hz": hz, "platform": platform, "jitter": True, **load.to_json()},
            "steps": [{"step": step_number(i), "op": s.op, "label": s.label,
                       "samples_ns": [rep.durations_ns[i] for rep in reps]} for i, s in enumerate(seq.steps)]})
        print(f"\r  run {r + 1}/{runs}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return docs


def planted(doc: dict[str, Any], step: int, extra: list[int]) -> dict[str, Any]:
    """``doc`` with ``extra[k]`` ns added to sample k of ``step``."""
    out: dict[str, Any] = json.loads(json.dumps(doc))
    s = out["steps"][step]
    s["samples_ns"] = [x + e for x, e in zip(s["samples_ns"], extra)]
    return out


def without_pressure(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` as if its load had not been measured (the gate's busy check then cannot refuse it)."""
    out = dict(doc)
    out["host"] = {k: v for k, v in doc["host"].items() if k not in ("cpu_pressure_pct", "load_average")}
    return out


def gate(a: dict[str, Any], b: dict[str, Any]) -> GateOutcome:
    """The gate's decision at its defaults (bootstrap intervals, which decide nothing, kept small)."""
    return decide(parse_timing(a, "A"), parse_timing(b, "B"), resamples=50).outcome


def upper_bound(k: int, n: int) -> float:
    """The one-sided 95% upper confidence bound of a rate seen k times in n (Clopper-Pearson, by
    bisection on the binomial tail)."""
    if n == 0:
        return 1.0
    if k >= n:
        return 1.0
    lo, hi = k / n, 1.0
    for _ in range(60):
        p = (lo + hi) / 2
        tail = sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k + 1))
        lo, hi = (p, hi) if tail > 0.05 else (lo, p)
    return hi


def rate(k: int, n: int) -> str:
    """``2/150 = 1.3% (95% upper bound 4.1%)``."""
    if n == 0:
        return "no pairs"
    return f"{k}/{n} = {k / n:.1%} (95% upper bound {upper_bound(k, n):.1%})"


def evaluate(level: str, docs: list[dict[str, Any]], seed: int) -> None:
    """Print the outcomes of the A/A pairs and of the planted regressions."""
    parsed: list[TimingDocument] = [parse_timing(d, f"run {i}") for i, d in enumerate(docs)]
    pressures = [p.cpu_pressure_pct for p in parsed if p.cpu_pressure_pct is not None]
    loads = [p.load_average[0] for p in parsed if p.load_average is not None]
    print(f"\n== {level}: {len(docs)} runs of {docs[0]['sequence']}, {docs[0]['repetitions']} repetitions each; "
          f"CPU pressure per run median {median(pressures) if pressures else float('nan'):.1f}% "
          f"(max {max(pressures, default=float('nan')):.1f}%), 1-min load average median "
          f"{median(loads) if loads else float('nan'):.2f}")
    pairs = list(zip(docs[:-1], docs[1:]))
    quiet = [(a, b) for a, b in pairs
             if all((d["host"].get("cpu_pressure_pct") or 0) <= BUSY_PRESSURE_PCT for d in (a, b))]
    outcomes = Counter(gate(a, b) for a, b in pairs)
    print("A/A, consecutive runs: " + ", ".join(f"{o.value} {outcomes[o]}" for o in GateOutcome))
    print(f"  false alarms: {rate(outcomes[GateOutcome.REGRESSED], len(pairs))}")
    q = Counter(gate(a, b) for a, b in quiet)
    print(f"  false alarms among pairs both at <= {BUSY_PRESSURE_PCT:g}% pressure: "
          f"{rate(q[GateOutcome.REGRESSED], len(quiet))} (unusable {q[GateOutcome.UNUSABLE]})")
    raw = Counter(gate(without_pressure(a), without_pressure(b)) for a, b in pairs)
    print(f"  without the pressure check: {rate(raw[GateOutcome.REGRESSED], len(pairs))} "
          f"(unusable {raw[GateOutcome.UNUSABLE]})")
    rng = random.Random(seed)
    hz = int(docs[0]["host"]["hz"])
    jiffy = tick_ns(hz)
    steps = [s["op"] for s in docs[0]["steps"]]
    stalled = steps.index("memslot")
    fixed = steps.index("vcpu")
    n = int(docs[0]["repetitions"])
    plants: dict[str, tuple[int, Callable[[], list[int]]]] = {
        f"step {step_name(stalled, docs[0]['steps'][stalled]['label'])} one jiffy longer":
            (stalled, lambda: [jiffy] * n),
        f"step {step_name(fixed, docs[0]['steps'][fixed]['label'])} waits (1, 2] jiffies more":
            (fixed, lambda: [int(jiffy * (1 + rng.random())) for _ in range(n)]),
    }
    for name, (step, extra) in plants.items():
        hit = Counter(gate(a, planted(b, step, extra())) for a, b in quiet)
        raw_hit = Counter(gate(without_pressure(a), without_pressure(planted(b, step, extra()))) for a, b in pairs)
        found = hit[GateOutcome.REGRESSED]
        print(f"power, {name}: {found}/{len(quiet)} = {found / len(quiet) if quiet else float('nan'):.1%} of the pairs "
              f"under the pressure limit; without the pressure check {raw_hit[GateOutcome.REGRESSED]}/{len(pairs)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--sequence", default="registrations-first")
    parser.add_argument("--loads", default="quiet,moderate")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--moderate-duty", type=float, default=0.3, metavar="SHARE",
                        help="the share of each 10 ms the moderate load's busy loops run (default: 0.3)")
    parser.add_argument("--save", default=None, metavar="DIR")
    parser.add_argument("--load-from", default=None, metavar="DIR")
    args = parser.parse_args()
    for level in args.loads.split(","):
        if args.load_from:
            with open(os.path.join(args.load_from, f"{level}.json")) as f:
                docs = json.load(f)
        else:
            from minivmm.host import read_host_info
            host = read_host_info()
            if host.hz is None or host.platform is None or host.kvm_error:
                print("needs /dev/kvm, CONFIG_HZ and a known KVM platform", file=sys.stderr)
                return 2
            with background_load(level, args.moderate_duty):
                time.sleep(1)  # let the load settle before the first run
                docs = measure_runs(args.sequence, args.runs, args.repeat, host.hz, host.platform,
                                    host.kernel or "", args.seed)
            if args.save:
                os.makedirs(args.save, exist_ok=True)
                with open(os.path.join(args.save, f"{level}.json"), "w") as f:
                    json.dump(docs, f)
        evaluate(level, docs, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
